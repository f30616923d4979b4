#!/usr/bin/env bash
# The main job: set up .venv/, execute every chapter's CI-scale cells on the current profile
# (settings.ini; the embedded `small` profile by default), chapters side by side, and render the
# book to _site/. Slow cells show their stored outputs; chapters unchanged since their last
# execution come from the cache. Arguments go to `polar-nb book` (--full, --no-execute, --workers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/polar-nb book "$@"
