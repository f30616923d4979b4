# %% [markdown]
# # Baselines and the evaluation runner
#
# > Text-only, image-only, AvgIm+Text, textual inversion and POLAR behind one interface, scored by one runner on any benchmark (the baselines of the paper's Tab. 1, 10, 15 and 16).

# %% [markdown]
# Does a rank-1 update of the text encoder find a personal concept better than the simple ways of
# searching for it, and what does it cost the encoder elsewhere? This chapter builds the rivals the
# paper compares POLAR with in §4 (the baselines of Tab. 1/10 and 15, and textual inversion, Tab. 16
# of supplement §11), the runner that scores every method on any benchmark, and the paper's
# general-knowledge measure (§4, supplement §13), and reads the paper's central claim off one world.
#
# Every query of a personalised benchmark holds one `*` per personal concept ("* next to * on the
# sand"). A *method* is a way of turning such a query into one embedding that ranks the pool:
#
# | method | how a `*` is filled | what it learns per concept | in the paper |
# |---|---|---|---|
# | text (coarse / discriminative / rich) | the concept's class name or a longer description | nothing | Tab. 15 (ConCon-Chi; discriminative and rich are oracles), Tab. 1/10 "Text Only" |
# | image | the query text is ignored: the mean support image feature | nothing | — |
# | AvgIm+Text | α · image + (1−α) · text with `*` → class name | nothing | Tab. 1/10 "AvgIm + Text" |
# | textual inversion | `sks`, whose token embedding is learned | one token embedding, through the whole text encoder | Tab. 16 |
# | POLAR | `sks` (`sks <class>` on DeepFashion2) | a rank-1 update of the last text layer's V | the method |
#
# All of them share one interface: `fit(bb, concepts)` learns (or loads from disk) what the method
# needs for each concept, and `embed(bb, queries, concepts)` returns one L2-normalised embedding per
# query. `evaluate` does the rest for any method and any benchmark: it encodes the pool once
# (cached), fits, embeds the context and concept-only queries, and scores them with the
# [retrieval metrics](04_metrics.ipynb).

# %%
#| default_exp baselines

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail

# %%
#| export
import hashlib, inspect, json, os, re, warnings
from dataclasses import dataclass, replace
from pathlib import Path
import numpy as np, pandas as pd, torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from polar_nb.clip import Backbone, image_features, tokenize, token_id, eot_positions, fingerprint, save_safetensors, content_hash, file_locks
from polar_nb.config import get_settings
from polar_nb.data import Query
from polar_nb.metrics import metrics_table, metric_columns
from polar_nb.polar import (LowRankUpdate, TEMPLATES, encode_text, personalize, _check_tower, _frozen, _prompt_tokens,
                            _heads, _project, _run_from, _truncate, _unit_features)
from polar_nb.polar import personalize_many

# %% [markdown]
# ## A benchmark and a backbone to work with
#
# Every definition below is checked on the small ConCon-Chi-format world of
# [the embedded world](06_world.ipynb) (20 concepts, 344 pool images, 88 context queries of which 8
# name two concepts) and on the backbone the settings name (`world-tiny`, the embedded one). Where
# the embedded backbone's weights file is not there yet, an untrained model of the same architecture
# stands in, and the chapter says so: its numbers then measure nothing but the plumbing.

# %%
import tempfile, time
from polar_nb.clip import load_backbone, data_dir
from polar_nb.compat import import_open_clip
from polar_nb.data import ConConChi
from polar_nb.world import make_benchmark

tmp = Path(tempfile.mkdtemp())
bench = ConConChi(make_benchmark(tmp/'conconchi', 'conconchi', profile='small'))
bench.summary()

# %%
try: bb, standin = load_backbone(), False
except FileNotFoundError:
    from polar_nb.world_tiny import build_world_tiny
    _oc = import_open_clip()
    bb = Backbone(build_world_tiny().eval(), _oc.tokenizer.SimpleTokenizer(context_length=32),
                  _oc.image_transform(64, is_train=False), 'world-tiny-untrained')
    standin = True
    print(f"{data_dir()/'world-tiny.safetensors'} does not exist yet: this run uses an untrained stand-in with world-tiny's "
          "architecture (random weights), so the numbers below only exercise the code; execute the chapter again once the "
          "embedded backbone is trained.")
iters = 50 if standin else None  # the stand-in gets a short POLAR run; a real backbone its own defaults
cache = tmp/'cache'  # features and learned per-concept parameters of this chapter's run
bb, bb.defaults


# %% [markdown]
# ## Filling the `*`s

# %%
#| export
def fill(text:str, # query text with one `*` per concept
         words:list[str], # what each `*` becomes, in order
        )->str:
    "`text` with its i-th `*` replaced by `words[i]`."
    parts = text.split('*')
    if len(parts)-1 != len(words): raise ValueError(f"{text!r} has {len(parts)-1} '*' for {len(words)} word(s) {words}")
    return ''.join(p+w for p,w in zip(parts, words)) + parts[-1]


# %%
test_eq(fill('* next to * on the sand', ['sks', 'a red cup']), 'sks next to a red cup on the sand')
test_eq(fill('An image of *', ['sks']), 'An image of sks')
test_fail(lambda: fill('* and *', ['sks']), contains="2 '*' for 1 word")


# %% [markdown]
# ## What a method may know about the concepts
#
# A `ConceptSet` holds, for every concept of a benchmark, the normalised features of its support
# images, its text descriptions, and the content hashes of its support files (what cached learned
# parameters are keyed by). Methods see nothing else: no pool image, no query's positives.

# %%
#| export
def file_hash(path:str|Path)->str:
    "A content hash of a file (its bytes, not its name)."
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()

@dataclass
class ConceptSet:
    "Per concept of a benchmark: L2-normalised support image features, text descriptions, support file hashes."
    benchmark:str  # the benchmark's name: conconchi, deepfashion2, ...
    feats:dict  # concept -> [n, embed_dim] normalised support features
    descriptions:dict  # concept -> {'coarse', ...}
    hashes:dict  # concept -> content hashes of its support files
    available:dict|None = None  # concept -> how many support images it has (when fewer were drawn)
    @property
    def ids(self)->list: return list(self.feats)
    def subset(self, ids:list)->'ConceptSet':
        "The same, for the concepts `ids` only."
        return ConceptSet(self.benchmark, *({c: d[c] for c in ids} for d in (self.feats, self.descriptions, self.hashes)),
                          None if self.available is None else {c: self.available[c] for c in ids})


# %%
#| export
PAPER_SUPPORT = dict(deepfashion2=5)  # support images drawn at random per concept and run (the official DeepFashion2 script); else all

def draw_support(paths:list, # a concept's support images, in the benchmark's order
                 n:int|None, # how many to keep (None: all)
                 seed:int=0, # the run's seed
                 k:int=0, # the concept's position in the benchmark (each concept its own draw)
                )->list:
    "`n` of `paths` drawn at random without replacement (in their order), or all of them when there are no more than `n`."
    if n is None or len(paths) <= n: return list(paths)
    return [paths[i] for i in sorted(np.random.default_rng([seed, k]).choice(len(paths), n, replace=False))]

def concept_set(bench, # a benchmark (`ConConChi`, `PerVLDeepFashion2`, ...)
                bb:Backbone, # the backbone whose image tower encodes the support images
                cache:bool|str|Path=True, # feature cache: True = settings' cache_dir, a folder, or False
                n_support:int|str|None='paper', # support images per concept: 'paper' (5 on DeepFashion2, all on ConCon-Chi), None (all) or a number
                seed:int=0, # seed of the draw of support images
               )->ConceptSet:
    "The `ConceptSet` of every concept of `bench`: support features (cached), descriptions, support hashes."
    n = PAPER_SUPPORT.get(bench.name) if n_support == 'paper' else n_support
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n_support must be 'paper', None or a number of images ≥ 1, not {n_support!r}")
    full = {c: bench.support(c) for c in bench.concepts}
    if empty := [c for c,p in full.items() if not p]: raise ValueError(f"concept(s) {empty} of {bench.name} have no support image")
    sup = {c: draw_support(ps, n, seed, k) for k,(c,ps) in enumerate(full.items())}
    X = image_features(bb, [p for ps in sup.values() for p in ps], cache=cache, progress=False)
    ends = np.cumsum([0, *map(len, sup.values())])
    return ConceptSet(bench.name, {c: X[a:b] for c,a,b in zip(sup, ends, ends[1:])},
                      {c: bench.descriptions(c) for c in sup}, {c: [file_hash(p) for p in ps] for c,ps in sup.items()},
                      {c: len(ps) for c,ps in full.items()})


# %%
cs = concept_set(bench, bb, cache)
test_eq(cs.ids, bench.concepts)
test_eq({len(v) for v in cs.feats.values()}, {5})
test_close(cs.feats[0].norm(dim=-1), torch.ones(5), eps=1e-5)
test_eq(cs.hashes[0][0], file_hash(bench.support(0)[0]))
test_eq(cs.subset([3, 7]).ids, [3, 7])
test_eq(draw_support(list('abcdefg'), 3, seed=0), draw_support(list('abcdefg'), 3, seed=0))  # a draw is reproducible
assert draw_support(list('abcdefghij'), 3, seed=0) != draw_support(list('abcdefghij'), 3, seed=1)
test_eq(draw_support(list('abc'), 5), list('abc'))  # fewer than asked: all of them
test_eq({len(v) for v in concept_set(bench, bb, cache, n_support=2).feats.values()}, {2})
test_fail(lambda: concept_set(bench, bb, cache, n_support=0), contains='n_support')
cs.descriptions[0]


# %% [markdown]
# ## One interface
#
# `fit` may learn something per concept and returns the method; `embed` gives one normalised
# embedding per query; `text_updates(c)` lists the changes a concept makes to the text encoder
# itself (none for every baseline, its low-rank update for POLAR), which is what the
# general-knowledge metric at the end of the chapter applies.

# %%
#| export
class Method:
    "A retrieval method: `fit` learns what it needs per concept, `embed` turns queries with `*`s into embeddings."
    name = 'method'
    def settings(self)->dict: return {}
    def fit(self, bb:Backbone, cs:ConceptSet, cache:bool|str|Path=True, progress:bool=False): return self
    def embed(self, bb:Backbone, queries:list[Query], cs:ConceptSet)->torch.Tensor: raise NotImplementedError
    def text_updates(self, c)->list: return []
    def __repr__(self): return f'{type(self).__name__}({self.name!r})'

def _named(base:str, changed:dict)->str:
    "`base`, followed by the settings that differ from the defaults: 'POLAR (iters=5, lam=0.1)'."
    short = lambda v: f'{v:g}' if isinstance(v, float) else f'tensor{list(v.shape)}' if isinstance(v, torch.Tensor) else str(v)
    return base + (' (' + ', '.join(f'{k}={short(v)}' for k,v in changed.items()) + ')' if changed else '')

def settings_text(m:Method)->str:
    "A method's settings as one line of JSON (tensors by shape and content hash), for tables."
    f = lambda v: f'tensor{list(v.shape)}#{content_hash(v)[:8]}' if isinstance(v, (torch.Tensor, np.ndarray)) else v
    return json.dumps({k: f(v) for k,v in m.settings().items()}, sort_keys=True, default=str)

def _description(cs:ConceptSet, c, kind:str)->str:
    "Concept `c`'s description `kind`, or a KeyError naming what there is."
    d = cs.descriptions[c]
    if kind not in d: raise KeyError(f"concept {c!r} of {cs.benchmark} has no {kind!r} description (it has {list(d)})")
    return d[kind]


# %% [markdown]
# ## Text only
#
# Each `*` becomes a description. On ConCon-Chi the *coarse* one is the class name (the paper's
# "Coarse (class name)"), and the *discriminative* and *rich* ones are human-written oracles that
# tell look-alikes apart (the paper marks them †); PerVL DeepFashion2 has the class name only.

# %%
#| export
class TextOnly(Method):
    "Each `*` becomes the concept's description: coarse (class name), discriminative or rich."
    def __init__(self, description:str='coarse', name:str|None=None):
        self.description, self.name = description, name or f'text ({description})'
    def settings(self): return dict(description=self.description)
    def texts(self, queries:list[Query], cs:ConceptSet)->list[str]:
        "The queries with their `*`s filled."
        return [fill(q.text, [_description(cs, c, self.description) for c in q.concepts]) for q in queries]
    def embed(self, bb, queries, cs): return encode_text(bb, self.texts(queries, cs))


# %%
ctx = bench.queries('context')
multi = next(q for q in ctx if len(q.concepts) > 1)
[TextOnly(k).texts([multi], cs)[0] for k in ('coarse', 'discriminative', 'rich')]

# %%
E = TextOnly('rich').embed(bb, ctx, cs)
test_eq(E.shape, (len(ctx), bb.embed_dim)); test_close(E.norm(dim=-1), torch.ones(len(ctx)), eps=1e-5)
test_fail(lambda: TextOnly('rich').embed(bb, ctx, ConceptSet('deepfashion2', cs.feats, {c: dict(coarse='skirt') for c in cs.ids}, cs.hashes)),
          contains="no 'rich' description")


# %% [markdown]
# ## Image only, and AvgIm+Text
#
# The image baseline ignores the words of the query: a concept is the normalised mean of its
# normalised support features. A query naming several concepts takes the normalised mean of their
# means (each concept weighs the same, however many support images it has).
#
# AvgIm+Text blends that with the text baseline, `*` → class name:
# $e = \mathrm{normalize}\big(\alpha\, e_\text{image} + (1-\alpha)\, e_\text{text}\big)$, α = 0.5 by
# default; α = 1 is the image baseline and α = 0 the coarse text baseline. For a multi-concept
# query, $e_\text{image}$ is the mean over its concepts above and $e_\text{text}$ the query with every
# `*` replaced by its concept's class name, so the context words enter once.

# %%
#| export
def support_mean(cs:ConceptSet, # the concepts' support features
                 concepts:list, # one or more concept ids (repeats count once)
                )->torch.Tensor:
    "The normalised mean of the concepts' normalised mean support features."
    ms = torch.stack([F.normalize(cs.feats[c].mean(0), dim=-1) for c in dict.fromkeys(concepts)])
    return F.normalize(ms.mean(0), dim=-1)

class ImageOnly(Method):
    "The query's words are ignored: its concepts' mean support image feature."
    name = 'image'
    def __init__(self, name:str|None=None): self.name = name or 'image'
    def embed(self, bb, queries, cs):
        return torch.stack([support_mean(cs, q.concepts) for q in queries]) if queries else torch.zeros(0, bb.embed_dim)


# %%
#| export
class AvgImText(Method):
    "α · mean support image feature + (1-α) · text with `*` → class name, normalised."
    def __init__(self, alpha:float=0.5, # weight of the image side
                 description:str='coarse', # the description that fills the `*`s of the text side
                 name:str|None=None, # its name in tables (default: 'AvgIm+Text', with α when it is not 0.5)
                ):
        if not 0 <= alpha <= 1: raise ValueError(f"alpha must be in [0, 1], not {alpha}")
        self.alpha, self.description = alpha, description
        self.name = name or ('AvgIm+Text' if alpha == 0.5 else f'AvgIm+Text (α={alpha:g})')
    def settings(self): return dict(alpha=self.alpha, description=self.description)
    def embed(self, bb, queries, cs):
        img, txt = ImageOnly().embed(bb, queries, cs), TextOnly(self.description).embed(bb, queries, cs)
        return F.normalize(self.alpha*img + (1-self.alpha)*txt, dim=-1)


# %%
I, T = ImageOnly().embed(bb, ctx, cs), TextOnly('coarse').embed(bb, ctx, cs)
test_close(I[ctx.index(multi)], F.normalize(F.normalize(cs.feats[multi.concepts[0]].mean(0), dim=-1)
                                            + F.normalize(cs.feats[multi.concepts[1]].mean(0), dim=-1), dim=-1), eps=1e-6)
test_close(AvgImText(1.0).embed(bb, ctx, cs), I, eps=1e-6)
test_close(AvgImText(0.0).embed(bb, ctx, cs), T, eps=1e-6)
A = AvgImText().embed(bb, ctx, cs)
test_close(A.norm(dim=-1), torch.ones(len(ctx)), eps=1e-5)
test_close((A*I).sum(-1), (A*T).sum(-1), eps=1e-5)  # α = 0.5 blends two unit vectors into their bisector
test_fail(lambda: AvgImText(1.5), contains='alpha')
test_eq([AvgImText(a).name for a in (0.5, 0.25)], ['AvgIm+Text', 'AvgIm+Text (α=0.25)'])
[AvgImText(a).name for a in (0.5, 0.25)]


# %% [markdown]
# ## Learned per concept, cached on disk
#
# POLAR and textual inversion learn something per concept. What they learn is written to disk as
# soon as a concept is done, under a key made of everything it depends on: the backbone (its name
# and a fingerprint of its weights, so a random or retrained backbone never reuses another's
# results), the contents of the concept's support files, and every hyper-parameter including the
# training prompts. A rerun loads instead of training, and an interrupted run resumes at the first
# concept it had not saved.

# %%
#| export
def _cached(load, f:Path, what:str):
    "What `load()` reads from cache file `f`, or None (with a warning naming it) when it is unusable: it is then made again."
    try: return load()
    except (ValueError, KeyError, OSError) as e:
        warnings.warn(f"cached {what} {f} is unusable ({e}): computing it again"); return None

def cache_root(cache:bool|str|Path)->Path|None:
    "The folder for learned per-concept parameters: `<cache_dir>/personal` (None when caching is off)."
    if cache is False or cache is None: return None
    return (get_settings().cache_dir if cache is True else Path(cache))/'personal'

def _safe(s)->str: return re.sub(r'[^A-Za-z0-9_.-]', '_', str(s))

def concept_file(root:Path, # `cache_root(...)`
                 method:str, # folder of the method: polar, textual-inversion, ...
                 bb:Backbone, weights:str, # the backbone and its `fingerprint`
                 c, hashes:list[str], # the concept and its support files' hashes
                 hp:dict, # every hyper-parameter (JSON-serialisable)
                )->Path:
    "The cache file of concept `c`'s learned parameters under `root`."
    key = content_hash(dict(backbone=bb.name, weights=weights, preprocess=repr(bb.preprocess), support=hashes, hp=hp), digest_size=12)
    return root/method/_safe(bb.name)/f'{_safe(c)}-{key}.safetensors'


# %%
fp = fingerprint(bb.model)
f = concept_file(cache_root(cache), 'polar', bb, fp, 0, cs.hashes[0], dict(lam=0.1))
test_eq(f, concept_file(cache_root(cache), 'polar', bb, fp, 0, cs.hashes[0], dict(lam=0.1)))
assert f != concept_file(cache_root(cache), 'polar', bb, fp, 0, cs.hashes[0], dict(lam=0.2))
assert f != concept_file(cache_root(cache), 'polar', bb, fp, 0, cs.hashes[1], dict(lam=0.1))
N1 = torch.randn(1000, bb.embed_dim); N2 = N1.clone(); N2[500] += 1e-3  # differs in a middle row: str() shows the same text
assert str(N1) == str(N2)
assert concept_file(cache_root(cache), 'polar', bb, fp, 0, cs.hashes[0], dict(negatives=N1)) != concept_file(cache_root(cache), 'polar', bb, fp, 0, cs.hashes[0], dict(negatives=N2))
test_eq(cache_root(False), None)
f.relative_to(tmp)


# %% [markdown]
# ## POLAR
#
# Each `*` becomes `sks`, the same token for every concept, as in the official ConCon-Chi code; on
# DeepFashion2 it becomes `sks <class>` ("person wearing sks skirt"), as the paper does there
# (supplement §12; it does not append the class on ConCon-Chi, whose class names often mislead). The
# training prompts use the same words. A query's concepts contribute the sum of their updates
# (each concept once). λ, the iterations and the learning rate default to the backbone's
# `defaults`; every keyword argument of `personalize` can be set.

# %%
#| export
def concept_word(template:str|None, # '{token}', '{token} {coarse}', ...; None: the benchmark's (see below)
                 cs:ConceptSet, c, token:str='sks')->str:
    "How concept `c` is written in queries: `sks`, or `sks <class>` on DeepFashion2 (the paper's choice)."
    if template is None: template = '{token} {coarse}' if cs.benchmark == 'deepfashion2' else '{token}'
    return template.format(token=token, **cs.descriptions[c])

def concept_prompts(word:str, templates:list[str]|None=None)->list[str]:
    "The training templates (default: POLAR's `TEMPLATES`) with `*` written as `word`."
    return [t.replace('*', word) for t in (TEMPLATES if templates is None else templates)]


# %%
test_eq(concept_word(None, cs, 0), 'sks')
test_eq(concept_word(None, ConceptSet('deepfashion2', {}, {7: dict(coarse='skirt')}, {}), 7), 'sks skirt')
test_eq(concept_prompts('sks skirt')[:2], ['A photo of sks skirt.', 'sks skirt is shown in this image.'])

# %% [markdown]
# POLAR's hyper-parameters depend on the benchmark (supplement §12 and the official scripts): on
# ConCon-Chi λ = 0.35 and 500 iterations, on DeepFashion2 λ = 0.1 and 50 iterations with ViT-B/32 or
# 200 with ViT-L/14 (other architectures take ViT-L/14's), all with Adam at lr 1e-3. These are the
# defaults for open_clip backbones; a backbone that ships defaults tuned for it (`world-tiny`)
# uses its own on every benchmark. Arguments given to `Polar` override both.

# %%
#| export
PAPER_DEFAULTS = {'conconchi': {None: dict(lam=0.35, iters=500, lr=1e-3)},
                  'deepfashion2': {'ViT-B-32': dict(lam=0.1, iters=50, lr=1e-3), None: dict(lam=0.1, iters=200, lr=1e-3)}}

def polar_defaults(bb:Backbone, # the backbone
                   benchmark:str|None=None, # the benchmark's name (conconchi, deepfashion2, ...); None: the backbone's own
                  )->dict:
    "POLAR's lam, iters and lr for `bb` on `benchmark`: the backbone's own when tuned for it, else the paper's for the benchmark and architecture."
    if getattr(bb, 'tuned', False) or benchmark not in PAPER_DEFAULTS: return dict(bb.defaults)
    t = PAPER_DEFAULTS[benchmark]
    return dict(t.get(bb.name, t[None]))


# %%
test_eq(polar_defaults(bb, 'deepfashion2'), bb.defaults)  # world-tiny: its own, tuned defaults
vit = replace(bb, name='ViT-B-32', tuned=False)  # stands for an open_clip ViT-B-32
test_eq((polar_defaults(vit, 'deepfashion2'), polar_defaults(vit, 'conconchi')), (dict(lam=0.1, iters=50, lr=1e-3), dict(lam=0.35, iters=500, lr=1e-3)))
test_eq(polar_defaults(replace(vit, name='ViT-L-14'), 'deepfashion2')['iters'], 200)

# %%
#| export
BATCHED = set(inspect.signature(personalize_many).parameters) - {'bb', 'feats', 'prompts', 'token', 'progress'}  # what `Polar.fit` can batch

class Polar(Method):
    "POLAR: a rank-1 update of the last text layer's V per concept; `*` → `sks`; a query's concepts' updates are summed."
    name = 'POLAR'
    def __init__(self, lam:float|None=None, iters:int|None=None, lr:float|None=None, # default: the backbone's `defaults`
                 token:str='sks', # the concept token, shared by all concepts
                 word:str|None=None, # how a `*` is written (see `concept_word`)
                 templates:list[str]|None=None, # training templates with `*` (default: `TEMPLATES`)
                 combine:str='sum', # a query's k concepts' updates: 'sum' (the paper), 'mean' (each ΔW times 1/k), or another of `polar_nb.combine.STRATEGIES`
                 name:str|None=None, # its name in tables (default: 'POLAR', 'POLAR (mean of updates)', or 'POLAR (<combine>)')
                 batch:int=64, # concepts trained together (the same updates whatever the batch; memory grows with it)
                 **kw, # other arguments of `personalize`: rank, param, layer, seed, exact, optimizer, ...
                ):
        if not (isinstance(batch, int) and batch >= 1): raise ValueError(f"batch must be an integer ≥ 1, not {batch!r}")
        self.batch = batch
        if combine not in ('sum', 'mean'): from polar_nb.combine import check_strategy; check_strategy(combine)
        self.hp, self.token, self.word, self.templates, self.combine = dict(lam=lam, iters=iters, lr=lr, **kw), token, word, templates, combine
        self.name = name or ('POLAR (mean of updates)' if combine == 'mean' else 'POLAR' if combine == 'sum' else f'POLAR ({combine})')
        self.updates, self.words, self.counts = {}, {}, dict(trained=0, loaded=0)

    def settings(self): return dict(self.hp, token=self.token, word=self.word, templates=self.templates, combine=self.combine)

    def resolved(self, bb:Backbone, benchmark:str|None=None)->dict:
        "The hyper-parameters with the defaults for `bb` on `benchmark` filled in (see `polar_defaults`)."
        d = polar_defaults(bb, benchmark)
        return {k: d.get(k) if v is None and k in ('lam', 'iters', 'lr') else v for k,v in self.hp.items()}

    folder, train_args = 'polar', {}  # the cache folder of its updates; training arguments that are not hyper-parameters
    def concept_args(self, cs:ConceptSet, c)->dict:
        "Training arguments of concept `c` of its own (none for POLAR; a subclass's negatives, say): part of the cache key."
        return {}
    def checked(self, bb:Backbone, u:LowRankUpdate)->LowRankUpdate:
        "A trained update, checked (a subclass raises here what `personalize` does not)."
        return u

    def fit(self, bb, cs, cache=True, progress=False):
        if self.combine == 'token': from polar_nb.combine import fit_token; return fit_token(self, bb, cs, cache, progress)
        root, hp = cache_root(cache), self.resolved(bb, cs.benchmark)
        weights = fingerprint(bb.model) if root else None
        self.updates, self.counts, todo = {}, dict(trained=0, loaded=0), []
        for c in cs.ids:
            self.words[c] = w = concept_word(self.word, cs, c, self.token)
            prompts, extra = concept_prompts(w, self.templates), self.concept_args(cs, c)
            key = dict(hp, token=self.token, prompts=prompts, **{k: content_hash(v) for k,v in extra.items()})
            f = root and concept_file(root, self.folder, bb, weights, c, cs.hashes[c], key)
            if not self._load(bb, c, f): todo.append((c, prompts, f, extra))
        bad = {f for _,_,f,_ in todo if f and f.is_file()}  # unusable entries, reported once: trained again
        with file_locks([f for _,_,f,_ in todo]):  # another process computing the same updates: wait, then read them
            self._train(bb, cs, [t for t in todo if t[2] in bad or not self._load(bb, t[0], t[2])], hp, progress)
        return self

    def _load(self, bb, c, f)->bool:
        "Whether concept `c`'s update was read from cache file `f`."
        if not (f and f.is_file() and (u := _cached(lambda: LowRankUpdate.load(f, bb), f, 'update')) is not None): return False
        self.updates[c] = u; self.counts['loaded'] += 1; return True

    def _train(self, bb, cs, todo, hp, progress):
        "Train (and cache) the updates of `todo`: (concept, prompts, cache file, its own arguments) each."
        args = dict(hp, **self.train_args)
        batched = set(args) | {k for *_, e in todo for k in e} <= BATCHED  # the concepts train together, each as alone (see `personalize_many`)
        for s in tqdm(range(0, len(todo), self.batch if batched else 1), desc=f'{self.name} ({bb.name})', disable=not progress or not todo):
            part = todo[s:s+self.batch] if batched else todo[s:s+1]
            per = {k: [e.get(k) for *_, e in part] for k in {k for *_, e in part for k in e}}
            ups = (personalize_many(bb, [cs.feats[c] for c,*_ in part], [p for _,p,*_ in part], token=self.token, **args, **per) if batched
                   else [personalize(bb, cs.feats[c], p, token=self.token, **args, **e) for c,p,_,e in part])
            for (c, _, f, _), u in zip(part, ups):
                self.updates[c] = u = self.checked(bb, u)
                if f: u.save(f)
                self.counts['trained'] += 1

    def text_updates(self, c)->list:
        if c not in self.updates: raise KeyError(f"{self.name} has no update for concept {c!r}: fit it on the benchmark first")
        return [self.updates[c]]

    def embed(self, bb, queries, cs):
        out, groups = torch.zeros(len(queries), bb.embed_dim), {}
        for i,q in enumerate(queries): groups.setdefault(tuple(dict.fromkeys(q.concepts)), []).append(i)
        for cc, idx in groups.items():
            out[idx] = encode_text(bb, [fill(queries[i].text, [self.words[c] for c in queries[i].concepts]) for i in idx], self.query_updates(cc))
        return out

    def query_updates(self, concepts)->list:
        "The updates a query holding `concepts` is encoded with: theirs, each ΔW divided by their number if `combine='mean'`."
        cc = list(dict.fromkeys(concepts))
        ups = [u for c in cc for u in self.text_updates(c)]
        if self.combine not in ('sum', 'mean'): from polar_nb.combine import combine_updates; return combine_updates(ups, self.combine)
        return [replace(u, B=u.B / len(cc)) for u in ups] if self.combine == 'mean' and len(cc) > 1 else ups


# %% [markdown]
# Three concepts, one of them twice in a row: the first fit trains, the second loads.

# %%
few = cs.subset([multi.concepts[0], multi.concepts[1], 5])
test_eq(Polar(lam=0.2).resolved(replace(bb, name='ViT-B-32', tuned=False), 'deepfashion2'), dict(lam=0.2, iters=50, lr=1e-3))
pol = Polar(iters=iters).fit(bb, few, cache)
test_eq(pol.counts, dict(trained=3, loaded=0))
again = Polar(iters=iters).fit(bb, few, cache)
test_eq(again.counts, dict(trained=0, loaded=3))
for c in few.ids: assert torch.equal(again.updates[c].B, pol.updates[c].B)
test_eq(Polar(iters=iters, lam=bb.defaults['lam'] + 0.1).fit(bb, few, cache).counts['trained'], 3)  # other hyper-parameters: a new key
cf = concept_file(cache_root(cache), 'polar', bb, fingerprint(bb.model), 5, few.hashes[5],
                  dict(Polar(iters=iters).resolved(bb, few.benchmark), token='sks', prompts=concept_prompts(pol.words[5])))
assert cf.is_file()
raw = bytearray(cf.read_bytes()); raw[-2] ^= 0x01; cf.write_bytes(bytes(raw))  # a corrupted cache entry: named, then trained again
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always'); redo = Polar(iters=iters).fit(bb, few, cache)
test_eq(redo.counts, dict(trained=1, loaded=2))
assert any(str(cf) in str(x.message) and 'corrupt' in str(x.message) for x in w)
test_close(redo.updates[5].B, pol.updates[5].B, eps=1e-5)  # trained alone now, in a batch of three before: the same to float tolerance
pol.updates[5]

# %% [markdown]
# A multi-concept query is encoded with the sum of its concepts' updates, and a zero update is the
# plain text encoder with `*` → `sks`:

# %%
c1, c2 = multi.concepts
E = pol.embed(bb, [multi], few)
test_close(E[0], encode_text(bb, fill(multi.text, ['sks', 'sks']), [pol.updates[c1], pol.updates[c2]])[0], eps=1e-6)
zero = Polar(); zero.words = {c: 'sks' for c in few.ids}
zero.updates = {c: replace(u, B=torch.zeros_like(u.B)) for c,u in pol.updates.items()}
test_close(zero.embed(bb, [multi], few), encode_text(bb, fill(multi.text, ['sks', 'sks'])), eps=1e-5)
fill(multi.text, ['sks', 'sks']), multi.concepts

# %% [markdown]
# `combine='mean'` is not the paper's: it weights each of a query's k concepts' updates by 1/k, so
# two concepts together move the text encoder as far as one does (the section on the context
# margin below measures why that matters). Single-concept queries are unchanged:

# %%
avg = Polar(iters=iters, combine='mean'); avg.updates, avg.words = pol.updates, pol.words
half = [replace(pol.updates[c], B=pol.updates[c].B / 2) for c in (c1, c2)]
test_close(avg.embed(bb, [multi], few)[0], encode_text(bb, fill(multi.text, ['sks', 'sks']), half)[0], eps=1e-6)
one = Query(text='* on the grass', concepts=[c1], positives=[])
test_close(avg.embed(bb, [one], few), pol.embed(bb, [one], few), eps=1e-6)
test_fail(lambda: Polar(combine='max'), contains="'sum' or 'mean'")
avg.name, (avg.embed(bb, [multi], few) @ E.T).item()


# %% [markdown]
# ## Textual inversion for retrieval
#
# The rival of the paper's Tab. 16: instead of changing weights, learn the input embedding of the
# concept token. The vector that the token `sks` would take from the embedding table is replaced by
# a learned one, which is optimised *through the whole text encoder* with POLAR's loss (the mean
# squared error between the normalised EOT embedding of each training prompt and the normalised
# image feature, here with no regulariser since no weight changes) and Adam. The text encoder is
# left as it is, so general knowledge is untouched by construction; every concept has its own
# vector, so a query naming two concepts puts each one's vector at its own `sks`.
#
# The vector starts from the embedding of the concept's class name (the mean over its BPE tokens
# when the name has several), the usual initialisation of textual inversion; `init='token'` starts
# from `sks`'s own row and `init='random'` from a Gaussian draw with the table's scale.

# %%
#| export
def encode_with_vectors(bb:Backbone, # the backbone
                        tokens:torch.Tensor, # token ids [n, context_length]
                        tid:int, # the token whose occurrences take the vectors
                        vecs:torch.Tensor, # [m, width]: one vector per occurrence of `tid`, row by row, left to right
                       )->torch.Tensor:
    "Unnormalised text embeddings of `tokens` with the input embeddings of token `tid` replaced by `vecs` (differentiable)."
    m, t = bb.model, _truncate(tokens)
    mask = t == tid
    if int(mask.sum()) != len(vecs): raise ValueError(f"{int(mask.sum())} occurrence(s) of token {tid} for {len(vecs)} vector(s)")
    x = m.token_embedding(t).masked_scatter(mask[..., None], vecs.to(m.token_embedding.weight).contiguous())
    return _run_from(bb, (x + m.positional_embedding[:t.shape[1]]).to(m.transformer.get_cast_dtype()), t, 0, {})


# %% [markdown]
# With `sks`'s own row it is open_clip's forward pass:

# %%
_check_tower(bb)
tid = token_id(bb, 'sks')
tok = tokenize(bb, ['A photo of sks.', 'sks next to sks on the sand'])
with torch.no_grad():
    mine = F.normalize(encode_with_vectors(bb, tok, tid, bb.model.token_embedding.weight[tid].repeat(3, 1)), dim=-1)
    test_close(mine, bb.model.encode_text(tok, normalize=True), eps=1e-5)
test_fail(lambda: encode_with_vectors(bb, tok, tid, torch.zeros(2, bb.width)), contains='3 occurrence(s)')


# %% [markdown]
# Training needs the same function at every step for the same prompts, and most of it does not
# change: attention is causal, so the positions before a row's first `sks` never see the vector,
# and only the end-of-text row of the last layer is read. `vector_trainer` computes those
# positions' keys and values once, then at each step runs each row from its first `sks` on, and
# the last layer for its end-of-text row only. It equals `encode_with_vectors`, gradients
# included, and does about half its work on the prompts textual inversion trains on.

# %%
#| export
def vector_trainer(bb:Backbone, # the backbone
                   tokens:torch.Tensor, # token ids [n, context_length], each row holding `tid`
                   tid:int, # the token whose occurrences take the vectors
                  ):
    "f(vecs) -> `encode_with_vectors(bb, tokens, tid, vecs)`, computing only what the vectors change (see above)."
    m, t = bb.model, _truncate(tokens)
    mask = t == tid
    if not mask.any(1).all(): raise ValueError(f"rows {(~mask.any(1)).nonzero().flatten().tolist()[:5]} do not hold token {tid}")
    blocks, cast = m.transformer.resblocks, m.transformer.get_cast_dtype()
    d, H = bb.width, blocks[0].attn.num_heads
    eot, first = eot_positions(t), mask.int().argmax(1)
    rows, pos = mask.nonzero(as_tuple=True)  # the occurrences, row by row, left to right (as `encode_with_vectors` takes them)
    with torch.no_grad():
        emb = (m.token_embedding(t) + m.positional_embedding[:t.shape[1]]).to(cast)
        groups = []
        for p in sorted(set(first.tolist())):  # rows whose first occurrence is at p share a prefix length
            idx = (first == p).nonzero().flatten()
            x, kv = emb[idx, :p], []
            for blk in blocks:
                k, v = F.linear(blk.ln_1(x), blk.attn.in_proj_weight[d:], blk.attn.in_proj_bias[d:]).chunk(2, -1)
                kv.append((_heads(k, H), _heads(v, H)))
                x = blk(x, attn_mask=m.attn_mask[:p, :p])
            groups.append((idx, p, int(eot[idx].max()) + 1, kv))
    def f(vecs:torch.Tensor)->torch.Tensor:
        if len(vecs) != len(rows): raise ValueError(f"{len(rows)} occurrence(s) of token {tid} for {len(vecs)} vector(s)")
        x0 = emb.index_put((rows, pos), (vecs.to(m.token_embedding.weight) + m.positional_embedding[pos]).to(cast))
        out = [None] * len(t)
        for idx, p, T, kv in groups:
            x, e, ar = x0[idx, p:T], eot[idx] - p, torch.arange(len(idx))
            for l, (blk, (kp, vp)) in enumerate(zip(blocks, kv)):
                at, last = blk.attn, l == len(blocks) - 1
                q, k, v = F.linear(blk.ln_1(x), at.in_proj_weight, at.in_proj_bias).chunk(3, -1)
                K, V, q = torch.cat([kp, _heads(k, H)], 2), torch.cat([vp, _heads(v, H)], 2), _heads(q, H)
                if last: q, x, am = q[ar, :, e][:, :, None], x[ar, e][:, None], m.attn_mask[eot[idx], :T][:, None, None]
                else: am = m.attn_mask[p:T, :T]
                a = F.scaled_dot_product_attention(q, K, V, attn_mask=am.to(q.dtype)).transpose(1, 2).flatten(2)
                x = x + blk.ls_1(at.out_proj(a))
                x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
            z = _project(m, m.ln_final(x[:, 0]))
            for j, i in enumerate(idx.tolist()): out[i] = z[j]
        return torch.stack(out)
    return f


# %%
tok2 = tokenize(bb, ['A photo of sks.', 'sks next to sks on the sand', 'a sks and a cup on a table in the kitchen', 'my sks'])
g = torch.Generator().manual_seed(0)
vecs = (torch.randn(5, bb.width, generator=g) * 0.02).requires_grad_()
want = encode_with_vectors(bb, tok2, tid, vecs)
(gw,) = torch.autograd.grad((want * torch.linspace(-1, 1, want.shape[1])).sum(), vecs)
got = vector_trainer(bb, tok2, tid)(vecs)
(gg,) = torch.autograd.grad((got * torch.linspace(-1, 1, got.shape[1])).sum(), vecs)
rel = lambda a, b: float(((a - b).abs().max() / b.abs().max()).detach())
assert rel(got, want) < 1e-5 and rel(gg, gw) < 1e-4, (rel(got, want), rel(gg, gw))  # float32 rounding of the same sums in another order
test_fail(lambda: vector_trainer(bb, tokenize(bb, ['a cup']), tid), contains='do not hold token')
test_fail(lambda: vector_trainer(bb, tok2, tid)(vecs[:2]), contains='5 occurrence(s)')


# %%
#| export
def initial_vector(bb:Backbone, # the backbone
                   init:str='coarse', # 'coarse': the class name's embedding; 'token': the token's own row; 'random'
                   name:str|None=None, # the class name (init='coarse')
                   token:str='sks', # the concept token (init='token')
                   seed:int=0, # seed of init='random'
                  )->torch.Tensor:
    "A starting token embedding [width]: the mean of `name`'s BPE token embeddings, `token`'s own row, or a Gaussian draw."
    W = bb.model.token_embedding.weight.detach()
    if init == 'coarse':
        ids = tokenize(bb, name)[0]; ids = ids[ids != 0][1:-1]
        if not len(ids): raise ValueError(f"class name {name!r} has no token to start from")
        return W[ids].mean(0).float().cpu()
    if init == 'token': return W[token_id(bb, token)].float().cpu()
    if init == 'random': return torch.randn(W.shape[1], generator=torch.Generator().manual_seed(seed)) * W.float().std().item()
    raise ValueError(f"init must be 'coarse', 'token' or 'random', not {init!r}")


# %%
test_eq(initial_vector(bb, 'coarse', 'cup').shape, (bb.width,))
test_close(initial_vector(bb, 'coarse', 'cup'), bb.model.token_embedding.weight[token_id(bb, 'cup')].detach(), eps=1e-7)
test_eq(initial_vector(bb, 'token'), bb.model.token_embedding.weight[tid].detach())
test_fail(lambda: initial_vector(bb, 'zeros'), contains='init must be')
initial_vector(bb, 'coarse', 'teddy bear')[:4]


# %%
#| export
def invert_tokens(bb:Backbone, # the backbone (its weights are left untouched)
                  feats:list, # one feature set [n_i, e] per concept (its training images)
                  prompts:list|None=None, # one list of templates per concept (with `*` or the token), or None for all: `TEMPLATES`
                  inits:list|None=None, # one starting vector [width] per concept (default: the token's own row)
                  *, iters:int|None=None, lr:float|None=None, # default: the backbone's POLAR `defaults`
                  token:str='sks', # the token whose embedding is learned
                  progress:bool=False,
                 )->list[tuple[torch.Tensor, list]]:
    "`invert_token` for several concepts trained together (one forward and backward pass per step): per concept, its vector and loss history."
    iters, lr = int(bb.defaults['iters'] if iters is None else iters), bb.defaults['lr'] if lr is None else lr
    _check_tower(bb)
    if not len(feats): return []
    prompts, inits = [None]*len(feats) if prompts is None else list(prompts), [None]*len(feats) if inits is None else list(inits)
    if not len(prompts) == len(inits) == len(feats): raise ValueError(f"{len(feats)} feature sets, {len(prompts)} prompt lists, {len(inits)} starting vectors")
    Ys, tid = [_unit_features(bb, f, f'feats[{i}]') for i,f in enumerate(feats)], token_id(bb, token)
    toks = [_prompt_tokens(bb, len(y), token, p) for y,p in zip(Ys, prompts)]
    rows = torch.cat([torch.full((len(y),), i) for i,y in enumerate(Ys)]).to(bb.device)  # the concept of each training row
    tokens, Y = torch.cat(toks), torch.cat(Ys)
    occ = rows[:, None].expand_as(tokens)[tokens == tid]  # the concept of each occurrence of the token, row by row
    V = nn.Parameter(torch.stack([(initial_vector(bb, 'token', token=token) if v is None else v).float() for v in inits]).to(bb.device).clone())
    cnt = torch.bincount(rows, minlength=len(Ys)).float()
    opt, hist = torch.optim.Adam([V], lr=lr), [[] for _ in Ys]
    with _frozen(bb.model), torch.enable_grad():
        enc = vector_trainer(bb, tokens, tid)
        for _ in tqdm(range(iters), desc=f'textual inversion {token} ({len(Ys)})', disable=not progress):
            err = ((F.normalize(enc(V[occ]), dim=-1) - Y)**2).mean(-1)
            loss = torch.zeros(len(Ys), dtype=err.dtype, device=err.device).index_add(0, rows, err) / cnt.to(err)  # each concept's own mean
            for h,l in zip(hist, loss.tolist()): h.append(l)
            opt.zero_grad(); loss.sum().backward(); opt.step()  # Adam is elementwise: each row moves as if trained alone
    return [(v.detach().cpu(), h) for v,h in zip(V, hist)]

def invert_token(bb:Backbone, # the backbone (its weights are left untouched)
                 image_feats, # features [n, e] of the concept's training images
                 prompts:list[str]|None=None, # templates with `*` (or the token), cycled over the images
                 init:torch.Tensor|None=None, # starting vector [width] (default: the token's own row)
                 *, iters:int|None=None, lr:float|None=None, # default: the backbone's POLAR `defaults`
                 token:str='sks', # the token whose embedding is learned
                 progress:bool=False,
                )->tuple[torch.Tensor, list]:
    "Learn one input token embedding so that prompts holding `token` match the images (POLAR's loss); the vector and the loss history."
    return invert_tokens(bb, [image_feats], [prompts], [init], iters=iters, lr=lr, token=token, progress=progress)[0]


# %%
v, hist = invert_token(bb, cs.feats[0], init=initial_vector(bb, 'coarse', 'cup'), iters=30, lr=1e-2)
assert hist[-1] < hist[0]
test_eq(v.shape, (bb.width,))
hist[0], hist[-1]

# %% [markdown]
# Several concepts train together, each exactly as alone: the loss of a step is the sum of the
# concepts' own losses, so each vector's gradient is its own concept's, and Adam moves every element
# on its own gradient alone.

# %%
inits = [initial_vector(bb, 'coarse', n) for n in ('cup', 'teddy bear')]
both = invert_tokens(bb, [cs.feats[0], cs.feats[1][:3]], [None, ['* on a table.']], inits, iters=30, lr=1e-2)
for (vb, hb), f, p, v0 in zip(both, [cs.feats[0], cs.feats[1][:3]], [None, ['* on a table.']], inits):
    va, ha = invert_token(bb, f, p, v0, iters=30, lr=1e-2)
    test_close(vb, va, eps=1e-5); test_close(hb, ha, eps=1e-6)
test_close(both[0][0], v, eps=1e-5)
test_fail(lambda: invert_tokens(bb, [cs.feats[0]], [None, None], iters=1), contains='1 feature sets, 2 prompt lists')
test_eq(invert_tokens(bb, [], iters=1), [])


# %%
#| export
def _save_vector(path:Path, v:torch.Tensor, meta:dict):
    save_safetensors(dict(vector=v), path, dict(format='polar-nb/token-vector-1', meta=json.dumps(meta)))

def _load_vector(path:Path, width:int)->tuple[torch.Tensor, dict]:
    "A cached token vector and its settings, checked: the format, `width` finite values."
    from safetensors import safe_open
    try:
        with safe_open(str(path), 'pt') as f: meta, v = f.metadata() or {}, f.get_tensor('vector')
    except Exception as e: raise ValueError(f"{path} is not a safetensors file ({e})") from e
    if meta.get('format') != 'polar-nb/token-vector-1': raise ValueError(f"{path} is not a polar-nb token vector")
    if v.shape != (width,) or not torch.isfinite(v).all(): raise ValueError(f"{path}: a vector of shape {tuple(v.shape)}, not {width} finite values")
    return v, json.loads(meta['meta'])

class TextualInversion(Method):
    "Textual inversion for retrieval: one token embedding per concept, learned through the whole text encoder with POLAR's loss."
    name = 'textual inversion'
    def __init__(self, iters:int|None=None, lr:float|None=None, # default: the backbone's POLAR `defaults`
                 init:str='coarse', # starting vector: 'coarse', 'token' or 'random' (see `initial_vector`)
                 token:str='sks', word:str|None=None, templates:list[str]|None=None, # as for `Polar`
                 seed:int=0, # seed of init='random'
                 name:str|None=None, # its name in tables (default: 'textual inversion')
                 batch:int=32, # concepts trained together (the same vectors whatever the batch; memory grows with it)
                ):
        self.iters, self.lr, self.init, self.token, self.word, self.templates, self.seed = iters, lr, init, token, word, templates, seed
        if not (isinstance(batch, int) and batch >= 1): raise ValueError(f"batch must be an integer ≥ 1, not {batch!r}")
        self.batch = batch
        self.name = name or 'textual inversion'
        self.vectors, self.words, self.counts = {}, {}, dict(trained=0, loaded=0)

    def settings(self): return dict(iters=self.iters, lr=self.lr, init=self.init, token=self.token, word=self.word, templates=self.templates, seed=self.seed)

    def fit(self, bb, cs, cache=True, progress=False):
        root, d = cache_root(cache), polar_defaults(bb, cs.benchmark)
        iters, lr = int(d['iters'] if self.iters is None else self.iters), d['lr'] if self.lr is None else self.lr
        weights = fingerprint(bb.model) if root else None
        self.vectors, self.counts, todo = {}, dict(trained=0, loaded=0), []
        for c in cs.ids:
            self.words[c] = w = concept_word(self.word, cs, c, self.token)
            prompts, name = concept_prompts(w, self.templates), cs.descriptions[c].get('coarse')
            hp = dict(iters=iters, lr=lr, init=self.init, name=name, seed=self.seed, token=self.token, prompts=prompts)
            f = root and concept_file(root, 'textual-inversion', bb, weights, c, cs.hashes[c], hp)
            if not self._load(bb, c, f): todo.append((c, prompts, hp, f, initial_vector(bb, self.init, name, self.token, self.seed)))
        bad = {t[3] for t in todo if t[3] and t[3].is_file()}  # unusable entries, reported once: trained again
        with file_locks([t[3] for t in todo]):  # another process computing the same vectors: wait, then read them
            self._train(bb, cs, [t for t in todo if t[3] in bad or not self._load(bb, t[0], t[3])], iters, lr, progress)
        return self

    def _load(self, bb, c, f)->bool:
        "Whether concept `c`'s vector was read from cache file `f`."
        if not (f and f.is_file() and (v := _cached(lambda: _load_vector(f, bb.width), f, 'token vector')) is not None): return False
        self.vectors[c] = v[0]; self.counts['loaded'] += 1; return True

    def _train(self, bb, cs, todo, iters, lr, progress):
        "Learn (and cache) the vectors of `todo`: (concept, prompts, settings, cache file, starting vector) each."
        for s in tqdm(range(0, len(todo), self.batch), desc=f'{self.name} ({bb.name})', disable=not progress or not todo):
            part = todo[s:s+self.batch]  # concepts trained together, each as alone (see `invert_tokens`)
            got = invert_tokens(bb, [cs.feats[c] for c,*_ in part], [p for _,p,*_ in part], [v0 for *_,v0 in part], iters=iters, lr=lr, token=self.token)
            for (c, _, hp, f, _), (v, hist) in zip(part, got):
                self.vectors[c] = v
                if f: _save_vector(f, v, dict(hp, history=hist))
                self.counts['trained'] += 1

    def embed(self, bb, queries, cs):
        tid, out = token_id(bb, self.token), []
        if missing := {c for q in queries for c in q.concepts} - set(self.vectors):
            raise KeyError(f"{self.name} has no vector for concept(s) {sorted(missing)}: fit it on the benchmark first")
        with torch.no_grad():
            for s in range(0, len(queries), 256):
                qs = queries[s:s+256]
                tok = tokenize(bb, [fill(q.text, [self.words[c] for c in q.concepts]) for q in qs])
                vecs = torch.stack([self.vectors[c] for q in qs for c in q.concepts]).to(bb.device)
                out.append(F.normalize(encode_with_vectors(bb, tok, tid, vecs), dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, bb.embed_dim)


# %% [markdown]
# Fitted on the same three concepts; again a second fit only loads. A multi-concept query puts each
# concept's vector at its own `sks`, and with every vector equal to `sks`'s own row the method is the
# plain text encoder with `*` → `sks`:

# %%
ti = TextualInversion(iters=20).fit(bb, few, cache)
test_eq((ti.counts, TextualInversion(iters=20).fit(bb, few, cache).counts), (dict(trained=3, loaded=0), dict(trained=0, loaded=3)))
E = ti.embed(bb, [multi], few)
test_eq(E.shape, (1, bb.embed_dim)); test_close(E.norm(dim=-1), torch.ones(1), eps=1e-5)
plain = TextualInversion(); plain.words = dict(ti.words); plain.vectors = {c: bb.model.token_embedding.weight[tid].detach() for c in few.ids}
test_close(plain.embed(bb, [multi], few), encode_text(bb, fill(multi.text, ['sks', 'sks'])), eps=1e-5)
swapped = TextualInversion(); swapped.words = dict(ti.words); swapped.vectors = {c1: ti.vectors[c2], c2: ti.vectors[c1]}
assert not torch.allclose(swapped.embed(bb, [multi], few), ti.embed(bb, [multi], few))  # each `sks` has its own concept's vector


# %% [markdown]
# ## The evaluation runner
#
# `evaluate_queries` gives one row per method and query: the kind of query (context or concept-only),
# its text and concepts, how many concepts it names, how many candidates and positives it has, the
# best positive's rank, and every metric as a **fraction in [0, 1]** (the paper's tables show them
# ×100; `as_percent` does that for display). `summarize` averages them per method into the splits
# the paper reports: all context queries, the single- and multi-concept ones among them, and the
# concept-only queries; a split with no query (multi-concept on DeepFashion2) is left out.
# `evaluate` is both at once.

# %%
#| export
def _methods(methods)->list:
    "The methods to evaluate (at least one) and a name for each, unique: methods sharing a name are told apart by the settings that differ."
    ms = [methods] if isinstance(methods, Method) else list(methods)
    if not ms: raise ValueError("no method to evaluate: give a Method or a list of them")
    if bad := [m for m in ms if not isinstance(m, Method)]: raise TypeError(f"not a Method: {bad[0]!r}")
    names = [m.name for m in ms]
    for n in {n for n in names if names.count(n) > 1}:
        group = [i for i,x in enumerate(names) if x == n]
        sets = [json.loads(settings_text(ms[i])) for i in group]
        if len({json.dumps(x, sort_keys=True) for x in sets}) < len(sets): raise ValueError(
            f"the same method is given twice: {n!r} with settings {sets[0]}; give each its own name= if that is meant")
        keys = [k for k in dict.fromkeys(k for x in sets for k in x) if len({json.dumps(x.get(k)) for x in sets}) > 1]
        for i,x in zip(group, sets): names[i] = _named(n, {k: x.get(k) for k in keys})
    if len(set(names)) < len(names): raise ValueError(f"methods named alike would be merged in the tables: {names}; give each its own name=")
    return list(zip(ms, names))

def evaluate_queries(methods, # a `Method` or a list of them
                     bench, # the benchmark
                     bb:Backbone, # the backbone
                     kinds=('context', 'concept'), # which queries
                     cache:bool|str|Path=True, # features and learned parameters: True = settings' cache_dir, a folder, or False
                     ks=(1, 5, 10), # cut-offs of recall@k
                     progress:bool=False, # tqdm bars while fitting
                     ties:str='pessimistic', # how tied scores rank (see `positive_ranks`)
                     n_support:int|str|None='paper', # support images per concept (see `concept_set`)
                     support_seed:int=0, # seed of their draw
                     concepts:ConceptSet|None=None, # the support set to use instead (e.g. one image per concept)
                    )->pd.DataFrame:
    "One row per (method, query): kind, text, concepts, n_concepts, candidates, positives, best_rank, metrics (fractions), settings."
    ms = _methods(methods)
    pool = image_features(bb, bench.pool, cache=cache, progress=None if progress else False)
    cs, out = concepts or concept_set(bench, bb, cache, n_support, support_seed), []
    if cs.benchmark != bench.name or set(cs.ids) != set(bench.concepts): raise ValueError(
        f"the support set is of {cs.benchmark} with {len(cs.ids)} concepts, the benchmark is {bench.name} with {len(bench.concepts)}")
    for m, name in ms:
        m.fit(bb, cs, cache=cache, progress=progress)
        for kind in kinds:
            if not (qs := bench.queries(kind)): continue
            t = metrics_table(m.embed(bb, qs, cs) @ pool.T, qs, ks, ties=ties)
            t.insert(0, 'method', name); t.insert(1, 'kind', kind); t.insert(2, 'query', range(len(qs)))
            t.insert(5, 'n_concepts', [len(set(q.concepts)) for q in qs])
            out.append(t.assign(settings=settings_text(m)))
    if not out: raise ValueError(f"{bench.name} has no queries of kind(s) {list(kinds)}")
    return pd.concat(out, ignore_index=True)


# %%
#| export
SPLITS = ('context-all', 'context-single', 'context-multi', 'concept')

def summarize(per_query:pd.DataFrame)->pd.DataFrame:
    "Mean metrics (fractions in [0, 1]) per method and split (context-all, -single, -multi, concept), with n_queries."
    cols, out = metric_columns(per_query), []
    for m, t in per_query.groupby('method', sort=False):
        ctx = t[t.kind == 'context']
        parts = dict(zip(SPLITS, (ctx, ctx[ctx.n_concepts <= 1], ctx[ctx.n_concepts > 1], t[t.kind == 'concept'])))
        extra = dict(settings=t.settings.iloc[0]) if 'settings' in t else {}
        out += [dict(method=m, split=s, n_queries=len(p), **p[cols].mean().to_dict(), **extra) for s,p in parts.items() if len(p)]
    return pd.DataFrame(out)

def evaluate(methods, bench, bb:Backbone, **kw)->pd.DataFrame:
    "`summarize(evaluate_queries(methods, bench, bb, **kw))`: one row per method and split."
    return summarize(evaluate_queries(methods, bench, bb, **kw))

def as_percent(df:pd.DataFrame, digits:int=2)->pd.DataFrame:
    "`df` with its metric columns ×100 and rounded, as the paper's tables show them."
    cols = metric_columns(df)
    return df.assign(**{c: (df[c]*100).round(digits) for c in cols})


# %% [markdown]
# The runner on the three baselines that learn nothing:

# %%
pq = evaluate_queries([TextOnly('coarse'), ImageOnly(), AvgImText()], bench, bb, cache=cache)
test_eq(len(pq), 3*(len(ctx) + len(bench.concepts)))
assert pq[metric_columns(pq)].stack().between(0, 1).all()
pq.head(3)

# %%
sm = summarize(pq)
test_eq(sm.columns.tolist(), ['method', 'split', 'n_queries', 'mrr', 'map', 'r@1', 'r@5', 'r@10', 'settings'])
test_eq(sm.split.tolist()[:4], list(SPLITS))
test_eq(sm.n_queries.tolist()[:4], [88, 80, 8, 20])
as_percent(sm).head(4)

# %% [markdown]
# Each method keeps its own rows, and every row carries the method's settings. Methods that share a
# name in one evaluation are told apart by the settings in which they differ (`Polar()` and
# `Polar(iters=5)` become `POLAR (iters=None)` and `POLAR (iters=5)`); the same method given twice
# is refused, as is an empty list.

# %%
test_eq([n for _,n in _methods([Polar(), Polar(iters=5), TextOnly()])], ['POLAR (iters=None)', 'POLAR (iters=5)', 'text (coarse)'])
test_fail(lambda: evaluate_queries([AvgImText(), AvgImText()], bench, bb, cache=cache), contains="the same method is given twice")
test_fail(lambda: evaluate([], bench, bb, cache=cache), contains='no method to evaluate')
two = evaluate([AvgImText(), AvgImText(description='rich')], bench, bb, cache=cache)
test_eq(two.groupby('method', sort=False).n_queries.first().to_dict(), {'AvgIm+Text (description=coarse)': 88, 'AvgIm+Text (description=rich)': 88})
test_eq(json.loads(two.settings.iloc[-1]), dict(alpha=0.5, description='rich'))
test_eq(two[two.split == 'context-all'].mrr.nunique(), 2)  # two methods, each its own numbers
two[['method', 'split', 'n_queries', 'mrr', 'settings']].head(2)


# %% [markdown]
# ## General knowledge: VLM-caption recall@10
#
# The paper's measure of what an update costs the text encoder (§4, supplement §13): every pool
# image has a caption written by a vision-language model, and each caption should retrieve its own
# image among the whole pool. Recall@10 is measured with the original encoder and again with each
# concept's changes to the text encoder applied in turn; the table gives the original, the mean and
# the worst recall over concepts, and the mean and worst drop. A baseline that leaves the encoder
# alone drops by exactly zero, textual inversion included (captions never hold the learned token).

# %%
#| export
def caption_ranks(bb:Backbone, # the backbone
                  captions:list[str], # one caption per pool image, in pool order
                  pool:torch.Tensor, # the pool's normalised image features
                  updates:list=(), # low-rank updates of the text encoder to apply
                 )->torch.Tensor:
    "The 1-based rank of each caption's own image in the pool (tied scores count against it)."
    if isinstance(captions, str) or len(captions) != len(pool) or not all(isinstance(c, str) for c in captions): raise ValueError(
        f"captions must be one string per pool image: {len(pool)} pool images, {'a single string' if isinstance(captions, str) else f'{len(captions)} captions'}")
    S = encode_text(bb, list(captions), list(updates)) @ pool.T
    return (S >= S.diagonal()[:, None]).sum(1)

def caption_recall(bb:Backbone, captions:list[str], pool:torch.Tensor, updates:list=(), # as for `caption_ranks`
                   k:int=10, # the cut-off
                  )->float:
    "Caption→image recall@k: the fraction of captions whose own image is in the top k of the pool (ties count against)."
    return float((caption_ranks(bb, captions, pool, updates) <= k).float().mean())

def general_knowledge(method:Method, bench, bb:Backbone,
                      captions:str|Path|list|None=None, # pool-aligned captions, or their JSON file (default: <root>/vlm_captions.json)
                      k:int=10, cache:bool|str|Path=True,
                      per_concept:bool=False, # one row per concept instead of the summary
                      n_support:int|str|None='paper', support_seed:int=0, # support images per concept (see `concept_set`)
                     )->pd.DataFrame:
    "VLM-caption recall@k without and with each concept's text-encoder changes: original, mean, worst, mean and worst drop."
    caps = captions if isinstance(captions, list) else bench.vlm_captions(captions or bench.root/'vlm_captions.json')
    pool, cs = image_features(bb, bench.pool, cache=cache, progress=False), concept_set(bench, bb, cache, n_support, support_seed)
    method.fit(bb, cs, cache=cache)
    base = caption_recall(bb, caps, pool, k=k)
    r = pd.Series({c: caption_recall(bb, caps, pool, ups, k) if (ups := method.text_updates(c)) else base for c in cs.ids})
    if per_concept: return pd.DataFrame(dict(method=method.name, concept=r.index, original=base, recall=r.values, drop=base - r.values))
    return pd.DataFrame([dict(method=method.name, k=k, captions=len(caps), original=base, mean=r.mean(), worst=r.min(),
                              mean_drop=base - r.mean(), worst_drop=base - r.min())])


# %%
pool = image_features(bb, bench.pool, cache=cache)
caps = bench.vlm_captions(bench.root/'vlm_captions.json')
test_eq(caption_recall(bb, caps, pool, k=len(caps)), 1.0)
test_fail(lambda: caption_recall(bb, caps[:10], pool), contains='344 pool images, 10 captions')
test_fail(lambda: general_knowledge(TextOnly(), bench, bb, captions=caps[:10], cache=cache), contains='10 captions')
gk = general_knowledge(TextOnly(), bench, bb, cache=cache)
test_eq(gk.loc[0, 'worst_drop'], 0.0)
gk

# %% [markdown]
# ## All methods on the small ConCon-Chi world
#
# One table for every method, each in the one configuration the whole book uses: POLAR and
# textual inversion with the backbone's own hyper-parameters (textual inversion trains with
# POLAR's iterations and learning rate, as the paper ran it in Tab. 16's comparison), and the
# baselines. Everything is trained and scored on the CPU that builds this book.

# %%
methods = [TextOnly('coarse'), TextOnly('discriminative'), TextOnly('rich'), ImageOnly(), AvgImText(),
           TextualInversion(iters=iters), Polar(iters=iters)]
t0 = time.perf_counter()
per_query = evaluate_queries(methods, bench, bb, cache=cache)
summary = summarize(per_query)
print(f"{bb.name}: {len(methods)} methods evaluated in {time.perf_counter() - t0:.0f} s; "
      f"POLAR with λ={methods[-1].resolved(bb)['lam']}, {methods[-1].resolved(bb)['iters']} iterations, lr {methods[-1].resolved(bb)['lr']}")
as_percent(summary).pivot(index='method', columns='split', values='mrr').loc[[m.name for m in methods], list(SPLITS)]

# %% [markdown]
# The same run, mAP and recall@1 beside mRR (×100):

# %%
wide = as_percent(summary).pivot(index='method', columns='split', values=['mrr', 'map', 'r@1'])
wide = wide.swaplevel(axis=1)[[(s, m) for s in SPLITS for m in ('mrr', 'map', 'r@1')]].loc[[m.name for m in methods]]
test_eq(summary.groupby('method').size().tolist(), [4]*len(methods))
assert summary[metric_columns(summary)].stack().between(0, 1).all()
wide

# %% [markdown]
# Beside the paper's numbers for the same rows (Tab. 15: the real ConCon-Chi test split with
# ViT-L/14, context queries, 5 training images; "Coarse", "Discriminative†" and "Rich†" are its
# text-only rows). The paper has no image-only or textual-inversion row on ConCon-Chi, and its
# AvgIm+Text row is on DeepFashion2 only (Tab. 10: 18.8 context mRR with ViT-B/32, against 17.6 for
# text only and 34.82 for POLAR). Our columns come from the small procedural world and the
# backbone named above, so they are not the same experiment; what can be compared is the order of
# the rows.

# %%
paper = pd.DataFrame([('text (coarse)', 24.21, 16.83, 14.48), ('text (discriminative)', 43.16, 30.16, 31.92),
                      ('text (rich)', 40.58, 27.65, 29.98), ('POLAR', 46.33, 32.33, 36.16)],
                     columns=['method', 'paper mrr', 'paper map', 'paper r@1'])
ours = as_percent(summary)[summary.split == 'context-all'].set_index('method')[['mrr', 'map', 'r@1']].add_prefix('ours ')
side = ours.join(paper.set_index('method'), how='left').loc[[m.name for m in methods]]
side[['ours mrr', 'paper mrr', 'ours map', 'paper map', 'ours r@1', 'paper r@1']]

# %%
best = summary.loc[summary.groupby('split').mrr.idxmax(), ['split', 'method', 'mrr']].set_index('split').loc[list(SPLITS)]
for s, r in best.iterrows(): print(f"best {s} mRR: {r.method} ({100*r.mrr:.1f})")

# %% [markdown]
# A second evaluation of POLAR and textual inversion loads every concept from the cache and gives
# the same numbers:

# %%
rerun = evaluate(methods[-2:], bench, bb, cache=cache)
test_eq((methods[-1].counts, methods[-2].counts), (dict(trained=0, loaded=20), dict(trained=0, loaded=20)))
pd.testing.assert_frame_equal(rerun, summary[summary.method.isin(['textual inversion', 'POLAR'])].reset_index(drop=True))
methods[-1].counts

# %% [markdown]
# General knowledge of the same run: each of POLAR's 20 updates applied in turn to the VLM captions
# of the pool (the paper reports 52.69 for the original ViT-L/14 against 52.62 with an update on
# ConCon-Chi, Tab. 17):

# %%
gks = pd.concat([general_knowledge(m, bench, bb, cache=cache) for m in (methods[-1], methods[-2], methods[0])], ignore_index=True)
test_eq(gks.loc[1:, 'worst_drop'].tolist(), [0.0, 0.0])
gks.assign(**{c: (gks[c]*100).round(2) for c in ['original', 'mean', 'worst', 'mean_drop', 'worst_drop']})  # recall@10 ×100


# %% [markdown]
# ## The paper's central claim, on the world
#
# POLAR's claim is that a small update of the text encoder learns a concept better than its name
# does, composes with context better than blending image and text features, and costs the encoder
# next to nothing elsewhere. `claims` reads the three comparisons off one evaluation: concept-only
# mAP against text-only with the class name, context mRR against AvgIm+Text (α = 0.5), and the
# largest mean and worst drop of VLM-caption recall@10 when one concept's update is applied.

# %%
#| export
def claims(summary:pd.DataFrame, # `summarize`'s table, with rows for POLAR, 'text (coarse)' and AvgIm+Text
           gk:pd.DataFrame|None=None, # `general_knowledge(Polar(...), ...)`
           polar:str='POLAR')->pd.DataFrame:
    "POLAR's margins: concept-only mAP over text (coarse), context mRR over AvgIm+Text, and general-knowledge drops."
    v = summary.set_index(['method', 'split'])
    rows = [dict(claim='concept-only mAP: POLAR − text (coarse)', polar=v.loc[(polar, 'concept'), 'map'],
                 rival=v.loc[('text (coarse)', 'concept'), 'map']),
            dict(claim='context mRR: POLAR − AvgIm+Text', polar=v.loc[(polar, 'context-all'), 'mrr'],
                 rival=v.loc[('AvgIm+Text', 'context-all'), 'mrr'])]
    t = pd.DataFrame(rows).assign(margin=lambda d: d.polar - d.rival)
    if gk is not None:
        g = gk.iloc[0]
        t = pd.concat([t, pd.DataFrame([dict(claim='VLM-caption recall@10: mean drop with one update', polar=g['mean'], rival=g.original, margin=g.mean_drop),
                                        dict(claim='VLM-caption recall@10: worst drop with one update', polar=g.worst, rival=g.original, margin=g.worst_drop)])],
                      ignore_index=True)
    return t


# %%
cl = claims(summary, gks[gks.method == 'POLAR'])
test_eq(len(cl), 4); assert np.isfinite(cl.margin).all()
print(f"{bb.name}, small ConCon-Chi world (seed 0), POLAR defaults {methods[-1].resolved(bb)}:")
cl.round(3)

# %% [markdown]
# The same comparison on other seeds of the world's photos (the concepts are the same, the photos,
# places and queries differ): eighteen worlds in the `small` profile (344 pool images, 88 context
# queries, eight of them with two concepts) and twelve in the `full` one (4,020 pool images, sized
# like ConCon-Chi, 240 context queries, 40 with two concepts). Beside the claims, the context margin is
# split into single- and two-concept queries, and measured again with `combine='mean'` (the same
# trained updates, averaged instead of summed in two-concept queries). Slow (`slow`, about twenty-five
# minutes on two CPU cores): the stored output is from the run that built this book's shipped
# outputs.

# %%
#| slow
# NBVAL_SKIP
rows, short = [], {'concept-only mAP: POLAR − text (coarse)': 'concept', 'context mRR: POLAR − AvgIm+Text': 'context',
                   'VLM-caption recall@10: mean drop with one update': 'GK mean drop', 'VLM-caption recall@10: worst drop with one update': 'GK worst drop'}
for seed, profile in [(s, 'small') for s in range(18)] + [(s, 'full') for s in range(12)]:
    b = ConConChi(make_benchmark(tmp/f'cc-{seed}-{profile}', 'conconchi', seed=seed, profile=profile))
    p, pm = Polar(), Polar(combine='mean')
    s = evaluate([TextOnly('coarse'), AvgImText(), p, pm], b, bb, cache=cache)
    g = general_knowledge(p, b, bb, cache=cache)
    m = s.pivot(index='split', columns='method', values='mrr')
    r = dict(seed=seed, profile=profile, pool=len(b.pool), **{short[k]: v for k, v in claims(s, g).set_index('claim').margin.items()})
    r.update({'VLM r@10': g.original.iloc[0], 'single': m.loc['context-single', p.name] - m.loc['context-single', 'AvgIm+Text'],
              'two': m.loc['context-multi', p.name] - m.loc['context-multi', 'AvgIm+Text'],
              'context, mean': m.loc['context-all', pm.name] - m.loc['context-all', 'AvgIm+Text'],
              'two, mean': m.loc['context-multi', pm.name] - m.loc['context-multi', 'AvgIm+Text']})
    rows.append(r)
seeds = pd.DataFrame(rows).set_index(['seed', 'profile', 'pool'])
seeds.round(3)

# %% [markdown]
# How many of those worlds meet each of the world's targets (VLM-caption recall@10 ≥ 0.70; POLAR −
# text (coarse) concept-only mAP ≥ 0.15; POLAR − AvgIm+Text context mRR > 0; mean drop of
# VLM-caption recall@10 with one update ≤ 0.02), and the mean of each margin:

# %%
#| slow
# NBVAL_SKIP
bars = pd.DataFrame({'VLM r@10 ≥ 0.70': seeds['VLM r@10'] >= 0.70, 'concept ≥ 0.15': seeds.concept >= 0.15,
                     'context > 0': seeds.context > 0, 'GK mean drop ≤ 0.02': seeds['GK mean drop'] <= 0.02,
                     'context > 0 with mean': seeds['context, mean'] > 0})
bars.insert(4, 'all four', bars.iloc[:, :4].all(axis=1))
n = bars.groupby(level='profile', sort=False).size().astype(str)
met = bars.groupby(level='profile', sort=False).sum().astype(int).apply(lambda col: col.astype(str) + ' of ' + n)
pd.concat([met, seeds.groupby(level='profile', sort=False).mean().round(3).astype(str)], axis=1).T

# %% [markdown]
# Read together: in the `small` worlds (the profile the chapters run) VLM-caption recall@10 and the
# concept-only margin hold everywhere (the smallest margin 0.215, seed 13), the context margin on
# sixteen of eighteen (seed 10 −0.007, seed 12 −0.027) and the general-knowledge cost on seventeen
# (seed 3 loses 0.0208 of caption recall@10 per update on average). In the `full` worlds, with twelve
# times the photos, the concept and context margins hold on all twelve and the general-knowledge cost
# on ten (seeds 0 and 1 lose 0.021 and 0.023), but caption→image recall@10 among 4,020 photos, many
# of them the same concept in the same place, is about 0.42 (the paper's Table 11 reports 52.47 % for
# ViT-L/14 on ConCon-Chi's validation split with an update applied: their figure, not a measurement
# here), far below the 0.70 of the small pool; one update costs about 0.016 of that 0.424 (3.8 %),
# where on the small pool it costs 0.009 of 0.839 (1.1 %). The larger pool probably has more
# near-ties for an update to reorder (not measured
# here). Ties among the captions are not the limit: in the cell below, the 4,020 captions of full
# world 0 (drawn again from its plan, without the photos), with their verbs merged ("sits", "is
# sitting", …), have no group of identical wordings as large as ten (the cell prints the largest),
# so a model that read every word would not be held below recall@10 of 1 by ties.

# %%
from polar_nb.world import conconchi_plan, vlm_captions
import collections
_, full_rows = conconchi_plan(0, 'full')
full_caps, _ = vlm_captions([s for r in full_rows for s in r.scenes], 0)  # as write_conconchi writes them
verbs = r'\b(sits|is sitting|is placed|lies|stands|is standing|walks|is walking|poses|is posing)\b'
groups = collections.Counter(re.sub(verbs, '·', c.lower()).rstrip('.') for c in full_caps)
print(f"{len(full_caps):,} captions of full world 0: {len(groups):,} distinct with verbs merged; largest group {max(groups.values())}")
assert len(full_caps) == 4020 and max(groups.values()) < 10

# %% [markdown]
# What does hold recall back is world-tiny itself, both towers of it. The linear probes of the
# [world-tiny chapter](08_world_tiny.ipynb) read an object's class from its image features far less
# well than its colour or its place, and its text tower, trained with them, moves a phrase's
# embedding less for a new class than for a new colour or place. In a full world a median of twelve
# photos share a caption's concepts and place (measured in that chapter), and what tells them apart
# is the class and the shape of the main thing and of the things beside it.

# %% [markdown]
# What these margins say depends on λ. The shipped λ was chosen on the validation split as the best
# setting whose general-knowledge cost stays within 0.02 of caption recall@10 on held-out generic
# scenes (the world-tiny chapter shows the whole search). A smaller λ learns the concepts better and
# moves more captions; a larger one keeps the encoder and learns little more than the class name.
#
# Designs tried and not kept: [Lab notes](90_lab_notes.ipynb#earlier-small-profile)
#
# Designs tried and not kept: [Lab notes](90_lab_notes.ipynb#unseen-words-before)

# %% [markdown]
# ### Where the context margin comes from
#
# The last two columns split the context margin by query: those with one concept, and those with
# two ("* next to * on the beach"), for which POLAR writes `sks` twice and applies the sum of both
# concepts' updates. POLAR's mean squared loss pulls the embedding of "A photo of sks." onto the
# concept's photos. Where the text tower puts that prompt before any update is far from every
# photo (the modality gap of a contrastive text tower, and a word it never saw), so every update
# makes much the same long move first, and its own, shorter one after. Summed, the shared move
# counts twice. The cell below measures that on this chapter's run: the shifts the 20 updates give
# the prompt, how much of them all share, and how close each embedding lands to its concept's
# support photos, alone and summed with a second concept's update as a two-concept query is.

# %%
pol_all = methods[-1]  # POLAR of the table above, fitted on all 20 concepts
e0 = encode_text(bb, ['A photo of sks.'])[0]
E1 = torch.stack([encode_text(bb, ['A photo of sks.'], pol_all.text_updates(c))[0] for c in cs.ids])
means = torch.stack([support_mean(cs, [c]) for c in cs.ids]); mean_of = dict(zip(cs.ids, means))
shifts, off = E1 - e0, ~torch.eye(len(cs.ids), dtype=torch.bool)
pairs = sorted({tuple(q.concepts) for q in bench.queries('context') if len(set(q.concepts)) == 2})
avg_all = Polar(combine='mean'); avg_all.updates = pol_all.updates  # the same updates, averaged
two, two_mean = [torch.stack([encode_text(bb, ['A photo of sks next to sks.'], m.query_updates(p))[0] for p in pairs]) for m in (pol_all, avg_all)]
near = pd.DataFrame([dict(measure='prompt before any update: cosine to the support means (mean over concepts)', value=(means @ e0).mean().item()),
                     dict(measure='length of an update\'s shift of the prompt (mean)', value=shifts.norm(dim=-1).mean().item()),
                     dict(measure='shifts: mean pairwise cosine', value=(F.normalize(shifts, dim=-1) @ F.normalize(shifts, dim=-1).T)[off].mean().item()),
                     dict(measure='shifts: length of their mean / mean length', value=(shifts.mean(0).norm() / shifts.norm(dim=-1).mean()).item()),
                     dict(measure='one update: cosine to its concept\'s support mean', value=(E1 * means).sum(-1).mean().item()),
                     dict(measure='one update: cosine to the other concepts\' support means', value=(E1 @ means.T)[off].mean().item()),
                     dict(measure=f'two updates summed ("A photo of sks next to sks.", {len(pairs)} pairs): cosine to each concept\'s support mean',
                          value=torch.stack([two[i] @ mean_of[c] for i, p in enumerate(pairs) for c in p]).mean().item()),
                     dict(measure='the same two updates averaged (`combine=\'mean\'`): cosine to each concept\'s support mean',
                          value=torch.stack([two_mean[i] @ mean_of[c] for i, p in enumerate(pairs) for c in p]).mean().item()),
                     dict(measure='AvgIm+Text\'s image side for the same pairs (`support_mean` of both): cosine to each concept\'s support mean',
                          value=torch.stack([support_mean(cs, p) @ mean_of[c] for p in pairs for c in p]).mean().item())])
assert near.value.abs().le(2).all() and len(pairs) > 0
near.round(3)


# %% [markdown]
# One update alone lands close to its own concept's photos and well away from the others', so
# single-concept queries find the concept and the place. The updates' shifts share most of their
# length, though, and two of them summed land farther from each of their concepts than the image
# side of AvgIm+Text, which averages the two concepts' photos and nothing else. That is where the
# world's context margin goes: in the seeds table POLAR is ahead of AvgIm+Text on single-concept
# queries in all 30 worlds (by 0.007 at the least), and behind on two-concept queries in 22 of them
# (eight such queries per world in the `small` profile, so that column is noisy; forty in the `full`
# one). In the cell above the prompt before any update has a cosine of 0.24 to the concepts' support
# means, and the shifts a mean pairwise cosine of 0.57.
#
# Designs tried and not kept: [Lab notes](90_lab_notes.ipynb#two-concept-settings)
#
# Designs tried and not kept: [Lab notes](90_lab_notes.ipynb#masked-object-stage)
#
# What did mend the two-concept queries is the combination rule, not the updates: averaging the
# two updates (`combine='mean'`, the last two columns of the seeds table) no longer doubles the
# shared move. The two-concept margin goes from behind to ahead on average in both profiles (−0.063
# to +0.085 in the small worlds, −0.040 to +0.059 in the full ones), and the overall context margin
# is positive on every world (the bars table). The cosines of the cell above do not show why: the
# averaged updates land no nearer each concept's support mean than the summed ones (0.69 against
# 0.71); what else changes in the ranking was not measured here. It is not the paper's rule (its
# updates are summed), so `Polar()` keeps the sum, and every other figure in this book is the
# paper's POLAR.

# %% [markdown]
# ## Personalisation time (Tab. 16)
#
# POLAR backpropagates through the last layer's EOT row only; textual inversion through the whole
# text encoder. Time to personalise one concept (5 images, 50 iterations) on this book's CPU, beside
# the paper's ViT-L/14 on a V100 (wall-clock times on a shared CPU vary from run to run):

# %%
def secs(f, n=3):
    "Best of `n` wall-clock times of `f()`."
    out = []
    for _ in range(n): t0 = time.perf_counter(); f(); out.append(time.perf_counter() - t0)
    return min(out)

feats0, prompts0 = cs.feats[0], concept_prompts('sks')
t_polar = secs(lambda: personalize(bb, feats0, prompts0, iters=50))
t_ti = secs(lambda: invert_token(bb, feats0, prompts0, initial_vector(bb, 'coarse', 'cup'), iters=50))
pd.DataFrame([dict(method='POLAR', iters=50, ours_ms=round(1e3*t_polar), paper_ms=219.54),
              dict(method='textual inversion (1 token)', iters=50, ours_ms=round(1e3*t_ti), paper_ms=1597.62)]
             ).assign(ratio_ours=lambda d: (d.ours_ms/d.ours_ms[0]).round(1), ratio_paper=lambda d: (d.paper_ms/d.paper_ms[0]).round(1))

# %% [markdown]
# ## What we found
#
# On the small ConCon-Chi-format world (seed 0: 344 pool images, 88 context queries, 20 concepts),
# with `world-tiny` and its shipped POLAR defaults (λ = 0, 150 iterations, lr 0.01), as the stored
# outputs above measure it:
#
# - **The paper's claim holds on this world.** POLAR's concept-only mAP is 0.384 against 0.138 for
#   the class name (a margin of 0.246), its context mRR 0.867 against AvgIm+Text's 0.805, and one
#   update costs on average 0.009 of VLM-caption recall@10 (0.843 → 0.834; the costliest 0.020).
#   Over eighteen `small` worlds the concept margin is at least 0.15 on all of them (mean 0.254), the
#   context margin positive on sixteen (mean 0.050) and the mean general-knowledge cost within 0.02
#   on seventeen; over twelve `full` worlds the concept and context margins hold on all twelve and
#   the cost on ten, but caption→image recall@10 among 4,020 photos is 0.424 (0.839 on the small
#   pools).
# - **The order of the rows differs from the paper's at the top.** Context mRR ×100: text (coarse)
#   55.86, textual inversion 77.48, text (rich) 82.63, POLAR 86.72, text (discriminative) 91.68.
#   In the paper POLAR (46.33) is ahead of the discriminative oracle (43.16); here the oracle leads.
#   On concept-only queries the mean support image (mAP ×100 41.41) is ahead of POLAR (38.42) as
#   well, and textual inversion (32.15) behind both.
# - **Two-concept queries are where POLAR loses.** Single-concept context mRR is 0.890 against
#   AvgIm+Text's 0.808, two-concept 0.639 against 0.781: the updates' shifts of the prompt share
#   most of their direction (mean pairwise cosine 0.570), so two summed updates land at a cosine of
#   0.705 to each concept's support mean, where AvgIm+Text's image side is at 0.858. Over the thirty worlds the
#   two-concept margin averages −0.063 (`small`) and −0.040 (`full`); averaging the two updates
#   (`combine='mean'`) turns it to +0.085 and +0.059 and makes the context margin positive on every
#   world. `Polar()` keeps the paper's sum.
# - **POLAR personalises an order of magnitude faster than textual inversion.** Fifty iterations
#   take 53 ms for POLAR and 602 ms for textual inversion in the stored run (11.4×; the paper's V100
#   and ViT-L/14: 219.54 and 1597.62 ms, 7.3×).

# %%
#| hide
import shutil; shutil.rmtree(tmp, ignore_errors=True)

# %%
#| hide
import nbdev; nbdev.nbdev_export()
