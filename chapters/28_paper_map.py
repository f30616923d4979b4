# %% [markdown]
# # The paper map
#
# > Every table and figure of POLAR's supplement and every element of the CAP poster that this book reproduces: the chapter and function that compute it, our number beside the paper's, and the verdicts on its claims, read from the results store.

# %% [markdown]
# The result chapters ([Main results](21_main_results.ipynb) to [Timing](27_timing.ipynb)) each set
# their measurements beside the paper's numbers. This chapter gathers them into one map. Nothing
# here is typed in or recomputed: our numbers are read from the [results store](15_results.ipynb)
# (every experiment over several worlds), the paper's from [The paper's numbers](20_paper.ipynb),
# and the verdicts on the paper's claims from `verdicts()`. What is written here is only *which*
# stored rows stand for each of the paper's numbers.
#
# **Numbers.** Our number is the mean over worlds of each world's mean over its runs, with the
# standard deviation across worlds. The store's runs measure `world-tiny` on the embedded worlds,
# a synthetic stand-in for ConCon-Chi and DeepFashion2, so their absolute numbers are not the
# paper's and cannot agree or differ with them: such numbers are *not comparable*. A number is
# compared with the paper's only when the store holds it for the paper's backbone; it then *agrees*
# when the paper's number lies inside our 95 % interval across worlds.
#
# **Directions.** What the embedded world can test is the paper's *direction*: which method or
# setting comes out ahead. Each entry counts the verdicts of its claims (*agrees*, *reversed*,
# *unresolved*, from paired intervals across worlds); the [home page](index.ipynb) lists them one
# by one.

# %%
#| default_exp papermap

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail
import pandas as pd; pd.set_option('display.max_columns', None, 'display.max_rows', 500)  # the book's tables are never cut

# %%
#| export
import html, importlib, math
from dataclasses import dataclass, field
import numpy as np, pandas as pd
from polar_nb.clip import data_dir
from polar_nb.paper import paper_value, paper_numbers, _matches, ALIASES
from polar_nb.results import results, verdicts, VERDICTS, _title

# %% [markdown]
# ## One of our numbers, one of the paper's
#
# A `Pair` names our rows in the store (experiment, method, query, metric, setting) and the paper's
# number (`paper_value`'s arguments).

# %%
#| export
NBS = data_dir().parent/'nbs'  # the chapters
NOT_COMPARABLE, NOT_STORED = 'not comparable', 'not in the store'

@dataclass
class Pair:
    "One of our numbers (`ours`: experiment, method, query, metric and optionally setting, benchmark) beside the paper's (`paper`: `paper_value`'s arguments)."
    label:str
    ours:dict|None=None
    paper:dict|None=None

def ours_number(res:pd.DataFrame, sel:dict)->dict:
    "Our number for `sel` in percent: the mean over worlds of each world's mean over runs, the standard deviation across worlds, the worlds, the backbone."
    m = np.ones(len(res), bool)
    for k, v in sel.items():
        if v is not None: m &= (res[k] == v).to_numpy()
    t = res[m]
    if t.duplicated(['world', 'run']).any(): raise ValueError(f"{sel} selects several rows per world and run: give its setting or benchmark")
    w = 100 * t.groupby('world').value.mean()
    return dict(value=float(w.mean()) if len(w) else math.nan, spread=float(w.std(ddof=1)) if len(w) > 1 else math.nan,
                n_worlds=len(w), backbone=', '.join(sorted(set(t.backbone))) if len(t) else '')

def paper_number(p:dict)->dict:
    "The paper's number for `p` (`paper_value`'s arguments), with its spread (NaN where it prints none) and backbone."
    t = paper_numbers()
    t = t[(t.table == ALIASES.get(str(p['table']), str(p['table']))) & (t.method == p['method']) & (t.metric == p['metric'])]
    for k in ('query', 'backbone'):
        if p.get(k) is not None: t = t[t[k] == p[k]]
    if p.get('setting') is not None: t = t[t.setting.map(lambda s: _matches(s, p['setting']))]
    if len(t) != 1: paper_value(**p)  # raises, saying what the table has
    r = t.iloc[0]
    return dict(value=float(r.value), spread=float(r.spread), backbone=r.backbone)

def _paper_name(backbone:str)->str: return backbone.replace('ViT-B-', 'ViT-B/').replace('ViT-L-', 'ViT-L/')

def number_verdict(ours:dict, paper:dict)->tuple[str, str]:
    "(verdict, why): 'agrees' when the paper's number is inside our 95 % interval across worlds, 'differs' if not; not comparable unless the backbone is the paper's."
    if not ours['n_worlds']: return NOT_STORED, 'the store holds no rows for it'
    if _paper_name(ours['backbone']) != paper['backbone']:
        return NOT_COMPARABLE, f"{ours['backbone']} on the embedded world, not the paper's {paper['backbone']} on the real benchmark"
    if ours['n_worlds'] < 2 or math.isnan(ours['spread']): return NOT_COMPARABLE, 'one world: no interval'
    from scipy import stats
    h = stats.t.ppf(0.975, ours['n_worlds'] - 1) * ours['spread'] / math.sqrt(ours['n_worlds'])
    return ('agrees' if abs(ours['value'] - paper['value']) <= h else 'differs'), ''


# %%
toy = pd.DataFrame(dict(experiment='e', method='A', query='context-all', metric='mrr', setting='', benchmark='conconchi', backbone='world-tiny',
                        world=[0, 0, 1, 1], run=[0, 1, 0, 1], value=[0.5, 0.7, 0.4, 0.4]))
o = ours_number(toy, dict(experiment='e', method='A', query='context-all', metric='mrr'))
test_close(o['value'], 50.0); test_close(o['spread'], math.sqrt(2) * 10); test_eq(o['n_worlds'], 2)
p = paper_number(dict(table='15', method='Ours', metric='mrr', query='context', setting='train_images=1'))
test_eq(p['value'], 44.68)
test_eq(number_verdict(o, p)[0], NOT_COMPARABLE)
test_eq(number_verdict(dict(o, backbone='ViT-L-14'), p)[0], 'agrees')  # 44.68 is inside 50 ± 12.7 · 14.1 / √2
test_eq(number_verdict(dict(o, backbone='ViT-L-14', spread=0.1), p)[0], 'differs')
test_eq(number_verdict(ours_number(toy, dict(method='B')), p)[0], NOT_STORED)
test_fail(lambda: ours_number(pd.concat([toy, toy]), dict(method='A')), contains='several rows per world')


# %% [markdown]
# ## The map's entries
#
# An `Item` is a table or figure of the paper (or an element of the poster): the chapter and
# function that reproduce it, its pairs of numbers (the first is the headline), and the claims
# of `verdicts()` that belong to it (by the paper's table and our chapter). An entry the store
# does not cover yet says where it is measured instead.

# %%
#| export
@dataclass
class Item:
    "A table or figure of the paper (or an element of the poster) and where the book reproduces it."
    element:str # 'Tab. 10', 'Fig. 5', 'Dataset'
    source:str # 'supplement' or 'CAP poster'
    what:str # what it shows
    chapter:str # the chapter that reproduces it
    function:str # the function that computes it (dotted path)
    pairs:list=field(default_factory=list)
    claims:tuple=() # (paper table, chapter) of its claims in `verdicts()`
    note:str='' # why the store has no number for it, where that is so

def _o(exp, method, query, metric, setting=None, benchmark=None):
    return dict(experiment=exp, method=method, query=query, metric=metric, setting=setting, benchmark=benchmark)
def _p(table, method, metric, query=None, **kw): return dict(table=table, method=method, metric=metric, query=query, **kw)
_QN = {'context-all': 'context', 'concept': 'concept-only'}
def _pairs(exp, rows, cols, table, bench=None, **paper_kw):
    "Pairs for every (our method, setting, the paper's method, the paper's setting) of `rows` and (query, metric) of `cols`."
    return [Pair(f"{pm}{f' ({ps})' if ps else ''} · {_QN.get(q, q)} {m}", _o(exp, om, q, m, os, bench),
                 _p(table, pm, m, _QN.get(q, q), **({'setting': ps} if ps else {}), **paper_kw))
            for om, os, pm, ps in rows for q, m in cols]


# %%
#| export
CC = [('context-all', 'mrr'), ('context-all', 'map'), ('context-all', 'r@1'), ('concept', 'mrr'), ('concept', 'map')]
DF2 = [('context-all', 'mrr'), ('context-all', 'r@5'), ('concept', 'mrr'), ('concept', 'map')]
GK = lambda q: [(q, f'r@{k}') for k in (1, 5, 10)]  # Tab. 17–19's cut-offs
SINGLE = [('context-single', 'mrr'), ('context-single', 'map'), ('context-single', 'r@1'), ('concept', 'mrr'), ('concept', 'map'), ('vlm-caption', 'r@10')]

def _ablation(table, what, rows):
    return Item(f'Tab. {table}', 'supplement', what, '22_ablations', 'polar_nb.ablations.ablate',
                _pairs('ablations', [('POLAR', ours, 'Ours', theirs) for ours, theirs in rows], [('context-single', 'mrr')], table), (table, '22_ablations'))

def _supplement()->list[Item]:
    one_world = lambda ch: f"measured on world 0 in {ch}; not in the results store"
    return [
        Item('Tab. 9', 'supplement', 'POLAR on ConCon-Chi TEST-UNSEEN: the concepts no λ was tuned on', '21_main_results', 'polar_nb.experiments.main_results',
             _pairs('unseen', [('POLAR', None, 'Ours', None)], CC, '9'), ('9', '21_main_results')),
        Item('Tab. 10', 'supplement', 'POLAR and the baselines on DeepFashion2 test (= Tab. 1 of the main text)', '21_main_results',
             'polar_nb.experiments.main_results', _pairs('main', [('POLAR', None, 'Ours', None)], DF2, '10', 'pervl', backbone='ViT-B/32') +
             _pairs('main', [('AvgIm+Text', None, 'AvgIm + Text', None), ('text (coarse)', None, 'Text Only', None)], [('context-all', 'mrr')], '10', 'pervl'),
             ('10', '21_main_results')),
        _ablation('11', 'the rank of the update, each with its best λ (ConCon-Chi)', [(f'rank={r}', f'rank={r}') for r in (1, 2, 4, 8, 16)]),
        _ablation('12', 'the layers updated, each with its best λ (ConCon-Chi)',
                  [('layers=last', 'layers=12'), ('layers=last two', 'layers=11,12'), ('layers=last three', 'layers=10,11,12'), ('layers=all', 'layers=all')]),
        _ablation('13', 'which weight is updated, each with its best λ (ConCon-Chi)', [(f'params={p}', f'params={p}') for p in ('V', 'Q', 'K', 'O', 'Q,V', 'Q,K,V,O')]),
        Item('Tab. 14', 'supplement', "hard negatives (other concepts' images) in POLAR's loss (DeepFashion2)", '23_hard_negatives', 'polar_nb.negatives.PolarNeg',
             _pairs('negatives', [('POLAR + negs', None, 'Ours + negs', None), ('POLAR', None, 'Ours', None)], DF2, '14'), ('14', '23_hard_negatives')),
        Item('Tab. 15', 'supplement', 'POLAR and the class name on ConCon-Chi, five training images', '21_main_results', 'polar_nb.experiments.main_results',
             _pairs('main', [('POLAR', None, 'Ours', 'train_images=5')], CC, '15', 'conconchi') +
             _pairs('main', [('text (coarse)', None, 'Coarse (class name)', 'train_images=0')], CC[:3], '15', 'conconchi'), ('15', '21_main_results')),
        Item('Tab. 15 (one image)', 'supplement', 'POLAR from one training image (ConCon-Chi)', '24_single_image', 'polar_nb.experiments.single_image',
             _pairs('one-image', [('POLAR', None, 'Ours', 'train_images=1')], CC, '15', 'conconchi'), ('15', '24_single_image')),
        Item('Tab. 16', 'supplement', 'personalization time of one concept, ViT-L/14, 5 images (ms)', '27_timing', 'polar_nb.bench.bench_personalization',
             note="timed in Timing on this machine's CPU; the store holds accuracy over worlds, not timings"),
        Item('Tab. 17', 'supplement', 'VLM-caption retrieval with and without an update (ConCon-Chi)', '26_general_knowledge', 'polar_nb.knowledge.recall_under_updates',
             _pairs('knowledge', [('POLAR', None, 'Ours', None), ('original CLIP', None, 'Original CLIP', None)], GK('vlm-caption'), '17'),
             ('17', '26_general_knowledge')),
        Item('Tab. 18', 'supplement', "general caption→image retrieval (Flickr30k; the world's held-out generic scenes)", '26_general_knowledge',
             'polar_nb.knowledge.recall_under_updates',
             _pairs('knowledge', [('POLAR', None, 'Ours', None), ('original CLIP', None, 'Original CLIP', None)], GK('general'), '18'),
             ('18', '26_general_knowledge')),
        Item('Tab. 19', 'supplement', 'ConCon-Chi retrieval with each concept replaced by its discriminative description', '26_general_knowledge',
             'polar_nb.knowledge.described_embeddings',
             _pairs('knowledge', [('POLAR', None, 'Ours', None), ('original CLIP', None, 'Original CLIP', None)], GK('discriminative-caption'), '19'),
             ('19', '26_general_knowledge')),
        Item('Tab. 20', 'supplement', "Adam or AdamW weight decay in place of POLAR's regulariser (ConCon-Chi)", '25_weight_decay', 'polar_nb.baselines.Polar',
             _pairs('regulariser', [('POLAR', 'lambda=0.35', 'Ours', None), ('Adam + wd', None, 'Adam + wd', None), ('AdamW + wd', None, 'AdamW + wd', None)],
                    SINGLE, '20'), ('20', '25_weight_decay')),
        Item('Tab. 21', 'supplement', 'which weight is updated, on DeepFashion2', '22_ablations', 'polar_nb.ablations.ablate', note=one_world('Ablations')),
        Item('Fig. 5', 'supplement', 'failures on look-alike concepts: concept-only retrievals on DeepFashion2', '21_main_results', 'polar_nb.experiments.gallery',
             note='the figure is qualitative; the gallery of Main results shows the same kind of failure on the world'),
    ]

POSTER_NOTE = "the poster prints no number; its data, the Instagram Influencers Dataset, is not available here (the embedded collections stand in)"

def _poster()->list[Item]:
    return [Item('Dataset', 'CAP poster', "Instagram Influencers Dataset: 12M image–text pairs, grouped by account into episodes",
                 '07_collections', 'polar_nb.collections.make_collections', note=POSTER_NOTE),
            Item('Fig. 1', 'CAP poster', "an episode: a user's collection, a query, challenge images and the correct one", '30_cap',
                 'polar_nb.cap.episode_features', note=POSTER_NOTE),
            Item('Fig. 2', 'CAP poster', 'existing methods: CLIP ranks the challenge images by similarity to the query', '30_cap', 'polar_nb.cap.zero_shot', note=POSTER_NOTE),
            Item('Fig. 3', 'CAP poster', "CAP: a transformer over the collection predicts a warping of the query and image embeddings", '30_cap',
                 'polar_nb.cap.train_cap', [Pair(f'{m} · personal r@1', _o('cap', m, 'personal', 'r@1')) for m in ('CAP', 'zero-shot', 'collection-mean')],
                 ('poster', '30_cap'), note=POSTER_NOTE)]

def items()->list[Item]:
    "Every entry of the map: the supplement's tables and figure in order, then the CAP poster's elements."
    return _supplement() + _poster()


# %% [markdown]
# Tab. 9 needs an experiment of its own in the store: POLAR's runs of the main results with the
# queries of three concepts left out (`exclude_concepts`).

# %% [markdown]
# ## The tables of the map

# %%
#| export
def map_numbers(its:list[Item]|None=None, res:pd.DataFrame|None=None)->pd.DataFrame:
    "One row per pair of every item: the paper's number and ours (mean ± sd across worlds) side by side, whether they compare, and why."
    res = results() if res is None else res
    rows = []
    for it in its or items():
        for pair in it.pairs:
            o = ours_number(res, pair.ours) if pair.ours else dict(value=math.nan, spread=math.nan, n_worlds=0, backbone='')
            p = paper_number(pair.paper) if pair.paper else dict(value=math.nan, spread=math.nan, backbone='')
            verdict, why = number_verdict(o, p) if pair.paper else (NOT_COMPARABLE, 'the paper prints no number')
            rows.append({'element': it.element, 'chapter': it.chapter, 'number': pair.label, 'paper': p['value'], 'paper ±': p['spread'],
                         'ours': o['value'], 'ours ±': o['spread'], 'worlds': o['n_worlds'], 'verdict': verdict, 'why': why})
    return pd.DataFrame(rows)

def _claims(it:Item, v:pd.DataFrame)->pd.DataFrame:
    "The rows of `verdicts` that belong to `it`."
    return v[(v.table == it.claims[0]) & (v.chapter == it.claims[1])] if it.claims else v.iloc[:0]

def paper_map(res:pd.DataFrame|None=None, v:pd.DataFrame|None=None)->pd.DataFrame:
    "The map: one row per entry, our headline number beside the paper's, the verdicts of its claims counted, and why where there is nothing to judge."
    res = results() if res is None else res
    v = verdicts(res) if v is None else v
    its, rows = items(), []
    nums = map_numbers(its, res)
    for it in its:
        n, c = nums[nums.element == it.element], _claims(it, v)
        head = n.iloc[0] if len(n) else pd.Series({'number': '', 'paper': math.nan, 'paper ±': math.nan, 'ours': math.nan, 'ours ±': math.nan, 'worlds': 0})
        counts = c.verdict.value_counts()
        rows.append({'element': it.element, 'source': it.source, 'what': it.what, 'chapter': it.chapter, 'function': it.function,
                     'headline number': head['number'], 'paper': head['paper'], 'paper ±': head['paper ±'], 'ours': head['ours'], 'ours ±': head['ours ±'],
                     'worlds': int(head['worlds']), 'claims': len(c), **{k: int(counts.get(k, 0)) for k in VERDICTS},
                     'why': it.note or (next((w for w in n.why if w), '') if len(n) else '')})
    return pd.DataFrame(rows)


# %%
#| export
_STYLE = ('<style>table.paper-map {font-size: 12px; border-collapse: collapse} table.paper-map th, table.paper-map td '
          '{text-align: left; vertical-align: top; padding: 3px 6px}</style>')

def chapter_link(chapter:str)->str:
    "An HTML link to `chapter`, named by its title."
    return f'<a href="{chapter}.ipynb">{html.escape(_title(chapter))}</a>'

def _cell(v, s, digits)->str:
    "A number and its spread as one cell's text ('' for no number)."
    if v is None or (isinstance(v, float) and math.isnan(v)): return ''
    f = lambda x: f'{x:.{digits}f}'
    return f(v) + ('' if s is None or (isinstance(s, float) and math.isnan(s)) else f' ± {f(s)}')

def map_html(m:pd.DataFrame, # `paper_map` or `map_numbers`
             digits:int=2)->str:
    "`m` as an HTML table: chapters as links, numbers rounded and beside their spreads, nothing shown for no number; never cut."
    t = m.copy()
    for c in [c for c in t.columns if f'{c} ±' in t.columns]:
        t[c] = [_cell(v, s, digits) for v, s in zip(t[c], t.pop(f'{c} ±'))]
    for c in t.columns:
        if c == 'chapter': t[c] = [chapter_link(x) for x in t[c]]
        elif t[c].dtype.kind == 'f': t[c] = [_cell(x, None, digits) for x in t[c]]
        else: t[c] = [html.escape('' if x is None else str(x)) for x in t[c]]
    return _STYLE + t.to_html(escape=False, index=False, classes='paper-map', border=0)


# %% [markdown]
# ## The map

# %%
from IPython.display import HTML
res = results()
v = verdicts(res)
pm = paper_map(res, v)
HTML(map_html(pm))

# %% [markdown]
# Every table of the supplement is in the map, so is its one figure, and every element of the
# poster. Every entry with pairs has our number from the store (over five worlds or more), each
# entry's claims are counted once, and every entry names a chapter and a function of the package:

# %%
test_eq(set(pm[pm.source == 'supplement'].element) - {'Tab. 15 (one image)'}, {f'Tab. {t}' for t in range(9, 22)} | {'Fig. 5'})
test_eq(list(pm[pm.source == 'CAP poster'].element), ['Dataset', 'Fig. 1', 'Fig. 2', 'Fig. 3'])
nums = map_numbers(res=res)
test_eq(int((nums.verdict == NOT_STORED).sum()), 0)
assert (nums.worlds >= 5).all(), nums[nums.worlds < 5]
test_eq(int(pm.claims.sum()), len(v))  # every claim belongs to exactly one entry
assert ((pm.why != '') | (pm.worlds > 0) | (pm.claims > 0)).all()

def resolves(dotted):
    "Whether the dotted path names an attribute of an importable module."
    mod, _, name = dotted.rpartition('.')
    try: return hasattr(importlib.import_module(mod), name)
    except ImportError: return False
for r in pm.itertuples():
    assert (NBS/f'{r.chapter}.ipynb').is_file(), r.chapter
    assert resolves(r.function), r.function

# %% [markdown]
# ## Every number
#
# All the pairs behind the map's headline numbers, in the map's order:

# %%
HTML(map_html(nums))

# %% [markdown]
# ## What the map says
#
# The claims' verdicts over the entries, and the entries the store does not cover:

# %%
pm[['element', 'chapter', 'claims', *VERDICTS]].query('claims > 0')

# %%
for r in pm[pm.claims == 0].itertuples(): print(f"{r.element}: {r.why or 'numbers only, no claim'}")

# %% [markdown]
# - **Numbers.** The store's runs are `world-tiny`'s on the embedded worlds, so no absolute number is
#   comparable with the paper's: the paper's and our columns are read side by side, not against
#   each other. A number becomes *agrees* or *differs* by itself once the store holds runs of the
#   paper's backbone on the real benchmarks.
# - **Directions.** The counts above are those of the [home page](index.ipynb)'s verdict table,
#   entry by entry; each claim's interval and the worlds on the paper's side are there.
# - **Not in the store.** Timings (Tab. 16), Flickr30k-style general knowledge and discriminative
#   descriptions (Tab. 18–19), which weight on DeepFashion2 (Tab. 21) and the look-alike figure are
#   measured in their chapters on one world; the map says so rather than read their stored tables.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
