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

# %% [markdown]
# Options are checked as they are read: a count must be a positive whole number and a device one
# of those the settings accept, so a wrong value is a one-line usage error (exit status 2) rather
# than a failure deep inside torch.

# %%
#| export
import argparse, sys
from pathlib import Path
from polar_nb.config import check_device, get_settings


# %%
#| export
def _positive(s:str)->int:
    "The whole number above zero that `s` writes (`--threads`, `--timeout`)."
    try: n = int(s)
    except ValueError: raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if n < 1: raise argparse.ArgumentTypeError(f"{n} is not a positive number")
    return n

def _device(s:str)->str:
    "The device `s` (`--device`), checked as the settings check it."
    try: return check_device(s)
    except ValueError as e: raise argparse.ArgumentTypeError(str(e)) from None


# %%
test_eq(_positive('4'), 4)
test_fail(lambda: _positive('-3'), contains='-3 is not a positive number')
test_fail(lambda: _positive('two'), contains="'two' is not a whole number")
test_eq(_device('cuda:1'), 'cuda:1')
test_fail(lambda: _device('banana'), contains="device 'banana' is not one of: auto, cpu, cuda")

# %%
#| export
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
    b.add_argument('--device', type=_device, default='cpu', help='auto, cpu, cuda, cuda:N or mps, for personalization and multi-tenant queries (search runs on the CPU)')
    b.add_argument('--parts', type=_parts, default=BENCH_PARTS, help=f"comma-separated parts to run: {','.join(BENCH_PARTS)} (default: all)")
    b.add_argument('--threads', type=_positive, default=None, help="torch CPU threads (default: torch's own choice)")
    b.add_argument('--progress', action='store_true', help='show progress bars')
    return b

def _parser()->argparse.ArgumentParser:
    "The `polar-nb` command's parser: the top-level options and one sub-parser per job."
    ap = argparse.ArgumentParser(prog='polar-nb', description='Personalized text-to-image search (POLAR, CAP).')
    ap.add_argument('--traceback', action='store_true', help='on an error, show the whole Python traceback')
    sub = ap.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('book', help='execute every chapter and render the book to HTML')
    b.add_argument('--out', default='_site', help='output folder, relative to the repository root')
    b.add_argument('--no-execute', action='store_true', help='render the outputs stored in the notebooks')
    b.add_argument('--timeout', type=_positive, default=1800, help='seconds allowed per cell')
    _bench_parser(sub)
    return ap


# %% [markdown]
# `main` reads the settings before any job starts, so a wrong settings file or `POLAR_` variable
# stops the command at once. An error the library reports (a `ValueError`, `FileNotFoundError` or
# `KeyError`: bad settings, an unknown backbone, a missing data root) is printed as
# `polar-nb: error: <message>` with exit status 2; `polar-nb --traceback ...` shows the whole
# traceback instead.

# %%
#| export
ERRORS = (ValueError, FileNotFoundError, KeyError)  # what the library raises for a wrong setting or input

def _run(a:argparse.Namespace)->int:
    "Run the sub-command that `a` names, after reading the settings."
    get_settings()
    if a.cmd == 'book':
        from polar_nb.book import render_book
        index = render_book(out=a.out, execute=not a.no_execute, timeout=a.timeout)
        print(f"The book is ready: open {index}")
    if a.cmd == 'bench':
        from polar_nb.bench import run_bench
        run_bench(quick=a.quick, out=a.out, device=a.device, parts=a.parts, threads=a.threads, progress=a.progress)
    return 0

def main(argv=None):
    "The `polar-nb` command: 0 when the job is done; a usage or library error exits with status 2."
    ap = _parser(); a = ap.parse_args(argv)
    try: return _run(a)
    except ERRORS as e:
        if a.traceback: raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        ap.exit(2, f"{ap.prog}: error: {msg}\n")


# %%
import io, os
from contextlib import redirect_stderr
from polar_nb.cli import main


# %%
def exits(argv, env={}):
    "The exit status and the stderr of `main(argv)`, run with the variables `env` set, when it exits early."
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with redirect_stderr(io.StringIO()) as err:
            try: main(argv); raise AssertionError(f'{argv} did not exit')
            except SystemExit as e: return e.code, err.getvalue()
    finally:
        for k,v in old.items():
            if v is None: del os.environ[k]
            else: os.environ[k] = v

test_eq(exits([])[0], 2)

# %% [markdown]
# A bad option is a usage error, named by argparse:

# %%
for argv, msg in [(['bench', '--threads', '-3'], 'polar-nb bench: error: argument --threads: -3 is not a positive number'),
                  (['bench', '--threads', 'two'], "argument --threads: 'two' is not a whole number"),
                  (['bench', '--device', 'banana'], "polar-nb bench: error: argument --device: device 'banana' is not one of: auto, cpu"),
                  (['book', '--timeout', '0'], 'polar-nb book: error: argument --timeout: 0 is not a positive number')]:
    code, err = exits(argv)
    test_eq(code, 2); assert msg in err, err
print(err)

# %% [markdown]
# Wrong settings stop the command before the job starts, in one line:

# %%
code, err = exits(['bench', '--quick'], {'POLAR_PROFLE': 'paper'})
test_eq(code, 2)
assert err.startswith('polar-nb: error: unknown environment variable POLAR_PROFLE (did you mean POLAR_PROFILE?)'), err
test_eq(err.count('\n'), 1)
code, err = exits(['book', '--no-execute'], {'POLAR_DEVICE': 'banana'})
test_eq((code, err.startswith("polar-nb: error: device 'banana' from POLAR_DEVICE")), (2, True))
print(err)

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
