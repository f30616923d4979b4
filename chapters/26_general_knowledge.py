# %% [markdown]
# # General knowledge
#
# > What a concept's update costs the text encoder everywhere else: VLM-caption recall, generic caption→image retrieval and retrieval with discriminative descriptions, with and without each update (supplement §13, Tab. 17–19).

# %% [markdown]
# What does a concept's update cost the text encoder on texts that never name the concept? POLAR
# changes one weight of the text encoder per concept: a rank-1 update of the value
# projection of its last layer, trained so that prompts holding `sks` land on the concept's photos.
# The update is applied to every token of every text it encodes, not only to `sks`, so it may move
# texts that never name the concept. The supplement (§13) measures that three ways, each with the
# original encoder and with an update applied:
#
# | Tab. | texts | images | metric |
# |---|---|---|---|
# | 17 | one VLM-written caption per pool image (LLaVA on real ConCon-Chi; the world writes its own with the paper's error mix) | the benchmark's pool | recall@1/5/10/50 of the caption's own image |
# | 18 | Flickr30k captions (the world: a held-out set of concept-free scenes, `generic/`) | their images | recall@1/5/10 |
# | 19 | ConCon-Chi's context queries with each `*` written as its concept's discriminative description | the pool | recall@1/5/10 of the query's positives |
#
# This chapter runs all three on the embedded world with `world-tiny` and POLAR with its shipped
# defaults (`Polar()`, fitted on every concept of the world; the updates are cached, so a second
# run only loads them). Tab. 17 and 18 apply each concept's update in turn and report the mean and
# the worst over concepts beside the original; Tab. 19 encodes each query with the updates of the
# concepts it names (summed for two-concept queries, as POLAR does). The paper's numbers stand in
# their own columns: they were measured with ViT-L/14 on real photos, ours on a procedural world
# with a 6-layer CLIP, so what compares is the size of the change, not the recall itself.

# %%
#| default_exp knowledge

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail
import pandas as pd; pd.set_option('display.max_columns', None, 'display.max_rows', 500)  # the book's tables are never cut

# %%
#| export
import json
from pathlib import Path
import pandas as pd, torch
from polar_nb.clip import Backbone
from polar_nb.baselines import Method, ConceptSet, TextOnly, caption_ranks
from polar_nb.polar import encode_text

# %% [markdown]
# ## The benchmarks and the backbone
#
# On the default profile: the two worlds of seed 0 (`small` sizes) in the ConCon-Chi and PerVL
# DeepFashion2 formats, and `world-tiny`. On the `paper` profile: the data roots of `settings.ini`
# and the backbone it names (ViT-L-14, OpenAI weights).

# %%
import tempfile, time
import numpy as np
import matplotlib.pyplot as plt
from polar_nb.config import get_settings
from polar_nb.clip import load_backbone, image_features
from polar_nb.world import make_benchmark, shared_world
from polar_nb.data import ConConChi, PerVLDeepFashion2, Query
from polar_nb.baselines import Polar, concept_set, caption_recall, evaluate
from polar_nb.metrics import metrics_table
from polar_nb.paper import paper_table

# %%
s = get_settings()
if s.profile == 'paper':
    bb = load_backbone(s.backbone, s.pretrained)
    cc, pv = ConConChi(s.data_root('conconchi')), PerVLDeepFashion2(s.data_root('deepfashion2'))
else:
    tmp = Path(tempfile.mkdtemp())
    bb = load_backbone('world-tiny')
    cc = ConConChi(shared_world('conconchi', seed=0))
    pv = PerVLDeepFashion2(shared_world('pervl', seed=0))
cache = get_settings().cache_dir
print(bb, bb.defaults, sep='\n')
pd.concat([cc.summary(), pv.summary()])

# %% [markdown]
# POLAR on every concept of both benchmarks (each concept trained once, then read from the cache),
# and the pool's image features:

# %%
fits = {}
for b in (cc, pv):
    cs = concept_set(b, bb, cache)
    pol = Polar().fit(bb, cs, cache)
    fits[b.name] = dict(bench=b, cs=cs, pol=pol, pool=image_features(bb, b.pool, cache=cache, progress=False))
    print(f"{b.name}: {len(cs.ids)} concepts, POLAR {pol.resolved(bb, b.name)}, {pol.counts}")


# %% [markdown]
# ## Where each caption's own image lands
#
# Tab. 17 and 18 pair caption $i$ with image $i$: the caption should retrieve its own image among
# all of them. `own_ranks` gives the rank of that image for every caption (tied scores count against
# it, as in `caption_recall`), and `recall_curve` reads recall@k off the ranks for any number of
# cut-offs at once.

# %%
#| export
def own_ranks(bb:Backbone, # the backbone
              captions:list[str], # caption i describes image i
              feats:torch.Tensor, # the images' normalised features, in the captions' order
              updates:list=(), # text-encoder updates to apply (summed)
             )->torch.Tensor:
    "The 1-based rank of each caption's own image among `feats` (tied scores count against it): `caption_ranks`."
    if isinstance(captions, str) or len(captions) != len(feats):
        raise ValueError(f"one caption per image: {len(feats)} images, {'a single string' if isinstance(captions, str) else len(captions)} captions")
    return caption_ranks(bb, captions, feats, updates)

def recall_curve(ranks, # 1-based ranks, one per caption
                 ks=range(1, 51), # the cut-offs
                )->pd.Series:
    "Recall@k for each k of `ks`: the fraction of `ranks` that are at most k."
    r = torch.as_tensor(ranks)
    return pd.Series([float((r <= k).float().mean()) for k in ks], index=pd.Index(list(ks), name='k'))


# %%
w = fits['conconchi']
caps = cc.vlm_captions(cc.root/'vlm_captions.json') if (cc.root/'vlm_captions.json').is_file() else None
if caps is not None:
    r0 = own_ranks(bb, caps, w['pool'])
    rc = recall_curve(r0)
    test_eq(len(rc), 50); assert rc.is_monotonic_increasing
    test_close(rc[10], caption_recall(bb, caps, w['pool'], k=10), eps=1e-9)  # the baselines' measure, at k = 10
    test_close(recall_curve(own_ranks(bb, caps, w['pool'], w['pol'].text_updates(3)), [10])[10],
               caption_recall(bb, caps, w['pool'], w['pol'].text_updates(3)), eps=1e-9)
    test_eq(own_ranks(bb, caps[:2], w['pool'][[0, 0]]).tolist(), [2, 2])  # two identical images: each caption ties, and loses the tie
test_fail(lambda: own_ranks(bb, ['a cup'], w['pool'][:2]), contains='2 images, 1 captions')
rc[[1, 5, 10, 50]] if caps is not None else None


# %% [markdown]
# `recall_under_updates` applies each concept's changes to the text encoder in turn (a method with
# none gives the original's recall), and `update_cost` sums that up per cut-off: the original
# recall, the mean and the worst over concepts, the mean and the worst drop, and how many concepts
# drop by more than `tol`.

# %%
#| export
def recall_under_updates(bb:Backbone, captions:list[str], feats:torch.Tensor, # as for `own_ranks`
                         method:Method, # a fitted method; its `text_updates(c)` are applied
                         concepts:list, # the concepts whose updates are applied, one at a time
                         ks=range(1, 51), # the cut-offs
                        )->pd.DataFrame:
    "Recall@k (columns k) with each concept's text-encoder changes applied in turn (one row per concept)."
    orig = recall_curve(own_ranks(bb, captions, feats), ks)
    t = pd.DataFrame({c: recall_curve(own_ranks(bb, captions, feats, u), ks) if (u := method.text_updates(c)) else orig for c in concepts})
    return t.T.rename_axis(index='concept')

def update_cost(original:pd.Series, # `recall_curve` of the original encoder
                per_concept:pd.DataFrame, # `recall_under_updates`
                tol:float=0.02, # a concept "costs too much" at k when its drop is larger
               )->pd.DataFrame:
    "Per cut-off k: original recall, mean and worst with one update, mean and worst drop, and concepts dropping more than `tol`."
    R = per_concept[original.index]
    return pd.DataFrame(dict(original=original, mean=R.mean(), worst=R.min(), mean_drop=original - R.mean(), worst_drop=original - R.min(),
                             beyond=((original - R) > tol + 1e-9).sum()))


# %%
if caps is not None:  # a method that leaves the text encoder alone costs nothing
    zero = recall_under_updates(bb, caps, w['pool'], TextOnly(), w['cs'].ids[:3], [1, 10])
    test_eq(zero.values, np.tile(rc[[1, 10]].values, (3, 1)))
    z = update_cost(rc[[1, 10]], zero)
    test_eq(z[['mean_drop', 'worst_drop', 'beyond']].values.tolist(), [[0, 0, 0], [0, 0, 0]])
toy = update_cost(pd.Series([0.5, 0.9], index=pd.Index([1, 10], name='k')), pd.DataFrame({1: [0.5, 0.4, 0.49], 10: [0.9, 0.9, 0.95]}))
test_close(toy.worst_drop.values, [0.1, 0.0], eps=1e-12); test_close(toy.mean_drop.values, [0.11/3, -0.05/3], eps=1e-9)
test_eq(toy.beyond.tolist(), [1, 0])
toy

# %% [markdown]
# ## VLM-caption recall (Tab. 17)
#
# Every pool image has a caption in the style of a vision-language model, with the error mix the
# paper counted in LLaVA's (88 % right, 10 % with a minor error, 2 % wrong). Recall@k for k = 1 … 50
# with the original encoder and with each of the 20 updates, on both worlds:

# %%
KS = range(1, 51)
curves17, cost17 = {}, {}
for name, f in fits.items():
    vf = f['bench'].root/'vlm_captions.json'
    if not vf.is_file(): print(f"{f['bench'].name}: no {vf} (the real benchmarks do not ship VLM captions): Tab. 17 skipped"); continue
    c = f['bench'].vlm_captions(vf)
    orig = recall_curve(own_ranks(bb, c, f['pool']), KS)
    per = recall_under_updates(bb, c, f['pool'], f['pol'], f['cs'].ids, KS)
    curves17[name], cost17[name] = (orig, per), update_cost(orig, per)
    print(f"{name}: {len(c)} captions, {len(per)} updates")

# %% [markdown]
# Ours (fractions ×100) beside the paper's. The paper prints one "Ours" row, with "the parameter
# update for a concept applied"; ours are the mean and the worst over the concepts' updates. The
# paper has no PerVL DeepFashion2 row.

# %%
WORLD = {'conconchi': 'ConCon-Chi-format world', 'deepfashion2': 'PerVL-format world'}
OURS = {'original': 'original', 'mean': 'mean, one update', 'worst': 'worst update', 'mean_drop': 'mean drop', 'worst_drop': 'worst drop'}

def side_by_side(cost, table, ks, data, paper_on=('conconchi',)):
    "Our recall@k (×100) per world beside the paper's Tab. `table` ('Original CLIP' and 'Ours'), in separately labelled columns."
    p = paper_table(table, wide=True).droplevel(0, axis=1).T[['Original CLIP', 'Ours']].assign(drop=lambda d: d['Original CLIP'] - d['Ours'])
    p.columns = pd.MultiIndex.from_product([[f'paper: ViT-L/14, {data}'], ['Original CLIP', 'Ours', 'drop']])
    out = {}
    for name, c in cost.items():
        o = (100*c.loc[list(ks), list(OURS)]).rename(columns=OURS, index=lambda k: f'r@{k}')
        o.columns = pd.MultiIndex.from_product([[f'ours: {bb.name}'], o.columns])
        out[WORLD.get(name, name)] = o.join(p if name in paper_on else p.iloc[:0], how='left')
    return pd.concat(out, names=['world', 'recall']).round(2)

tab17 = side_by_side(cost17, '17', [1, 5, 10, 50], 'real ConCon-Chi') if cost17 else None
tab17

# %% [markdown]
# The bar this book sets for an update's cost is a drop of at most 0.02 (two points ×100) of the
# original encoder's recall. The cell checks it for the mean over concepts, and counts the concepts
# whose own update goes past it, at each cut-off:

# %%
for name, c in cost17.items():
    assert (c.mean_drop <= 0.02).all(), (name, c.mean_drop.idxmax(), c.mean_drop.max())  # on average an update costs less than 0.02
    assert (c.worst >= 0).all() and (c.loc[50, 'worst_drop'] <= 0.02), name  # and no update costs that much at r@50
strict17 = pd.DataFrame({WORLD[n]: c.loc[[1, 5, 10, 50], 'beyond'] for n, c in cost17.items()}).rename(index=lambda k: f'r@{k}')
strict17.rename_axis('concepts whose update drops recall by more than 0.02', axis=1)


# %% [markdown]
# ## Generic caption→image retrieval (Tab. 18)
#
# The paper retrieves Flickr30k images from their captions with an update applied. Flickr30k is not
# shipped, and no real image can be had here; the world writes its own concept-free set instead:
# `generic/images/*.jpg` and `generic/captions.json` (`{relative path: caption}`), scenes from the
# held-out stream that `world-tiny` never saw in training, one full caption each. `generic_set`
# reads it. Held out from training, but not from the choice of λ: a world of seed 0 writes the
# first 200 scenes of that stream, and the defaults search of the world-tiny chapter measured its
# general-knowledge cost on the first 500 (with the updates of the PerVL validation concepts, not
# these), so on this seed Tab. 18 is not independent of the shipped λ.

# %%
#| export
def generic_set(root:str|Path, # a world's root folder
               )->tuple[list[Path], list[str]]:
    "The world's held-out concept-free caption→image set: the image paths (under `root`) and one caption each."
    f = Path(root)/'generic'/'captions.json'
    if not f.is_file(): raise FileNotFoundError(f"{f} does not exist: worlds written by `make_benchmark` have one, real benchmarks do not")
    d = json.loads(f.read_text(encoding='utf-8'))
    if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()): raise ValueError(f"{f}: expected {{relative image path: caption}}")
    paths = [Path(root)/k for k in d]
    if missing := [str(p) for p in paths if not p.is_file()]: raise FileNotFoundError(f"{f}: {len(missing)} image(s) missing, e.g. {missing[:3]}")
    return paths, list(d.values())


# %%
generic = generic_set(cc.root) if (cc.root/'generic'/'captions.json').is_file() else None
if generic is None: print("Flickr30k is not shipped, and the real benchmark has no generic set: Tab. 18 is skipped")
else:
    gpaths, gcaps = generic
    test_eq(len(gpaths), len(gcaps)); assert all(p.is_relative_to(cc.root/'generic'/'images') for p in gpaths)
    print(len(gcaps), 'images;', gcaps[0])
test_fail(lambda: generic_set(Path(tempfile.mkdtemp())), contains='real benchmarks do not')
if generic is not None and s.profile != 'paper':
    from polar_nb.world import generic_retrieval
    test_eq(gcaps, generic_retrieval(len(gcaps), 0)[1])  # the first scenes of the held-out stream, as the defaults search draws them

# %%
curves18, cost18 = {}, {}
if generic is not None:
    gfeats = image_features(bb, gpaths, cache=cache, progress=False)
    orig = recall_curve(own_ranks(bb, gcaps, gfeats), KS)
    per = recall_under_updates(bb, gcaps, gfeats, fits['conconchi']['pol'], fits['conconchi']['cs'].ids, KS)
    curves18['conconchi'], cost18['conconchi'] = (orig, per), update_cost(orig, per)
tab18 = side_by_side(cost18, '18', [1, 5, 10], 'Flickr30k').droplevel('world') if cost18 else None
tab18

# %%
for c in cost18.values():
    assert (c.mean_drop <= 0.02).all(), c.mean_drop.max()
    assert c.loc[10, 'worst_drop'] <= 0.02, c.loc[10, 'worst_drop']
strict18 = cost18['conconchi'].loc[[1, 5, 10], 'beyond'].rename(index=lambda k: f'r@{k}') if cost18 else None
strict18


# %% [markdown]
# ## Retrieval with discriminative descriptions (Tab. 19)
#
# ConCon-Chi's concepts each have a discriminative description, written to tell look-alikes apart
# ("blue cup with yellow dots and a white heart"). Written in place of each `*` of a context query
# it makes the text-only oracle of the baselines chapter, `TextOnly('discriminative')`; Tab. 19 asks
# what that oracle loses when the query's concepts' updates are applied to the encoder.
# `described_embeddings` encodes the queries so, with a method's updates for the concepts each
# query names (`Polar.query_updates`: summed for two concepts) or with none.

# %%
#| export
def described_embeddings(bb:Backbone, queries:list, # context queries, one `*` per concept
                         cs:ConceptSet, # the concepts' descriptions
                         method:Method|None=None, # whose updates for a query's concepts are applied (None: the original encoder)
                         description:str='discriminative', # which description fills the `*`s
                        )->torch.Tensor:
    "The queries with each `*` written as its concept's `description`, encoded with `method`'s updates for the concepts each names."
    texts, out, groups = TextOnly(description).texts(queries, cs), torch.zeros(len(queries), bb.embed_dim), {}
    for i, q in enumerate(queries): groups.setdefault(tuple(dict.fromkeys(q.concepts)), []).append(i)
    for cc_, idx in groups.items():
        ups = [] if method is None else method.query_updates(cc_) if hasattr(method, 'query_updates') else [u for c in cc_ for u in method.text_updates(c)]
        out[idx] = encode_text(bb, [texts[i] for i in idx], ups)
    return out


# %%
w, ctx = fits['conconchi'], cc.queries('context')
E0, E1 = described_embeddings(bb, ctx, w['cs']), described_embeddings(bb, ctx, w['cs'], w['pol'])
test_close(E0, TextOnly('discriminative').embed(bb, ctx, w['cs']), eps=1e-5)  # no method: the oracle baseline
one = next(i for i, q in enumerate(ctx) if len(set(q.concepts)) == 1); two = next(i for i, q in enumerate(ctx) if len(set(q.concepts)) == 2)
text_one, text_two = TextOnly('discriminative').texts([ctx[one], ctx[two]], w['cs'])
test_close(E1[one], encode_text(bb, text_one, w['pol'].text_updates(ctx[one].concepts[0]))[0], eps=1e-5)
test_close(E1[two], encode_text(bb, text_two, w['pol'].query_updates(ctx[two].concepts))[0], eps=1e-5)  # both updates, summed
text_two

# %% [markdown]
# Both sets of embeddings are scored with the retrieval metrics (each query ranks its candidates,
# here the whole pool, and counts a hit when any of its positives is in the top k):

# %%
t19 = {k: metrics_table(E @ w['pool'].T, ctx, ks=(1, 5, 10)).assign(n_concepts=[len(set(q.concepts)) for q in ctx])
       for k, E in (('original', E0), ('with the updates', E1))}
R19 = ['r@1', 'r@5', 'r@10']
ours19 = pd.DataFrame({k: t[R19].mean() for k, t in t19.items()}).assign(drop=lambda d: d['original'] - d['with the updates'])
ours19.columns = pd.MultiIndex.from_product([[f'ours: {bb.name}'], ours19.columns])
p19 = paper_table('19', wide=True).droplevel(0, axis=1).T[['Original CLIP', 'Ours']].assign(drop=lambda d: d['Original CLIP'] - d['Ours'])
p19.columns = pd.MultiIndex.from_product([['paper: ViT-L/14, real ConCon-Chi'], p19.columns])
tab19 = pd.concat([100*ours19, p19], axis=1).round(2)
tab19

# %% [markdown]
# Split by the number of concepts a query names (ours, ×100; the paper reports all queries
# together):

# %%
split19 = pd.concat({k: t.groupby('n_concepts')[R19].mean() for k, t in t19.items()}, axis=1).swaplevel(axis=1)[[(r, k) for r in R19 for k in t19]]
split19 = split19.set_axis(pd.Index([f'{n} concept(s), {(t19["original"].n_concepts == n).sum()} queries' for n in split19.index]), axis=0)
(100*split19).round(2)

# %%
orig_oracle = evaluate(TextOnly('discriminative'), cc, bb, kinds=('context',), cache=cache).query("split == 'context-all'")
test_close(orig_oracle[R19].to_numpy()[0], ours19[(f'ours: {bb.name}', 'original')].to_numpy(), eps=1e-9)  # = the baselines' oracle row
assert (ours19[(f'ours: {bb.name}', 'drop')] <= 0.02).all(), ours19

# %% [markdown]
# As in the paper (whose Original CLIP r@1 in Tab. 19 is Tab. 15's Discriminative† r@1), the
# original column is the text-only oracle's context recall of the evaluation runner.

# %% [markdown]
# ## Recall at every cut-off
#
# The original encoder (black) against the mean with one update (coloured; the band spans the
# best and the worst update), for k = 1 … 50, and below, the mean and the worst drop in points:

# %%
panels = [(f'VLM captions, {WORLD[n]}', c) for n, c in curves17.items()] + [('generic set (held-out scenes)', c) for c in curves18.values()]
if panels:
    fig, axs = plt.subplots(2, len(panels), figsize=(4.4*len(panels), 5.6), sharex=True, sharey='row', squeeze=False,
                            gridspec_kw=dict(height_ratios=(3, 2)))
    for (ax, dx), (title, (orig, per)) in zip(axs.T, panels):
        ax.plot(orig.index, orig.values, 'k-', lw=1.5, label='original')
        ax.plot(per.columns, per.mean().values, '-', color='tab:orange', lw=1.5, label=f'mean with one update ({len(per)})')
        ax.fill_between(per.columns, per.min().values, per.max().values, color='tab:orange', alpha=0.25, lw=0, label='worst–best update')
        ax.set_title(title, fontsize=10); ax.grid(alpha=0.3)
        dx.plot(orig.index, 100*(orig - per.mean()).values, '-', color='tab:orange', label='mean drop')
        dx.plot(orig.index, 100*(orig - per.min()).values, ':', color='tab:red', label='worst drop')
        dx.axhline(2, color='k', lw=0.8, ls='--', label='the 0.02 bar'); dx.axhline(0, color='k', lw=0.5)
        dx.set_xscale('log'); dx.set_xlabel('k'); dx.grid(alpha=0.3)
    axs[0, 0].set_ylabel('recall@k'); axs[1, 0].set_ylabel('drop (points)')
    axs[0, 0].legend(fontsize=8, loc='lower right'); axs[1, 0].legend(fontsize=8, loc='upper right')
    fig.tight_layout()

# %% [markdown]
# ## Where the cost comes from
#
# No VLM caption or generic caption holds `sks`, yet an update changes the value of every token
# whose last-layer state has a component along its A. Per concept of the ConCon-Chi-format world:
# the drop at r@1 and r@10 of the VLM captions, the share of captions whose own image moves up or
# down in the ranking, how far the update moves a caption's embedding (1 − cosine to the original
# embedding, mean over captions) and how far it moves its own prompt "A photo of sks.", and the
# size of the update (‖B‖; A has unit norm).

# %%
f = fits['conconchi']
if 'conconchi' in curves17:
    vcaps = cc.vlm_captions(cc.root/'vlm_captions.json')
    e0, p0, r0 = encode_text(bb, vcaps), encode_text(bb, ['A photo of sks.'])[0], own_ranks(bb, vcaps, f['pool'])
    rows = []
    for c in f['cs'].ids:
        ups = f['pol'].text_updates(c)
        e1 = encode_text(bb, vcaps, ups); S1 = e1 @ f['pool'].T
        r1 = (S1 >= S1.diagonal()[:, None]).sum(1)  # as `own_ranks`, from the embeddings at hand
        rows.append(dict(concept=c, cls=f['cs'].descriptions[c]['coarse'], drop_r1=float((r0 <= 1).float().mean() - (r1 <= 1).float().mean()),
                         drop_r10=float((r0 <= 10).float().mean() - (r1 <= 10).float().mean()),
                         down=float((r1 > r0).float().mean()), up=float((r1 < r0).float().mean()),
                         caption_move=float((1 - (e0*e1).sum(-1)).mean()),
                         prompt_move=float(1 - encode_text(bb, ['A photo of sks.'], ups)[0] @ p0), B=float(ups[0].B.norm())))
    why = pd.DataFrame(rows).set_index('concept')
    assert (why.prompt_move > why.caption_move).all()  # an update moves its own prompt further than any caption, on average
    display(why.round(4).sort_values('drop_r1', ascending=False).head(8))
    summary_why = why[['drop_r1', 'drop_r10', 'down', 'up', 'caption_move', 'prompt_move', 'B']].agg(['mean', 'min', 'max'])
    print(f"correlation of ‖B‖ with the r@1 drop over concepts: {why.B.corr(why.drop_r1):.2f}, with the r@10 drop: {why.B.corr(why.drop_r10):.2f}")
    display(summary_why.round(4))

# %% [markdown]
# ## The price of λ
#
# How large an update grows is set by λ, the weight of POLAR's penalty on ‖B‖². `world-tiny`
# ships λ = 0 (150 iterations at lr 0.01): the [world-tiny chapter](08_world_tiny.ipynb) chose it
# on the PerVL world's validation split as the best-scoring setting whose *mean* drop of
# caption→image recall@10 on held-out generic scenes stays within 0.02; the paper uses λ = 0.35 on
# ConCon-Chi. The same measurement with larger λ, beside what each λ buys on the benchmark's own
# queries (concept-only mAP, context mRR). Slow (`slow`: it trains 60 more updates, a few minutes on
# two busy CPU cores); the stored output is from the run that built this book.

# %%
#| slow
# NBVAL_SKIP
price = None
if s.profile != 'paper' and 'conconchi' in curves17:
    rows, (orig17, _) = [], curves17['conconchi']
    for lam in dict.fromkeys([bb.defaults['lam'], 0.01, 0.1, 0.35]):
        p = Polar(lam=lam)
        e = evaluate(p, cc, bb, cache=cache).set_index('split')  # fits (or loads) the 20 updates
        c = update_cost(orig17[[1, 10]], recall_under_updates(bb, vcaps, f['pool'], p, f['cs'].ids, [1, 10]))
        rows.append({'λ': lam, '‖B‖ (mean)': np.mean([float(u.B.norm()) for u in p.updates.values()]),
                     'r@1 mean drop': c.loc[1, 'mean_drop'], 'r@1 worst drop': c.loc[1, 'worst_drop'], 'r@1 beyond 0.02': c.loc[1, 'beyond'],
                     'r@10 mean drop': c.loc[10, 'mean_drop'], 'r@10 worst drop': c.loc[10, 'worst_drop'], 'r@10 beyond 0.02': c.loc[10, 'beyond'],
                     'concept-only mAP': e.loc['concept', 'map'], 'context mRR': e.loc['context-all', 'mrr']})
    price = pd.DataFrame(rows).set_index('λ')
    assert price['‖B‖ (mean)'].is_monotonic_decreasing  # a larger penalty, smaller updates
    test_close(price.iloc[0][['r@1 mean drop', 'r@10 worst drop']].to_numpy(float),
               [cost17['conconchi'].loc[1, 'mean_drop'], cost17['conconchi'].loc[10, 'worst_drop']], eps=1e-9)  # λ = 0: the tables above
price.round(3) if price is not None else None

# %% [markdown]
# ## At full size
#
# Tab. 17 on the `full` worlds: the ConCon-Chi-format world's pool has 4,020 photos, about the size
# of real ConCon-Chi's, so its recall levels are comparable with the paper's; the PerVL-format world
# has 50 concepts. Each concept's update is trained once with the backbone's defaults (`slow`: a few
# minutes on 2 CPU cores when nothing is cached; stored outputs).

# %%
#| slow
# NBVAL_SKIP
cost17_full = {}
if s.profile != 'paper':
    for b in (ConConChi(shared_world('conconchi', seed=0, profile='full')),
              PerVLDeepFashion2(shared_world('pervl', seed=0, profile='full'))):
        cs_f = concept_set(b, bb, cache); pol_f = Polar().fit(bb, cs_f, cache)
        pool_f, caps_f = image_features(bb, b.pool, cache=cache, progress=False), b.vlm_captions(b.root/'vlm_captions.json')
        orig = recall_curve(own_ranks(bb, caps_f, pool_f), [1, 5, 10, 50])
        cost17_full[b.name] = update_cost(orig, recall_under_updates(bb, caps_f, pool_f, pol_f, cs_f.ids, [1, 5, 10, 50]))
        print(f"{b.name}: {len(caps_f)} captions, {len(cs_f.ids)} updates")
tab17_full = side_by_side(cost17_full, '17', [1, 5, 10, 50], 'real ConCon-Chi') if cost17_full else None
tab17_full

# %%
#| slow
# NBVAL_SKIP
for name, c in cost17_full.items():
    assert (c.worst >= 0).all() and (c.loc[50, 'mean_drop'] <= 0.02), name
    print(f"{WORLD[name]}: largest mean drop {c.mean_drop.max():.4f} (at r@{c.mean_drop.idxmax()}); bar 0.02")
# per world: the mean drop over the updates, and how many updates drop recall by more than 0.02
pd.DataFrame({(WORLD[n], col): c.loc[[1, 5, 10, 50], col] for n, c in cost17_full.items() for col in ('mean_drop', 'beyond')}).rename(index=lambda k: f'r@{k}') \
    if cost17_full else None

# %% [markdown]
# ## Over worlds
#
# The [results store](15_results.ipynb) measures Tab. 17, 18 and 19 on five ConCon-Chi-format
# worlds (`measure('knowledge', 'conconchi', seed)`: POLAR with the shipped defaults, recall@1, 5
# and 10 with each concept's update applied in turn; for Tab. 19 with the updates each query
# names). Each cell is the mean over worlds ± the standard deviation across worlds (×100).

# %%
from polar_nb.results import results, over_worlds, findings
from IPython.display import Markdown
kn = results(experiment='knowledge')
names = {'17': 'Tab. 17: VLM captions', '18': 'Tab. 18: generic captions', '19': 'Tab. 19: discriminative descriptions'}
over_worlds(kn.assign(table=kn.table.map(names), query='recall'), [('recall', f'r@{k}') for k in (1, 5, 10)], index=('table', 'method'))

# %% [markdown]
# ## What we found
#
# Over worlds, the paper's claims this chapter tests (every number read from the store; a claim of
# this chapter is a cost: the original encoder's lead must stay under the margin):

# %%
#| echo: false
Markdown(findings('26_general_knowledge'))

# %% [markdown]
# On the ConCon-Chi-format world (344 pool images, 20 concepts), one concept's update costs on
# average 1.34 points of VLM-caption recall@1, 1.09 at r@5, 0.92 at r@10 and 0.19 at r@50
# (original 33.14, 73.26, 84.30 and 96.51 %); the costliest update loses 2.91, 2.91, 2.03 and
# 1.16. On the PerVL-format world (80 captions) the mean drop lies between −0.31 and 0.69 points
# (negative: recall rises), and the costliest update loses 2.50 at r@1, two captions of 80. On
# the 200 held-out generic scenes (the world's stand-in for Flickr30k, which is not shipped)
# recall@1/5/10 goes from 73.0 / 94.0 / 97.0 % to 71.60 / 93.20 / 96.73 % on average, and to
# 69.0 % at r@1 with the costliest update (on scenes among those the shipped λ was chosen on, so
# not an independent test of that choice). Retrieval with discriminative descriptions (Tab. 19)
# loses 1.14 points of r@1 (85.23 → 84.09 %) and nothing at r@5 and r@10; the eight two-concept
# queries, encoded with two updates summed, lose nothing at any cut-off.
#
# The bar this book sets, a drop of at most 0.02, holds for the mean over updates in every table
# and at every cut-off. It does not hold for every single update at the top of the ranking: at
# VLM-caption r@1, 7 of the 20 updates lose more than two points (3 at r@5, 1 at r@10, by 0.03 of
# a point), and at generic r@1 8 of 20 do (the worst, 4 points, is eight captions of 200); at r@50,
# at generic r@5 and r@10, and on the PerVL world beyond one update at r@1, every update is within
# the bar. Between those cut-offs the curves tell the same: over k = 1 … 50 the mean drop stays
# under two points, while the costliest update passes two points
# at most cut-offs up to k = 10 and at k = 14 there, at k = 1, 2 and 4 on the
# generic set, and at k = 1–3 and 30–32 on the PerVL world (3.75 at k = 3, three captions of 80).
#
# The paper finds parity: with ViT-L/14 on real data its update changes VLM-caption recall by at
# most 0.12 points (r@1 even rises, 13.27 → 13.39 %), Flickr30k recall rises by 0.01 to 0.40
# points, and Tab. 19 loses 0.30 to 0.51. The world agrees in size at r@10 and beyond (under a
# point on average) and disagrees in direction and size at r@1, where the ConCon-Chi-format world
# loses 1.1 to 1.4 points on average (VLM captions, generic scenes, Tab. 19) and the paper
# nothing. Three things account for that:
#
# - **λ.** The shipped λ is 0, so nothing penalises B (‖B‖ ≈ 10.855). The λ table shows the trade
#   on this world: at λ = 0.1 every update is within the bar (worst drop 1.7 points at r@1) and at
#   the paper's 0.35 the mean cost is 0.2 points, but concept-only mAP falls from 0.384 to 0.104
#   and 0.085, and context mRR from 0.867 to 0.511 and 0.400. With `world-tiny` an update that
#   learns the concept is a large one; the paper's ViT-L/14 learns its concepts with λ = 0.35.
# - **Crowded rankings.** An update moves every caption, but not far: 1 − cosine between a caption's
#   embedding with and without it is 0.013 on average, against 0.59 for its own prompt "A photo of
#   sks." Yet it moves 15–28 % of the captions' own images down the ranking and 13–24 % up, and
#   the net is a small loss. The world's photos are built from 15 classes, 10 colours and 11 places,
#   so a caption's own image probably has close rivals that a small move reorders (how close was
#   not measured here). How large an update is does not tell which one costs most (the
#   correlation of ‖B‖ with the r@1 drop over concepts is 0.07).
# - **Small sets.** One caption is a third of a point of 344, half a point of 200 and more than a point of 80: the worst-update
#   figures are a handful of captions each, where the paper's average over thousands of captions.
#
# The recall levels themselves do not compare: the world's pool is about a twelfth of ConCon-Chi's
# (344 photos against about 4,000), so its captions find their image far more often (84.30 % at
# r@10 against the paper's 52.69 %), and its discriminative descriptions spell out a concept's whole look ("white shoe with red stripes and a
# blue star"), so the text-only oracle reaches 100 % at r@10 where ConCon-Chi's short human
# descriptions reach 66.51 %; in Tab. 19 only r@1 has room to show a cost.
#
# **At full size** (the `slow` section) the ConCon-Chi-format world's pool has 4,020 photos, close to
# real ConCon-Chi's, and the recall levels come near the paper's: VLM-caption r@1/5/10/50 of the
# original encoder 9.83 / 29.65 / 42.69 / 73.51 % against the paper's 13.27 / 39.62 / 52.69 / 78.07.
# There one update costs on average 0.31, 1.76, 2.11 and 1.15 points, so the mean drop passes the
# 0.02 bar at r@10 (by 0.1 of a point) and 12 of the 20 updates drop r@10 by more than two points;
# in a crowded pool the same small move of a caption passes more rivals. On the 50-concept
# PerVL-format world the mean drop is at most 0.71 points (r@5), with 11 of 50 updates past two
# points at r@1.

# %%
#| hide
if s.profile != 'paper':
    import shutil; shutil.rmtree(tmp, ignore_errors=True)

# %%
#| hide
import nbdev; nbdev.nbdev_export()
