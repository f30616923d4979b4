#!/usr/bin/env bash
# The whole test suite: set up .venv/, then pytest over tests/ and every chapter in nbs/ with nbval.
# Exits non-zero on any failure, and when no test was collected.
#
# The files run on TEST_WORKERS processes (pytest-xdist; default: the CPU count, at most 4),
# each notebook whole on one of them, with one torch thread each (OMP_NUM_THREADS=1): on two cores
# that is 1.6 times faster than one process with two threads, where two processes with two threads
# each are slower than one. TEST_WORKERS=1 runs everything in this process. Every chapter and
# test of the run shares the settings' cache folder (.cache/polar_nb unless POLAR_CACHE_DIR says
# otherwise): its entries are keyed by their content, so what one chapter computed the next reads.
# The 25 slowest tests and cells are listed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
workers="${TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
[ "$workers" -gt 4 ] && workers=4
xdist=()
if [ "$workers" -gt 1 ]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
  xdist=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest tests nbs --nbval-lax --nbval-current-env --durations=25 "${xdist[@]}" "$@"
