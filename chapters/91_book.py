# %% [markdown]
# # The book, offline
#
# > How the chapters become the book in `_site/`: executed in order, rendered to HTML with a sidebar, readable with no network.

# %% [markdown]
# `_quarto.yml` defines this book for [Quarto](https://quarto.org): `quarto render` builds it
# wherever Quarto is installed. The functions here build the same book from the same chapter list
# with tools that install from PyPI alone (nbclient to execute, nbconvert to render), which is
# what `polar-nb book` and the README's first command run. Each page is one self-contained HTML
# file: figures are embedded, styles are inline, nothing is fetched when it is read.

# %%
#| default_exp book

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_fail

# %%
#| export
import copy, html, re, tomllib
from pathlib import Path
import nbformat, yaml


# %% [markdown]
# ## The chapter list
#
# Quarto books list chapters under `book.chapters`, possibly grouped in `part`s, and
# `book.appendices`; the reading order is theirs. `book_config` gives both the flat reading order
# (`chapters`) and its grouping (`parts`): a list of (title, chapter paths), where chapters outside
# any part (the home page) have the title `None` and the appendices are the part "Appendices".

# %%
#| export
def find_root(start:str|Path|None=None)->Path:
    "The nearest folder at or above `start` holding `_quarto.yml`."
    start = Path(start or Path.cwd()).resolve()
    root = next((d for d in [start, *start.parents] if (d/'_quarto.yml').is_file()), None)
    if root is None: raise FileNotFoundError(f"no _quarto.yml in {start} or any parent folder")
    return root


# %%
#| export
def _flatten(items)->list[str]:
    "Chapter paths from a Quarto chapter list, parts flattened."
    return [p for _, ps in _group(items) for p in ps]

def _group(items)->list[tuple]:
    "A Quarto chapter list as (part title or None, [chapter paths]); chapters outside parts are grouped in order."
    out = []
    for it in items or []:
        if isinstance(it, str) or (isinstance(it, dict) and 'part' not in it):
            path = it if isinstance(it, str) else it.get('file') or it.get('href')
            if path is None: continue
            if not out or out[-1][0] is not None: out.append((None, []))
            out[-1][1].append(path)
        elif isinstance(it, dict):
            title, paths = it['part'], _flatten(it.get('chapters'))
            if str(title).endswith(('.qmd', '.md', '.ipynb')): paths = [title] + paths  # a part page: a chapter of its own
            out.append((str(title), paths))
    return out

def book_config(root:str|Path)->dict:
    "The book's title, chapter paths (absolute, in reading order) and parts ((title, paths), appendices last) from `root/_quarto.yml`."
    root = Path(root)
    cfg = yaml.safe_load((root/'_quarto.yml').read_text(encoding='utf-8'))
    if (cfg.get('project') or {}).get('type') != 'book': raise ValueError(f"{root/'_quarto.yml'} is not a Quarto book")
    book = cfg['book']
    parts = _group(book.get('chapters')) + ([('Appendices', _flatten(book.get('appendices')))] if book.get('appendices') else [])
    parts = [(t, [root/p for p in ps]) for t, ps in parts]
    paths = [p for _, ps in parts for p in ps]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing: raise FileNotFoundError(f"chapters listed in _quarto.yml do not exist: {missing}")
    return dict(title=book.get('title', root.name), chapters=paths, parts=parts)


# %%
cfg = book_config(find_root())
test_eq(cfg['chapters'][0].name, 'index.ipynb')
test_eq(Path('91_book.ipynb').resolve() in cfg['chapters'], True)
cfg['title'], [p.name for p in cfg['chapters']]

# %% [markdown]
# The parts, in order, each with its chapters; read one after the other they are the chapter list:

# %%
test_eq([t for t, _ in cfg['parts']], [None, 'Foundations', 'The method', "The paper's results", 'Beyond the paper', 'Appendices'])
test_eq([p for _, ps in cfg['parts'] for p in ps], cfg['chapters'])
test_eq([p.name for p in cfg['parts'][-1][1]], [p.name for p in sorted(Path('.').glob('9[0-9]_*.ipynb'))])
{t: [p.name for p in ps] for t, ps in cfg['parts']}

# %% [markdown]
# A list that mixes loose chapters, parts (one of them a part page) and appendices keeps its order:

# %%
import tempfile
with tempfile.TemporaryDirectory() as d:
    for n in ['a', 'b', 'c', 'p', 'x', 'z']: (Path(d)/f'{n}.ipynb').touch()
    (Path(d)/'_quarto.yml').write_text(yaml.safe_dump({'project': {'type': 'book'}, 'book': {'title': 'T',
        'chapters': ['a.ipynb', {'part': 'One', 'chapters': ['b.ipynb']}, {'part': 'p.ipynb', 'chapters': ['c.ipynb']}, 'x.ipynb'],
        'appendices': ['z.ipynb']}}))
    toy = book_config(d)
    test_eq([(t, [p.name for p in ps]) for t, ps in toy['parts']],
            [(None, ['a.ipynb']), ('One', ['b.ipynb']), ('p.ipynb', ['p.ipynb', 'c.ipynb']), (None, ['x.ipynb']), ('Appendices', ['z.ipynb'])])
    test_eq([p.name for p in toy['chapters']], ['a.ipynb', 'b.ipynb', 'p.ipynb', 'c.ipynb', 'x.ipynb', 'z.ipynb'])

# %% [markdown]
# Every notebook in `nbs/` is in the book, so no chapter can be forgotten:

# %%
test_eq(sorted(p.name for p in cfg['chapters']), sorted(p.name for p in Path('.').glob('[!_.]*.ipynb')))

# %% [markdown]
# ## Cell directives
#
# nbdev's `#| ...` comments say what a cell is: exported, hidden, or flagged `slow` / `cuda`
# (the flags in `tst_flags`). The book honours them the way nbdev's own docs do.

# %%
#| export
_DIRECTIVE = re.compile(r'^\s*#\s*\|\s*([\w-]+):?\s*(.*?)\s*$')

def directives(cell)->dict:
    "The `#| name args` directives at the top of `cell`, as {name: args}."
    out = {}
    for line in cell.get('source', '').splitlines():
        m = _DIRECTIVE.match(line)
        if m: out[m.group(1)] = m.group(2)
        elif line.strip() and not line.lstrip().startswith('#'): break
    return out


# %%
c = nbformat.v4.new_code_cell('#| slow\n# NBVAL_SKIP\n#| echo: false\nx = 1\n#| not-a-directive')
test_eq(directives(c), {'slow': '', 'echo': 'false'})


# %%
#| export
def skip_flags(root:str|Path)->set[str]:
    "The flags (`tst_flags` of `[tool.nbdev]`) whose cells are skipped when executing."
    cfg = tomllib.loads((Path(root)/'pyproject.toml').read_text(encoding='utf-8'))
    return set(cfg.get('tool', {}).get('nbdev', {}).get('tst_flags', '').split())


# %%
test_eq(skip_flags(find_root()), {'slow', 'cuda'})


# %% [markdown]
# The test suite runs the chapters with nbval, which ignores nbdev's flags; a flagged cell must
# therefore also carry `# NBVAL_SKIP`. This book checks its own chapters for that:

# %%
#| export
def unmarked_flagged_cells(path:str|Path, flags:set[str])->list[int]:
    "Indices of code cells in notebook `path` flagged with one of `flags` but lacking `# NBVAL_SKIP`."
    nb = nbformat.read(path, as_version=4)
    return [i for i,c in enumerate(nb.cells) if c.cell_type=='code' and set(directives(c)) & flags
            and 'NBVAL_SKIP' not in c.source]


# %%
for p in cfg['chapters']: test_eq(unmarked_flagged_cells(p, skip_flags(find_root())), [])

# %% [markdown]
# ## Executing a chapter
#
# A chapter runs top to bottom in a fresh kernel, from its own folder (like nbdev and nbval), with
# flagged cells skipped: they keep the outputs committed with the notebook (a GPU timing, say), so
# the book still shows them.
#
#
# A chapter's last cell exports the library (`nbdev.nbdev_export()`), for a reader editing it in
# Jupyter. The book and the test suite do not run it: it checks nothing, it rewrites the
# package's files while other chapters import them, and it costs seconds per chapter. CI exports
# once, before the tests, and fails when that changes a committed file.

# %%
#| export
from nbclient import NotebookClient

_EXPORT = re.compile(r'(import nbdev\s*[;\n]\s*)?nbdev\.nbdev_export\(\)\s*;?')

def is_export_cell(cell)->bool:
    "True for a code cell that only exports the library (`import nbdev; nbdev.nbdev_export()`, directives and comments aside)."
    code = '\n'.join(l for l in cell.get('source', '').splitlines() if l.strip() and not l.lstrip().startswith('#'))
    return cell.get('cell_type') == 'code' and bool(_EXPORT.fullmatch(code.strip()))

class FlagSkippingClient(NotebookClient):
    "An nbclient executor that leaves code cells flagged with one of `skip`, and the export cell, unexecuted."
    def __init__(self, nb, skip=(), **kw):
        super().__init__(nb, **kw)
        self.skip = set(skip)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type=='code' and (set(directives(cell)) & self.skip or is_export_cell(cell)): return cell
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)


# %%
new = nbformat.v4.new_code_cell
assert is_export_cell(new('#| hide\nimport nbdev; nbdev.nbdev_export()'))
assert is_export_cell(new('import nbdev\nnbdev.nbdev_export()'))
assert not is_export_cell(new('import nbdev; nbdev.nbdev_export(); x = 1'))
assert not is_export_cell(new('print(1)')) and not is_export_cell(nbformat.v4.new_markdown_cell('nbdev.nbdev_export()'))
test_eq([p for p in cfg['chapters'] if not any(is_export_cell(c) for c in nbformat.read(p, as_version=4).cells)
         and any('nbdev_export' in c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == 'code')], [])


# %%
#| export
def execute_chapter(src:str|Path, # the notebook to run
                    dst:str|Path|None=None, # where to write the executed copy (None: don't write)
                    skip=('slow', 'cuda'), # flags whose cells are not executed
                    timeout:int=1800, # seconds allowed per cell
                    nb:nbformat.NotebookNode|None=None, # the content to execute (default: read from `src`), changed in place
                   )->nbformat.NotebookNode:
    "Execute a copy of notebook `src` in a fresh kernel from its folder; `src` itself is not changed."
    src = Path(src).resolve()
    nb = nbformat.read(src, as_version=4) if nb is None else nb
    FlagSkippingClient(nb, skip=skip, timeout=timeout, kernel_name='python3', extra_arguments=['--log-level=ERROR'],
                       resources={'metadata': {'path': str(src.parent)}}).execute()
    if dst: Path(dst).parent.mkdir(parents=True, exist_ok=True); nbformat.write(nb, dst)
    return nb


# %%
with tempfile.TemporaryDirectory() as d:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('import os; print(os.path.basename(os.getcwd()))'),
        nbformat.v4.new_code_cell('#| slow\n# NBVAL_SKIP\nraise RuntimeError("never runs")', outputs=[
            nbformat.v4.new_output('stream', name='stdout', text='kept from an earlier run\n')]),
        nbformat.v4.new_code_cell('6*7'),
        nbformat.v4.new_code_cell('#| hide\nimport nbdev; nbdev.nbdev_export()')])
    nbformat.write(nb, Path(d)/'t.ipynb')
    ran = execute_chapter(Path(d)/'t.ipynb', skip={'slow'})
    test_eq(ran.cells[0].outputs[0].text.strip(), Path(d).name)
    test_eq(ran.cells[1].outputs[0].text, 'kept from an earlier run\n')
    test_eq(ran.cells[2].outputs[0].data['text/plain'], '42')
    test_eq(ran.cells[3].outputs, [])  # the export cell is not run

# %% [markdown]
# ## Executing the book: in parallel, and once per change
#
# `polar-nb book` executes every chapter's CI-scale cells and keeps the stored outputs of the
# `slow` and `cuda` cells; `polar-nb book --full` executes those too. Chapters run side by side,
# one kernel each (`workers`, default the CPU count; one torch thread per kernel when there are
# several), and each executed chapter is kept in a [jupyter-cache](https://jupyter-cache.readthedocs.io)
# folder. A chapter is executed again only when something its outputs depend on has changed: its
# code cells, the mode (`ci` or `full`), or `library_fingerprint` — the package's source, its data
# files (the embedded backbone, the shipped weights), its settings and pinned versions, and the
# `POLAR_*` variables of the environment. Markdown edits need no execution: the cached outputs are
# merged into the current notebook.

# %%
#| export
import datetime, hashlib, os, platform, subprocess, time
from concurrent.futures import ThreadPoolExecutor

def library_fingerprint(root:str|Path)->str:
    "sha256 of what chapter outputs depend on besides their own code: `polar_nb/`, `data/`, settings, pins and `POLAR_*` variables."
    root = Path(root); h = hashlib.sha256()
    files = [*(root/'polar_nb').rglob('*.py'), *(p for p in (root/'data').rglob('*') if p.is_file() and '__pycache__' not in p.parts),
             *(root/n for n in ('settings.ini', 'pyproject.toml', 'constraints.txt') if (root/n).is_file())]
    for p in sorted(files): h.update(p.relative_to(root).as_posix().encode() + b'\0' + p.read_bytes() + b'\0')
    for k,v in sorted(os.environ.items()):
        if k.startswith('POLAR_'): h.update(f'{k}={v}\0'.encode())
    return h.hexdigest()


# %%
with tempfile.TemporaryDirectory() as d:
    (Path(d)/'polar_nb').mkdir(); (Path(d)/'polar_nb'/'a.py').write_text('x = 1')
    f0 = library_fingerprint(d)
    test_eq(library_fingerprint(d), f0)
    (Path(d)/'polar_nb'/'a.py').write_text('x = 2'); f1 = library_fingerprint(d)
    assert f1 != f0
    (Path(d)/'data').mkdir(); (Path(d)/'data'/'w.safetensors').write_bytes(b'\0'); assert library_fingerprint(d) != f1
f0[:12]


# %% [markdown]
# What produced an output: the commit (marked `+changes` when the checkout differs from it), the
# date, the machine in words and the seconds the cell ran (from the timing nbclient records).

# %%
#| export
def machine_summary()->str:
    "The machine in words: system, architecture, CPUs and GPU (if torch sees one)."
    s = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    try:
        import torch
        if torch.cuda.is_available(): s += f", {torch.cuda.get_device_name(0)}"
    except ImportError: pass
    return s

def commit_of(root:str|Path)->str|None:
    "The checkout's short commit, `+changes` when tracked files differ from it; None outside git."
    git = lambda *a: subprocess.run(['git', '-C', str(root), *a], capture_output=True, text=True)
    r = git('rev-parse', '--short=10', 'HEAD')
    if r.returncode: return None
    return r.stdout.strip() + ('+changes' if git('status', '--porcelain', '--untracked-files=no').stdout.strip() else '')

def cell_seconds(cell)->float|None:
    "Seconds a code cell ran, from nbclient's timing metadata (None when not recorded)."
    ex = cell.get('metadata', {}).get('execution', {})
    try: return (datetime.datetime.fromisoformat(ex['shell.execute_reply']) - datetime.datetime.fromisoformat(ex['iopub.execute_input'])).total_seconds()
    except (KeyError, ValueError): return None


# %%
c = nbformat.v4.new_code_cell('1', metadata={'execution': {'iopub.execute_input': '2026-01-01T00:00:00.000Z', 'shell.execute_reply': '2026-01-01T00:01:02.500Z'}})
test_eq(cell_seconds(c), 62.5)
test_eq(cell_seconds(nbformat.v4.new_code_cell('1')), None)
assert commit_of(find_root()) is None or len(commit_of(find_root())) >= 10
machine_summary()

# %% [markdown]
# The cache is jupyter-cache's own, with one change: the key also covers the notebook metadata
# `polar_nb_book` (mode and fingerprint), and no cell metadata (so recording provenance in a cell
# does not count as a change of the chapter).

# %%
#| export
BOOK_KEY = 'polar_nb_book'  # notebook metadata hashed with the code cells: mode and library fingerprint

def book_cache(path:str|Path):
    "A jupyter-cache folder whose keys cover the code cells, the kernel and `nb.metadata[BOOK_KEY]`."
    from jupyter_cache.cache.main import JupyterCacheBase
    class BookCache(JupyterCacheBase):
        def create_hashed_notebook(self, nb, nb_metadata=('kernelspec',), cell_metadata=None):
            return super().create_hashed_notebook(nb, tuple(nb_metadata or ('kernelspec',)) + (BOOK_KEY,), ())
    Path(path).mkdir(parents=True, exist_ok=True)
    return BookCache(str(path))

def _keyed(nb, mode:str, fingerprint:str):
    "A copy of `nb` carrying its cache key's metadata."
    nb = copy.deepcopy(nb); nb.metadata[BOOK_KEY] = dict(mode=mode, library=fingerprint); return nb

def _cached(cache, nb):
    "`nb` with the outputs of its cached execution merged in, or None."
    try: return cache.merge_match_into_notebook(nb, cell_meta=('execution', 'polar_nb'))[1]
    except KeyError: return None


# %% [markdown]
# `flagged(cell, flags)` says whether a cell carries one of the flags; in the `ci` mode the stored
# outputs of flagged cells are always the ones in the notebook now (a cached execution may hold
# older ones). In the `full` mode every code cell's outputs go back into the notebook, and flagged
# cells record their provenance in the cell metadata `polar_nb`, which the rendered page shows.

# %%
#| export
def flagged(cell, flags)->bool:
    "Whether code `cell` carries one of the directives `flags`."
    return cell.cell_type == 'code' and bool(set(directives(cell)) & set(flags))

def _stored_flagged(nb, src, flags):
    "`nb` with the outputs and provenance of its flagged cells taken from `src` (the same notebook)."
    for c,s in zip([c for c in nb.cells if c.cell_type == 'code'], [c for c in src.cells if c.cell_type == 'code']):
        if flagged(s, flags):
            c.outputs = copy.deepcopy(s.outputs)
            if 'polar_nb' in s.metadata: c.metadata['polar_nb'] = copy.deepcopy(s.metadata['polar_nb'])
            else: c.metadata.pop('polar_nb', None)
    return nb

def write_back(path:str|Path, # the chapter notebook to update
               ran, # its full execution
               flags, # the directives whose cells record provenance
               prov:dict, # commit, date and machine of the run
               skip=(), # flags whose cells were not executed (they keep what they hold)
              ):
    "Store the outputs of the full execution `ran` in `path` (flagged cells with `prov` and their seconds), then nbdev-clean it."
    path = Path(path); nb = nbformat.read(path, as_version=4)
    code, done = [c for c in nb.cells if c.cell_type == 'code'], [c for c in ran.cells if c.cell_type == 'code']
    if [c.source for c in code] != [c.source for c in done]: raise RuntimeError(f"{path} changed while it was executed; its outputs were not stored")
    for c,r in zip(code, done):
        if flagged(c, skip): continue
        c.outputs, c.execution_count = copy.deepcopy(r.outputs), None
        if flagged(c, flags): c.metadata['polar_nb'] = dict(prov, seconds=None if (s := cell_seconds(r)) is None else round(s, 1))
    nbformat.write(nb, path)
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    from fastcore.nbio import read_nb, write_nb
    cfg = get_config(path=path.parent); raw = read_nb(path)
    clean_nb(raw, cfg.clear_all, cfg.get('allowed_metadata_keys') or [], [*(cfg.get('allowed_cell_metadata_keys') or []), 'polar_nb'], cfg.clean_ids,
             cfg.get('allowed_out_metadata_keys') or [])
    write_nb(raw, path)


# %% [markdown]
# `execute_book` puts it together: chapters found in the cache are merged, the others executed
# by `workers` kernels at once (one line of progress per chapter), stored in the cache, and in
# the `full` mode written back.

# %%
#| export
def execute_book(paths:list, # chapter notebooks, in reading order
                 full:bool=False, # also execute the flagged (`slow`, `cuda` on a GPU) cells and store the outputs back in the notebooks
                 flags=('slow', 'cuda'), # the flags of `tst_flags`
                 cache:str|Path|None=None, # jupyter-cache folder (None: execute everything, keep nothing)
                 fingerprint:str='', # `library_fingerprint` of the checkout
                 workers:int|None=None, # kernels at once (default: the CPU count)
                 timeout:int=1800, # seconds allowed per cell
                 out:str|Path|None=None, # folder for the executed copies (None: none written)
                 root:str|Path|None=None, # the repository (for the commit in the provenance)
                 progress:bool=True,
                )->list:
    "Every chapter executed (or merged from the cache): the notebooks, in the order of `paths`."
    import torch
    mode = 'full' if full else 'ci'
    skip = {f for f in flags if f == 'cuda' and not torch.cuda.is_available()} if full else set(flags)  # GPU cells need a GPU
    jc = book_cache(cache) if cache else None
    src = [nbformat.read(p, as_version=4) for p in paths]
    keyed = [_keyed(nb, mode, fingerprint) for nb in src]
    done = [(_cached(jc, k) if jc else None) for k in keyed]
    todo = [i for i,d in enumerate(done) if d is None]
    say = lambda m: print(m, flush=True) if progress else None
    for i,d in enumerate(done):
        if d is not None: say(f"[{i+1}/{len(paths)}] {Path(paths[i]).name}: unchanged since its last {mode} execution (cached)")
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    prov = dict(commit=commit_of(root or Path(paths[0]).parent), date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                machine=machine_summary())
    def run(i):
        t0 = time.perf_counter()
        nb = execute_chapter(paths[i], skip=skip, timeout=timeout, nb=copy.deepcopy(keyed[i]))
        say(f"[{i+1}/{len(paths)}] {Path(paths[i]).name}: executed ({mode}) in {time.perf_counter() - t0:.0f} s")
        return nb
    threads = {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    try:
        if workers > 1:
            for k in threads: os.environ.setdefault(k, '1')
        with ThreadPoolExecutor(workers) as ex:
            for i,nb in zip(todo, ex.map(run, todo)):
                if jc:
                    from jupyter_cache.base import CacheBundleIn
                    jc.cache_notebook_bundle(CacheBundleIn(nb, str(paths[i])), check_validity=False, overwrite=True)
                done[i] = nb
                if full: write_back(paths[i], nb, flags, prov, skip)
    finally:
        for k,v in threads.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    out_nbs = []
    for i,nb in enumerate(done):
        nb = copy.deepcopy(nb); nb.metadata.pop(BOOK_KEY, None)
        if not full: nb = _stored_flagged(nb, src[i], flags)
        if out: Path(out).mkdir(parents=True, exist_ok=True); nbformat.write(nb, Path(out)/Path(paths[i]).name)
        out_nbs.append(nb)
    return out_nbs


# %% [markdown]
# Two small chapters, one with a `slow` cell, show each step: the first `ci` execution runs both
# (the slow cell keeps its stored output), the second finds both in the cache, the `full` mode runs
# the slow cell too and stores its output with its provenance, a markdown edit needs no execution,
# and a changed library executes again. Each kernel appends a line to `runs.txt`, so the file
# counts executions.

# %%
with tempfile.TemporaryDirectory() as d:
    d = Path(d); log = d/'runs.txt'
    cell = lambda s, **kw: nbformat.v4.new_code_cell(s, **kw)
    for n in ('a', 'b'):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f'# {n}'),
            cell(f"open({str(log)!r}, 'a').write('{n}\\n'); 6*7"),
            cell('#| slow\n# NBVAL_SKIP\nprint("full run")', outputs=[nbformat.v4.new_output('stream', name='stdout', text='stored\n')])]), d/f'{n}.ipynb')
    paths, runs = [d/'a.ipynb', d/'b.ipynb'], lambda: log.read_text().split() if log.exists() else []
    ex = lambda **kw: execute_book(paths, cache=d/'jc', progress=False, workers=2, **kw)
    ci = ex(fingerprint='lib1')
    test_eq(sorted(runs()), ['a', 'b'])
    test_eq(ci[0].cells[1].outputs[0].data['text/plain'], '42')
    test_eq(ci[0].cells[2].outputs[0].text, 'stored\n')  # the slow cell shows its stored output
    test_eq(ex(fingerprint='lib1')[1].cells[1].outputs[0].data['text/plain'], '42'); test_eq(len(runs()), 2)  # from the cache
    full = ex(fingerprint='lib1', full=True, root=d)
    test_eq(len(runs()), 4)
    stored = nbformat.read(d/'a.ipynb', as_version=4).cells[2]
    test_eq(stored.outputs[0].text, 'full run\n')  # written back to the chapter
    test_eq(set(stored.metadata['polar_nb']), {'commit', 'date', 'machine', 'seconds'})
    ex(fingerprint='lib1', full=True); test_eq(len(runs()), 4)  # --full again: nothing to do
    nb = nbformat.read(d/'b.ipynb', as_version=4); nb.cells[0].source = '# b, retitled'; nbformat.write(nb, d/'b.ipynb')
    again = ex(fingerprint='lib1')
    test_eq(len(runs()), 4)  # a markdown edit: merged from the cache
    test_eq(again[1].cells[0].source, '# b, retitled')
    test_eq(again[0].cells[2].outputs[0].text, 'full run\n')  # the stored output now in the notebook
    ex(fingerprint='lib2'); test_eq(len(runs()), 6)  # the library changed: executed again
stored.metadata['polar_nb']

# %% [markdown]
# ## Rendering a chapter
#
# Before rendering, cells are prepared the way nbdev prepares its docs: `#| hide` cells go,
# directive lines are removed from the code shown, `#| echo: false` hides a cell's code and
# `#| output: false` its outputs.

# %% [markdown]
# Equations are written in TeX between `$…$` or `$$…$$`, as Quarto and Jupyter expect. The page
# must read without fetching MathJax, so they are turned into MathML, which browsers render
# natively; code spans and blocks are left alone.

# %%
#| export
_CODE = re.compile(r'(```.*?```|`[^`\n]*`)', re.S)
_MATH = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)

def tex_to_mathml(md:str)->str:
    "Markdown `md` with its `$…$` / `$$…$$` TeX turned into MathML (code left alone; unparsable TeX kept)."
    from latex2mathml.converter import convert
    def conv(m):
        tex, display = (m.group(1), 'block') if m.group(1) is not None else (m.group(2), 'inline')
        try: return convert(tex.strip(), display=display)
        except Exception: return m.group(0)
    return ''.join(p if i%2 else _MATH.sub(conv, p) for i,p in enumerate(_CODE.split(md)))


# %%
out = tex_to_mathml('rank-1 $\\Delta W = B A$, cost `$HOME` and $5 or $6.\n$$\\lambda \\cdot \\text{mean}(B^2)$$')
assert '<math' in out and 'display="block"' in out and '`$HOME`' in out and '$5 or $6' in out
test_eq(out.count('<math'), 2)
out


# %% [markdown]
# Chapters link to each other by notebook name (`[Settings](01_config.ipynb)`), which works in
# Jupyter and in Quarto; in the rendered book such links point to the chapter's page, in markdown
# cells and in the HTML or Markdown a cell displays (a table that links to chapters).

# %%
#| export
def page_name(path:Path)->str:
    "The HTML file name of a chapter notebook."
    return 'index.html' if path.stem=='index' else f'{path.stem}.html'


# %%
#| export
_NB_LINK = re.compile(r'(\]\(|href=")(?![a-z]+://)([^)"#\s]*?)([\w.-]+)\.ipynb(#[^)"\s]*)?(?=[)"])')

def nb_links_to_html(md:str)->str:
    "Markdown `md` with relative links to notebooks turned into links to their pages."
    return _NB_LINK.sub(lambda m: f'{m[1]}{m[2]}{page_name(Path(m[3]))}{m[4] or ""}', md)


# %%
test_eq(nb_links_to_html('see [Metrics](05_metrics.ipynb#ties), [home](index.ipynb) and [x](https://a.b/c.ipynb)'),
        'see [Metrics](05_metrics.html#ties), [home](index.html) and [x](https://a.b/c.ipynb)')


# %%
#| export
def provenance_note(cell, flags=('slow', 'cuda'))->str|None:
    "The line shown above a flagged cell: what produced its stored output (None for other cells)."
    f = [x for x in directives(cell) if x in flags] if cell.cell_type == 'code' else []
    if not f: return None
    what = f"a <code>{f[0]}</code> cell, run by <code>polar-nb book --full</code>"
    if not cell.get('outputs'): return f'<div class="book-provenance">No stored output: {what}.</div>'
    p = cell.metadata.get('polar_nb')
    if not p: return f'<div class="book-provenance">Stored output of {what}; what produced it is not recorded.</div>'
    s = p.get('seconds')
    parts = [f"commit <code>{html.escape(str(p.get('commit') or 'not recorded'))}</code>", html.escape(str(p.get('date') or 'date not recorded')),
             html.escape(str(p.get('machine') or 'machine not recorded')), 'seconds not recorded' if s is None else f"{s:,.0f} s"]
    return f'<div class="book-provenance">Stored output of {what}: {", ".join(parts)}.</div>'

def for_reading(nb, flags=('slow', 'cuda'))->nbformat.NotebookNode:
    "A copy of `nb` prepared for reading: hidden cells removed, directives stripped, flagged cells labelled, tags for nbconvert."
    nb = copy.deepcopy(nb)
    cells = []
    for c in nb.cells:
        d = directives(c) if c.cell_type=='code' else {}
        if 'hide' in d or d.get('include')=='false': continue
        if (note := provenance_note(c, flags)): cells.append(nbformat.v4.new_markdown_cell(note))
        if c.cell_type=='code':
            c.source = '\n'.join(l for l in c.source.splitlines()
                                 if not _DIRECTIVE.match(l) and not l.strip().startswith('# NBVAL_')).strip('\n')
            tags = c.metadata.setdefault('tags', [])
            if d.get('echo')=='false' or not c.source: tags.append('remove_input')
            if d.get('output')=='false': tags.append('remove_output')
            for o in c.get('outputs', []):  # a table's links to chapters, as in markdown
                for k in ('text/html', 'text/markdown'):
                    if k in o.get('data', {}): o['data'][k] = nb_links_to_html(o['data'][k])
        else: c.source = nb_links_to_html(tex_to_mathml(c.source))
        cells.append(c)
    nb.cells = cells
    return nb


# %%
c = [nbformat.v4.new_code_cell('#| hide\nsecret = 1'), nbformat.v4.new_code_cell('#| export\ndef f(): pass'),
     nbformat.v4.new_code_cell('#| echo: false\nplot()'), nbformat.v4.new_markdown_cell('# Title')]
r = for_reading(nbformat.v4.new_notebook(cells=c)).cells
test_eq([x.source for x in r], ['def f(): pass', 'plot()', '# Title'])
test_eq(r[1].metadata.tags, ['remove_input'])
c = nbformat.v4.new_code_cell('t', outputs=[nbformat.v4.new_output('execute_result', {'text/html': '<a href="21_main_results.ipynb">21</a>'})])
test_eq(for_reading(nbformat.v4.new_notebook(cells=[c])).cells[0].outputs[0].data['text/html'], '<a href="21_main_results.html">21</a>')

# %% [markdown]
# A `slow` or `cuda` cell is labelled with what produced its stored output:

# %%
out = [nbformat.v4.new_output('stream', name='stdout', text='done\n')]
c = [nbformat.v4.new_code_cell('#| slow\nrun()', outputs=out, metadata={'polar_nb': dict(commit='0123456789', date='2026-12-07 10:00 UTC', machine='Linux x86_64, 2 CPUs', seconds=312.4)}),
     nbformat.v4.new_code_cell('#| slow\nrun()', outputs=out), nbformat.v4.new_code_cell('#| cuda\nrun()')]
r = for_reading(nbformat.v4.new_notebook(cells=c)).cells
test_eq([x.cell_type for x in r], ['markdown', 'code'] * 3)
assert 'commit <code>0123456789</code>, 2026-12-07 10:00 UTC, Linux x86_64, 2 CPUs, 312 s' in r[0].source
assert 'not recorded' in r[2].source and 'No stored output' in r[4].source
r[0].source


# %%
#| export
def chapter_title(nb)->str:
    "The first H1 of the notebook's markdown, or its first line."
    for c in nb.cells:
        if c.cell_type=='markdown':
            m = re.search(r'^#\s+(.+)$', c.source, flags=re.M)
            if m: return m.group(1).strip()
    return 'Untitled'


# %%
test_eq(chapter_title(nbformat.read('index.ipynb', as_version=4)), 'polar-nb')

# %% [markdown]
# The page template extends nbconvert's JupyterLab template: no script is loaded from a CDN
# (RequireJS and MathJax are dropped; equations stay readable as TeX), and a sidebar lists every
# chapter in order under the title of its part, with the current one highlighted. Chapters are
# numbered across parts, as Quarto numbers them; appendices are lettered.
# Code cells are shown as pygments highlights them, without the HTML sanitiser the lab template runs
# on them: the chapters are this project's own text, and the sanitiser took most of the rendering time.

# %%
#| export
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_css -%}<style>
nav.book-sidebar {position: fixed; top: 0; left: 0; bottom: 0; width: 250px; overflow-y: auto;
  padding: 1.2em 1em; background: #f7f7f9; border-right: 1px solid #ddd; font-family: system-ui, sans-serif; font-size: 14px}
nav.book-sidebar .book-title {display: block; font-weight: 700; font-size: 17px; margin-bottom: .8em; color: #222; text-decoration: none}
nav.book-sidebar .book-part-title {font-size: 12px; font-weight: 700; text-transform: uppercase; letter-spacing: .04em;
  color: #555; margin: 1.1em 0 .3em 0}
nav.book-sidebar ol {padding-left: 1.8em; margin: 0} nav.book-sidebar li {margin: .35em 0}
nav.book-sidebar a {color: #1a5fb4; text-decoration: none} nav.book-sidebar li.active > a {font-weight: 700; color: #000}
body.jp-Notebook > main {margin-left: 270px; max-width: 1100px}
.book-pager {display: flex; justify-content: space-between; margin: 2em 0 3em 0; font-family: system-ui, sans-serif}
.book-provenance {font: 12px system-ui, sans-serif; color: #555; background: #f3f3f6; border-left: 3px solid #b8b8c8; padding: .3em .7em; margin: .8em 0 .2em 0}
</style>{%- endblock html_head_css -%}
{%- block input -%}
<div class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor" data-type="inline"><div class="cm-editor cm-s-jupyter">
{{ cell.source | highlight_code(metadata=cell.metadata) }}
</div></div>
{%- endblock input -%}
{%- block body_header -%}{{ super() }}{{ resources.book_nav }}{%- endblock body_header -%}
{%- block body_footer -%}{{ resources.book_pager }}{{ super() }}{%- endblock body_footer -%}
"""


# %%
#| export
def _items(pages, idx, current)->str:
    "The `<li>` links of the pages `idx`, `current` highlighted."
    return ''.join(f'<li class="{"active" if i==current else ""}"><a href="{html.escape(pages[i][0])}">{html.escape(pages[i][1])}</a></li>'
                   for i in idx)

def _nav(title:str, # the book's title
         pages:list[tuple[str,str]], # (href, chapter title) of every chapter, in order
         current:int, # the index of the page shown
         parts:list[tuple]|None=None, # (part title or None, [page indices]) covering `pages` in order; None: one list
        )->str:
    "The sidebar: the book title, then each part's title over its chapters, `current` highlighted."
    parts = parts or [(None, list(range(len(pages))))]
    body, n = '', 1
    for t, idx in parts:
        appendix = t == 'Appendices'
        ol = f'<ol type="A">' if appendix else f'<ol start="{n}">'
        head = f'<h2 class="book-part-title">{html.escape(t)}</h2>' if t else ''
        body += f'<div class="book-part">{head}{ol}{_items(pages, idx, current)}</ol></div>'
        if not appendix: n += len(idx)
    return f'<nav class="book-sidebar"><a class="book-title" href="index.html">{html.escape(title)}</a>{body}</nav>'

def _pager(pages, current)->str:
    "Links to the previous and next chapters."
    link = lambda i, arrow: (f'<a href="{html.escape(pages[i][0])}">{arrow}</a>' if 0 <= i < len(pages) else '<span></span>')
    prev = link(current-1, '&larr; ' + html.escape(pages[current-1][1]) if current > 0 else '')
    nxt = link(current+1, html.escape(pages[current+1][1]) + ' &rarr;' if current+1 < len(pages) else '')
    return f'<div class="book-pager">{prev}{nxt}</div>'


# %%
test_eq(_nav('B', [('index.html', 'Home'), ('a.html', 'A')], 1).count('<li'), 2)
assert 'class="active"><a href="a.html"' in _nav('B', [('index.html', 'Home'), ('a.html', 'A')], 1)
assert 'A &rarr;' in _pager([('index.html', 'Home'), ('a.html', 'A')], 0)

# %% [markdown]
# With parts, each part's title heads its chapters; numbering runs on across parts, and the
# appendices are lettered:

# %%
toy_pages = [('index.html', 'Home'), ('a.html', 'A'), ('b.html', 'B'), ('z.html', 'Z')]
nav = _nav('B', toy_pages, 2, [(None, [0]), ('Part one', [1, 2]), ('Appendices', [3])])
test_eq(re.findall(r'<h2 class="book-part-title">([^<]*)</h2>', nav), ['Part one', 'Appendices'])
test_eq(re.findall(r'<ol[^>]*>', nav), ['<ol start="1">', '<ol start="2">', '<ol type="A">'])
assert nav.index('Part one') < nav.index('href="a.html"') < nav.index('Appendices') < nav.index('href="z.html"')
assert 'class="active"><a href="b.html"' in nav
nav


# %%
#| export
def _book_exporter():
    "nbconvert's HTML exporter without its last pass, which parses the whole page again with BeautifulSoup to add alt texts and tab stops (half the rendering time)."
    from nbconvert import HTMLExporter
    from nbconvert.exporters.html import WidgetsDataTypeFilter
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    class BookExporter(HTMLExporter):
        def from_notebook_node(self, nb, resources=None, **kw):
            lang = nb.metadata.get('language_info', {})
            self.register_filter('highlight_code', Highlight2HTML(pygments_lexer=lang.get('pygments_lexer', lang.get('name')), parent=self))
            resources = self._init_resources(resources)
            self.register_filter('filter_data_type', WidgetsDataTypeFilter(notebook_metadata=self._nb_metadata, parent=self, resources=resources))
            return TemplateExporter.from_notebook_node(self, nb, resources, **kw)
    return BookExporter


# %%
#| export
def render_chapter(nb, # an (executed) notebook
                   book_title:str, # shown at the top of the sidebar
                   pages:list[tuple[str,str]], # (href, title) of every chapter, in order
                   current:int, # index of this chapter in `pages`
                   parts:list[tuple]|None=None, # (part title or None, [indices into `pages`]); None: no parts
                  )->str:
    "One chapter as a self-contained HTML page with the book's sidebar."
    from jinja2 import DictLoader
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {'remove_output'}
    c.HTMLExporter.exclude_input_prompt = c.HTMLExporter.exclude_output_prompt = True
    ex = _book_exporter()(config=c, template_name='lab', template_file='polar_book.html.j2',
                          extra_loaders=[DictLoader({'polar_book.html.j2': _TEMPLATE})])
    res = {'book_nav': _nav(book_title, pages, current, parts), 'book_pager': _pager(pages, current),
           'metadata': {'name': f'{pages[current][1]} – {book_title}'}}
    body, _ = ex.from_notebook_node(for_reading(nb), resources=res)
    return body


# %%
page = render_chapter(nbformat.read('01_config.ipynb', as_version=4), 'The book', [('index.html', 'Home'), ('01_config.html', 'Settings')], 1)
assert '<title>Settings – The book</title>' in page and 'class="book-sidebar"' in page
assert 'https://cdn' not in page and '<script src="http' not in page  # nothing fetched to read it
assert 'default_exp' not in page and 'NBVAL_SKIP' not in page  # directives are not shown
len(page)


# %% [markdown]
# ## How the tests are split, and how to run each part
#
# `bash scripts/test.sh` (the README's test command, which CI runs after checking that
# `nbdev-export` and `nbdev-clean` change nothing) runs two parts in one pytest session, on two
# processes (pytest-xdist, each file whole on one process, one torch thread each), and ends with the
# 25 slowest tests and cells:
#
# - `tests/`: the library's checks that need more than a chapter shows: bad input, kill-and-resume,
#   Ray against local, the real file formats, the browser test, and one end-to-end run of the real
#   ViT-B/32 architecture (random weights) through training, saving, loading and search
#   (`tests/test_library.py::test_vit_b_32_end_to_end`).
# - `nbs/`: every chapter's CI-scale cells, with nbval. `slow` and `cuda` cells carry
#   `# NBVAL_SKIP` and keep their stored outputs; the export cell at the end of a chapter is
#   skipped (`is_export_cell`). The result chapters read their five-run tables of world 0 from the
#   [results store](15_results.ipynb) and run run 0 again, which must equal the stored numbers.
#
# Every chapter and test of a run shares one cache folder (`.cache/polar_nb`, or `POLAR_CACHE_DIR`),
# keyed by content. One part alone: `.venv/bin/python -m pytest tests`; one chapter:
# `.venv/bin/python -m pytest nbs/21_main_results.ipynb --nbval-lax --nbval-current-env`; one
# process: `TEST_WORKERS=1 bash scripts/test.sh`. The full runs are not part of the suite:
# `polar-nb book --full` executes the `slow` cells, and `measure_worlds` the store's experiments.

# %% [markdown]
# ## The whole book

# %%
#| export
def _page_parts(cfg, pages)->list[tuple]:
    "`cfg['parts']` as (title, [page indices]); a part named by its own page takes that page's title."
    idx = {p: i for i,p in enumerate(cfg['chapters'])}
    named = {p.name: pages[i][1] for p,i in idx.items()}
    return [(named.get(Path(t).name, t) if t else t, [idx[p] for p in ps]) for t, ps in cfg['parts']]


def render_book(root:str|Path|None=None, # the repository (default: found from the current folder)
                out:str|Path='_site', # output folder, relative to `root`
                execute:bool=True, # execute the chapters first (else render the outputs stored in the notebooks)
                full:bool=False, # also execute the `slow` (and, on a GPU, `cuda`) cells and store their outputs in the notebooks
                workers:int|None=None, # chapters executed at once (default: the CPU count)
                cache:bool=True, # keep executions in `<cache_dir>/book` and skip chapters unchanged since
                timeout:int=1800, # seconds allowed per cell
                progress:bool=True, # print one line per chapter
               )->Path:
    "Execute (optionally) and render every chapter of `_quarto.yml` to `out`; returns the index page."
    root = find_root(root); cfg = book_config(root); out = (root/out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if execute:
        from polar_nb.config import get_settings
        jc = (get_settings().cache_dir/'book') if cache else None
        nbs = execute_book(cfg['chapters'], full=full, flags=tuple(skip_flags(root)), cache=jc, fingerprint=library_fingerprint(root),
                           workers=workers, timeout=timeout, out=out/'notebooks', root=root, progress=progress)
    else: nbs = [nbformat.read(p, as_version=4) for p in cfg['chapters']]
    pages = [(page_name(p), chapter_title(nb)) for p,nb in zip(cfg['chapters'], nbs)]
    parts = _page_parts(cfg, pages)
    for i,nb in enumerate(nbs): (out/pages[i][0]).write_text(render_chapter(nb, cfg['title'], pages, i, parts), encoding='utf-8')
    return out/'index.html'


# %% [markdown]
# Rendering this book from the outputs stored in its notebooks takes a few seconds; `polar-nb book`
# executes every chapter first.

# %%
with tempfile.TemporaryDirectory() as d:
    index = render_book(out=d, execute=False, progress=False)
    pages = sorted(p.name for p in Path(d).glob('*.html'))
    test_eq(len(pages), len(cfg['chapters']))
    home = index.read_text()
    for p in pages: assert f'href="{p}"' in home
    heads = [html.unescape(t) for t in re.findall(r'<h2 class="book-part-title">([^<]*)</h2>', home)]
    test_eq(heads, [t for t, _ in cfg['parts'] if t])  # the parts head the sidebar
    assert 'data:image/png;base64' in home  # the home page's figure is embedded
pages

# %%
#| hide
import nbdev; nbdev.nbdev_export()
