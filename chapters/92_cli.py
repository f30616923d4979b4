# %% [markdown]
# # The command line
#
# > `polar-nb`: one command, one sub-command per job (`book`, `bench`).

# %%
#| default_exp cli

# %%
#| hide
from fastcore.test import test_eq, test_fail

# %% [markdown]
# `polar-nb book` is the README's main job: execute every chapter on the current profile and
# render the book to `_site/`.

# %% [markdown]
# `polar-nb bench` times personalization (textual inversion, naive POLAR and the fast path),
# checks the fast path's exactness, measures how its cost scales, encodes a batch of multi-tenant
# queries and searches image features on disk (the timing chapter); it prints a table per part and
# writes every number, with the machine, to a JSON file. `--quick` is the minute-long version.

# %%
#| export
import argparse, sys
from pathlib import Path

BENCH_PARTS = ('personalization', 'exactness', 'scaling', 'multi', 'search')  # as polar_nb.bench.PARTS

def _parts(s:str)->tuple:
    "The comma-separated benchmark parts of `--parts` (all: every part)."
    ps = BENCH_PARTS if s == 'all' else tuple(p.strip() for p in s.split(',') if p.strip())
    if bad := [p for p in ps if p not in BENCH_PARTS]: raise argparse.ArgumentTypeError(f"unknown part(s) {bad}; choose from {', '.join(BENCH_PARTS)} or all")
    return ps

def _bench_parser(sub):
    "The `bench` sub-command's options."
    b = sub.add_parser('bench', help='time personalization, multi-tenant queries and search on this machine; results as JSON')
    b.add_argument('--quick', action='store_true', help='the small version (about a minute on a CPU)')
    b.add_argument('--out', default=None, help='JSON file for the results (default: <cache_dir>/bench/results[-quick].json)')
    b.add_argument('--device', default='cpu', help='cpu, cuda or auto, for personalization and multi-tenant queries (search runs on the CPU)')
    b.add_argument('--parts', type=_parts, default=BENCH_PARTS, help=f"comma-separated parts to run: {','.join(BENCH_PARTS)} (default: all)")
    b.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    b.add_argument('--progress', action='store_true', help='show progress bars')
    return b

def main(argv=None):
    "The `polar-nb` command."
    ap = argparse.ArgumentParser(prog='polar-nb', description='Personalized text-to-image search (POLAR, CAP).')
    sub = ap.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('book', help='execute every chapter and render the book to HTML')
    b.add_argument('--out', default='_site', help='output folder, relative to the repository root')
    b.add_argument('--no-execute', action='store_true', help='render the outputs stored in the notebooks')
    b.add_argument('--timeout', type=int, default=1800, help='seconds allowed per cell')
    _bench_parser(sub)
    a = ap.parse_args(argv)
    if a.cmd == 'book':
        from polar_nb.book import render_book
        index = render_book(out=a.out, execute=not a.no_execute, timeout=a.timeout)
        print(f"The book is ready: open {index}")
    if a.cmd == 'bench':
        from polar_nb.bench import run_bench
        run_bench(quick=a.quick, out=a.out, device=a.device, parts=a.parts, threads=a.threads, progress=a.progress)
    return 0


# %%
from polar_nb.cli import main
try: main([]); raise AssertionError('a sub-command is required')
except SystemExit as e: test_eq(e.code, 2)

# %% [markdown]
# The parts are checked before anything runs, and the list in this module is the benchmark's own:

# %%
from polar_nb.bench import PARTS
test_eq(BENCH_PARTS, PARTS)
test_eq(_parts('all'), PARTS); test_eq(_parts('search, multi'), ('search', 'multi'))
test_fail(lambda: _parts('search,warp'), contains="unknown part(s) ['warp']")

# %% [markdown]
# A quick run of the exactness part, into a temporary file:

# %%
import io, json, tempfile
from contextlib import redirect_stdout
with tempfile.TemporaryDirectory() as d, redirect_stdout(io.StringIO()) as printed:
    test_eq(main(['bench', '--quick', '--parts', 'exactness', '--out', f'{d}/r.json']), 0)
    r = json.loads(Path(f'{d}/r.json').read_text())
print(printed.getvalue().replace(d, '<folder>'))
test_eq((r['profile'], list(r['settings'])), ('quick', ['exactness']))
assert all(e['max_abs_err'] <= 1e-5 for e in r['exactness'])

# %%
#| hide
import nbdev; nbdev.nbdev_export()
