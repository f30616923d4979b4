# %% [markdown]
# # The paper map
#
# > Every table and figure of POLAR's supplement and every element of the CAP poster that this book reproduces: the chapter and function that compute it, our number beside the paper's, and a verdict, read from the chapters' stored results.

# %% [markdown]
# The result chapters ([Main results](21_main_results.ipynb) to [Timing](27_timing.ipynb)) each set
# their measurements beside the paper's numbers. This chapter gathers them into one map. Nothing
# here is typed in or recomputed: our numbers are read from the outputs the result chapters store
# (their full-size runs are slow cells, run once; the notebooks keep what they printed), and the
# paper's come from [The paper's numbers](20_paper.ipynb). What is written here is only *where* each
# number is: the chapter, the cell, the row and column of the table it displays.
#
# A result cell is named by a comment line among its first lines, `# paper-map: tab10`; the map
# finds the cell by that name, reads the table it displayed (pandas' HTML, with a table reader built
# on the standard library's `html.parser`) or the text it printed, and picks the number out.
#
# **Verdicts.** The book's default runs measure `world-tiny` on the embedded worlds, a synthetic
# stand-in for ConCon-Chi and DeepFashion2, so their absolute numbers are not the paper's and cannot
# agree or differ with them: such numbers are *not reproducible here*. A number is compared with the
# paper's only when it is measured as the paper measured it (the paper's backbone with pretrained
# weights, hence the `paper` profile on the real benchmarks; for timings, the paper's GPU, one V100);
# it *agrees* when it lies within twice the combined spread of the two numbers, or within `TOL` = 1
# percentage point (10 % for milliseconds) when that is larger, and *differs* otherwise. What the
# embedded world can test is the paper's *direction*: which method or setting comes out ahead. Each
# element lists the comparisons the paper makes with its numbers ("POLAR ahead of AvgIm+Text on
# context mRR"), each checked on the paper's numbers and on ours: the direction *agrees* when every
# comparison comes out as in the paper, and *differs* when one does not.

# %%
#| default_exp papermap

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail

# %%
#| export
import functools, html, importlib, math, re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
import nbformat, numpy as np, pandas as pd
from polar_nb.clip import data_dir
from polar_nb.paper import paper_table, paper_value, supplement_file, _matches


# %% [markdown]
# ## Reading a stored table
#
# Pandas displays a DataFrame as an HTML `<table>`: the column labels in `<thead>` (one row per
# level of a MultiIndex, a label spanning its columns with `colspan`), then, when the index has
# names, a row holding them; in `<tbody>` the index labels are `<th>` cells (spanning their rows
# with `rowspan`) and the values `<td>` cells. The reader collects the cells of each table, repeats
# every spanning cell into each position it covers, and rebuilds the frame with the same labels;
# every value is the text shown.

# %%
#| export
class _TableParser(HTMLParser):
    "The cells of every `<table>` of an HTML text: per table, its rows as (section, [(tag, text, colspan, rowspan)])."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self._cell, self._section = [], None, 'tbody'
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'table': self.tables.append([]); self._section = 'tbody'
        elif not self.tables: return
        elif tag in ('thead', 'tbody'): self._section = tag
        elif tag == 'tr': self.tables[-1].append((self._section, []))
        elif tag in ('th', 'td') and self.tables[-1]: self._cell = [tag, '', int(a.get('colspan') or 1), int(a.get('rowspan') or 1)]
        elif tag == 'br' and self._cell: self._cell[1] += ' '
    def handle_endtag(self, tag):
        if tag in ('th', 'td') and self._cell:
            self._cell[1] = ' '.join(self._cell[1].split())
            self.tables[-1][-1][1].append(tuple(self._cell)); self._cell = None
        elif tag in ('thead', 'tbody'): self._section = 'tbody'
    def handle_data(self, data):
        if self._cell: self._cell[1] += data


# %%
#| export
def _grid(rows:list)->list[list[tuple]]:
    "Rows of (tag, text, colspan, rowspan) cells as rows of (tag, text), each spanning cell repeated where it spans."
    out, pending = [], {}  # column -> (rows still covered, cell)
    for cells in rows:
        row, j, it = [], 0, iter(cells)
        while True:
            if j in pending:
                n, c = pending.pop(j); row.append(c)
                if n > 1: pending[j] = (n-1, c)
                j += 1; continue
            c = next(it, None)
            if c is None: break
            tag, text, cs, rs = c
            for k in range(cs):
                row.append((tag, text))
                if rs > 1: pending[j+k] = (rs-1, (tag, text))
            j += cs
        out.append(row)
    return out


# %%
test_eq(_grid([[('th', 'a', 1, 2), ('th', 'b', 2, 1)], [('td', 'c', 1, 1), ('td', 'd', 1, 1)]]),
        [[('th', 'a'), ('th', 'b'), ('th', 'b')], [('th', 'a'), ('td', 'c'), ('td', 'd')]])


# %%
#| export
def _labels(rows:list[tuple], names:list[str]):
    "An Index (one level) or MultiIndex of `rows` (tuples of labels), with `names` ('' is no name)."
    if rows and len(rows[0]) > 1: return pd.MultiIndex.from_tuples(rows, names=[n or None for n in names])
    return pd.Index([r[0] for r in rows], name=(names[0] or None) if names else None)

def html_frame(text:str, # HTML holding at least one `<table>` (a DataFrame's `text/html`)
               i:int=0, # which table of the text
              )->pd.DataFrame:
    "The `i`-th table of `text` as a DataFrame of strings, with its column and index labels (levels included)."
    p = _TableParser(); p.feed(text); p.close()
    if len(p.tables) <= i: raise ValueError(f"no table number {i} in the HTML ({len(p.tables)} found)")
    head = _grid([c for s, c in p.tables[i] if s == 'thead'])
    body = _grid([c for s, c in p.tables[i] if s == 'tbody'])
    n = next((k for k, (tag, _) in enumerate(body[0]) if tag == 'td'), len(body[0])) if body else 0  # index levels
    names = [''] * n
    if head and n and all(t == '' for _, t in head[-1][n:]) and any(t for _, t in head[-1][:n]):
        names = [t for _, t in head.pop()[:n]]  # the row of index names
    width = max([len(r) for r in head + body], default=0)
    cols = [tuple(h[j][1] if j < len(h) else '' for h in head) for j in range(n, width)]
    columns = pd.MultiIndex.from_tuples(cols) if len(head) > 1 else pd.Index([c[0] if c else '' for c in cols])
    data = [[t for _, t in r[n:]] + [''] * (width - len(r)) for r in body]
    index = _labels([tuple(t for _, t in r[:n]) for r in body], names) if n else None
    return pd.DataFrame(data, index=index, columns=columns)


# %% [markdown]
# A frame with two levels of column labels and a named, two-level index comes back as it was:

# %%
toy = pd.DataFrame([['34.82 ± 0.52', '44.88 ± 1.17', '59.26'], ['18.80 ± 0.40', 'NaN', '-'], ['1 < 2 & 3', '', 'x']],
                   index=pd.MultiIndex.from_tuples([('ViT-B/32', 'Ours'), ('ViT-B/32', 'AvgIm + Text'), ('ViT-L/14', 'Ours')], names=['backbone', 'method']),
                   columns=pd.MultiIndex.from_tuples([('context', 'mrr'), ('context', 'r@5'), ('concept-only', 'mrr')]))
back = html_frame(toy._repr_html_())
test_eq(back.equals(toy), True)
test_eq(back.index.names, ['backbone', 'method'])
flat = pd.DataFrame({'name': ['rank 1', 'rank 2'], 'our λ': ['0.0', '0.1']})
test_eq(html_frame(flat.to_html()).equals(flat.set_axis(['0', '1'])), True)  # a RangeIndex comes back as its labels
test_fail(lambda: html_frame('<p>no table</p>'), contains='no table number 0')
back

# %% [markdown]
# The numbers in those cells are written as the chapters write them: a value, or "value ± spread";
# "NaN", "-" and an empty cell are no number.

# %%
#| export
_NUMBER = re.compile(r'^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:±\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$')
_NONE = {'', '-', 'nan', 'none', '<na>', 'nat'}

def number(text:str)->tuple[float, float]:
    "The (value, spread) a table cell shows: '34.82 ± 0.52', '59.26' (spread NaN) or no number (both NaN)."
    if str(text).strip().lower() in _NONE: return math.nan, math.nan
    m = _NUMBER.match(str(text))
    if not m: raise ValueError(f"{text!r} is not a number")
    return float(m.group(1)), float(m.group(2)) if m.group(2) else math.nan


# %%
test_eq(number('34.82 ± 0.52'), (34.82, 0.52))
test_eq(number(' 1940.3 ')[0], 1940.3)
assert math.isnan(number('59.26')[1]) and all(math.isnan(x) for x in number('NaN') + number('-'))
test_eq(number('2.1e-07')[0], 2.1e-07)
test_fail(lambda: number('POLAR'), contains="'POLAR' is not a number")


# %% [markdown]
# A Series has no HTML display; its text is one "label   value" line per entry:

# %%
#| export
def plain_series(text:str)->dict[str, str]:
    "The entries of a Series' `text/plain` display, {label: value}."
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(('dtype:', 'Name:', 'Length:')): continue
        k, _, v = line.strip().partition('  ')
        out[k.strip()] = v.strip()
    return out


# %%
test_eq(plain_series('device          cpu\ncpu        AMD EPYC\nthreads           2\ndtype: object'),
        {'device': 'cpu', 'cpu': 'AMD EPYC', 'threads': '2'})

# %% [markdown]
# ## Marked cells and what they stored

# %%
#| export
_MARKER = re.compile(r'^#\s*paper-map:\s*(\S+)\s*$')

def cell_markers(cell)->list[str]:
    "The names a code cell is marked with: its `# paper-map: NAME` lines among the comment lines it opens with."
    out = []
    for line in cell.get('source', '').splitlines():
        s = line.strip()
        if m := _MARKER.match(s): out.append(m.group(1))
        elif s and not s.startswith('#'): break
    return out

def marked_cells(nb)->dict:
    "The code cells of notebook `nb` marked for the map, {name: cell}; a name used twice is an error."
    out = {}
    for c in nb.cells:
        if c.cell_type != 'code': continue
        for name in cell_markers(c):
            if name in out: raise ValueError(f"two cells are marked '# paper-map: {name}'")
            out[name] = c
    return out


# %%
c = nbformat.v4.new_code_cell('#| slow\n# NBVAL_SKIP\n# paper-map: tab10\nt = run()\n# paper-map: not-a-marker')
test_eq(cell_markers(c), ['tab10'])
nb = nbformat.v4.new_notebook(cells=[c, nbformat.v4.new_code_cell('# paper-map: tab9\nx = 1'), nbformat.v4.new_markdown_cell('# paper-map: md')])
test_eq(list(marked_cells(nb)), ['tab10', 'tab9'])
test_fail(lambda: marked_cells(nbformat.v4.new_notebook(cells=[c, nbformat.v4.new_code_cell(c.source)])), contains="two cells are marked '# paper-map: tab10'")

# %%
#| export
NBS = data_dir().parent/'nbs'  # the chapters

@functools.lru_cache(maxsize=64)
def _read(path:str, mtime:int)->nbformat.NotebookNode: return nbformat.read(path, as_version=4)

def notebook(chapter:str, # a chapter's name, e.g. '21_main_results'
             nbs:str|Path|None=None, # the folder of the notebooks (default: `NBS`)
            )->nbformat.NotebookNode:
    "The stored notebook of `chapter` (read once while it is unchanged)."
    p = Path(nbs or NBS)/f'{chapter}.ipynb'
    if not p.is_file(): raise LookupError(f"no chapter {p}")
    return _read(str(p), p.stat().st_mtime_ns)

def find_cell(nb, name:str, # the marker's name
              source:str='', # a regex: when no cell is marked `name`, the first code cell whose source it matches
             ):
    "The cell of `nb` marked `name` (or matched by `source`), None if there is none."
    if (c := marked_cells(nb).get(name)) is not None: return c
    if source: return next((c for c in nb.cells if c.cell_type == 'code' and re.search(source, c.source)), None)


# %%
test_eq(find_cell(nb, 'tab9').source, '# paper-map: tab9\nx = 1')
test_eq(find_cell(nb, 'tab11', source=r'x = \d'), find_cell(nb, 'tab9'))
test_eq(find_cell(nb, 'tab11'), None)


# %% [markdown]
# A cell's result is its last displayed table; what it printed is its text.

# %%
#| export
def stored_frame(cell)->pd.DataFrame:
    "The last table `cell` displayed (its stored `text/html`), as `html_frame` reads it."
    tables = [o['data']['text/html'] for o in cell.get('outputs', [])
              if o.get('output_type') in ('execute_result', 'display_data') and '<table' in o.get('data', {}).get('text/html', '')]
    if not tables: raise LookupError('the cell has no stored table')
    return html_frame(''.join(tables[-1]))

def stored_text(cell)->str:
    "What `cell` printed (its stored stdout) and the text of its last plain result."
    outs = cell.get('outputs', [])
    text = ''.join(o.get('text', '') for o in outs if o.get('output_type') == 'stream' and o.get('name') == 'stdout')
    plain = [o['data']['text/plain'] for o in outs if o.get('output_type') == 'execute_result' and 'text/plain' in o.get('data', {})]
    return text + (''.join(plain[-1]) if plain else '')


# %%
c = nbformat.v4.new_code_cell('# paper-map: t\nprint(...); df', outputs=[
    nbformat.v4.new_output('stream', name='stdout', text='5 runs in 1 s\n'),
    nbformat.v4.new_output('execute_result', {'text/html': toy._repr_html_(), 'text/plain': 'the frame'})])
test_eq(stored_frame(c).equals(toy), True)
test_eq(stored_text(c), '5 runs in 1 s\nthe frame')
test_fail(lambda: stored_frame(nbformat.v4.new_code_cell('1')), contains='no stored table')


# %% [markdown]
# ## One of our numbers
#
# `Ours` says where one of our numbers is stored. The table is read flat: index levels become
# columns (named as pandas' `reset_index` names them: the index name, or `index` / `level_0`,
# `level_1` … when it has none) and column labels of several levels are joined with " / ". `row`
# picks the row by the text of some of those columns and `col` the column, each by its exact text or
# by a regular expression that matches all of it. `text`, instead, is a regular expression whose
# first group is the number in what the cell printed.

# %%
#| export
def flat_frame(df:pd.DataFrame)->pd.DataFrame:
    "`df` with its index levels as columns and every column label a string (levels joined by ' / ')."
    t = df.reset_index()
    t.columns = [' / '.join(str(x) for x in (c if isinstance(c, tuple) else (c,)) if str(x) != '') for c in t.columns]
    return t

def _is(text, pattern:str)->bool:
    "Whether `text` is `pattern` or is matched whole by it as a regular expression."
    text = str(text)
    if text == pattern: return True
    try: return re.fullmatch(pattern, text) is not None
    except re.error: return False


# %%
f = flat_frame(toy)
test_eq(list(f.columns), ['backbone', 'method', 'context / mrr', 'context / r@5', 'concept-only / mrr'])
test_eq(list(flat_frame(toy.reset_index(drop=True)).columns[:1]), ['index'])
assert _is('POLAR (λ = 0, validation)', r'POLAR \(λ = [^,]+, validation\)') and _is('a+b', 'a+b') and not _is('ab', 'a')


# %%
#| export
@dataclass
class Ours:
    "Where one of our numbers is stored: a chapter, its cell marked `cell`, and the row and column of the table it shows."
    chapter:str # the chapter's name, e.g. '21_main_results'
    cell:str # the cell's marker name, e.g. 'tab10'
    row:dict=field(default_factory=dict) # {column of the flat table: its text or a regex}; empty: every row
    col:str='' # the column of the flat table (text or regex)
    scale:float=1.0 # multiplies value and spread (fractions to percent: 100)
    text:str='' # instead of a table: a regex on what the cell printed, its group 1 the number
    mean:bool=False # several rows match: their mean (else that is an error)
    source:str='' # no cell is marked `cell`: the first cell whose source this regex matches

    def where(self)->str: return f"{self.chapter}, cell '{self.cell}'"


# %%
#| export
def read_ours(o:Ours, nbs=None)->tuple[float, float]:
    "Our (value, spread) that `o` points to, read from the stored outputs; a LookupError says what is missing."
    cell = find_cell(notebook(o.chapter, nbs), o.cell, o.source)
    if cell is None: raise LookupError(f"no cell marked '# paper-map: {o.cell}' in {o.chapter}")
    if o.text:
        m = re.search(o.text, stored_text(cell))
        if not m: raise LookupError(f"{o.where()} printed nothing matching {o.text!r}")
        v, s = number(m.group(1))
    else:
        t = flat_frame(stored_frame(cell))
        cols = [c for c in t.columns if _is(c, o.col)]
        if len(cols) != 1: raise LookupError(f"{o.where()}: {len(cols)} columns match {o.col!r}; the table has {list(t.columns)}")
        for k, want in o.row.items():
            if k not in t.columns: raise LookupError(f"{o.where()}: no column {k!r} to pick rows by; the table has {list(t.columns)}")
            t = t[t[k].map(lambda x: _is(x, want))]
        if len(t) == 0: raise LookupError(f"{o.where()}: no row with {o.row}")
        if len(t) > 1 and not o.mean: raise LookupError(f"{o.where()}: {len(t)} rows with {o.row}")
        vs = np.array([number(x) for x in t[cols[0]]], dtype=float)
        v, s = (float(np.nanmean(vs[:, 0])), math.nan) if o.mean else tuple(vs[0])
    return v * o.scale, s * o.scale


# %% [markdown]
# On a notebook written here, with a marked cell that displayed a table and one that printed:

# %%
import tempfile
tmp = Path(tempfile.mkdtemp())
nbformat.write(nbformat.v4.new_notebook(cells=[c, nbformat.v4.new_code_cell('# paper-map: said\nprint(x)', outputs=[
    nbformat.v4.new_output('stream', name='stdout', text='closest pair: cosine 0.899\n')])]), tmp/'toy.ipynb')
test_eq(read_ours(Ours('toy', 't', {'method': 'AvgIm + Text'}, 'context / mrr'), tmp), (18.8, 0.4))
test_eq(read_ours(Ours('toy', 't', {'backbone': 'ViT-B/32', 'method': 'Ours'}, r'context / r@\d'), tmp), (44.88, 1.17))
test_close(read_ours(Ours('toy', 't', {'backbone': r'ViT-B/\d+'}, 'context / mrr', mean=True, scale=0.01), tmp)[0], 0.2681, eps=1e-9)
test_close(read_ours(Ours('toy', 'said', text=r'cosine ([\d.]+)'), tmp)[0], 0.899, eps=1e-12)
test_fail(lambda: read_ours(Ours('toy', 't', {'method': 'Ours'}, 'context / mrr'), tmp), contains='2 rows with')
test_fail(lambda: read_ours(Ours('toy', 't', {'method': 'SEARLE'}, 'context / mrr'), tmp), contains='no row with')
test_fail(lambda: read_ours(Ours('toy', 't', {'method': 'Ours'}, 'mrr'), tmp), contains="0 columns match 'mrr'")
test_fail(lambda: read_ours(Ours('toy', 'gone'), tmp), contains="no cell marked '# paper-map: gone'")
test_fail(lambda: read_ours(Ours('nothere', 't'), tmp), contains='no chapter')


# %% [markdown]
# ## One of the paper's numbers
#
# The paper's side is a query of [The paper's numbers](20_paper.ipynb): the arguments of
# `paper_value`, with the spread and backbone of the number found.

# %%
#| export
@functools.lru_cache(maxsize=4)
def _paper(mtime:int)->pd.DataFrame:
    from polar_nb.paper import PAPER_FILE, paper_numbers
    return paper_numbers(PAPER_FILE)

def paper_number(table:str, method:str, metric:str, query=None, setting=None, backbone=None)->dict:
    "The paper's number as `paper_value` finds it, with its spread (NaN where none is printed) and backbone."
    from polar_nb.paper import PAPER_FILE, ALIASES
    t = _paper(PAPER_FILE.stat().st_mtime_ns)
    t = t[(t.table == ALIASES.get(str(table), str(table))) & (t.method == method) & (t.metric == metric)]
    if query is not None: t = t[t['query'] == query]
    if backbone is not None: t = t[t.backbone == backbone]
    if setting is not None: t = t[t.setting.map(lambda s: _matches(s, setting))]
    if len(t) != 1: paper_value(table, method, metric, query, setting, backbone)  # raises, saying what the table has
    r = t.iloc[0]
    return dict(value=float(r.value), spread=float(r.spread), backbone=r.backbone, dataset=r.dataset)


# %%
test_eq(paper_number('10', 'Ours', 'mrr', 'context', backbone='ViT-B/32'), dict(value=34.82, spread=0.52, backbone='ViT-B/32', dataset='deepfashion2'))
assert math.isnan(paper_number('11', 'Ours', 'mrr', 'context-single', setting='rank=2')['spread'])
test_fail(lambda: paper_number('10', 'Ours', 'mrr'), contains='4 numbers in Tab. 10 match')

# %% [markdown]
# ## What is compared
#
# A `Pair` is one number of the paper beside ours; a `Claim` is a comparison the paper's numbers
# make, between two methods or settings, put to the paper's numbers and to ours: `'>'` (the first
# ahead), `'≥'` (the first not behind by more than `TOL`) or `'≈'` (within `TOL` of each other).
# An `Item` is one table or figure: what it shows, the chapter and the function that compute it,
# its pairs and its claims.

# %%
#| export
TOL = 1.0  # percentage points: the least difference that counts, in claims and for numbers without spreads
TIME_TOL = 0.10  # for milliseconds: a tenth of the paper's number
NOT_HERE = 'not reproducible here'
VERDICTS = ('agrees', 'differs', NOT_HERE)

@dataclass
class Pair:
    "One of our numbers (`ours`) beside the paper's (`paper`: the arguments of `paper_number`; None where the paper prints none)."
    ours:Ours|None
    paper:dict|None=None
    label:str='' # what the number is (default: from the paper's method, setting, query and metric)
    note:str='' # which of our rows, where that needs saying

@dataclass
class Claim:
    "A comparison, `a op b`, of the paper's numbers (`paper`: two `paper_number` argument dicts; None: stated, not measured) and of ours."
    text:str
    ours:tuple
    paper:tuple|None=None
    op:str='>'

@dataclass
class Item:
    "A table or figure of the paper (or an element of the poster) and where the book reproduces it."
    element:str # 'Tab. 10', 'Fig. 5', 'Dataset'
    source:str # 'supplement' or 'CAP poster'
    what:str # what it shows
    chapter:str # the chapter that reproduces it
    function:str # the function that computes it (dotted path)
    pairs:list=field(default_factory=list)
    claims:list=field(default_factory=list)
    kind:str='accuracy' # 'accuracy' (comparable with the paper's backbone and data) or 'time' (with the paper's GPU)
    headline:int=0 # the pair the map shows
    note:str='' # why it cannot be compared at all, where that is so


# %%
#| export
def holds(a:float, b:float, op:str, tol:float=TOL)->bool|None:
    "Whether `a op b` holds ('>', '≥': not behind by more than `tol`, '≈': within `tol`); None when a number is missing."
    if math.isnan(a) or math.isnan(b): return None
    if op == '>': return a > b
    if op == '≥': return a >= b - tol
    if op == '≈': return abs(a - b) <= tol
    raise ValueError(f"op must be '>', '≥' or '≈', not {op!r}")

def number_verdict(ours:float, ours_spread:float, paper:float, paper_spread:float,
                   comparable:bool, # measured as the paper measured it
                   time:bool=False, # milliseconds (tolerance `TIME_TOL` of the paper's number) instead of percentages
                  )->str:
    "'agrees' when `ours` is within twice the combined spread (or the tolerance) of `paper`, 'differs' if not; `NOT_HERE` unless comparable."
    if not comparable or math.isnan(ours) or math.isnan(paper): return NOT_HERE
    spread = 2 * math.hypot(*(0 if math.isnan(s) else s for s in (ours_spread, paper_spread)))
    return 'agrees' if abs(ours - paper) <= max(spread, TIME_TOL * paper if time else TOL) else 'differs'


# %%
test_eq([holds(2, 1, '>'), holds(1, 1.5, '≥'), holds(1, 2.5, '≥'), holds(1, 1.8, '≈'), holds(math.nan, 1, '>')], [True, True, False, True, None])
test_fail(lambda: holds(1, 2, '<'), contains="op must be")
test_eq(number_verdict(40.0, 0.5, 40.72, 0.27, comparable=False), NOT_HERE)
test_eq(number_verdict(40.0, 0.5, 40.72, 0.27, comparable=True), 'agrees')   # within 1 point
test_eq(number_verdict(38.0, 0.5, 40.72, 0.27, comparable=True), 'differs')  # 2.7 points off, spreads ~0.6
test_eq(number_verdict(36.0, 3.0, 40.72, 0.27, comparable=True), 'agrees')   # within twice the combined spread
test_eq(number_verdict(235.0, math.nan, 219.54, math.nan, comparable=True, time=True), 'agrees')  # within 10 %

# %% [markdown]
# ## What each chapter measured
#
# Whether a number is comparable with the paper's depends on what it was measured with, which each
# result chapter prints in its first cell, marked `setup`: the backbone (`Backbone('world-tiny', …)`),
# or, for timings, the machine.

# %%
#| export
_BACKBONE = re.compile(r"Backbone\('([^']+)', pretrained=(?:'([^']*)'|None)")

def measured_on(chapter:str, nbs=None)->dict:
    "What `chapter`'s stored results were measured with: {backbone, pretrained, machine, text} (empty strings where unknown)."
    nb = notebook(chapter, nbs)
    cell = find_cell(nb, 'setup', r'load_backbone\(')
    out = dict(backbone='', pretrained='', machine='', text='')
    if cell is None: return out
    said = stored_text(cell)
    if m := _BACKBONE.search(said): out.update(backbone=m.group(1), pretrained=m.group(2) or '')
    elif m := re.search(r"load_backbone\('([^']+)'", cell.source): out.update(backbone=m.group(1))
    elif 'device' in (info := plain_series(said)):
        gpu = info.get('gpu', '')
        out.update(machine=gpu or info.get('cpu', ''), text=f"{info['device']}: {gpu or info.get('cpu', '')}, {info.get('threads', '?')} threads")
    if out['backbone']:
        out['text'] = 'world-tiny on the embedded world' if out['backbone'] == 'world-tiny' else f"{out['backbone']} ({out['pretrained'] or 'random weights'})"
    return out

def _paper_name(backbone:str)->str: return backbone.replace('ViT-B-', 'ViT-B/').replace('ViT-L-', 'ViT-L/')

def comparable(item:Item, measured:dict, paper:dict)->tuple[bool, str]:
    "Whether `item`'s numbers measured with `measured` compare with the `paper_number` `paper`, and why not."
    if item.kind == 'time':
        ok = 'V100' in measured['machine']
        return ok, '' if ok else f"timed on {measured['text'] or 'an unknown machine'}, not the paper's V100"
    if measured['backbone'] == 'world-tiny':
        return False, 'world-tiny on the embedded world, not the real benchmark'
    if _paper_name(measured['backbone']) != paper['backbone'] or not measured['pretrained']:
        return False, f"{measured['text'] or 'an unknown backbone'}, not the paper's {paper['backbone']}"
    return True, ''


# %%
m21 = measured_on('21_main_results')
test_eq((m21['backbone'], m21['text']), ('world-tiny', 'world-tiny on the embedded world'))
m27 = measured_on('27_timing')
assert m27['text'].startswith('cpu: ') and m27['backbone'] == ''
p = paper_number('10', 'Ours', 'mrr', 'context', backbone='ViT-B/32')
test_eq(comparable(Item('Tab. 10', 'supplement', '', '', ''), m21, p)[0], False)
test_eq(comparable(Item('Tab. 10', 'supplement', '', '', ''), dict(backbone='ViT-B-32', pretrained='openai', machine='', text=''), p), (True, ''))
test_eq(comparable(Item('Tab. 10', 'supplement', '', '', ''), dict(backbone='ViT-L-14', pretrained='openai', machine='', text='ViT-L-14 (openai)'), p),
        (False, "ViT-L-14 (openai), not the paper's ViT-B/32"))
test_eq(comparable(Item('Tab. 16', 'supplement', '', '', '', kind='time'), m27, p)[0], False)
m21, m27


# %% [markdown]
# ## The map's entries
#
# One entry per table and figure of the supplement, and per element of the CAP poster. Each names
# the chapter and marked cell that hold our number, the row and column of its table, and the
# paper's number it stands beside. The result chapters' tables are in percent, as the paper's.

# %%
#| export
def _p(table, method, metric, query=None, **kw): return dict(table=table, method=method, metric=metric, query=query, **kw)

CC_COLS = [('context', 'mrr'), ('context', 'map'), ('context', 'r@1'), ('concept-only', 'mrr'), ('concept-only', 'map')]
DF2_COLS = [('context', 'mrr'), ('context', 'r@5'), ('concept-only', 'mrr'), ('concept-only', 'map')]

def _tab9()->Item:
    o = lambda split, q, m: Ours('21_main_results', 'tab9', {'level_0': split, 'method': 'POLAR'}, f'{q} / {m}')
    unseen, test = 'without concepts 0–2', r'TEST \(all .*\)'
    return Item('Tab. 9', 'supplement', 'POLAR on ConCon-Chi TEST-UNSEEN: the concepts no λ was tuned on', '21_main_results',
                'polar_nb.experiments.main_results', [Pair(o(unseen, q, m), _p('9', 'Ours', m, q)) for q, m in CC_COLS],
                [Claim('POLAR on TEST-UNSEEN not behind POLAR on all of TEST (context mRR)', (o(unseen, 'context', 'mrr'), o(test, 'context', 'mrr')),
                       (_p('9', 'Ours', 'mrr', 'context'), _p('15', 'Ours', 'mrr', 'context', setting='train_images=5')), '≥')])

def _tab10()->Item:
    o = lambda m, q, met: Ours('21_main_results', 'tab10', {'method': m}, f'{q} / {met}')
    pol = lambda q, m, b='ViT-B/32': _p('10', 'Ours', m, q, backbone=b)
    pairs = [Pair(o('POLAR', q, m), pol(q, m, b)) for b in ('ViT-B/32', 'ViT-L/14') for q, m in DF2_COLS]
    pairs += [Pair(o('AvgIm+Text', 'context', 'mrr'), _p('10', 'AvgIm + Text', 'mrr', 'context')),
              Pair(o('text (coarse)', 'context', 'mrr'), _p('10', 'Text Only', 'mrr', 'context'))]
    return Item('Tab. 10', 'supplement', 'POLAR and the baselines on DeepFashion2 test (= Tab. 1 of the main text)', '21_main_results',
                'polar_nb.experiments.main_results', pairs,
                [Claim('POLAR ahead of AvgIm+Text (context mRR)', (o('POLAR', 'context', 'mrr'), o('AvgIm+Text', 'context', 'mrr')),
                       (pol('context', 'mrr'), _p('10', 'AvgIm + Text', 'mrr', 'context'))),
                 Claim('POLAR ahead of the class name alone (context mRR)', (o('POLAR', 'context', 'mrr'), o('text (coarse)', 'context', 'mrr')),
                       (pol('context', 'mrr'), _p('10', 'Text Only', 'mrr', 'context')))])


# %%
#| export
ABLATION_COLS = [('our test context_mrr', 'context-single', 'mrr'), ('our test context_map', 'context-single', 'map'),
                 ('our test context_r@1', 'context-single', 'r@1'), ('our test concept_mrr', 'concept-only', 'mrr'),
                 ('our test caption_r@10', 'vlm-caption', 'r@10')]

def _ablation(table:str, what:str, rows:dict, claims:list, cols=ABLATION_COLS)->Item:
    "Tab. 11, 12, 13 or 21: one pair per (our setting, column); `rows` our setting -> the paper's setting; `claims` (text, a, b, op)."
    o = lambda name, col: Ours('22_ablations', f'tab{table}', {'name': name}, col)
    p = lambda name, q, m: _p(table, 'Ours', m, q, setting=rows[name])
    main = cols[0]
    return Item(f'Tab. {table}', 'supplement', what, '22_ablations', 'polar_nb.ablations.ablate',
                [Pair(o(n, c), p(n, q, m)) for n in rows for c, q, m in cols],
                [Claim(f'{a} {"ahead of" if op == ">" else "not behind"} {b} (context mRR)', (o(a, main[0]), o(b, main[0])),
                       (p(a, *main[1:]), p(b, *main[1:])), op) for a, b, op in claims])

def _tab11()->Item:
    return _ablation('11', 'the rank of the update, each with its best λ (ConCon-Chi validation)', {f'rank {r}': f'rank={r}' for r in (1, 2, 4, 8, 16)},
                     [('rank 1', f'rank {r}', '≥') for r in (2, 4, 8, 16)])

def _tab12()->Item:
    return _ablation('12', 'the layers updated, each with its best λ (ConCon-Chi validation)',
                     {'last': 'layers=12', 'last two': 'layers=11,12', 'last three': 'layers=10,11,12', 'all': 'layers=all'},
                     [('last', 'all', '>'), ('last', 'last two', '≥'), ('last', 'last three', '≥')])

def _tab13()->Item:
    names = {'V': 'V', 'Q': 'Q', 'K': 'K', 'O': 'O', 'Q+V': 'Q,V', 'Q+K+V+O': 'Q,K,V,O', 'MLP1': 'MLP1', 'MLP2': 'MLP2', 'final proj': 'final proj'}
    return _ablation('13', 'the weight updated, each with its best λ (ConCon-Chi validation)', {n: f'params={p}' for n, p in names.items()},
                     [('V', 'Q', '>'), ('V', 'K', '>'), ('V', 'Q+K+V+O', '≥')])

def _tab21()->Item:
    cols = [('our test context_mrr', 'context', 'mrr'), ('our test context_r@5', 'context', 'r@5'), ('our test concept_mrr', 'concept-only', 'mrr')]
    return _ablation('21', 'the weight updated, on DeepFashion2', {n: f"params={n.replace('+', ',')}" for n in ('V', 'K', 'O', 'Q+V', 'Q+K+V+O')},
                     [('V', 'K', '>'), ('V', 'Q+V', '≥'), ('V', 'Q+K+V+O', '≥')], cols)


# %%
#| export
def _tab14()->Item:
    o = lambda rx, q, m: Ours('23_hard_negatives', 'tab14', {'method (ours)': rx}, f'ours / {q} / {m}')
    rows = [(r'POLAR \(λ = [^,]+, validation\)', 'Ours', 'λ chosen on validation'), (r'POLAR \+ negs \(.*, validation\)', 'Ours + negs', 'λs chosen on validation'),
            (r'POLAR \(λ = [^,]+, paper\)', 'Ours', "the paper's λ"), (r'POLAR \+ negs \(.*, paper\)', 'Ours + negs', "the paper's λs")]
    pairs = [Pair(o(rx, q, m), _p('14', meth, m, q), note=n) for rx, meth, n in rows for q, m in DF2_COLS]
    claim = lambda text, i, q, m: Claim(text, (o(rows[i+1][0], q, m), o(rows[i][0], q, m)), (_p('14', 'Ours + negs', m, q), _p('14', 'Ours', m, q)))
    return Item('Tab. 14', 'supplement', "hard negatives (the other concepts' images, Yeh et al.'s setting) on DeepFashion2", '23_hard_negatives',
                'polar_nb.negatives.PolarNeg', pairs,
                [claim('with negatives ahead of without (context mRR; λs from validation)', 0, 'context', 'mrr'),
                 claim('with negatives ahead of without (concept-only mAP; λs from validation)', 0, 'concept-only', 'map'),
                 claim("with negatives ahead of without (concept-only mAP; the paper's λs)", 2, 'concept-only', 'map')])

def _tab15()->Item:
    o = lambda m, q, met: Ours('21_main_results', 'tab15', {'method': m}, f'all context / concept-only / {q} / {met}')
    pol = lambda q, m: _p('15', 'Ours', m, q, setting='train_images=5')
    coarse = lambda m: _p('15', 'Coarse (class name)', m, 'context')
    return Item('Tab. 15', 'supplement', 'ConCon-Chi test, five training images per concept', '21_main_results', 'polar_nb.experiments.main_results',
                [Pair(o('POLAR', q, m), pol(q, m)) for q, m in CC_COLS] + [Pair(o('text (coarse)', q, m), coarse(m)) for q, m in CC_COLS[:3]],
                [Claim('POLAR ahead of the class name alone (context mRR)', (o('POLAR', 'context', 'mrr'), o('text (coarse)', 'context', 'mrr')),
                       (pol('context', 'mrr'), coarse('mrr')))])

def _tab15_one()->Item:
    o = lambda n, m, q, met: Ours('24_single_image', 'tab15-one-image', {'level_0': f'ours ({n})', 'method': m}, f'{q} / {met}')
    one = lambda q, m, k=1: _p('15', 'Ours', m, q, setting=f'train_images={k}')
    return Item('Tab. 15', 'supplement', 'ConCon-Chi test, one training image per concept (mean ± std over the images)', '24_single_image',
                'polar_nb.experiments.single_image', [Pair(o('1 image', 'POLAR', q, m), one(q, m)) for q, m in CC_COLS],
                [Claim('POLAR from one image ahead of the class name alone (context mRR)', (o('1 image', 'POLAR', 'context', 'mrr'), o('1 image', 'text (coarse)', 'context', 'mrr')),
                       (one('context', 'mrr'), _p('15', 'Coarse (class name)', 'mrr', 'context'))),
                 Claim('POLAR from five images ahead of POLAR from one (context mRR)', (o('5 images', 'POLAR', 'context', 'mrr'), o('1 image', 'POLAR', 'context', 'mrr')),
                       (one('context', 'mrr', 5), one('context', 'mrr')))])


# %%
#| export
def _tab16()->Item:
    o = lambda m, it: Ours('27_timing', 'tab16', {'backbone': 'ViT-L-14', 'images': '5', 'iters': str(it), 'method': m}, 'ms')
    p = lambda m, it: _p('16', m, 'ms', setting=f'iters={it}')
    pairs = [Pair(o(m, it), p(pm, it), note=n) for it in (50, 500) for m, pm, n in
             [('POLAR fast', 'Ours', 'the fast path'), ('POLAR naive', 'Ours', 'the naive loop'), ('textual inversion', 'Text. Inv. (1 tok)', '')]]
    return Item('Tab. 16', 'supplement', 'personalization time of one concept, ViT-L/14, 5 images (ms)', '27_timing', 'polar_nb.bench.bench_personalization',
                pairs, [Claim(f'textual inversion slower than POLAR ({it} iterations)', (o('textual inversion', it), o('POLAR naive', it)),
                              (p('Text. Inv. (1 tok)', it), p('Ours', it))) for it in (50, 500)], kind='time')

def _recall(table:str, cell:str, what:str, function:str, row:callable, ks, query:str, ours_col:str, claim_k:int)->Item:
    "Tab. 17, 18 or 19: recall@k of the original encoder and with the updates, ours beside the paper's."
    o = lambda k, col: Ours('26_general_knowledge', cell, row(k), f'ours: .* / {col}')
    p = lambda k, m: _p(table, m, f'r@{k}', query)
    pairs = [Pair(o(k, col), p(k, m)) for k in ks for col, m in (('original', 'Original CLIP'), (ours_col, 'Ours'))]
    return Item(f'Tab. {table}', 'supplement', what, '26_general_knowledge', function, pairs, headline=2*list(ks).index(claim_k) + 1,
                claims=[Claim(f'recall@{claim_k} with an update within 1 point of the original encoder', (o(claim_k, ours_col), o(claim_k, 'original')),
                       (p(claim_k, 'Ours'), p(claim_k, 'Original CLIP')), '≥')])

def _tab17(): return _recall('17', 'tab17', 'VLM-caption retrieval at several recall cut-offs (ConCon-Chi)', 'polar_nb.knowledge.recall_under_updates',
                             lambda k: {'world': 'ConCon-Chi-format world', 'recall': f'r@{k}'}, (1, 5, 10, 50), 'vlm-caption', 'mean, one update', 10)
def _tab18(): return _recall('18', 'tab18', 'general caption→image retrieval (Flickr30k)', 'polar_nb.knowledge.recall_under_updates',
                             lambda k: {'recall': f'r@{k}'}, (1, 5, 10), 'general', 'mean, one update', 10)
def _tab19(): return _recall('19', 'tab19', 'ConCon-Chi retrieval with each concept replaced by its discriminative description',
                             'polar_nb.knowledge.described_embeddings', lambda k: {'index': f'r@{k}'}, (1, 5, 10), 'discriminative-caption', 'with the updates', 1)


# %%
#| export
def _tab20()->Item:
    o = lambda rx, q, m: Ours('25_weight_decay', 'tab20', {'method (ours)': rx}, f'ours / {q} / {m}')
    cols = [('context (single)', 'mrr', 'context-single'), ('context (single)', 'map', 'context-single'), ('context (single)', 'r@1', 'context-single'),
            ('concept-only', 'mrr', 'concept-only'), ('concept-only', 'map', 'concept-only'), ('VLM caption', 'r@10', 'vlm-caption')]
    rows = {'ours': (r'POLAR \(λ = 0\.35, paper\)', 'Ours', "the paper's λ"), 'adam': (r'Adam \+ wd 1e-4 \(paper\)', 'Adam + wd', "the paper's weight decay"),
            'adamw': (r'AdamW, defaults .*', 'AdamW + wd', 'its defaults'), 'ours-val': (r'POLAR \(λ = [^,]+, validation\)', 'Ours', 'λ chosen on validation'),
            'adam-val': (r'Adam \+ wd .* \(validation\)', 'Adam + wd', 'weight decay chosen on validation')}
    pairs = [Pair(o(rx, q, m), _p('20', meth, m, pq), note=n) for rx, meth, n in rows.values() for q, m, pq in cols]
    claim = lambda text, a, b, q, m, pq: Claim(text, (o(rows[a][0], q, m), o(rows[b][0], q, m)), (_p('20', rows[a][1], m, pq), _p('20', rows[b][1], m, pq)))
    return Item('Tab. 20', 'supplement', "Adam or AdamW weight decay in place of POLAR's regulariser (ConCon-Chi)", '25_weight_decay',
                'polar_nb.baselines.Polar', pairs,
                [claim("POLAR's regulariser ahead of Adam's weight decay (context mRR, the paper's settings)", 'ours', 'adam', *cols[0]),
                 claim("POLAR's regulariser ahead of AdamW (context mRR, the paper's settings)", 'ours', 'adamw', *cols[0]),
                 claim("POLAR's regulariser ahead of Adam's weight decay (VLM-caption r@10, the paper's settings)", 'ours', 'adam', *cols[5])])

def _fig5()->Item:
    avg = Ours('23_hard_negatives', 'tab14', {'method (ours)': r'POLAR \(λ = [^,]+, validation\)'}, 'ours / concept-only / map')
    alike = Ours('23_hard_negatives', 'fig5-look-alikes', {}, 'AP, POLAR', scale=100, mean=True)
    return Item('Fig. 5', 'supplement', 'failures on look-alike concepts: concept-only retrievals on DeepFashion2', '21_main_results', 'polar_nb.experiments.gallery',
                [Pair(Ours('21_main_results', 'fig5', text=r'cosine of their mean support images ([\d.]+)'), label='cosine of the closest pair of concepts'),
                 Pair(alike, label='POLAR AP of the 5 concepts closest to another (%)'), Pair(avg, label='POLAR concept-only mAP, all concepts (%)')],
                [Claim('the average concept retrieved better than one with a close look-alike (concept-only AP)', (avg, alike))],
                note='the figure is qualitative (real DeepFashion2 images); the gallery of the main-results chapter shows the same kind of failure on the world')


# %%
#| export
def _cap(method:str, col:str='r@1', scale:float=100)->Ours:
    "A number of the CAP chapter's test table (no cell there is marked yet: found by the call that computes it)."
    return Ours('30_cap', 'cap', {'method': method, 'kind': 'personal'}, col, scale, source=r'=\s*evaluate_cap\(')

POSTER_NOTE = "the poster prints no number; its data, the Instagram Influencers Dataset, is not available here (the embedded collections stand in)"

def _poster()->list[Item]:
    return [Item('Dataset', 'CAP poster', "Instagram Influencers Dataset: 12M image–text pairs, grouped by account into episodes",
                 '07_collections', 'polar_nb.collections.make_collections', note=POSTER_NOTE),
            Item('Fig. 1', 'CAP poster', "an episode: a user's collection, a query, challenge images and the correct one", '30_cap',
                 'polar_nb.cap.episode_features', [Pair(_cap('zero-shot', 'n_episodes', 1), label='personal test episodes')], note=POSTER_NOTE),
            Item('Fig. 2', 'CAP poster', 'existing methods: CLIP ranks the challenge images by similarity to the query', '30_cap',
                 'polar_nb.cap.zero_shot', [Pair(_cap('zero-shot'), label='zero-shot · personal r@1 (%)')], note=POSTER_NOTE),
            Item('Fig. 3', 'CAP poster', "CAP: a transformer over the collection predicts a warping of the query and image embeddings", '30_cap',
                 'polar_nb.cap.train_cap', [Pair(_cap('CAP'), label='CAP · personal r@1 (%)')],
                 [Claim('CAP ahead of zero-shot CLIP on personal queries (r@1)', (_cap('CAP'), _cap('zero-shot')))], note=POSTER_NOTE)]

def items()->list[Item]:
    "Every entry of the map: the supplement's tables and figure in order, then the CAP poster's elements."
    return [_tab9(), _tab10(), _tab11(), _tab12(), _tab13(), _tab14(), _tab15(), _tab15_one(), _tab16(), _tab17(), _tab18(), _tab19(),
            _tab20(), _tab21(), _fig5()] + _poster()


# %%
test_eq([i.element for i in items()][:15], [f'Tab. {t}' for t in range(9, 16)] + ['Tab. 15'] + [f'Tab. {t}' for t in range(16, 22)] + ['Fig. 5'])
test_eq(sum(len(i.pairs) for i in items() if i.source == 'supplement'), 208)

# %% [markdown]
# ## The tables of the map
#
# `map_numbers` reads every pair, `map_claims` every comparison, and `paper_map` sums each entry up:
# the first pair as its headline number, the verdict on its numbers and on its direction, and why.

# %%
#| export
_METRIC = {'mrr': 'mRR', 'map': 'mAP'}

def _label(pair:Pair)->str:
    "What a pair's number is: its label, or the paper's method (setting, backbone) · query metric."
    if pair.label: return pair.label
    p = pair.paper
    what = p['method'] + ''.join(f" ({p[k]})" for k in ('setting', 'backbone') if p.get(k))
    return f"{what} · {p.get('query') or ''} {_METRIC.get(p['metric'], p['metric'])}".replace('·  ', '· ') + (f" [ours: {pair.note}]" if pair.note else '')

def _ours(o:Ours|None, nbs)->tuple[float, float, str]:
    "Our (value, spread) and, when it cannot be read, why."
    if o is None: return math.nan, math.nan, ''
    try: return (*read_ours(o, nbs), '')
    except LookupError as e: return math.nan, math.nan, str(e)


# %%
#| export
def map_numbers(its:list[Item]|None=None, nbs=None)->pd.DataFrame:
    "One row per pair of every item: the paper's number and ours side by side, whether they compare, and the verdict."
    rows = []
    for it in its or items():
        measured = measured_on(it.chapter, nbs) if (Path(nbs or NBS)/f'{it.chapter}.ipynb').is_file() else dict(backbone='', pretrained='', machine='', text='')
        for pair in it.pairs:
            v, s, missing = _ours(pair.ours, nbs)
            p = paper_number(**pair.paper) if pair.paper else dict(value=math.nan, spread=math.nan, backbone='')
            ok, why = comparable(it, measured, p) if pair.paper else (False, it.note or 'the paper prints no number')
            rows.append({'element': it.element, 'chapter': it.chapter, 'number': _label(pair), 'paper': p['value'], 'paper ±': p['spread'],
                         'ours': v, 'ours ±': s, 'stored in': pair.ours.where() if pair.ours else '',
                         'verdict': number_verdict(v, s, p['value'], p['spread'], ok, it.kind == 'time'), 'why': missing or why})
    return pd.DataFrame(rows)


# %%
#| export
def map_claims(its:list[Item]|None=None, nbs=None)->pd.DataFrame:
    "One row per claim of every item: the paper's two numbers and ours, whether the comparison holds for each, and the verdict."
    rows = []
    for it in its or items():
        for c in it.claims:
            (a, _, ma), (b, _, mb) = _ours(c.ours[0], nbs), _ours(c.ours[1], nbs)
            pa, pb = (paper_number(**c.paper[0])['value'], paper_number(**c.paper[1])['value']) if c.paper else (math.nan, math.nan)
            ours_holds = holds(a, b, c.op)
            rows.append({'element': it.element, 'chapter': it.chapter, 'claim': c.text, 'op': c.op, 'paper a': pa, 'paper b': pb,
                         'paper holds': holds(pa, pb, c.op) if c.paper else None, 'ours a': a, 'ours b': b, 'ours holds': ours_holds,
                         'verdict': {True: 'agrees', False: 'differs', None: 'not stored'}[ours_holds], 'why': ma or mb})
    return pd.DataFrame(rows)


# %% [markdown]
# An entry's verdict on its numbers: *agrees* or *differs* over its comparable numbers (all must
# agree), `NOT_HERE` when none is comparable. Its direction: *agrees* when every claim holds for our
# numbers as for the paper's, *differs* when one does not, *not stored* when a number is missing.

# %%
#| export
def _entry_verdict(n:pd.DataFrame)->str:
    "The verdict over an entry's numbers (rows of `map_numbers`)."
    judged = n[n.verdict != NOT_HERE]
    if not len(judged): return NOT_HERE
    return 'agrees' if (judged.verdict == 'agrees').all() else 'differs'

def _direction(c:pd.DataFrame)->str:
    "The direction over an entry's claims (rows of `map_claims`)."
    if not len(c): return ''
    if (c.verdict == 'not stored').any(): return 'not stored'
    return 'agrees' if (c.verdict == 'agrees').all() else 'differs'

def _why(it:Item, n:pd.DataFrame, c:pd.DataFrame)->str:
    "Why the verdicts are what they are: the numbers' reason, then the comparisons that do not come out as in the paper."
    judged = n[n.verdict != NOT_HERE]
    out = [f"numbers: {next((w for w in n.why if w), it.note)}" if not len(judged) else
           f"numbers: {(judged.verdict == 'agrees').sum()} of {len(judged)} comparable agree"]
    if len(c):
        bad = c[c.verdict != 'agrees']
        paper = lambda r: '' if math.isnan(r['paper a']) else f"; paper {r['paper a']:.2f} vs {r['paper b']:.2f}"
        out.append(f"direction: {'the comparison' if len(c) == 1 else f'all {len(c)} comparisons'} as in the paper" if not len(bad) else
                   'direction otherwise here: ' + '; '.join(f"{r.claim} (ours {r['ours a']:.2f} vs {r['ours b']:.2f}{paper(r)})" for _, r in bad.iterrows()))
    return '. '.join(out)


# %%
#| export
def paper_map(nbs=None)->pd.DataFrame:
    "The map: one row per table or figure of the supplement and element of the CAP poster, our headline number beside the paper's, the verdicts and why."
    its, rows = items(), []
    numbers, claims = map_numbers(its, nbs), map_claims(its, nbs)
    for i, it in enumerate(its):
        k = sum(len(x.pairs) for x in its[:i]); n = numbers.iloc[k:k+len(it.pairs)]
        k = sum(len(x.claims) for x in its[:i]); c = claims.iloc[k:k+len(it.claims)] if len(claims) else claims
        head = n.iloc[it.headline] if len(n) else pd.Series({'number': '', 'paper': math.nan, 'paper ±': math.nan, 'ours': math.nan, 'ours ±': math.nan})
        measured = measured_on(it.chapter, nbs) if (Path(nbs or NBS)/f'{it.chapter}.ipynb').is_file() else {'text': ''}
        rows.append({'element': it.element, 'source': it.source, 'what': it.what, 'chapter': it.chapter, 'function': it.function,
                     'measured on': measured['text'], 'headline number': head['number'], 'paper': head['paper'], 'paper ±': head['paper ±'],
                     'ours': head['ours'], 'ours ±': head['ours ±'], 'verdict': _entry_verdict(n), 'direction': _direction(c), 'why': _why(it, n, c)})
    return pd.DataFrame(rows)


# %% [markdown]
# For reading, the chapter column links to the chapter (the book turns the notebook links into links
# to its pages), each number and its spread share a cell ("34.82 ± 0.52", still one column for the
# paper and one for us), and text is set left, small enough for the table to fit:

# %%
#| export
_STYLE = ('<style>table.paper-map {font-size: 12px; border-collapse: collapse} table.paper-map th, table.paper-map td '
          '{text-align: left; vertical-align: top; padding: 3px 6px}</style>')

def chapter_link(chapter:str, nbs=None)->str:
    "An HTML link to `chapter`, named by its title."
    from polar_nb.book import chapter_title
    try: title = chapter_title(notebook(chapter, nbs))
    except LookupError: title = chapter
    return f'<a href="{chapter}.ipynb">{html.escape(title)}</a>'

def _cell(v, s, digits)->str:
    "A number and its spread as one cell's text ('' for no number)."
    if v is None or (isinstance(v, float) and math.isnan(v)): return ''
    f = lambda x: f'{x:.{digits}f}' if abs(x) >= 1 or x == 0 else f'{x:.3g}'  # 0.899 keeps its digits
    return f(v) + ('' if s is None or math.isnan(s) else f' ± {f(s)}')

def map_html(m:pd.DataFrame, # `paper_map`, `map_numbers` or `map_claims`
             nbs=None, digits:int=2)->str:
    "`m` as an HTML table: chapters as links, numbers rounded and beside their spreads, nothing shown for no number."
    t = m.copy()
    for c in [c for c in t.columns if f'{c} ±' in t.columns]:
        t[c] = [_cell(v, s, digits) for v, s in zip(t[c], t.pop(f'{c} ±'))]
    for c in t.columns:
        if c == 'chapter': t[c] = [chapter_link(x, nbs) for x in t[c]]
        elif t[c].dtype.kind == 'f': t[c] = [_cell(x, None, digits) for x in t[c]]
        else: t[c] = [html.escape('' if x is None else str(x)) for x in t[c]]
    return _STYLE + t.to_html(escape=False, index=False, classes='paper-map', border=0)


# %%
shown = map_html(pd.DataFrame({'element': ['Tab. 10'], 'chapter': ['21_main_results'], 'paper': [34.82], 'paper ±': [0.52],
                               'ours': [39.82], 'ours ±': [math.nan], 'why': ['a < b']}))
back = html_frame(shown)
test_eq(list(back.columns), ['element', 'chapter', 'paper', 'ours', 'why'])
test_eq(back.iloc[0].tolist(), ['Tab. 10', 'Main results', '34.82 ± 0.52', '39.82', 'a < b'])
assert '<a href="21_main_results.ipynb">Main results</a>' in shown

# %% [markdown]
# ## The map

# %%
from IPython.display import HTML
pm = paper_map()
HTML(map_html(pm))

# %% [markdown]
# Every table of the supplement is in the map, each with the paper's number and ours side by side;
# so is its one figure, and every element of the poster. The check reads the tables from the
# supplement's text where it is at hand (its captions "Table N."), and from the paper's numbers
# otherwise.

# %%
text = supplement_file().read_text(encoding='utf-8') if supplement_file() else None
tables = sorted(set(re.findall(r'^Table (\d+)\.', text, flags=re.M)) if text else set(paper_table('9').table) | {str(t) for t in range(10, 22)}, key=int)
test_eq(tables, [str(t) for t in range(9, 22)])
nums = map_numbers()
for t in tables:
    rows = nums[(nums.element == f'Tab. {t}') & nums.paper.notna() & nums.ours.notna()]
    assert len(rows), f'Tab. {t}: no number with both values'
test_eq(set(pm[pm.source == 'supplement'].element), {f'Tab. {t}' for t in tables} | {'Fig. 5'})
test_eq(list(pm[pm.source == 'CAP poster'].element), ['Dataset', 'Fig. 1', 'Fig. 2', 'Fig. 3'])
assert set(pm.verdict) <= set(VERDICTS) and set(nums.verdict) <= set(VERDICTS)
sup = nums[nums.element.str.startswith('Tab.')]
test_eq(int(sup.ours.isna().sum()), 0)  # every pair of a table is read from a stored result
pd.Series({'tables': len(tables), 'numbers side by side': int((sup.paper.notna() & sup.ours.notna()).sum()),
           'comparable with the paper': int((sup.verdict != NOT_HERE).sum())})


# %% [markdown]
# Every entry names a chapter of this book and a function of the package that computes it:

# %%
def resolves(dotted):
    "Whether the dotted path names an attribute of an importable module."
    mod, _, name = dotted.rpartition('.')
    try: return hasattr(importlib.import_module(mod), name)
    except ImportError: return False
for r in pm.itertuples():
    assert (NBS/f'{r.chapter}.ipynb').is_file(), r.chapter
    if r.source == 'supplement': assert resolves(r.function), r.function
pm[['element', 'chapter', 'function']].assign(found=[resolves(f) for f in pm.function])

# %% [markdown]
# ## Every number
#
# All the pairs behind the map's headline numbers, in the map's order:

# %%
HTML(map_html(nums))

# %% [markdown]
# ## Every comparison
#
# Each claim holds for the paper's own numbers (the check below); whether it holds for ours is the
# direction verdict.

# %%
cl = map_claims()
test_eq(cl['paper holds'].dropna().tolist(), [True] * cl['paper holds'].notna().sum())
test_eq(set(cl[cl.element.str.startswith('Tab.')].verdict) <= {'agrees', 'differs'}, True)
HTML(map_html(cl))

# %% [markdown]
# ## What the map says
#
# The verdicts, counted over the supplement's entries and the poster's, and the entries whose
# direction is or is not the paper's:

# %%
pm.groupby(['source', 'verdict', 'direction'], sort=False).size().rename('entries').reset_index()

# %%
for d in ('agrees', 'differs'):
    print(f"direction {d}: {', '.join(f'{r.element} ({r.chapter})' for r in pm[pm.direction == d].itertuples())}")

# %% [markdown]
# - **Numbers.** The stored results of the book's default run are `world-tiny`'s on the embedded
#   worlds, and the timings a CPU's, so no absolute number is comparable with the paper's: every
#   verdict on numbers is *not reproducible here*, and the paper's and our columns are read side by
#   side, not against each other. The verdicts become *agrees* or *differs* by themselves once the
#   result chapters are run on the `paper` profile (ViT-L-14 with OpenAI's weights on the real
#   benchmarks) and their outputs are stored: `measured_on` then reads that backbone from them.
# - **Directions.** What the embedded world can test is which method or setting comes out ahead.
#   The last column of the map says, for each entry whose direction differs, which comparison comes
#   out otherwise here, with both sides' numbers; the result chapters measure why.
# - **The poster** prints no number, so its elements have nothing to agree with; the CAP chapter's
#   stored test table (found by the call that computes it, `evaluate_cap`, since no cell there is
#   marked) gives our numbers for the existing method and for CAP, and their direction.

# %%
#| hide
import shutil; shutil.rmtree(tmp, ignore_errors=True)

# %%
#| hide
import nbdev; nbdev.nbdev_export()
