# %% [markdown]
# # The command line
#
# > `polar-nb`: one command, one sub-command per job (`book`, `bench`, and `index`, `learn`, `search`, `concepts` for a photo library).

# %%
#| default_exp cli

# %%
#| hide
from fastcore.test import test_eq, test_fail

# %% [markdown]
# What can be run from a shell, and how does a command fail? This is infrastructure, with no section
# of the paper behind it. `polar-nb book` is the README's main job: execute every chapter on the
# current profile and render the book to `_site/`.

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
import argparse, json, sys
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
BENCH_PARTS = ('personalization', 'exactness', 'scaling', 'multi', 'search', 'faiss')  # as polar_nb.bench.PARTS

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
    b = sub.add_parser('book', help="execute every chapter's CI-scale cells and render the book to HTML",
                       description="Execute every chapter (its `slow` cells show their stored outputs, labelled with what produced them) "
                                   "and render the book. A chapter whose code, library and settings are unchanged since its last "
                                   "execution is taken from the cache (<cache_dir>/book).")
    b.add_argument('--out', default='_site', help='output folder, relative to the repository root')
    b.add_argument('--no-execute', action='store_true', help='render the outputs stored in the notebooks')
    b.add_argument('--full', action='store_true', help='also execute the `slow` cells (and `cuda` ones on a GPU): the full runs, '
                   'which take hours; their outputs and what produced them are stored in the notebooks')
    b.add_argument('--workers', type=_positive, default=None, help='chapters executed at once (default: the CPU count)')
    b.add_argument('--no-cache', action='store_true', help='execute every chapter, even those unchanged since their last execution')
    b.add_argument('--timeout', type=_positive, default=1800, help='seconds allowed per cell')
    _bench_parser(sub)
    _library_parsers(sub)
    return ap


# %% [markdown]
# ## Searching one's own photos
#
# Four commands drive a photo library ([Search your own photos](31_search.ipynb)):
#
# - `polar-nb index FOLDER`: index the photos of FOLDER (new and changed ones only; deleted ones
#   leave the index);
# - `polar-nb learn NAME IMAGE...`: learn a concept from its photos; NAME is then written in
#   queries as itself ("fido on the beach");
# - `polar-nb search "QUERY" [--k 20] [--html out.html] [--json]`: the best photos, one path and
#   score a line (tab-separated), or a JSON list of `{"path", "score"}`; `--html` also writes a
#   contact sheet (and a PNG beside it);
# - `polar-nb concepts [list | remove NAME...]`.
#
# Every command but `index` (which names its folder) takes `--library FOLDER` (default: the
# current folder); every command takes `--backbone` (default: the one the library was indexed
# with, else the settings'). Results go to stdout, progress and messages to stderr. Exit status:
# 0 done; 1 some photos could not be read (named on stderr; the others are indexed); 2 a usage
# error or an error the library reports (one line).

# %%
#| export
EXIT_UNREADABLE = 1  # `index`: some photos could not be read (the rest are indexed)
LIB_EPILOG = ("exit status: 0 done; 1 some photos could not be read (named on stderr, the rest indexed); "
              "2 usage error or library error")

def _library_opts(p, folder:bool=True):
    "The options every library command takes: --library (unless the folder is positional) and --backbone, --pretrained."
    if folder: p.add_argument('--library', default='.', metavar='FOLDER', help='the photo folder (default: the current folder)')
    p.add_argument('--backbone', default=None, help="backbone name (world-tiny, ViT-L-14, ...); default: the library's own, else the settings'")
    p.add_argument('--pretrained', default=None, help='pretrained weights of an open_clip backbone (a tag such as openai, or a file)')
    p.add_argument('--device', type=_device, default='auto', help='auto, cpu, cuda, cuda:N or mps')
    return p

def _library_parsers(sub):
    "The photo-library sub-commands: index, learn, search, concepts."
    kw = dict(epilog=LIB_EPILOG)
    p = _library_opts(sub.add_parser('index', help='index (or update the index of) a folder of photos', **kw), folder=False)
    p.add_argument('folder', help='the photo folder'); p.add_argument('--chunk', type=_positive, default=256, help='photos encoded and committed at a time')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p = _library_opts(sub.add_parser('learn', help='learn a personal concept from a few photos of it', **kw))
    p.add_argument('name', help='the concept\'s name, written in queries as itself ("fido on the beach")')
    p.add_argument('images', nargs='+', help='its photos'); p.add_argument('--iters', type=_positive, default=None, help="training steps (default: the backbone's)")
    p = _library_opts(sub.add_parser('search', help='search the library in words; concept names are written as themselves', **kw))
    p.add_argument('query'); p.add_argument('--k', type=_positive, default=20, help='results (default 20)')
    p.add_argument('--html', default=None, help='also write a contact sheet (HTML, and a PNG beside it)')
    p.add_argument('--json', action='store_true', help='print a JSON list of {"path", "score"}')
    p.add_argument('--index', choices=('auto', 'flat', 'ivf', 'hnsw'), default='auto', help='auto (exact below 100,000 photos), flat (exact), ivf or hnsw (approximate)')
    p = _library_opts(sub.add_parser('concepts', help='list the learned concepts, or remove some', **kw))
    p.add_argument('action', nargs='?', choices=('list', 'remove'), default='list'); p.add_argument('names', nargs='*', help='concepts to remove')


# %% [markdown]
# `main` reads the settings before any job starts, so a wrong settings file or `POLAR_` variable
# stops the command at once. An error the library reports (a `ValueError`, `FileNotFoundError` or
# `KeyError`: bad settings, an unknown backbone, a missing data root) is printed as
# `polar-nb: error: <message>` with exit status 2; `polar-nb --traceback ...` shows the whole
# traceback instead.

# %%
#| export
def _open(a:argparse.Namespace, folder:str):
    "The library a command works on."
    from polar_nb.library import PhotoLibrary
    return PhotoLibrary.open(folder, backbone=a.backbone, pretrained=a.pretrained, device=a.device)

def _index(a)->int:
    "`polar-nb index`: update the index; 1 when some photos could not be read."
    lib = _open(a, a.folder); r = lib.update(progress=not a.quiet, chunk=a.chunk)
    for _, why in r.failed: print(f"polar-nb: {why}", file=sys.stderr)
    print(f"{lib.folder}: {r}; {len(lib)} photos indexed with {lib.bb.name}", file=sys.stderr)
    return EXIT_UNREADABLE if r.failed else 0

def _search(a)->int:
    "`polar-nb search`: the best photos on stdout (and a contact sheet)."
    lib = _open(a, a.library); hits = lib.search(a.query, k=a.k, kind=a.index)
    if a.json: print(json.dumps([dict(path=str(h.path), score=round(h.score, 6)) for h in hits], ensure_ascii=False))
    else: print('\n'.join(f"{h.path}\t{h.score:.4f}" for h in hits))
    if a.html: print(f"contact sheet: {' and '.join(map(str, lib.contact_sheet(hits, a.html, title=a.query)))}", file=sys.stderr)
    return 0

def _concepts(a)->int:
    "`polar-nb concepts`: list the concepts (stdout), or remove some."
    lib = _open(a, a.library)
    if a.action == 'remove':
        if not a.names: raise ValueError("concepts remove: name the concept(s) to remove")
        for n in a.names: lib.forget(n); print(f"removed concept {n!r}", file=sys.stderr)
        return 0
    for _, r in lib.concepts().iterrows(): print(f"{r['name']}\t{r.photos} photos\t{r.backbone}")
    return 0

def _learn(a)->int:
    "`polar-nb learn`: train and save a concept."
    lib = _open(a, a.library); u = lib.learn(a.name, a.images, **({} if a.iters is None else dict(iters=a.iters)))
    print(f"learned {a.name!r} from {u.meta['n_images']} photo(s) with {lib.bb.name}; search it as \"{a.name} ...\"", file=sys.stderr)
    return 0

LIBRARY_COMMANDS = dict(index=_index, learn=_learn, search=_search, concepts=_concepts)

# %%
#| export
ERRORS = (ValueError, FileNotFoundError, KeyError)  # what the library raises for a wrong setting or input

def _run(a:argparse.Namespace)->int:
    "Run the sub-command that `a` names, after reading the settings."
    get_settings()
    if a.cmd == 'book':
        from polar_nb.book import render_book
        if a.no_execute and a.full: raise ValueError("--full executes the slow cells; it cannot be combined with --no-execute")
        index = render_book(out=a.out, execute=not a.no_execute, full=a.full, workers=a.workers, cache=not a.no_cache, timeout=a.timeout)
        print(f"The book is ready: open {index}")
    if a.cmd == 'bench':
        from polar_nb.bench import run_bench
        run_bench(quick=a.quick, out=a.out, device=a.device, parts=a.parts, threads=a.threads, progress=a.progress)
    if a.cmd in LIBRARY_COMMANDS: return LIBRARY_COMMANDS[a.cmd](a)
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

# %% [markdown]
# The photo-library commands, and each one's help:

# %%
with redirect_stdout(io.StringIO()) as printed:
    try: main(['search', '--help'])
    except SystemExit as e: test_eq(e.code, 0)
assert '--library FOLDER' in printed.getvalue() and 'exit status: 0 done; 1 some photos' in printed.getvalue()
print(printed.getvalue())
test_eq(exits(['search', 'a cup', '--k', '0'])[0], 2)
code, err = exits(['search', 'a cup', '--library', '/no/such/folder'])
test_eq(code, 2); assert 'photo folder /no/such/folder does not exist' in err, err

# %% [markdown]
# ## In short
#
# - `polar-nb book` builds this book; `polar-nb bench` runs the [timing chapter](27_timing.ipynb)'s
#   benchmark (`--quick`: about a minute) and writes its numbers, with the machine, to JSON; `index`,
#   `learn`, `search` and `concepts` drive a photo library.
# - Options and settings are checked before any job starts: a wrong value is one line on stderr and
#   exit status 2 (`--traceback` shows the whole traceback), and `index` exits with 1 when some photos
#   cannot be read, after indexing the others.
# - The quick exactness run above matches open_clip's merged weights to within 1.2e-7, in 5 s.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
