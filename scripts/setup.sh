#!/usr/bin/env bash
# Create .venv/ at the repository root and install polar-nb with the exact tested versions
# (constraints.txt). Idempotent: does nothing when .venv already matches constraints.txt and
# pyproject.toml. Used by book.sh and test.sh; run it alone to only set up.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
stamp=.venv/.polar-nb-setup
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then exit 0; fi
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
# --no-compile: Python compiles each module when it is first imported, rather than every file of
# every package (torch alone has thousands) at install time.
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile)
# torch first, alone and exact: every later requirement is then satisfied by it, so nothing can pull
# another (multi-GB CUDA) build. Where a local CPU wheel of 2.13.0 is offered (find-links), pip takes it.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -c constraints.txt -e ".[dev,sweep]"
echo "$want" > "$stamp"
echo "polar-nb is installed in $root/.venv"
