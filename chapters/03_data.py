# %% [markdown]
# # Benchmarks in their real formats
#
# > ConCon-Chi and PerVL DeepFashion2 read from their published annotation files, as their own code reads them: concepts, retrieval pool, support images and queries, without opening an image.

# %% [markdown]
# Which images, queries and positives does each of the paper's benchmarks hold? POLAR is measured
# (the paper's §4, supplement §12) on two personalised-retrieval benchmarks, ConCon-Chi and PerVL
# DeepFashion2. Users bring them in the layout their authors distribute, and this chapter reads
# that layout into one small interface:
#
# | | ConCon-Chi | PerVL DeepFashion2 |
# |---|---|---|
# | `b.concepts` | concept ids `0 … n-1` | pair ids (one garment each) |
# | `b.pool` | every `GTS` image of `test.json`, in file order | the images of `{split}_captions.csv` |
# | `b.support(c)` | the `train.json` images of `c` | the images of `c` in `{split}_fsl_train.txt` |
# | `b.queries("context")` | the non-negative rows of `test.json` | one caption per pool image |
# | `b.queries("concept")` | "An image of *", single-concept images only | "An image of *", the whole pool |
# | `b.descriptions(c)` | coarse, discriminative, rich | coarse (the garment class) |
#
# Every query is a `Query`: its text holds one `*` per concept, and each method fills the `*`s its
# own way (POLAR with `sks`, a text-only baseline with a description). Annotations are read without
# touching an image, so a user with cached features, or without the photos yet, can still load a
# benchmark. The metrics that rank the pool live in [Retrieval metrics](04_metrics.ipynb).

# %%
#| default_exp data

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_fail
import tempfile

# %%
#| export
import csv, io, json, re, warnings
from dataclasses import dataclass, field
from pathlib import Path
import pandas as pd
from fastcore.basics import patch
from polar_nb.config import LAYOUTS


# %% [markdown]
# ## Queries
#
# A query names the concepts it is about, in the order of its `*`s, the pool images that answer it
# (`positives`, indices into `b.pool`) and, when only part of the pool is ranked, that part
# (`candidates`, also indices into `b.pool`). `info` says where it came from in the annotation
# files, so results can be traced back to a row.

# %%
#| export
@dataclass
class Query:
    "A retrieval query: text with one `*` per concept, and the pool images that answer it."
    text:str  # one "*" per concept, e.g. "* next to *"
    concepts:list  # concept ids in the order of the "*"s
    positives:list[int]  # indices into the benchmark's pool
    candidates:list[int]|None=None  # the part of the pool that is ranked; None = all of it
    info:dict=field(default_factory=dict)  # where the query comes from (row, kind, image, ...)


# %%
q = Query('* next to *', [3, 7], positives=[10, 12])
test_eq((q.candidates, q.info), (None, {}))
q


# %%
#| export
def queries_frame(queries:list[Query])->pd.DataFrame:
    "One row per query: text, concepts, how many positives and candidates, and its `info`."
    return pd.DataFrame([dict(text=q.text, concepts=q.concepts, positives=len(q.positives),
                              candidates='all' if q.candidates is None else len(q.candidates), **q.info)
                         for q in queries])


# %%
test_eq(queries_frame([q]).loc[0, 'candidates'], 'all')
queries_frame([q, Query('An image of *', [3], [1], [1, 2, 5], dict(kind='concept'))])


# %% [markdown]
# ## Missing files and malformed rows
#
# A missing folder or file is a `FileNotFoundError` that names the path and shows the layout
# expected (the layouts are the ones `settings.ini` documents, from `polar_nb.config.LAYOUTS`). A
# row that cannot be read is a `ValueError` naming the file and the row. Every annotation file is
# UTF-8 text: a file that is not is a `ValueError` naming it and the position of its first bad byte.
# JSON files are read with each key at most once per object (JSON lets a key repeat and keeps the
# last value; a repeated key means two values for one thing, so it is an error).

# %%
#| export
def _need(path:Path, layout:str)->Path:
    "`path` if it exists, else a FileNotFoundError naming it and showing the `layout` expected."
    if not path.exists(): raise FileNotFoundError(f"{path} does not exist. Expected layout:\n{LAYOUTS[layout]}")
    return path

def _bad(path:Path, where:str, msg:str)->ValueError:
    "The error for a malformed row: file, row, what is wrong."
    return ValueError(f"{path}, {where}: {msg}")

def _text(path:Path)->str:
    "The UTF-8 text of `path` (line ends kept), else a ValueError naming the file and the first bad byte."
    data = path.read_bytes()
    try: return data.decode('utf-8')
    except UnicodeDecodeError as e: at, line = e.start, data[:e.start].count(b'\n') + 1
    raise ValueError(f"{path}: not UTF-8 text: byte {at} (line {line}) is {data[at:at+1]!r}")


# %%
#| export
def _unique_keys(pairs:list)->dict:
    "The JSON object of `pairs`, each key at most once."
    keys = [k for k,_ in pairs]
    if len(set(keys)) < len(keys): raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice in one object")
    return dict(pairs)

def _json(path:Path):
    "The JSON value in `path`, else a ValueError naming the file."
    text = _text(path)
    try: return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e: raise ValueError(f"{path}: not valid JSON ({e})") from None
    except ValueError as e: raise ValueError(f"{path}: {e}") from None


# %%
test_fail(lambda: _need(Path('/nonexistent/test.json'), 'conconchi'), contains='/nonexistent/test.json')
try: _need(Path('/nonexistent/test.json'), 'conconchi')
except FileNotFoundError as e: print(e)

# %%
tmp = Path(tempfile.mkdtemp())
(tmp/'latin1.csv').write_bytes('image_name,caption\n1.jpg,a café\n'.encode('latin-1'))
test_fail(lambda: _text(tmp/'latin1.csv'), contains='latin1.csv: not UTF-8 text: byte 30 (line 2)')
(tmp/'twice.json').write_text('{"a.jpg": "one", "a.jpg": "two"}')
test_fail(lambda: _json(tmp/'twice.json'), contains="twice.json: key 'a.jpg' appears twice")
test_eq(_unique_keys([('a', 1), ('b', 2)]), {'a': 1, 'b': 2})


# %% [markdown]
# ## What every benchmark offers
#
# `Benchmark` holds what both readers share: checking a concept id, the two kinds of queries,
# captions aligned with the pool, a summary, and a check for images missing on disk (the only
# method that looks at the image files).

# %%
#| export
class Benchmark:
    "Concepts, a retrieval pool, support images and queries read from a benchmark's annotation files."
    name = 'benchmark'
    def __repr__(self): return (f"{type(self).__name__}({str(self.root)!r}): {len(self.concepts)} concepts, "
                                f"{len(self.pool)} pool images")

    def _check(self, c):
        "`c` if it is a concept of this benchmark, else a KeyError listing the known ones."
        if c not in self._ids: raise KeyError(f"{c!r} is not a concept of {self.name} (concepts: {self.concepts})")
        return c

    def queries(self, kind:str='context')->list[Query]:
        "The queries of `kind`: 'context' (the benchmark's captions) or 'concept' (one 'An image of *' per concept)."
        if kind not in ('context', 'concept'): raise ValueError(f"kind must be 'context' or 'concept', not {kind!r}")
        return self._context_queries() if kind=='context' else self._concept_queries()


# %% [markdown]
# VLM captions (the general-knowledge test of the paper) come as a JSON file mapping an image path,
# relative to the benchmark's root, to a caption, e.g. `{"data/images/IMG_0034.jpeg": "A doll is
# sitting in a black office chair."}`. They are returned in pool order; a pool image without a
# caption is an error, and so are a caption that is not a string and two keys naming one image
# (`"data/images/a.jpg"` and `"./data/images/a.jpg"`). Captions of images outside the pool are
# ignored: one file may serve several splits (the PerVL world writes one for both).

# %%
#| export
@patch
def vlm_captions(self:Benchmark,
                 path:str|Path, # JSON file {image path relative to the root: caption}
                )->list[str]:
    "The captions of `path` aligned with `self.pool`."
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"{path} does not exist: expected a JSON file {{relative image path: caption}}")
    caps = _caption_file(path, self.root)
    missing = [str(p) for p in self.pool if p not in caps]
    if missing: raise ValueError(f"{path}: no caption for {len(missing)} pool image(s), e.g. {missing[:3]}")
    return [caps[p] for p in self.pool]

def _caption_file(path:Path, # JSON file {image path relative to `root`: caption}
                  root:Path, # the benchmark's root
                 )->dict[Path, str]:
    "The captions of `path` keyed by image path, checked: one string per image."
    d, caps = _json(path), {}
    if not isinstance(d, dict): raise ValueError(f"{path}: expected an object {{relative image path: caption}}, not a {type(d).__name__}")
    for k, v in d.items():
        if not isinstance(v, str): raise ValueError(f"{path}: the caption of {k!r} must be a string, not {v!r}")
        if root/k in caps: raise ValueError(f"{path}: two keys name the image {root/k}")
        caps[root/k] = v
    return caps


# %%
(tmp/'caps.json').write_text(json.dumps({'data/images/a.jpg': 'a toy', 'data/images/b.jpg': 'a mug'}))
test_eq(_caption_file(tmp/'caps.json', tmp), {tmp/'data/images/a.jpg': 'a toy', tmp/'data/images/b.jpg': 'a mug'})
(tmp/'caps.json').write_text(json.dumps({'data/images/a.jpg': 'a toy', './data/images/a.jpg': 'a toy again'}))
test_fail(lambda: _caption_file(tmp/'caps.json', tmp), contains='two keys name the image')
(tmp/'caps.json').write_text(json.dumps({'data/images/a.jpg': None}))
test_fail(lambda: _caption_file(tmp/'caps.json', tmp), contains="the caption of 'data/images/a.jpg' must be a string")


# %%
#| export
@patch
def summary(self:Benchmark)->pd.DataFrame:
    "How many concepts, support images, pool images and queries (context: single- and multi-concept)."
    ctx = self.queries('context')
    return pd.DataFrame([dict(benchmark=self.name, concepts=len(self.concepts),
        support=sum(len(self.support(c)) for c in self.concepts), pool=len(self.pool), context=len(ctx),
        single=sum(len(set(q.concepts))==1 for q in ctx), multi=sum(len(set(q.concepts))>1 for q in ctx),
        concept=len(self.queries('concept')))])

@patch
def missing_images(self:Benchmark)->list[Path]:
    "The pool and support images that are not on disk (the only check that looks at image files)."
    return [p for p in [*self.pool, *(p for c in self.concepts for p in self.support(c))] if not p.is_file()]


# %% [markdown]
# ## ConCon-Chi
#
# ConCon-Chi (Rosasco et al., CVPR 2024) is distributed as `data/images/` and two JSON files in
# `data/annotations/`. Each file holds `concepts` (one `{"coarse", "discriminative", "rich"}`
# description per concept; the position is the concept id), `max_gts`, `max_concepts` and `data`,
# a list of rows:
#
# - `GTS`: image paths relative to `data/images/`;
# - `CONCEPTS`: the concept ids in the image, in the order of the `*`s of `LABEL`;
# - `LABEL`: the query text, e.g. `"* on a couch next to *"`;
# - `ADDITIONAL GTS`: other images that also answer the query (`test.json`);
# - `KIND`, `ENV`: the kind of context and the environment; `KIND` is `"common"` or
#   `"uncommon"` for a query, and `"negative"` marks distractor images that are never queries.
#
# The benchmark's own loader (`vlpers/datasets/conconchi.py` of `hsp-iit/concon-chi_benchmark`,
# which POLAR's `conconchi_dataset.py` follows) builds the retrieval pool by exploding `GTS` over
# **all** rows of `test.json`, negatives included, then drops the negative rows from the queries and
# maps each query's `GTS + ADDITIONAL GTS` to pool positions, skipping additional images that are
# not in the pool ("because they are in the training set or in another exclusive image pool", as
# its comment says). Concept-only evaluation (POLAR's `eval_conconchi.py`) ranks only pool images
# whose row has exactly one concept; the positives are those whose `CONCEPTS` contains the concept.
# Support images are the `train.json` rows of the concept.
#
# Here is a tiny ConCon-Chi in that format: three concepts, a multi-concept query, a row with two
# images, two negative rows, and additional GTS both inside and outside the pool.

# %%
def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(obj, indent=1))

demo_concepts = [dict(coarse='toy', discriminative='green robot toy', rich='a small green robot toy with yellow eyes'),
                 dict(coarse='bottle', discriminative='blue bottle', rich='a blue bottle with a smiling face'),
                 dict(coarse='mug', discriminative='striped mug', rich='a red and white striped mug')]
def row(label, gts, concepts, kind='common', env='kitchen', more=()):
    return {'LABEL': label, 'GTS': gts, 'ADDITIONAL GTS': list(more), 'CONCEPTS': concepts, 'KIND': kind, 'ENV': env}

cc_root = Path(tempfile.mkdtemp())/'conconchi'
write_json(cc_root/'data/annotations/train.json', dict(concepts=demo_concepts, max_gts=2, max_concepts=1, data=[
    row('*', ['train/toy1.jpg', 'train/toy2.jpg'], [0], 'train'), row('*', ['train/bottle1.jpg'], [1], 'train'),
    row('*', ['train/mug1.jpg', 'train/mug2.jpg'], [2], 'train')]))
write_json(cc_root/'data/annotations/test.json', dict(concepts=demo_concepts, max_gts=3, max_concepts=2, data=[
    row('* on a couch', ['test/a.jpg', 'test/b.jpg'], [0], more=['test/e.jpg']),
    row('* next to *', ['test/c.jpg'], [0, 1], 'uncommon', more=['train/toy1.jpg']),
    row('* in a sink', ['test/d.jpg'], [2]),
    row('', ['test/e.jpg'], [0], 'negative'),
    row('', ['test/f.jpg'], [], 'negative')]))
print((cc_root/'data/annotations/test.json').read_text()[:400])


# %% [markdown]
# Reading a file checks each row. Both files need `GTS`, a non-empty list of image paths, and
# `CONCEPTS`, a list of known concept ids. `test.json` also needs `KIND`, a string, since it decides
# whether the row is a query, and each row that is not negative needs `LABEL`, the query text. A
# required key that is missing is an error naming the file, the row and the key. `ADDITIONAL GTS`
# is a list (missing means none) and `ENV` is read as it is (missing means `None`); `train.json`
# rows are read for their `GTS` and `CONCEPTS` only. In the tables, the key `ADDITIONAL GTS`
# becomes the column `ADDITIONAL_GTS`.

# %%
#| export
def _read_json(path:Path)->dict:
    "The annotation object in `path`, with its list of `data` rows."
    d = _json(path)
    if not isinstance(d, dict) or not isinstance(d.get('data'), list): raise ValueError(f"{path}: expected an object with a 'data' list")
    return d

def _key(r:dict, key:str, path:Path, i:int):
    "The value of `key` in row `i`, else a ValueError naming the file, the row and the key."
    if key not in r: raise _bad(path, f"data row {i}", f"missing key {key!r} (the row has {list(r)})")
    return r[key]

def _images(r:dict, key:str, path:Path, i:int, required=True)->list[str]:
    "The image paths under `key` of row `i`, checked."
    v = _key(r, key, path, i) if required else r.get(key, [])
    if not isinstance(v, list) or not all(isinstance(g, str) and g for g in v) or (required and not v):
        raise _bad(path, f"data row {i}", f"{key!r} must be a {'non-empty ' if required else ''}list of image paths, not {v!r}")
    return v


# %%
#| export
def _concept_ids(r:dict, path:Path, i:int, n:int)->list[int]:
    "The `CONCEPTS` of row `i`, checked to be ids in `0..n-1`."
    v = _key(r, 'CONCEPTS', path, i)
    if not isinstance(v, list) or not all(type(c) is int and 0 <= c < n for c in v):
        raise _bad(path, f"data row {i}", f"'CONCEPTS' must be a list of concept ids in 0..{n-1}, not {v!r}")
    return v

_KINDS = ('common', 'uncommon', 'negative')  # the KIND values of test.json rows

def _label_kind(r:dict, path:Path, i:int)->tuple:
    "LABEL and KIND of test.json row `i`: KIND a string, LABEL the query text unless KIND is 'negative'."
    kind = _key(r, 'KIND', path, i)
    if not isinstance(kind, str): raise _bad(path, f"data row {i}", f"'KIND' must be a string such as {_KINDS}, not {kind!r}")
    label = r.get('LABEL') if kind == 'negative' else _key(r, 'LABEL', path, i)
    if kind != 'negative' and not isinstance(label, str): raise _bad(path, f"data row {i}", f"'LABEL' must be the query text, not {label!r}")
    return label, kind


# %% [markdown]
# Some rows of `test.json` are read as they are, as the benchmark's own loader reads them, with a
# warning naming them, because they are most likely mistakes: a `KIND` that is none of `common`,
# `uncommon` and `negative` (only `negative` marks a distractor, so such a row is a query), a query
# row with no concept, and `CONCEPTS` naming a concept twice (the methods apply a concept once, and
# concept-only queries do not rank such an image, its row having more than one concept).

# %%
#| export
def _warn_rows(path:Path, idx, msg:str):
    "A warning about the data rows `idx` of `path` (the first ten named), when there are any."
    idx = [int(i) for i in idx]
    if idx: warnings.warn(f"{path}, data rows {idx[:10]}{'…' if len(idx) > 10 else ''} ({len(idx)}): {msg}")

def _warn_queries(rows:pd.DataFrame, path:Path):
    "Warn about the rows of test.json that are most likely wrong: unknown KIND, a query without concept, a concept twice."
    q = rows[rows.KIND != 'negative']
    odd = q.KIND[~q.KIND.isin(_KINDS)]
    _warn_rows(path, odd.index, f"KIND {', '.join(map(repr, sorted(set(odd))))} is not one of {_KINDS}: these rows are queries")
    _warn_rows(path, q.index[q.CONCEPTS.map(len) == 0], "a query row with no concept")
    _warn_rows(path, rows.index[rows.CONCEPTS.map(lambda c: len(set(c)) < len(c))], "CONCEPTS name a concept more than once")


# %%
odd = pd.DataFrame(dict(KIND=['common', 'Common', 'common', 'negative', 'Negative'], CONCEPTS=[[0], [0, 0], [], [0], []]))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always'); _warn_queries(odd, Path('test.json'))
test_eq([str(x.message) for x in w], [
    "test.json, data rows [1, 4] (2): KIND 'Common', 'Negative' is not one of ('common', 'uncommon', 'negative'): these rows are queries",
    "test.json, data rows [2, 4] (2): a query row with no concept", "test.json, data rows [1] (1): CONCEPTS name a concept more than once"])


# %%
#| export
def _rows(d:dict, # an annotation object, from `_read_json`
          path:Path, # its file, for messages
          n:int, # the number of concepts
          test:bool=False, # whether it is test.json: KIND, and LABEL of queries, required
         )->pd.DataFrame:
    "The rows of a ConCon-Chi annotation file, checked, one per row of `data` in file order."
    out = []
    for i, r in enumerate(d['data']):
        if not isinstance(r, dict): raise _bad(path, f"data row {i}", f"expected an object, not {r!r}")
        label, kind = _label_kind(r, path, i) if test else (r.get('LABEL'), r.get('KIND'))
        out.append(dict(LABEL=label, GTS=_images(r, 'GTS', path, i), CONCEPTS=_concept_ids(r, path, i, n),
                        ADDITIONAL_GTS=_images(r, 'ADDITIONAL GTS', path, i, required=False), KIND=kind, ENV=r.get('ENV')))
    rows = pd.DataFrame(out, columns=['LABEL', 'GTS', 'CONCEPTS', 'ADDITIONAL_GTS', 'KIND', 'ENV'])
    if test: _warn_queries(rows, path)
    return rows


# %%
test_rows = _rows(_read_json(cc_root/'data/annotations/test.json'), Path('test.json'), 3, test=True)
test_eq(test_rows.KIND.tolist(), ['common', 'uncommon', 'common', 'negative', 'negative'])
test_fail(lambda: _rows({'data': [{'GTS': ['a.jpg'], 'CONCEPTS': [3]}]}, Path('test.json'), 3), contains='test.json, data row 0')
test_fail(lambda: _rows({'data': [{'GTS': 'a.jpg', 'CONCEPTS': [0]}]}, Path('test.json'), 3), contains="'GTS' must be")
test_fail(lambda: _rows({'data': [{'GTS': ['a.jpg'], 'CONCEPTS': [0]}]}, Path('test.json'), 3, test=True),
          contains="test.json, data row 0: missing key 'KIND'")
test_fail(lambda: _rows({'data': [{'GTS': ['a.jpg'], 'CONCEPTS': [0], 'KIND': 'common'}]}, Path('test.json'), 3, test=True),
          contains="data row 0: missing key 'LABEL'")
test_eq(_rows({'data': [{'GTS': ['a.jpg'], 'CONCEPTS': [], 'KIND': 'negative'}]}, Path('test.json'), 3, test=True).LABEL[0], None)
test_rows


# %% [markdown]
# The pool is one entry per `GTS` image of `test.json`, in file order, with the row it comes from.
# An image listed twice would make positions ambiguous (the benchmark's own loader cannot index
# it either), so it is an error.

# %%
#| export
def _pool(rows:pd.DataFrame, path:Path)->pd.DataFrame:
    "One row per `GTS` image of `rows`, in order: image, source row, KIND, ENV, CONCEPTS."
    pool = rows.reset_index(names='row').explode('GTS', ignore_index=True).rename(columns={'GTS': 'image'})
    dup = pool.image[pool.image.duplicated()]
    if len(dup): raise _bad(path, f"data rows {pool.row[pool.image==dup.iloc[0]].tolist()}", f"image {dup.iloc[0]!r} is listed twice")
    return pool[['image', 'row', 'KIND', 'ENV', 'CONCEPTS']]


# %%
demo_pool = _pool(test_rows, Path('test.json'))
test_eq(demo_pool.image.tolist(), ['test/a.jpg', 'test/b.jpg', 'test/c.jpg', 'test/d.jpg', 'test/e.jpg', 'test/f.jpg'])
test_fail(lambda: _pool(pd.concat([test_rows, test_rows]), Path('test.json')), contains="'test/a.jpg' is listed twice")
demo_pool


# %% [markdown]
# `ConConChi` puts the pieces together. Concept ids and descriptions come from the `concepts` of
# `train.json` (the benchmark's text-only baseline reads them there too; `test.json` is the
# fallback when `train.json` has none). `images` is where the photos are, `root/data/images`.

# %%
#| export
class ConConChi(Benchmark):
    "ConCon-Chi read from `root/data/annotations/{train,test}.json`; images are under `root/data/images`."
    name = 'conconchi'
    def __init__(self, root:str|Path): # the folder holding `data/`
        self.root = _need(Path(root).expanduser(), 'conconchi')
        ann, self.images = self.root/'data'/'annotations', self.root/'data'/'images'
        self.train_file, self.test_file = _need(ann/'train.json', 'conconchi'), _need(ann/'test.json', 'conconchi')
        train, test = _read_json(self.train_file), _read_json(self.test_file)
        self._descriptions = _descriptions(train, self.train_file, test, self.test_file)
        self.concepts = list(range(len(self._descriptions)))
        self._ids = set(self.concepts)
        self.train = _rows(train, self.train_file, len(self.concepts))
        self.test = _rows(test, self.test_file, len(self.concepts), test=True)
        self.pool_table = _pool(self.test, self.test_file)
        self.pool = [self.images/g for g in self.pool_table.image]


# %%
#| export
def _descriptions(train:dict, train_file:Path, test:dict, test_file:Path)->list[dict]:
    "The `concepts` descriptions of `train.json` (else of `test.json`), one dict per concept id."
    d, path = (train, train_file) if 'concepts' in train else (test, test_file)
    cs = d.get('concepts')
    if not isinstance(cs, list) or not all(isinstance(c, dict) for c in cs):
        raise ValueError(f"{path}: 'concepts' must be a list of {{'coarse', 'discriminative', 'rich'}} descriptions, not {cs!r}")
    return cs


# %%
cc = ConConChi(cc_root)
test_eq(cc.concepts, [0, 1, 2])
test_eq([p.relative_to(cc_root).as_posix() for p in cc.pool][:2], ['data/images/test/a.jpg', 'data/images/test/b.jpg'])
cc


# %% [markdown]
# Support images of a concept are the `GTS` of its `train.json` rows, in file order; the
# descriptions are its entry of `concepts`.

# %%
#| export
@patch
def support(self:ConConChi, c:int)->list[Path]:
    "The training (support) images of concept `c`."
    self._check(c)
    return [self.images/g for gts, cs in zip(self.train.GTS, self.train.CONCEPTS) if c in cs for g in gts]

@patch
def descriptions(self:ConConChi, c:int)->dict:
    "The text descriptions of concept `c`: coarse, discriminative and rich."
    return dict(self._descriptions[self._check(c)])


# %%
test_eq([p.name for p in cc.support(0)], ['toy1.jpg', 'toy2.jpg'])
test_eq(cc.descriptions(1)['discriminative'], 'blue bottle')
test_fail(lambda: cc.support(5), contains='not a concept of conconchi')
cc.descriptions(0)


# %% [markdown]
# Context queries are the rows of `test.json` that are not negatives, in file order. Positives are
# the pool positions of `GTS + ADDITIONAL GTS`, in that order, skipping images outside the pool:
# positives are defined as pool images, so those are not an error, but a warning counts them and
# names their rows (in the demo, `train/toy1.jpg`, a support image).

# %%
#| export
@patch
def _context_queries(self:ConConChi)->list[Query]:
    "One query per non-negative row of `test.json`: its LABEL, CONCEPTS and in-pool GTS + ADDITIONAL GTS."
    at, qs, outside = {g: j for j,g in enumerate(self.pool_table.image)}, [], {}
    for i, r in self.test[self.test.KIND != 'negative'].iterrows():
        if r.LABEL.count('*') != len(r.CONCEPTS): warnings.warn(f"{self.test_file}, data row {i}: LABEL {r.LABEL!r} has "
                                                                f"{r.LABEL.count('*')} '*' for {len(r.CONCEPTS)} concept(s)")
        if out := [g for g in r.ADDITIONAL_GTS if g not in at]: outside[i] = out
        pos = list(dict.fromkeys(at[g] for g in r.GTS + r.ADDITIONAL_GTS if g in at))
        qs.append(Query(r.LABEL, list(r.CONCEPTS), pos, None, dict(row=i, kind=r.KIND, env=r.ENV)))
    _warn_outside(self.test_file, outside)
    return qs

def _warn_outside(path:Path, outside:dict):
    "Warn about the ADDITIONAL GTS images (row: images) that are not in the pool, so not positives."
    imgs = [g for gs in outside.values() for g in gs]
    if imgs: _warn_rows(path, outside, f"{len(imgs)} ADDITIONAL GTS image(s) are not in the pool and are not positives, e.g. {imgs[:3]}")


# %%
ctx = cc.queries('context')
test_eq([q.text for q in ctx], ['* on a couch', '* next to *', '* in a sink'])
test_eq([q.positives for q in ctx], [[0, 1, 4], [2], [3]])  # e.jpg (a negative row) is in the pool; train/toy1.jpg is not
test_eq(ctx[1].concepts, [0, 1])
queries_frame(ctx)


# %% [markdown]
# Concept-only queries, one per concept, rank the pool images whose row has exactly one concept
# (negatives included, as in POLAR's evaluation); the positives are those of the concept. A concept
# with no such image still gets its query, with no positive and a warning: its metrics are undefined
# (NaN), as in the benchmark's own code.

# %%
#| export
def _concept_only(concepts:list, # the concept ids
                  concepts_of:list, # the concepts of each pool image
                  candidates:list[int]|None=None, # the pool images ranked (None: all)
                 )->list[Query]:
    "One 'An image of *' query per concept whose positives are the candidates showing it."
    ranked = range(len(concepts_of)) if candidates is None else candidates
    qs = [Query('An image of *', [c], [j for j in ranked if c in concepts_of[j]], None if candidates is None else list(candidates),
                dict(kind='concept')) for c in concepts]
    if empty := [q.concepts[0] for q in qs if not q.positives]: warnings.warn(f"concept-only queries of {empty} have no positive")
    return qs

@patch
def _concept_queries(self:ConConChi)->list[Query]:
    "Concept-only queries: candidates are the pool images whose row has exactly one concept."
    cs = self.pool_table.CONCEPTS.tolist()
    return _concept_only(self.concepts, cs, [j for j,c in enumerate(cs) if len(c)==1])


# %%
con = cc.queries('concept')
test_eq([q.candidates for q in con], [[0, 1, 3, 4]]*3)  # c.jpg (two concepts) and f.jpg (none) are not ranked
test_eq([q.positives for q in con], [[0, 1, 4], [], [3]])
queries_frame(con)

# %% [markdown]
# Concept 1 (the bottle) appears only in a two-concept image, so its concept-only query has no
# positive here: the warning above says so.

# %% [markdown]
# ## PerVL DeepFashion2
#
# PerVL's DeepFashion2 split (Cohen et al., ECCV 2022; `annotations/deep_fashion/` of
# `NVlabs/PerVLBenchmark`) pairs annotation files with DeepFashion2's training images
# (`train/image/*.jpg`). A concept is a *pair id*: one garment, photographed on several people.
#
# - `{split}_fsl_train.txt`: blocks separated by blank lines, each `codes_infer/<pair_id>:`
#   followed by the file names of its support images (in `train/image/`);
# - `{split}_captions.csv` (`image_name,pair_id,caption`): the retrieval pool, one image and one
#   caption per row; the caption's only positive is its own image;
# - `shortened_deepfashion2_captions.csv`, `detailed_deepfashion2_captions.csv`: the same images
#   with shorter or longer captions, keyed by `image_name` (the split file's captions are the
#   detailed ones; POLAR and PALAVRA evaluate on the shortened ones);
# - `train_coarse_grained_names.csv` (`unique_pair_ids,pair_id_categories`): the garment class of
#   every pair id.
#
# The captions describe a *person*; the garment is what they wear. POLAR's
# `deepfashion2_dataset.py` turns "person" into "person wearing *" with Python's
# `str.replace`, which rewrites every occurrence, inside other words too; the ConCon-Chi
# benchmark's PerVL loader replaces only the first. Both test splits hold captions with two people
# ("behind a person, another person is at a desk.", "a person stands in front of another
# person."), and in every one of them the first person is the one wearing the garment, the second
# is "another person". So by default the **first whole-word "person", in any case**, gets
# " wearing *": "Person" stays capitalised, "person's backdrop" becomes "person wearing *'s
# backdrop", "personal" and "persons" are left alone. `person='every'` reproduces POLAR's
# `str.replace` exactly (one `*` per occurrence; the query then lists the concept once per `*`).
# A caption without a person cannot hold the concept and is an error.

# %%
#| export
_PERSON = re.compile(r'\b(person)\b', re.IGNORECASE)

def person_wearing(caption:str, # a PerVL caption, e.g. "a person stands by a deck."
                   person:str='first', # 'first': first whole-word "person", any case; 'every': every "person" substring
                  )->str:
    "`caption` with \" wearing *\" after its person."
    if person not in ('first', 'every'): raise ValueError(f"person must be 'first' or 'every', not {person!r}")
    out = caption.replace('person', 'person wearing *') if person=='every' else _PERSON.sub(r'\1 wearing *', caption, count=1)
    if '*' not in out: raise ValueError(f"no 'person' to dress in {caption!r}")
    return out


# %%
test_eq(person_wearing('the person stands by a deck.'), 'the person wearing * stands by a deck.')
test_eq(person_wearing('Person on a bench.'), 'Person wearing * on a bench.')
test_eq(person_wearing("a curtain is the person's backdrop."), "a curtain is the person wearing *'s backdrop.")
test_eq(person_wearing('a person stands in front of another person.'), 'a person wearing * stands in front of another person.')
test_eq(person_wearing('a person stands in front of another person.', 'every'),
        'a person wearing * stands in front of another person wearing *.')
test_eq(person_wearing('personal items near a person.'), 'personal items near a person wearing *.')
test_fail(lambda: person_wearing('a dog on a couch.'), contains='no \'person\'')


# %% [markdown]
# The support file is read block by block. A file name before any `codes_infer/<pair_id>:` line,
# a header whose last part is not an integer, a pair id listed twice, a pair id with no image and
# an image listed twice (in one block or in two) are errors naming the line.

# %%
#| export
def _read_fsl(path:Path)->dict[int, list[str]]:
    "The support image names of each pair id in a `{split}_fsl_train.txt`, in file order."
    out, cur, header, seen = {}, None, {}, {}  # header: line of each pair id; seen: line of each image
    for n, line in enumerate(_text(path).splitlines(), 1):
        line = line.strip()
        if not line: cur = None; continue
        if line.endswith(':'):
            pid = line[:-1].split('/')[-1]
            if not pid.isdigit() or int(pid) in out: raise _bad(path, f"line {n}", f"{line!r} is not a new codes_infer/<pair_id>: header")
            cur = int(pid); out[cur] = []; header[cur] = n
        elif cur is None: raise _bad(path, f"line {n}", f"image {line!r} comes before any codes_infer/<pair_id>: header")
        elif line in seen: raise _bad(path, f"line {n}", f"image {line!r} is listed twice (first at line {seen[line]})")
        else: out[cur].append(line); seen[line] = n
    if empty := [p for p, v in out.items() if not v]: raise _bad(path, f"line {header[empty[0]]}", f"pair id {empty[0]} lists no support image")
    return out


# %%
def write_text(path, text): path.parent.mkdir(parents=True, exist_ok=True); path.write_text(text)
df_root = Path(tempfile.mkdtemp())/'deepfashion2'
write_text(df_root/'test_fsl_train.txt', 'codes_infer/12:\n000101.jpg\n000102.jpg\n\ncodes_infer/7:\n000201.jpg\n')
test_eq(_read_fsl(df_root/'test_fsl_train.txt'), {12: ['000101.jpg', '000102.jpg'], 7: ['000201.jpg']})
write_text(df_root/'bad_fsl_train.txt', '000101.jpg\ncodes_infer/12:\n')
test_fail(lambda: _read_fsl(df_root/'bad_fsl_train.txt'), contains='bad_fsl_train.txt, line 1')
write_text(df_root/'bad_fsl_train.txt', 'codes_infer/12:\n000101.jpg\n\ncodes_infer/7:\n\ncodes_infer/8:\n000201.jpg\n')
test_fail(lambda: _read_fsl(df_root/'bad_fsl_train.txt'), contains='line 4: pair id 7 lists no support image')
write_text(df_root/'bad_fsl_train.txt', 'codes_infer/12:\n000101.jpg\n\ncodes_infer/7:\n000101.jpg\n')
test_fail(lambda: _read_fsl(df_root/'bad_fsl_train.txt'), contains="line 5: image '000101.jpg' is listed twice (first at line 2)")


# %% [markdown]
# The CSV files are read with the `csv` module, so an error can name the exact line; every row
# must have the columns of its header, with integer pair ids. A row with more fields than the
# header (a caption with a comma, unquoted) is an error rather than a caption cut at the comma.

# %%
#| export
def _read_csv(path:Path, cols:list[str])->list[dict]:
    "The rows of CSV `path` as dicts with a `line` number, checked to have `cols`."
    rd, rows = csv.DictReader(io.StringIO(_text(path), newline='')), []
    if not set(cols) <= set(rd.fieldnames or []): raise _bad(path, 'line 1', f"expected columns {cols}, found {rd.fieldnames}")
    for r in rd:
        if None in r: raise _bad(path, f"line {rd.line_num}", f"{len(rd.fieldnames) + len(r[None])} fields for the "
                                 f"{len(rd.fieldnames)} columns {rd.fieldnames} (a value with an unquoted comma?)")
        rows.append(dict(r, line=rd.line_num))
    for r in rows:
        if any(not r.get(c) for c in cols): raise _bad(path, f"line {r['line']}", f"empty or missing value in {r}")
    return rows

def _pair_id(r:dict, key:str, path:Path)->int:
    "The integer pair id in column `key` of CSV row `r`."
    if not r[key].strip().isdigit(): raise _bad(path, f"line {r['line']}", f"{key} {r[key]!r} is not an integer")
    return int(r[key])


# %%
write_text(df_root/'test_captions.csv', 'image_name,pair_id,caption\ntrain/image/000301.jpg,12,"a person sits, smiling."\n'
           'train/image/000302.jpg,12,the person stands by a deck.\ntrain/image/000401.jpg,7,"behind a person, another person is at a desk."\n')
rows = _read_csv(df_root/'test_captions.csv', ['image_name', 'pair_id', 'caption'])
test_eq([(r['line'], _pair_id(r, 'pair_id', Path('x'))) for r in rows], [(2, 12), (3, 12), (4, 7)])
test_fail(lambda: _pair_id(dict(pair_id='twelve', line=5), 'pair_id', Path('x.csv')), contains='x.csv, line 5')
write_text(df_root/'bad.csv', 'image_name,pair_id,caption\ntrain/image/000301.jpg,12,a person sits, smiling.\n')
test_fail(lambda: _read_csv(df_root/'bad.csv', ['image_name', 'pair_id', 'caption']), contains='bad.csv, line 2: 4 fields for the 3 columns')
rows[0]


# %% [markdown]
# The pool is the split's caption file in its order; each image's query text is its caption in the
# chosen wording (matched by `image_name`, whose pair id must agree), dressed by `person_wearing`.

# %%
#| export
def _pervl_pool(split_file:Path, caption_file:Path, pair_ids:set, person:str='first')->pd.DataFrame:
    "The pool of a PerVL split: image_name, pair_id, its caption in the chosen wording, the query text."
    rows = _read_csv(split_file, ['image_name', 'pair_id'])
    caps = _caption_index(caption_file)
    out, seen = [], {}  # seen: the line of each image
    for r in rows:
        pid, name = _pair_id(r, 'pair_id', split_file), r['image_name']
        if name in seen: raise _bad(split_file, f"line {r['line']}", f"an image is listed twice: {name!r} (first at line {seen[name]})")
        seen[name] = r['line']
        if pid not in pair_ids: raise _bad(split_file, f"line {r['line']}", f"pair id {pid} has no support images")
        if name not in caps: raise _bad(split_file, f"line {r['line']}", f"{name!r} has no caption in {caption_file.name}")
        c = caps[name]
        if c['pair_id'] != pid: raise _bad(caption_file, f"line {c['line']}", f"pair id {c['pair_id']} differs from {pid} in {split_file.name}")
        try: text = person_wearing(c['caption'], person)
        except ValueError as e: raise _bad(caption_file, f"line {c['line']}", str(e)) from None
        out.append(dict(image_name=name, pair_id=pid, caption=c['caption'], text=text))
    return pd.DataFrame(out, columns=['image_name', 'pair_id', 'caption', 'text'])


# %%
#| export
def _caption_index(path:Path)->dict[str, dict]:
    "The rows of a caption file keyed by image_name (each name once)."
    out = {}
    for r in _read_csv(path, ['image_name', 'pair_id', 'caption']):
        if r['image_name'] in out: raise _bad(path, f"line {r['line']}", f"{r['image_name']!r} is listed twice")
        out[r['image_name']] = dict(r, pair_id=_pair_id(r, 'pair_id', path))
    return out


# %%
write_text(df_root/'shortened_deepfashion2_captions.csv', 'image_name,pair_id,caption\ntrain/image/000401.jpg,7,'
           '"behind a person, another person sits."\ntrain/image/000301.jpg,12,a person sits.\n'
           "train/image/000302.jpg,12,the person's deck.\ntrain/image/999999.jpg,3,not in this split.\n")
demo_df_pool = _pervl_pool(df_root/'test_captions.csv', df_root/'shortened_deepfashion2_captions.csv', {12, 7})
test_eq(demo_df_pool.text.tolist(), ['a person wearing * sits.', "the person wearing *'s deck.", 'behind a person wearing *, another person sits.'])
test_fail(lambda: _pervl_pool(df_root/'test_captions.csv', df_root/'shortened_deepfashion2_captions.csv', {12}), contains='pair id 7 has no support')
demo_df_pool

# %% [markdown]
# `PerVLDeepFashion2` reads a split (`test` or `validation`) with the chosen caption wording; the
# split, the wording and the `person` rule are checked before any file is read. The concepts are
# the pair ids of the support file, in its order; the pool paths are `root/<image_name>` (the
# names already start with `train/image/`), the support paths `root/train/image/<name>`. Each
# pair id takes its class from `train_coarse_grained_names.csv`; a pair id listed there twice
# with two classes is an error.

# %%
#| export
CAPTION_FILES = dict(shortened='shortened_deepfashion2_captions.csv', detailed='detailed_deepfashion2_captions.csv')
_SPLITS, _PERSONS = ('test', 'validation'), ('first', 'every')

def _one_of(arg:str, v, allowed)->str:
    "`v` if it is one of `allowed`, else a ValueError naming the argument `arg` and the values allowed."
    if v not in list(allowed): raise ValueError(f"{arg} must be one of {list(allowed)}, not {v!r}")
    return v


# %%
test_eq(_one_of('split', 'test', _SPLITS), 'test')
test_fail(lambda: _one_of('captions', 'short', CAPTION_FILES), contains="captions must be one of ['shortened', 'detailed'], not 'short'")


# %%
#| export
class PerVLDeepFashion2(Benchmark):
    "PerVL's DeepFashion2 split read from its annotation files in `root`; images are under `root/train/image`."
    name = 'deepfashion2'
    def __init__(self, root:str|Path, # the folder holding the annotation files and train/image/
                 split:str='test', # 'test' or 'validation'
                 captions:str='shortened', # query wording: 'shortened' (as in the paper) or 'detailed'
                 person:str='first', # which "person" gets " wearing *" (see `person_wearing`)
                ):
        for arg, v, ok in (('split', split, _SPLITS), ('captions', captions, CAPTION_FILES), ('person', person, _PERSONS)):
            _one_of(arg, v, ok)
        self.root, self.split, self.captions = _need(Path(root).expanduser(), 'deepfashion2'), split, captions
        self.images = self.root/'train'/'image'
        f = {k: _need(self.root/n, 'deepfashion2') for k,n in dict(fsl=f'{split}_fsl_train.txt', split=f'{split}_captions.csv',
             captions=CAPTION_FILES[captions], classes='train_coarse_grained_names.csv').items()}
        self._support = _read_fsl(f['fsl'])
        self.concepts, self._ids = list(self._support), set(self._support)
        self._classes = _classes(f['classes'], self._ids)
        self.pool_table = _pervl_pool(f['split'], f['captions'], self._ids, person)
        self.pool = [self.root/n for n in self.pool_table.image_name]


# %%
#| export
def _classes(path:Path, pair_ids:set)->dict[int, str]:
    "The coarse class of each of `pair_ids`, from `train_coarse_grained_names.csv`."
    out = {}
    for r in _read_csv(path, ['unique_pair_ids', 'pair_id_categories']):
        pid, cls = _pair_id(r, 'unique_pair_ids', path), r['pair_id_categories']
        if pid in out and out[pid] != cls: raise _bad(path, f"line {r['line']}", f"pair id {pid} is listed twice, as {out[pid]!r} and {cls!r}")
        if pid in pair_ids: out[pid] = cls
    if missing := sorted(pair_ids - set(out)): raise ValueError(f"{path}: no class for pair id(s) {missing}")
    return out


# %%
write_text(df_root/'train_coarse_grained_names.csv', 'unique_pair_ids,pair_id_categories\n7,skirt\n12,short sleeve top\n13,vest\n')
df = PerVLDeepFashion2(df_root)
test_eq(df.concepts, [12, 7])
test_eq(df.pool[0], df_root/'train/image/000301.jpg')
test_fail(lambda: PerVLDeepFashion2(df_root, person='all'), contains="person must be one of ['first', 'every'], not 'all'")
write_text(df_root/'bad_names.csv', 'unique_pair_ids,pair_id_categories\n7,skirt\n12,short sleeve top\n7,vest\n')
test_fail(lambda: _classes(df_root/'bad_names.csv', {7, 12}), contains="line 4: pair id 7 is listed twice, as 'skirt' and 'vest'")
df


# %%
#| export
@patch
def support(self:PerVLDeepFashion2, c:int)->list[Path]:
    "The support images of pair id `c`."
    return [self.images/n for n in self._support[self._check(c)]]

@patch
def descriptions(self:PerVLDeepFashion2, c:int)->dict:
    "The text description of pair id `c`: its coarse class."
    return dict(coarse=self._classes[self._check(c)])


# %%
test_eq(df.support(7), [df_root/'train/image/000201.jpg'])
test_eq(df.descriptions(12), {'coarse': 'short sleeve top'})
test_fail(lambda: df.descriptions(3), contains='not a concept of deepfashion2')


# %% [markdown]
# Each pool image gives one context query, whose only positive is itself; the concept-only query
# of a pair id ranks the whole pool, and every image of that pair id is a positive.

# %%
#| export
@patch
def _context_queries(self:PerVLDeepFashion2)->list[Query]:
    "One query per pool image: its dressed caption, its pair id, and itself as the only positive."
    return [Query(r.text, [int(r.pair_id)]*r.text.count('*'), [j], None, dict(image=r.image_name))
            for j, r in enumerate(self.pool_table.itertuples())]

@patch
def _concept_queries(self:PerVLDeepFashion2)->list[Query]:
    "Concept-only queries: every pool image of the pair id is a positive; the whole pool is ranked."
    return _concept_only(self.concepts, [[p] for p in self.pool_table.pair_id])


# %%
test_eq([(q.concepts, q.positives) for q in df.queries('context')], [([12], [0]), ([12], [1]), ([7], [2])])
test_eq([(q.concepts, q.positives, q.candidates) for q in df.queries('concept')], [([12], [0, 1], None), ([7], [2], None)])
test_eq(PerVLDeepFashion2(df_root, person='every').queries('context')[2].concepts, [7, 7])
queries_frame(df.queries('context'))

# %% [markdown]
# ### The real PerVL annotation files
#
# When the real PerVL annotation files are at hand (here next to the repository, in
# `shared/fixtures/pervl_deepfashion2/`; for a user, their `data/deepfashion2/`), they read without
# the images: the test split holds 50 concepts, 653 support images, 221 pool images, 221 context
# queries and 50 concept-only queries.

# %%
real = Path('../../shared/fixtures/pervl_deepfashion2')
if real.is_dir():
    tables = [PerVLDeepFashion2(real, split).summary().assign(split=split) for split in ('test', 'validation')]
    real_test = PerVLDeepFashion2(real)
    test_eq(tables[0].loc[0, ['concepts', 'support', 'pool', 'context', 'concept']].tolist(), [50, 653, 221, 221, 50])
    display(pd.concat(tables, ignore_index=True))
else: print(f"{real.resolve()} is not here: the real PerVL annotation files are not read in this run")

# %%
if real.is_dir(): display(queries_frame(real_test.queries('context')).head())

# %% [markdown]
# ## Errors a user may meet
#
# A root that does not exist, or a file missing from it, names the path and shows the layout:

# %%
test_fail(lambda: ConConChi('/nonexistent/conconchi'), contains='/nonexistent/conconchi')
(cc_empty := Path(tempfile.mkdtemp())/'conconchi').mkdir()
try: ConConChi(cc_empty)
except FileNotFoundError as e: print(e)

# %%
try: PerVLDeepFashion2(df_root, split='validation')
except FileNotFoundError as e: print(e)

# %% [markdown]
# A malformed row names the file and the row, and a missing key names the key (here a distractor
# row without its `KIND`, which would otherwise be read as a query):

# %%
bad_root = Path(tempfile.mkdtemp())/'conconchi'
write_json(bad_root/'data/annotations/train.json', dict(concepts=demo_concepts, data=[row('*', ['t.jpg'], [0])]))
write_json(bad_root/'data/annotations/test.json', dict(concepts=demo_concepts, data=[row('* on a couch', ['a.jpg'], [0]), row('* x', [], [1])]))
try: ConConChi(bad_root)
except ValueError as e: print(e)
write_json(bad_root/'data/annotations/test.json', dict(concepts=demo_concepts, data=[row('* on a couch', ['a.jpg'], [0]),
                                                                                  {'LABEL': '', 'GTS': ['b.jpg'], 'CONCEPTS': []}]))
test_fail(lambda: ConConChi(bad_root), contains="test.json, data row 1: missing key 'KIND'")

# %% [markdown]
# And captions that miss a pool image are refused rather than misaligned:

# %%
caps = Path(tempfile.mkdtemp())/'captions.json'
caps.write_text(json.dumps({'data/images/test/a.jpg': 'a toy on a couch'}))
test_fail(lambda: cc.vlm_captions(caps), contains='no caption for 5 pool image(s)')
caps.write_text(json.dumps({f'data/images/{g}': f'caption of {g}' for g in cc.pool_table.image[::-1]}))
test_eq(cc.vlm_captions(caps)[:2], ['caption of test/a.jpg', 'caption of test/b.jpg'])

# %% [markdown]
# Images are only looked at when asked for:

# %%
test_eq(len(cc.missing_images()), len(cc.pool) + 5)
cc.summary()

# %% [markdown]
# ## What we found
#
# - Both formats read into one interface (concepts, pool, support images, context and concept-only
#   queries, descriptions) without opening an image. The small files above exercise every rule:
#   a query's positives include its `ADDITIONAL GTS` that are in the pool (a warning names those that
#   are not), negative rows are pool images and not queries, concept-only queries rank the
#   single-concept images only, and a concept with no such image is named in a warning.
# - On the real PerVL annotation files, the DeepFashion2 test split holds 50 concepts, 653 support
#   images and 221 pool images (one context query each), the validation split 50 concepts, 661
#   support images and 229 pool images; no query names two concepts.
# - A missing file names its path and shows the layout expected, a malformed row names its file, row
#   and key, and captions that miss a pool image are refused rather than misaligned.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
