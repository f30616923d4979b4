# %% [markdown]
# # The embedded world
#
# > Personal concepts in the scenes of the embedded world, written as benchmarks in the ConCon-Chi and PerVL DeepFashion2 formats, so every chapter runs offline and its numbers mean something.

# %% [markdown]
# What is in a benchmark of the embedded world, and how does it reach the disk in the real
# formats? [Drawing scenes](05_scenes.ipynb) draws concept-free photos of generic things; this
# chapter adds the *personal concepts*: specific instances built from what the generic world teaches
# (colours, two-colour patterns, emblems, proportions, silhouettes), combined in ways no short caption
# names: look-alike pairs that differ by one detail, and objects whose class name misleads (a
# "bottle" shaped like a fish, the paper's "puppet" case). Their photos vary pose, size, position,
# occlusion, lighting and place, and the support photos carry their own places. The generic scenes
# a backbone is trained on never show a concept instance.
#
# `make_benchmark` writes the world in the real on-disk formats, which the project's own readers
# ([Benchmarks in their real formats](03_data.ipynb)) load with no special case.
# [World-tiny](08_world_tiny.ipynb) trains the embedded CLIP on the generic scenes and measures
# it: its training curve, its zero-shot quality and its caption recall on the world's pools.

# %%
#| default_exp world

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail

# %%
#| export
import csv, fcntl, hashlib, importlib, json, numbers, os, re, shutil, warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
import numpy as np
from PIL import Image
import polar_nb.scenes as _scenes
from polar_nb.config import get_settings
from polar_nb.scenes import _a, _plural, _random_look, _on_ground, _light_draw, _fit, _object, _person_caption

# %%
import hashlib, tempfile, time
from unittest.mock import patch
import matplotlib.pyplot as plt
import pandas as pd
from polar_nb.scenes import CONTEXTS, Look, Scene, Thing, render, sample_look, sample_scene, vlm_caption


# %% [markdown]
# ## Personal concepts
#
# Twenty concepts in the ConCon-Chi format: five look-alike pairs (same class and colour, one detail
# differs: the emblem's shape, the emblem's colour, the stripes' colour, the proportions, the size of
# the checks, which no word names), three objects whose class name misleads (a "bottle" shaped like
# a fish, a "lamp" that is a teddy bear, a "bag" that is a toy car) and seven more. Each has the
# three texts of ConCon-Chi: `coarse` (a class word), `discriminative` (what distinguishes it, as
# far as the vocabulary goes) and `rich`.

# %%
#| export
@dataclass(frozen=True)
class Concept:
    "A personal object: its look and the texts a benchmark gives for it."
    name: str
    look: _scenes.Look
    coarse: str  # class word
    discriminative: str  # what distinguishes it, as far as the vocabulary can say
    rich: str  # a longer description
    twin: str|None = None  # name of its look-alike, if any

    @property
    def keys(self)->set:
        "Caption-level keys no generic object may have: its class's and its silhouette's."
        l = self.look
        return {l.key, (_scenes.SHAPES[l.body]['like'] if l.body else l.cls, *l.key[1:])}

    def texts(self)->dict: return dict(coarse=self.coarse, discriminative=self.discriminative, rich=self.rich)


# %%
#| export
L = _scenes.Look
CONCEPTS = [
 Concept('heart cup', L('cup', 'blue', 'dotted', 'yellow', 'heart', 'white', scale=.2), 'cup', 'blue cup with yellow dots and a white heart',
         'a blue mug covered in small yellow dots, with a white heart on its side', 'star cup'),
 Concept('star cup', L('cup', 'blue', 'dotted', 'yellow', 'star', 'white', scale=.2), 'cup', 'blue cup with yellow dots and a white star',
         'a blue mug covered in small yellow dots, with a white star on its side', 'heart cup'),
 Concept('red-heart teddy', L('teddy bear', 'brown', 'plain', None, 'heart', 'red'), 'teddy bear', 'brown teddy bear with a red heart',
         'a plain brown teddy bear with a red heart on its belly', 'blue-heart teddy'),
 Concept('blue-heart teddy', L('teddy bear', 'brown', 'plain', None, 'heart', 'blue'), 'teddy bear', 'brown teddy bear with a blue heart',
         'a plain brown teddy bear with a blue heart on its belly', 'red-heart teddy'),
 Concept('white-striped bag', L('bag', 'red', 'striped', 'white', angle=90, scale=.25), 'bag', 'red bag with white stripes',
         'a red handbag with broad horizontal white stripes and a round handle', 'black-striped bag'),
 Concept('black-striped bag', L('bag', 'red', 'striped', 'black', angle=90, scale=.25), 'bag', 'red bag with black stripes',
         'a red handbag with broad horizontal black stripes and a round handle', 'white-striped bag'),
 Concept('green bottle', L('bottle', 'green', 'two-tone', 'white'), 'bottle', 'green and white bottle',
         'a bottle of ordinary proportions, green at the top and white at the bottom', 'tall green bottle'),
 Concept('tall green bottle', L('bottle', 'green', 'two-tone', 'white', aspect=1.6), 'bottle', 'tall thin green and white bottle',
         'a tall, very thin bottle, green at the top and white at the bottom', 'green bottle'),
 Concept('big-check car', L('car', 'orange', 'checked', 'black', 'circle', 'white', scale=.3), 'car', 'orange car with large black checks and a white circle',
         'an orange toy car with large black checks and a white circle on its door', 'small-check car'),
 Concept('small-check car', L('car', 'orange', 'checked', 'black', 'circle', 'white', scale=.12), 'car', 'orange car with small black checks and a white circle',
         'an orange toy car with small black checks and a white circle on its door', 'big-check car'),
 Concept('fish bottle', L('bottle', 'green', 'dotted', 'orange', body='fish bottle', accent='white'), 'bottle', 'green fish-shaped bottle with orange dots',
         'a green bottle shaped like a fish, with orange dots and a white cap at its mouth'),
 Concept('teddy lamp', L('lamp', 'yellow', body='teddy lamp', accent='purple'), 'lamp', 'yellow teddy bear lamp with a purple shade',
         'a lamp in the shape of a plain yellow teddy bear wearing a purple lampshade'),
 Concept('car bag', L('bag', 'pink', 'striped', 'white', body='car bag', accent='black', angle=0, scale=.2), 'bag', 'pink car-shaped bag with white stripes',
         'a pink bag shaped like a toy car, with thin vertical white stripes and a black handle on its roof'),
 Concept('cross kite', L('kite', 'purple', 'two-tone', 'yellow', 'cross', 'white', angle=90), 'kite', 'purple and yellow kite with a white cross',
         'a kite, purple on one side and yellow on the other, with a white cross in the middle'),
 Concept('star shoe', L('shoe', 'white', 'striped', 'red', 'star', 'blue', angle=45, scale=.18), 'shoe', 'white shoe with red stripes and a blue star',
         'a white sneaker with diagonal red stripes and a blue star near the heel'),
 Concept('moon umbrella', L('umbrella', 'black', 'dotted', 'white', 'moon', 'yellow', scale=.18), 'umbrella', 'black umbrella with white dots and a yellow moon',
         'a black umbrella with small white dots and a yellow crescent moon on top'),
 Concept('wide duck', L('duck', 'yellow', 'checked', 'orange', aspect=.7, scale=.25), 'duck', 'wide yellow duck with orange checks',
         'a squat, wide rubber duck in yellow and orange checks'),
 Concept('diamond book', L('book', 'blue', 'plain', None, 'diamond', 'yellow', spot=(.1, -.25)), 'book', 'blue book with a yellow diamond',
         'a plain blue book with a yellow diamond near the top of its cover'),
 Concept('two-tone ball', L('ball', 'pink', 'two-tone', 'green', 'circle', 'white', angle=30), 'ball', 'pink and green ball with a white circle',
         'a ball, pink on top and green below along a slanted line, with a white circle'),
 Concept('heart box', L('cube', 'white', 'checked', 'red', 'heart', 'blue', scale=.2), 'box', 'white box with red checks and a blue heart',
         'a white box covered in red checks, with a blue heart on its front')]

# %%
test_eq(len(CONCEPTS), 20); test_eq(len({c.name for c in CONCEPTS}), 20)
twins = [(c.name, c.twin) for c in CONCEPTS if c.twin]
test_eq(len(twins), 10)
for a, b in twins:
    ca, cb = next(c for c in CONCEPTS if c.name == a), next(c for c in CONCEPTS if c.name == b)
    test_eq((ca.look.cls, ca.look.colour), (cb.look.cls, cb.look.colour)); assert ca.look != cb.look
misleading = [c for c in CONCEPTS if c.look.body]
test_eq([c.coarse for c in misleading], ['bottle', 'lamp', 'bag'])
pd.DataFrame([dict(name=c.name, coarse=c.coarse, discriminative=c.discriminative, twin=c.twin or '') for c in CONCEPTS])

# %% [markdown]
# PerVL's DeepFashion2 concepts are garments: a hundred (fifty per split) drawn once from a fixed
# generator, so every benchmark seed shows the same wardrobe in new photos. The garment classes
# follow the real test split's mix (skirts, short sleeve tops and vests first), with pair ids in
# DeepFashion2's range.

# %%
#| export
WORLD_SEED = 20250611  # fixes the wardrobe of garment concepts
_GARMENT_MIX = {'skirt': .25, 'short sleeve top': .2, 'vest': .14, 'vest dress': .1, 'trousers': .1, 'long sleeve top': .08,
                'short sleeve dress': .05, 'long sleeve dress': .04, 'shorts': .04}

def _garment_text(l:_scenes.Look)->tuple:
    "Discriminative and rich texts of garment look `l`."
    d, adj = _scenes.phrase(l, full=True), ('thin' if l.scale < .2 else 'broad') if l.pattern == 'striped' else 'small' if l.scale < .2 else 'large'
    way = {0: 'vertical', 45: 'diagonal', 90: 'horizontal', 135: 'diagonal'}[int(l.angle)]
    its = 'their' if _plural(d) else 'its'
    return d, _a(d) + {'striped': f"; {its} stripes are {adj} and {way}", 'dotted': f"; {its} dots are {adj}", 'checked': f"; {its} checks are {adj}",
                       'two-tone': ', split into two halves of colour', 'plain': ', otherwise of one plain colour'}[l.pattern]


# %% [markdown]
# The garment concepts are drawn here, once: unique looks (patterned, or plain with an emblem),
# none sharing a key with another concept, with pair ids in DeepFashion2's range. `concept_keys`
# gathers the keys of all the concepts, which no generic look of [Drawing scenes](05_scenes.ipynb)
# has.

# %%
#| export
@lru_cache(maxsize=1)
def garment_concepts()->list:
    "The 100 garment concepts as (pair_id, Concept): 50 for the test split, then 50 for validation."
    rng, out, keys = np.random.default_rng(WORLD_SEED), [], {k for c in CONCEPTS for k in c.keys}
    pids = sorted(rng.choice(np.arange(1, 15083), 100, replace=False).tolist())
    while len(out) < 100:
        l = _random_look(rng, str(rng.choice(list(_GARMENT_MIX), p=list(_GARMENT_MIX.values()))), plain=.15, emblem=.35)
        if (l.pattern == 'plain' and not l.emblem) or l.key in keys: continue
        keys.add(l.key); d, r = _garment_text(l)
        out.append(Concept(f'{l.cls} {len(out)}', l, l.cls, d, r))
    order = rng.permutation(100)
    return [(pids[i], out[i]) for i in order]

def concept_keys()->set:
    "Keys no generic look may have: those of the 20 ConCon-Chi concepts and the 100 garment concepts."
    return set().union(*(c.keys for c in CONCEPTS + [c for _, c in garment_concepts()]))

@lru_cache(maxsize=1)
def _EXCLUDE()->frozenset:
    "`concept_keys()`, computed once."
    return frozenset(concept_keys())


# %%
gc = garment_concepts()
test_eq(len(gc), 100); test_eq(len({p for p,_ in gc}), 100); test_eq(len({c.look.key for _,c in gc}), 100)
r = np.random.default_rng(0)
assert all(sample_look(r).key not in concept_keys() for _ in range(2000))
pd.DataFrame([dict(pair_id=p, coarse=c.coarse, discriminative=c.discriminative) for p,c in gc[:6]])


# %% [markdown]
# ## The generic dataset
#
# The backbone is trained on generic scenes only. Scene `i` of seed `seed` comes from its own
# generator (`[seed, stream, i]`), so any slice can be regenerated alone and the training stream
# (0), the held-out retrieval stream (1) and the benchmarks' own generic sets never coincide.

# %%
#| export
def _rng(seed:int, stream:int, i:int)->np.random.Generator:
    "The generator of item `i` of `stream` under `seed`."
    return np.random.default_rng([seed, stream, i])

def generic_scenes(n:int, # number of scenes
                   seed:int=0, start:int=0, # scenes start..start+n-1 of this seed's training stream
                   size:int=64, # image side in pixels
                   captions:int=5, # captions per scene
                   stream:int=0, # 0: training; 1: held-out retrieval
                   return_scenes:bool=False):
    "Concept-free scenes: a uint8 array [n, size, size, 3] and `captions` captions per scene (and the scenes)."
    imgs, caps, scs = np.empty((n, size, size, 3), np.uint8), [], []
    for k in range(n):
        r = _rng(seed, stream, start + k); s = _scenes.sample_scene(r)
        imgs[k] = _scenes.render(s, size); scs.append(s)
        caps.append([_scenes.scene_caption(s, r, 'scene')] + [_scenes.scene_caption(s, r) for _ in range(captions - 1)])
    return (imgs, caps, scs) if return_scenes else (imgs, caps)

def generic_retrieval(n:int=1000, seed:int=0, size:int=64)->tuple:
    "The held-out caption→image retrieval set: n images (uint8 array) and one full scene caption each."
    imgs, caps = generic_scenes(n, seed, size=size, captions=1, stream=1)
    return imgs, [c[0] for c in caps]


# %% [markdown]
# Generation speed, measured (one CPU core):

# %%
t0 = time.perf_counter(); imgs, caps, scs = generic_scenes(500, seed=0, return_scenes=True); dt = time.perf_counter() - t0
test_eq(imgs.shape, (500, 64, 64, 3)); test_eq(len(caps[0]), 5)
test_eq(generic_scenes(3, seed=0, start=7)[0], imgs[7:10])  # any slice regenerates alone
print(f'{500/dt:.0f} scenes per second ({60*500/dt:,.0f} per minute), captions included')

# %%
objs = [t for s in scs for t in s.things]
looks = [g for t in objs for g in (t.look.garments if t.person else [t.look])]
assert not any(l.key in concept_keys() for l in looks)
pd.Series(dict(scenes=len(scs), objects=sum(not t.person for t in objs), people=sum(t.person for t in objs),
               with_relation=sum(bool(s.relations) for s in scs), contexts=len({s.context for s in scs}),
               classes=len({l.cls for l in looks}), concept_instances=sum(l.key in concept_keys() for l in looks)))


# %% [markdown]
# ## Photos of a concept
#
# A concept photo puts the concept in a place, sometimes next to a named object, among clutter
# (up to three generic objects of other classes), at a random height (often a small part of the
# photo), tilt, flip and position. Each clutter object has one chance in four to stand in front of
# the concept and hide part of it (otherwise it stands behind); one lone concept in eight is cut by
# the frame's edge.

# %%
#| export
def concept_thing(c:Concept, cid:int, rng, h:tuple=(.14, .5))->_scenes.Thing:
    "Concept `c` (id `cid`) as a thing of random height, tilt and flip."
    return _scenes.Thing(c.look, h=float(rng.uniform(*h)), angle=float(rng.normal(0, 18)), flip=bool(rng.random() < .5), concept=cid)

def _covers(b:_scenes.Thing, a:_scenes.Thing)->float:
    "The fraction of `a`'s box that `b`'s box covers."
    ix = max(0., min(a.x + a.w/2, b.x + b.w/2) - max(a.x - a.w/2, b.x - b.w/2))
    return ix*max(0., min(a.y, b.y) - max(a.y - a.h, b.y - b.h))/(a.w*a.h)

def _clutter(rng, scene:_scenes.Scene, avoid:set, n:int)->_scenes.Scene:
    "Add `n` generic objects (classes not in `avoid`) at random spots, behind the named things unless placed to hide part of things[0]."
    classes, named = [k for k in _scenes.CLASSES if k not in avoid], list(scene.things)
    for _ in range(n):
        b = _on_ground(rng, scene.context, _object(rng, (.12, .35), cls=str(rng.choice(classes))))
        if rng.random() < .25: _scenes.relate(rng, scene.things[0], b, 'behind')  # things[0] behind b: b hides part of it
        else: b.z = min([b.y] + [a.y - .01 for a in named if _covers(b, a) > .05])
        scene.things.append(b)
    return scene

def concept_scene(rng, concepts:list, # [(id, Concept)]: one, or two side by side
                  context:str, with_obj:_scenes.Look|None=None, # a named object next to the first concept
                  clutter:tuple=(0, 3), h:tuple=(.14, .5))->_scenes.Scene:
    "A photo of one or two concepts in `context` (next to `with_obj` if given), among clutter."
    ts = [concept_thing(c, i, rng, h) for i, c in concepts]
    sc = _scenes.Scene(context, [_on_ground(rng, context, ts[0])], [], int(rng.integers(2**31)), _light_draw(rng))
    for t in ts[1:] + ([_scenes.Thing(with_obj, h=float(rng.uniform(.15, .35)))] if with_obj else []):
        sc.things.append(_scenes.relate(rng, ts[0], t, 'next to', sc.things[1:])); sc.relations.append((0, 'next to', len(sc.things)-1))
    _fit(sc.things)
    if len(sc.things) == 1 and rng.random() < .125: ts[0].x = float(rng.choice([-1, 1])*ts[0].w*rng.uniform(.1, .25)) % 1.
    avoid = {k for _, c in concepts for k in (c.look.cls, _scenes.SHAPES.get(c.look.body or '', {}).get('like'))}
    return _clutter(rng, sc, avoid, int(rng.integers(clutter[0], clutter[1] + 1)))


# %% [markdown]
# Each concept beside its look-alike (or, for a misleading name, beside a generic object of the
# class it is named after), drawn large on a plain place:

# %%
def portrait(l, size=96):
    return render(Scene('office desk', [Thing(l, .5, .95, .75)], seed=1), size)
r = np.random.default_rng(0)
pairs = [(c, next(d for d in CONCEPTS if d.name == c.twin)) for c in CONCEPTS[:10:2]]
pairs += [(c, Concept(f'a generic {c.coarse}', sample_look(r, c.look.cls), c.coarse, '', '')) for c in misleading]
fig, axs = plt.subplots(2, len(pairs), figsize=(14, 3.8))
for k, (a, b) in enumerate(pairs):
    for ax, c in zip(axs[:, k], (a, b)): ax.imshow(portrait(c.look)); ax.set_title(f'{c.name}\n"{c.coarse}"', fontsize=7); ax.axis('off')
plt.show()

# %% [markdown]
# Support photos of three concepts (five each, in their own places), and photos of the first
# concept from a retrieval pool: the object is often small, tilted, partly hidden or cut by the
# frame, among clutter, under different light.

# %%
r = np.random.default_rng(2)
fig, axs = plt.subplots(4, 8, figsize=(14, 7.4))
for row, k in enumerate((0, 10, 12)):
    for ax, ctx in zip(axs[row], r.choice(list(CONTEXTS), 8, replace=False)):
        ax.imshow(render(concept_scene(r, [(k, CONCEPTS[k])], str(ctx), h=(.25, .55), clutter=(0, 2)))); ax.axis('off')
    axs[row, 0].set_title(f'support: {CONCEPTS[k].name}', fontsize=8, loc='left')
for ax in axs[3]:
    ax.imshow(render(concept_scene(r, [(0, CONCEPTS[0])], 'kitchen table', with_obj=Look('ball', 'red')))); ax.axis('off')
axs[3, 0].set_title('pool: heart cup, "* next to a red ball on a kitchen table"', fontsize=8, loc='left')
plt.show()

# %% [markdown]
# ## Writing ConCon-Chi
#
# ConCon-Chi's layout, as its authors' loader (`vlpers/datasets/conconchi.py` in
# hsp-iit/concon-chi_benchmark) and POLAR's (`conconchi_dataset.py` in adobe-research/polar-vl)
# read it: `data/images/` holds every photo (file names like `IMG_0034.jpeg`, paths in the
# annotations relative to that folder), `data/annotations/train.json` and `test.json` hold
# `concepts` (one `{coarse, discriminative, rich}` per concept id), `max_gts`, `max_concepts` and
# `data` rows. A row's `LABEL` is the query with one `*` per concept of its `CONCEPTS`, in order;
# `GTS` are its photos (the retrieval pool is every `GTS` of `test.json`, rows in order),
# `ADDITIONAL GTS` other photos that also answer it, `ENV` the place. `KIND` is `negative` for rows
# whose photos are in the pool but which are not a query (the loaders test for that value only);
# for queries the world writes `common` or `uncommon`, how usual the place is for the object.
# `vlm_captions.json` follows POLAR's `conconchi_llava_captions.json`: `{"data/images/…": caption}`.
#
# The sizes per profile: `small` makes a pool of about 350 photos, `full` about 4,000 like the
# real benchmark. Twenty concepts in both. Each concept is queried in several places (`contexts`)
# with a few photos each (`per_query`): 4 × 3 in `small`, 10 × 12 in `full`. Most of a concept's
# pool photos are then somewhere other than the place a query names, as in ConCon-Chi, where a
# concept is photographed in many contexts; that is what a context query tests. An earlier `small`
# profile used 3 places × 4 photos: with fewer of each concept's photos elsewhere, the image
# average behind AvgIm+Text had an easier job than in `full` or the real benchmark (the
# [baselines chapter](11_baselines.ipynb) measures the context margin on many worlds of each
# profile). A dict instead of a profile's name changes some of the `small` sizes, for a world of
# one's own size or to redraw the earlier one (`dict(contexts=3, per_query=4)`).
#
# Each size of a dict is checked, since a wrong one would not fail but draw a wrong world: a
# count must be an int (not a bool) of at least 1 where a zero leaves queries without photos
# (`contexts`, `per_query`, `per_multi`, ConCon-Chi's `support`, PerVL's `concepts`) and of at least 0
# where a part may be left out (`multi`, `neg_concept`, `distractors`, `generic`); a concept has
# at most 11 places, one per context, and a PerVL split at most its 50 garment concepts (more
# would give the validation split the test split's). PerVL's `support` is a range `(low, high)`
# with `1 <= low < high` (a concept gets `low` to `high - 1` support photos: `(5,)` would mean 0 to
# 4) and `pool` a non-empty tuple of the numbers of pool photos a concept can get, each at least 1
# (an int `4` would mean 0 to 3); a concept's photos, at most `high - 1 + max(pool)`, must fit the
# block of 32 image numbers it gets (more would give two photos one file name, one overwriting the
# other).

# %%
#| export
PROFILES = {'conconchi': dict(small=dict(contexts=4, per_query=3, multi=8, per_multi=3, neg_concept=2, distractors=40, support=5, generic=200),
                              full=dict(contexts=10, per_query=12, multi=40, per_multi=8, neg_concept=20, distractors=900, support=5, generic=1000)),
            'pervl': dict(small=dict(concepts=20, support=(5, 6), pool=(4,), generic=200),
                          full=dict(concepts=50, support=(10, 22), pool=(1, 2, 3, 4, 5), generic=1000))}
_COUNTS = {'conconchi': dict(contexts=(1, len(_scenes.CONTEXTS), ' (places per concept)'), per_query=(1,), multi=(0,), per_multi=(1,), neg_concept=(0,),
                             distractors=(0,), support=(1, len(_scenes.CONTEXTS), ' (support photos per concept, each in its own place)'), generic=(0,)),
           'pervl': dict(concepts=(1, 50, ' (garment concepts per split)'), generic=(0,))}
_BLOCK = 32  # image numbers of a PerVL pair id: its photos, support and pool, must fit

def _int(name:str, # the argument, as an error names it
         v, lo:int, hi:int|None=None, # the range `v` must be in
         why:str='', # said after the range in an error
        )->int:
    "`v` as an int from `lo` to `hi`, or an error saying what `name` must be."
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if ok and lo <= v and (hi is None or v <= hi): return int(v)
    what = f'an int from {lo} to {hi}' if hi is not None else 'a non-negative int' if lo == 0 else f'an int of at least {lo}'
    raise (ValueError if ok else TypeError)(f"{name} must be {what}{why}, not {v!r}")

def _size(fmt:str, k:str, v):
    "Size `k` of a `fmt` profile as plain ints, or an error naming it rather than a wrong world."
    if k in _COUNTS[fmt]: return _int(f'profile size {k!r}', v, *_COUNTS[fmt][k])
    ints = isinstance(v, (tuple, list)) and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1 for x in v)
    if ints and (len(v) == 2 and v[0] < v[1] if k == 'support' else len(v) > 0): return tuple(int(x) for x in v)
    what = ('a range (low, high) of ints with 1 <= low < high (a concept gets low to high-1 support photos)' if k == 'support'
            else 'a non-empty tuple of ints of at least 1 (the numbers of pool photos a concept can get)')
    raise ValueError(f"profile size {k!r} must be {what}, not {v!r}")

def profile_sizes(fmt:str, # 'conconchi' or 'pervl'
                  profile:str|dict, # a name in `PROFILES[fmt]`, or a dict changing some of the `small` sizes
                 )->dict:
    "The sizes a world of `fmt` is drawn with: a named profile's, or `small`'s with the values of a dict changed (checked)."
    if not isinstance(fmt, str) or fmt not in PROFILES: raise ValueError(f"fmt must be one of {list(PROFILES)}, not {fmt!r}")
    if isinstance(profile, dict):
        if bad := sorted(set(profile) - set(PROFILES[fmt]['small']), key=str):
            raise ValueError(f"unknown size(s) {bad} for {fmt}: the sizes are {list(PROFILES[fmt]['small'])}")
        p = {**PROFILES[fmt]['small'], **{k: _size(fmt, k, v) for k, v in profile.items()}}
        if fmt == 'pervl' and (n := p['support'][1] - 1 + max(p['pool'])) > _BLOCK:
            raise ValueError(f"profile sizes 'support' {p['support']} and 'pool' {p['pool']} give a concept up to {n} photos, more than the {_BLOCK} image numbers of its block")
        return p
    if not isinstance(profile, str) or profile not in PROFILES[fmt]: raise ValueError(f"profile must be one of {list(PROFILES[fmt])} or a dict of sizes, not {profile!r}")
    return dict(PROFILES[fmt][profile])


# %%
test_eq(profile_sizes('conconchi', 'full')['contexts'], 10)
test_eq(profile_sizes('conconchi', dict(contexts=3, per_query=4)), {**PROFILES['conconchi']['small'], 'contexts': 3, 'per_query': 4})
test_fail(lambda: profile_sizes('conconchi', dict(place=3)), contains="unknown size(s) ['place']")
test_fail(lambda: profile_sizes('conconchi', 'huge'), contains="not 'huge'")
test_fail(lambda: profile_sizes('coco', 'small'), contains="not 'coco'")
sz = profile_sizes('conconchi', 'small'); sz['contexts'] = 99; test_eq(PROFILES['conconchi']['small']['contexts'], 4)  # a copy
test_eq(profile_sizes('pervl', dict(support=[1, 3], pool=[2], concepts=np.int64(3))) | dict(generic=0), dict(concepts=3, support=(1, 3), pool=(2,), generic=0))
test_fail(lambda: profile_sizes('conconchi', dict(per_query=0)), contains="'per_query' must be an int of at least 1, not 0")
test_fail(lambda: profile_sizes('conconchi', dict(per_query=True)), contains="'per_query' must be an int of at least 1, not True")
test_fail(lambda: profile_sizes('conconchi', dict(contexts=12)), contains="'contexts' must be an int from 1 to 11 (places per concept), not 12")
test_fail(lambda: profile_sizes('pervl', dict(concepts=60)), contains="'concepts' must be an int from 1 to 50")
test_fail(lambda: profile_sizes('pervl', dict(support=(5, 5))), contains="'support' must be a range (low, high)")
test_fail(lambda: profile_sizes('pervl', dict(support=(5,))), contains="'support' must be a range (low, high)")
test_fail(lambda: profile_sizes('pervl', dict(pool=4)), contains="'pool' must be a non-empty tuple")
test_fail(lambda: profile_sizes('pervl', dict(support=(30, 31), pool=(4,))), contains="up to 34 photos, more than the 32 image numbers")
test_eq(max(profile_sizes('pervl', p)['support'][1] - 1 + max(profile_sizes('pervl', p)['pool']) for p in PROFILES['pervl']), 26)
test_fail(lambda: profile_sizes('pervl', ['small']), contains="profile must be one of")

# %%
#| export
COMMON = {'cup': ('kitchen table', 'office desk'), 'bottle': ('kitchen table', 'beach', 'office desk'), 'teddy bear': ('living-room carpet', 'grass'),
          'bag': ('street', 'office desk', 'living-room carpet'), 'car': ('street', 'living-room carpet'), 'lamp': ('office desk', 'living-room carpet'),
          'kite': ('beach', 'grass'), 'shoe': ('street', 'living-room carpet'), 'umbrella': ('street', 'beach', 'snow'), 'duck': ('lake',),
          'book': ('office desk', 'living-room carpet'), 'ball': ('grass', 'beach'), 'cube': ('living-room carpet', 'office desk')}

def _kind(c:Concept, context:str)->str:
    "'common' when `context` is a usual place for `c`'s class, else 'uncommon'."
    return 'common' if context in COMMON.get(c.look.cls, ()) else 'uncommon'


# %% [markdown]
# A plan is a list of rows, each with its scenes and, for a query, what answers it: the concepts,
# the place and the named object (class and colour). A photo answers a query when it shows all the
# query's concepts at its place with such an object: that is how `ADDITIONAL GTS` are found.

# %%
#| export
@dataclass
class Row:
    "One annotation row before its photos have file names."
    label: str
    concepts: list
    kind: str
    env: str
    scenes: list
    need: tuple|None = None  # (concept ids, place, (class, colour) or None) for a query

def answers(need:tuple, s:_scenes.Scene)->bool:
    "Whether scene `s` answers a query that needs `need` = (concepts, place, named object or None)."
    cs, env, obj = need
    ids = {t.concept for t in s.things if t.concept is not None}
    objs = {(t.look.cls, t.look.colour) for t in s.things if t.concept is None and not t.person}
    return s.context == env and set(cs) <= ids and (obj is None or tuple(obj) in objs)


# %%
#| export
def _named_object(rng, avoid:set)->_scenes.Look:
    "A plain object of a random colour and class (not in `avoid`) that no concept's key matches."
    while True:
        l = _scenes.Look(str(rng.choice([k for k in _scenes.CLASSES if k not in avoid])), str(rng.choice(list(_scenes.COLOURS))))
        if l.key not in _EXCLUDE(): return l

def _query_row(rng, cid:int, c:Concept, env:str, n:int)->Row:
    "A single-concept query of concept `cid` at `env`, maybe next to a named object, with `n` photos."
    obj = _named_object(rng, {c.look.cls, _scenes.SHAPES.get(c.look.body or '', {}).get('like')}) if rng.random() < .5 else None
    place = str(rng.choice(_scenes.CONTEXTS[env].place))
    label = f"* {place}" if obj is None else str(rng.choice([f"* next to {_a(obj.colour + ' ' + obj.cls)} {place}", f"* {place} next to {_a(obj.colour + ' ' + obj.cls)}"]))
    scenes = [concept_scene(rng, [(cid, c)], env, obj) for _ in range(n)]
    return Row(label, [cid], _kind(c, env), env, scenes, ([cid], env, (obj.cls, obj.colour) if obj else None))

def _multi_row(rng, a:int, b:int, env:str, n:int)->Row:
    "A query showing concepts `a` and `b` together at `env`, with `n` photos."
    place = str(rng.choice(_scenes.CONTEXTS[env].place))
    label = str(rng.choice([f"* next to * {place}", f"* and * {place}"]))
    scenes = [concept_scene(rng, [(a, CONCEPTS[a]), (b, CONCEPTS[b])], env, clutter=(0, 2)) for _ in range(n)]
    return Row(label, [a, b], _kind(CONCEPTS[a], env), env, scenes, ([a, b], env, None))

def _distractor(rng, env:str)->_scenes.Scene:
    "A generic photo at `env` whose main object shares a concept's class (and often colour): a hard negative."
    c = CONCEPTS[int(rng.integers(len(CONCEPTS)))]
    look = _scenes.sample_look(rng, c.look.cls); same = replace(look, colour=c.look.colour)
    if rng.random() < .6 and same.colour2 != same.colour and same.key not in _EXCLUDE(): look = same
    sc = _scenes.Scene(env, [_on_ground(rng, env, _scenes.Thing(look, h=float(rng.uniform(.14, .5)), angle=float(rng.normal(0, 18))))], [], int(rng.integers(2**31)), _light_draw(rng))
    return _clutter(rng, sc, {c.look.cls}, int(rng.integers(0, 4)))


# %%
#| export
def _cc_negatives(rng, p:dict, used:dict)->list:
    "Negative rows: each concept at places none of its queries use, and hard distractors grouped by place."
    ctxs, rows = list(_scenes.CONTEXTS), []
    for k, c in enumerate(CONCEPTS):
        envs = rng.choice([e for e in ctxs if e not in used[k]] or ctxs, p['neg_concept']).tolist()
        rows += [Row('', [k], 'negative', e, [concept_scene(rng, [(k, c)], e) for _ in range(envs.count(e))]) for e in sorted(set(envs))]
    denv = rng.choice(ctxs, p['distractors']).tolist()
    return rows + [Row('', [], 'negative', e, [_distractor(rng, e) for _ in range(denv.count(e))]) for e in ctxs if e in denv]

def conconchi_plan(seed:int=0, profile:str|dict='small')->tuple:
    "Rows of train.json and test.json (with their scenes) for a ConCon-Chi world of `profile`."
    p, rng, ctxs = profile_sizes('conconchi', profile), _rng(seed, 10, 0), list(_scenes.CONTEXTS)
    train = [Row(f"* {_scenes.CONTEXTS[e].place[0]}", [k], 'train', e, [concept_scene(rng, [(k, c)], e, h=(.25, .55), clutter=(0, 2))])
             for k, c in enumerate(CONCEPTS) for e in rng.choice(ctxs, p['support'], replace=False).tolist()]
    used = {k: rng.choice(ctxs, p['contexts'], replace=False).tolist() for k in range(len(CONCEPTS))}
    test = [_query_row(rng, k, c, e, p['per_query']) for k, c in enumerate(CONCEPTS) for e in used[k]]
    pairs = [rng.choice(len(CONCEPTS), 2, replace=False).tolist() for _ in range(p['multi'])]
    test += [_multi_row(rng, a, b, str(rng.choice(ctxs)), p['per_multi']) for a, b in pairs]
    return train, test + _cc_negatives(rng, p, used)


# %%
tr, te = conconchi_plan(0, 'small')
test_eq(len(tr), 100); test_eq(sum(len(r.scenes) for r in te), 20*4*3 + 8*3 + 20*2 + 40)
q = next(r for r in te if r.need and r.need[2])
q.label, q.concepts, q.kind, q.env, all(answers(q.need, s) for s in q.scenes)


# %% [markdown]
# Photos get file names in a shuffled order (the names say nothing about the concept), are drawn
# and saved as JPEG (4:4:4 chroma, so thin colour details survive), and the rows are written with
# the answers found in the whole pool.

# %%
#| export
def _save(img:np.ndarray, path:Path):
    "Save uint8 image `img` as a JPEG (quality 95, no chroma subsampling) at `path`."
    Image.fromarray(img).save(path, format='JPEG', quality=95, subsampling=0)

def _write_json(path:Path, obj, indent=None):
    "Write `obj` as JSON (UTF-8, newline-terminated)."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent) + '\n', encoding='utf-8')

def _cc_rows(rows:list, names:dict, pool:list)->list:
    "The JSON rows of `rows`, photos named by `names` (id(scene) → file), answers searched in `pool` [(file, scene)]."
    out = []
    for r in rows:
        gts = [names[id(s)] for s in r.scenes]
        extra = [f for f, s in pool if r.need and f not in gts and answers(r.need, s)]
        out.append({'LABEL': r.label, 'GTS': gts, 'ADDITIONAL GTS': extra, 'CONCEPTS': r.concepts, 'KIND': r.kind, 'ENV': r.env})
    return out

def _cc_file(rows:list)->dict:
    "A ConCon-Chi annotation object around `rows`."
    return {'concepts': [c.texts() for c in CONCEPTS], 'max_gts': max(len(r['GTS']) + len(r['ADDITIONAL GTS']) for r in rows),
            'max_concepts': max(len(r['CONCEPTS']) for r in rows), 'data': rows}


# %% [markdown]
# ## Captions of a captioning model
#
# POLAR's general-knowledge metric ranks the pool with captions a captioning model wrote, which the
# paper found 88 % right, 10 % with a minor error and 2 % wrong. The world's captions come with
# exactly that mix: a minor error changes one attribute (a colour, a class or the place) of an
# otherwise right caption, a wrong one describes another scene. Like a captioning model, it
# describes the main thing in detail and names up to two others briefly.

# %%
#| export
VLM_ERRORS = dict(right=.88, minor=.10, wrong=.02)

def mutate(scene:_scenes.Scene, rng:np.random.Generator)->_scenes.Scene:
    "A copy of `scene` with one attribute changed: the place, or one thing's colour or class."
    things = list(scene.things); k = int(rng.integers(3)); i = int(rng.integers(min(3, len(things))))  # a thing the caption names
    if k == 0: return replace(scene, context=str(rng.choice([c for c in _scenes.CONTEXTS if c != scene.context])))
    t = things[i]
    if t.person:
        gs = list(t.look.garments); j = int(rng.integers(len(gs)))
        gs[j] = replace(gs[j], colour=str(rng.choice([c for c in _scenes.COLOURS if c != gs[j].colour])))
        things[i] = replace(t, look=replace(t.look, garments=tuple(gs)))
    elif k == 1: things[i] = replace(t, look=replace(t.look, colour=str(rng.choice([c for c in _scenes.COLOURS if c != t.look.colour]))))
    else: things[i] = replace(t, look=replace(t.look, cls=str(rng.choice([c for c in _scenes.CLASSES if c != t.look.cls])), body=None))
    return replace(scene, things=things)

def vlm_captions(scenes:list, seed:int=0)->tuple:
    "Captions of `scenes` with the paper's error mix, and each caption's label (right, minor or wrong)."
    rng, n = _rng(seed, 20, 0), len(scenes)
    nm, nw = round(VLM_ERRORS['minor']*n), round(VLM_ERRORS['wrong']*n)
    lab = np.array(['right']*n, dtype=object); perm = rng.permutation(n); lab[perm[:nm]] = 'minor'; lab[perm[nm:nm+nw]] = 'wrong'
    caps = [_scenes.vlm_caption(s if l == 'right' else mutate(s, rng) if l == 'minor' else _scenes.sample_scene(rng), np.random.default_rng(s.seed))
            for s, l in zip(scenes, lab)]
    return caps, lab.tolist()


# %%
s0 = sample_scene(np.random.default_rng(3))
print(vlm_caption(s0, np.random.default_rng(0))); print(vlm_caption(mutate(s0, np.random.default_rng(1)), np.random.default_rng(0)))
caps, labs = vlm_captions([sample_scene(np.random.default_rng(i)) for i in range(200)])
test_eq(pd.Series(labs).value_counts().to_dict(), dict(right=176, minor=20, wrong=4))

# %% [markdown]
# Every benchmark folder also gets a concept-free retrieval set (`generic/images/`,
# `generic/captions.json`, one scene caption per photo, from the held-out stream) for the
# general-knowledge chapter, and a `world.json` that records how it was made (seed, profile, size,
# counts, the concepts, each VLM caption's label) and lists every file the world wrote (`files`,
# paths relative to the folder, `world.json` among them).
#
# The arguments are checked before anything is written: `seed` a non-negative int, `size` an int of
# at least `MIN_SIZE` pixels, `fmt` and `profile` as `profile_sizes` checks them, and `root` a
# folder (or nothing yet) other than the current one or one that holds it, since the world is
# written beside it and moved there. An int may be a numpy integer; a bool is refused.

# %%
#| export
MIN_SIZE = 32  # the smallest photo side (pixels) the writers accept: smaller photos draw their smallest things at a clamped size

def _check_args(root:str|Path, fmt:str, seed, profile:str|dict, size)->tuple:
    "(seed, profile, size) as plain values, or an error naming the first bad argument; nothing is written."
    sizes = profile_sizes(fmt, profile)
    profile = {k: sizes[k] for k in profile} if isinstance(profile, dict) else profile
    seed, size = _int('seed', seed, 0), _int('size', size, MIN_SIZE, why=' (pixels)')
    if not isinstance(root, (str, os.PathLike)): raise TypeError(f"root must be a folder's path (str or Path), not {root!r}")
    r, here = Path(root).resolve(), Path.cwd().resolve()
    if r.exists() and not r.is_dir(): raise NotADirectoryError(f"root must be a folder, not the file {root}")
    if r == here or r in here.parents: raise ValueError(f"root must not be the current folder or hold it (the world is written beside it and moved there), not {root!r}")
    return seed, profile, size


# %%
test_eq(_check_args('w', 'pervl', np.int64(3), dict(support=[1, 3]), 48), (3, dict(support=(1, 3)), 48))
test_fail(lambda: _check_args('w', 'conconchi', -1, 'small', 64), contains='seed must be a non-negative int, not -1')
test_fail(lambda: _check_args('w', 'conconchi', True, 'small', 64), contains='seed must be a non-negative int, not True')
test_fail(lambda: _check_args('w', 'conconchi', 0, 'small', 16), contains='size must be an int of at least 32 (pixels), not 16')
test_fail(lambda: _check_args('w', 'conconchi', 0, 'small', 64.), contains='size must be an int of at least 32 (pixels), not 64.0')
test_fail(lambda: _check_args('.', 'conconchi', 0, 'small', 64), contains='root must not be the current folder')
test_fail(lambda: _check_args(os.devnull, 'conconchi', 0, 'small', 64), contains='root must be a folder, not the file')

# %% [markdown]
# Why 32 pixels: a sprite is drawn at twice the photo's side and at least 4 pixels high and 3 wide,
# so a thing smaller than that is drawn larger than it is, its pattern and emblem lost. From 32
# pixels on, all but about one thing in a thousand keep their size (the few left are tall narrow
# bottles, under a twentieth of the photo wide); at 16 pixels one in fifty is drawn larger, at 8
# pixels more than a third. The share of the `small` plan's things drawn at a clamped size, by
# photo side (rendering itself works at any side):

# %%
things = [t for r in tr + te for s in r.scenes for t in s.things]
clamped = lambda n: np.mean([round(t.h*2*n) < 4 or round(t.w*2*n) < 3 for t in things])
test_eq(render(te[0].scenes[0], MIN_SIZE).shape, (MIN_SIZE, MIN_SIZE, 3))
assert clamped(MIN_SIZE) < .001 < .01 < clamped(MIN_SIZE//2)
pd.DataFrame(dict(size=[8, 16, 24, MIN_SIZE, 64], clamped=[round(clamped(n), 4) for n in (8, 16, 24, MIN_SIZE, 64)]))

# %% [markdown]
# A world is written into a folder beside `root`, `.<name>.polar-nb/new/` (the folder holds a
# marker file saying polar-nb made it), and moved into place only when it is complete: the world
# in `root` moves aside to `.<name>.polar-nb/old/`, the new one takes its place (both renames in one
# parent folder, each atomic), the files a user added to the old world (those not on its list)
# follow to the same paths, and the folder beside goes. A run that fails leaves `root` as it was. A
# killed run leaves the folder beside; the next run for the same `root` removes it, first undoing or
# finishing the move when the kill came in the middle of it, and never removes a folder of that
# name without the marker. Nothing the package did not write is removed: for a world written before
# worlds listed their files, the files its format's writer produces count as its own. Writing into
# a folder that holds something but no world, or where a user's file is in the way of one the new
# world writes, is refused, and nothing is changed.

# %%
#| export
_MARK = '.polar-nb-work'  # the marker file of a folder the writers made beside a world
_WRITES = {'conconchi': r'data/images/[^/]+|data/annotations/(train|test)\.json|vlm_captions\.json|generic/.+|world\.json',
           'pervl': r'train/image/[^/]+|[^/]+_fsl_train\.txt|[^/]+_captions\.csv|train_coarse_grained_names\.csv|vlm_captions\.json|generic/.+|world\.json'}

def _listing(root:Path)->list:
    "Relative paths of everything under `root` but folders (a link is listed, not followed), sorted."
    return sorted(Path(d, n).relative_to(root).as_posix() for d, ds, fs in os.walk(root) for n in fs + [x for x in ds if os.path.islink(os.path.join(d, x))])

def _user_files(root:Path)->list:
    "The files in `root` that its world did not write; an error if `root` holds something but no polar-nb world."
    if not root.is_dir() or not any(root.iterdir()): return []
    if not (root/'world.json').is_file(): raise FileExistsError(f"{root} is not empty and holds no world.json: refusing to write a world there")
    try: info = json.loads((root/'world.json').read_text(encoding='utf-8'))
    except ValueError: info = None  # not JSON (UnicodeDecodeError is a ValueError too)
    if isinstance(info, dict) and isinstance(info.get('files'), list): return [f for f in _listing(root) if f not in set(map(str, info['files']))]
    if isinstance(info, dict) and info.get('format') in _WRITES: return [f for f in _listing(root) if not re.fullmatch(_WRITES[info['format']], f)]
    raise FileExistsError(f"{root}/world.json is not one polar-nb wrote (no format, no list of files): refusing to write a world there")

def _clashes(keep:list, new:list)->list:
    "The files of `keep` in the way of files `new`: at the same path, at a folder of theirs, or under one of them."
    new = set(new); dirs = {p.as_posix() for f in new for p in PurePosixPath(f).parents}
    return [f for f in keep if f in new or f in dirs or any(p.as_posix() in new for p in PurePosixPath(f).parents)]


# %%
d0 = Path(tempfile.mkdtemp())
(d0/'a'/'b').mkdir(parents=True); (d0/'a'/'b'/'x.txt').write_text('x'); (d0/'world.json').write_text(json.dumps(dict(format='conconchi', files=['world.json'])))
test_eq(_listing(d0), ['a/b/x.txt', 'world.json']); test_eq(_user_files(d0), ['a/b/x.txt'])
(d0/'world.json').write_text(json.dumps(dict(format='pervl'))); (d0/'test_fsl_train.txt').write_text('')  # no list: the pervl writer's files are the world's
test_eq(_user_files(d0), ['a/b/x.txt'])
(d0/'world.json').write_text('{}'); test_fail(lambda: _user_files(d0), contains='is not one polar-nb wrote')
(d0/'world.json').unlink(); test_fail(lambda: _user_files(d0), contains='holds no world.json')
test_eq(_clashes(['a/b/x.txt', 'mine.txt', 'generic', 'notes/n.md'], ['a/b/x.txt/y', 'mine.txt', 'generic/captions.json', 'world.json']), ['a/b/x.txt', 'mine.txt', 'generic'])
shutil.rmtree(d0)


# %%
#| export
def _work(root:Path)->Path:
    "The folder beside `root` where a world is written (`new/`) and the world it replaces waits (`old/`)."
    return root.parent/f'.{root.name}.polar-nb'

def _move(src:Path, dst:Path, files:list):
    "Move `files` (relative paths) from `src` to the same paths under `dst`, never over something there."
    for f in files:
        if os.path.lexists(dst/f): raise FileExistsError(f"{dst/f} is in the way of {src/f}: move one of them and run again")
        (dst/f).parent.mkdir(parents=True, exist_ok=True); os.rename(src/f, dst/f)

def _recover(root:Path):
    "Remove the folder a failed or killed write left beside `root`, first putting back the world it replaced, or that world's user files."
    work = _work(root)
    if not os.path.lexists(work): return
    if not work.is_dir() or work.is_symlink() or (any(work.iterdir()) and not (work/_MARK).is_file()):
        raise FileExistsError(f"{work} is in the way and polar-nb did not make it (it has no {_MARK}): move it or write the world elsewhere")
    if (work/'old').is_dir():
        if root.exists(): _move(work/'old', root, _user_files(work/'old'))  # the new world is in place: the user's files follow
        else: os.rename(work/'old', root)  # killed between the two renames: the old world goes back
        if (work/'old').exists(): os.rename(work/'old', work/'done')
    for p in work.iterdir():
        if p.name != _MARK: shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (work/_MARK).unlink(missing_ok=True); work.rmdir()

def _swap(root:Path, work:Path):
    "Move the world in `root` to `work/old` and the new one, `work/new`, to `root`, unless a user's file is in the way."
    if clash := _clashes(_user_files(root), _listing(work/'new')):
        raise FileExistsError(f"{root} holds {clash}, in the way of files the new world writes: move them and run again (nothing was changed)")
    if os.path.lexists(root): os.rename(root, work/'old')
    os.rename(work/'new', root)

@contextmanager
def _staged(root:str|Path):
    "A folder to write a world in; when the block ends without error, the world replaces the one in `root`, whose user's files stay."
    root = Path(root).resolve(); _recover(root); _user_files(root)
    work = _work(root); work.mkdir(parents=True)
    (work/_MARK).write_text(f'polar-nb writes a world for {root.name} here; the next run for that folder removes this one\n', encoding='utf-8')
    try: (work/'new').mkdir(); yield work/'new'; _swap(root, work)
    finally: _recover(root)

def _write_info(d:Path, info:dict):
    "Write `d/world.json`: `info` and the list of every file the world wrote, which a world later written in its place removes."
    _write_json(d/'world.json', info | dict(files=sorted(_listing(d) + ['world.json'])), 1)


# %%
t0 = Path(tempfile.mkdtemp()); w0 = t0/'w'
def toy(text:str, fail:bool=False):
    "A toy world: `b.txt` holding `text`; fails half-way if `fail`."
    with _staged(w0) as d:
        (d/'b.txt').write_text(text)
        if fail: raise RuntimeError('half-way')
        _write_info(d, dict(format='toy'))
toy('1'); (w0/'notes').mkdir(); (w0/'notes'/'mine.txt').write_text('mine')
test_eq(json.loads((w0/'world.json').read_text())['files'], ['b.txt', 'world.json'])
test_fail(lambda: toy('2', fail=True), contains='half-way')
test_eq(((w0/'b.txt').read_text(), os.listdir(t0)), ('1', ['w']))  # as it was, nothing beside
work = _work(w0.resolve()); (work/'new').mkdir(parents=True); (work/_MARK).touch(); (work/'new'/'b.txt').write_text('half')  # what a killed run leaves
toy('3'); test_eq(((w0/'b.txt').read_text(), (w0/'notes'/'mine.txt').read_text(), os.listdir(t0)), ('3', 'mine', ['w']))
work.mkdir(); (work/_MARK).touch(); os.rename(w0, work/'old'); _recover(w0.resolve())  # killed between the two renames: put back
test_eq(((w0/'b.txt').read_text(), os.listdir(t0)), ('3', ['w']))
(w0/'b.txt').unlink(); (w0/'b.txt').mkdir(); (w0/'b.txt'/'x').write_text('a user folder where the world writes a file')
test_eq(_user_files(w0), ['b.txt/x', 'notes/mine.txt']); test_fail(lambda: toy('4'), contains="holds ['b.txt/x'], in the way")
test_eq(os.listdir(t0), ['w'])
work.mkdir(); (work/'thesis.tex').write_text('not made by polar-nb'); test_fail(lambda: toy('4'), contains='polar-nb did not make it')
test_eq((work/'thesis.tex').read_text(), 'not made by polar-nb')
shutil.rmtree(t0)


# %%
#| export
def _write_generic(root:Path, n:int, seed:int, size:int)->int:
    "Write the held-out concept-free retrieval set under `root/generic/`; returns its size."
    imgs, caps = generic_retrieval(n, seed, size)
    (root/'generic'/'images').mkdir(parents=True, exist_ok=True)
    names = [f'generic/images/{i:05d}.jpg' for i in range(n)]
    for name, img in zip(names, imgs): _save(img, root/name)
    _write_json(root/'generic'/'captions.json', dict(zip(names, caps)))
    return n


# %%
#| export
def _cc_world(d:Path, seed:int, profile:str|dict, size:int):
    "Write the files of a ConCon-Chi world into the empty folder `d`, world.json last."
    img_dir = d/'data'/'images'; img_dir.mkdir(parents=True)
    train, test = conconchi_plan(seed, profile)
    scenes = [s for r in train + test for s in r.scenes]
    order = _rng(seed, 11, 0).permutation(len(scenes))
    names = {id(scenes[j]): f'IMG_{i+1:04d}.jpeg' for i, j in enumerate(order)}
    for s in scenes: _save(_scenes.render(s, size), img_dir/names[id(s)])
    pool = [(names[id(s)], s) for r in test for s in r.scenes]
    for split, rows in (('train', train), ('test', test)):
        _write_json(d/'data'/'annotations'/f'{split}.json', _cc_file(_cc_rows(rows, names, pool if split == 'test' else [])), 4)
    caps, labs = vlm_captions([s for _, s in pool], seed)
    _write_json(d/'vlm_captions.json', {f'data/images/{f}': c for (f, _), c in zip(pool, caps)})
    n_gen = _write_generic(d, profile_sizes('conconchi', profile)['generic'], seed, size)
    _write_info(d, dict(format='conconchi', seed=seed, profile=profile, size=size, concepts=[c.name for c in CONCEPTS],
        counts=dict(support=len(train), pool=len(pool), queries=sum(r.kind != 'negative' for r in test), generic=n_gen),
        vlm_labels={f'data/images/{f}': l for (f, _), l in zip(pool, labs)}))

def write_conconchi(root:str|Path, seed:int=0, profile:str|dict='small', size:int=64)->Path:
    "Write a ConCon-Chi world under `root` (data/images, data/annotations, vlm_captions.json, generic/, world.json); returns `root`."
    seed, profile, size = _check_args(root, 'conconchi', seed, profile, size)
    with _staged(root) as d: _cc_world(d, seed, profile, size)
    return Path(root)


# %% [markdown]
# ## Writing PerVL DeepFashion2
#
# PerVL's annotation files, byte for byte in layout (compared with the real files in this
# project's test fixtures): `{split}_fsl_train.txt` has one block per pair id, `codes_infer/<id>:`
# then the support image names, blocks separated by a blank line and ordered by the id as text;
# `{split}_captions.csv` is `image_name,pair_id,caption` (names `train/image/NNNNNN.jpg`, rows
# grouped by pair id, captions lower-case sentences quoted only when they hold a comma) and holds the
# detailed wording; `shortened_…` and `detailed_deepfashion2_captions.csv` cover the pools of both
# splits and some support photos; `train_coarse_grained_names.csv` is
# `unique_pair_ids,pair_id_categories`. Every file ends with a newline (the real shortened file's
# last line lacks one, which the readers accept). A photo is a person wearing the garment concept (a top with
# some bottom, a bottom with some top, or a dress), in a place, with objects around; like
# DeepFashion2's captions, the captions describe the person and the place, never the garment.

# %%
#| export
def garment_scene(rng, pid:int, c:Concept, context:str|None=None)->_scenes.Scene:
    "A photo of a person wearing garment concept `c` (pair id `pid`) with generic clothes and objects around."
    part = _scenes.GARMENTS[c.look.cls]; other = {'top': 'bottom', 'bottom': 'top'}.get(part)
    extra = [_scenes.sample_look(rng, str(rng.choice([g for g, p in _scenes.GARMENTS.items() if p == other])))] if other else []
    gs = tuple(sorted([c.look] + extra, key=lambda g: _scenes.GARMENTS[g.cls] != 'bottom'))
    o = _scenes.Outfit(gs, int(rng.integers(len(_scenes.SKINS))), str(rng.choice(['black', 'brown', 'yellow', 'orange', 'white'])), str(rng.choice(_scenes.POSES)))
    context = context or str(rng.choice(list(_scenes.CONTEXTS)))
    main = _on_ground(rng, context, _scenes.Thing(o, h=float(rng.uniform(.6, .95)), flip=bool(rng.random() < .5), concept=pid))
    sc = _scenes.Scene(context, [main], [], int(rng.integers(2**31)), _light_draw(rng))
    for _ in range(int(rng.choice([0, 1, 2], p=[.3, .45, .25]))):
        b = _object(rng, (.12, .3)); r = str(rng.choice(['next to', 'next to', 'left of', 'right of', 'in front of', 'behind']))
        sc.things.append(_scenes.relate(rng, main, b, r, sc.things[1:])); sc.relations.append((0, r, len(sc.things)-1))
    _fit(sc.things)
    return sc

def pervl_captions(scene:_scenes.Scene, rng)->tuple:
    "(detailed, shortened) DeepFashion2-style captions of a garment photo: lower case, one sentence, with 'person'."
    return _person_caption(scene, rng, wearing=False) + '.', _person_caption(scene, rng, wearing=False, detailed=False) + '.'


# %%
r = np.random.default_rng(0); pid, gcpt = garment_concepts()[0]
gs = garment_scene(r, pid, gcpt)
print(gcpt.discriminative, '|', *pervl_captions(gs, r), sep='\n')
Image.fromarray(render(gs)).resize((160, 160), Image.NEAREST)


# %% [markdown]
# Each pair id gets a block of consecutive image numbers (as DeepFashion2's photos of one item are),
# its support and pool photos shuffled inside it. `small` keeps 20 of the 50 concepts of each split.

# %%
#| export
def pervl_plan(seed:int=0, profile:str|dict='small')->dict:
    "{split: [(pair_id, Concept, support scenes, pool scenes)]} for a PerVL world of `profile`."
    p, rng, gc = profile_sizes('pervl', profile), _rng(seed, 30, 0), garment_concepts()
    n_pool = lambda: int(rng.choice(p['pool'], p=[.02, .04, .06, .12, .76] if len(p['pool']) == 5 else None))
    return {split: [(pid, c, [garment_scene(rng, pid, c) for _ in range(int(rng.integers(*p['support'])))],
                     [garment_scene(rng, pid, c) for _ in range(n_pool())]) for pid, c in gc[off:off + p['concepts']]]
            for split, off in (('test', 0), ('validation', 50))}

def _csv(path:Path, header:list, rows:list):
    "Write a CSV the way PerVL's files are: comma separated, minimal quoting, '\\n' line ends."
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f, lineterminator='\n'); w.writerow(header); w.writerows(rows)

def _fsl(path:Path, support:dict):
    "Write a `{split}_fsl_train.txt`: blocks `codes_infer/<pair_id>:` + names, ordered by the id as text."
    blocks = [f'codes_infer/{pid}:\n' + '\n'.join(sorted(names)) for pid, names in sorted(support.items(), key=lambda kv: str(kv[0]))]
    path.write_text('\n\n'.join(blocks) + '\n', encoding='utf-8')


# %%
#| export
def _pervl_names(rng, plan:dict)->dict:
    "id(scene) → image number: a block of consecutive numbers per pair id, shuffled inside the block."
    items = [(sup + pool) for split in plan.values() for _, _, sup, pool in split]
    bases = np.sort(rng.choice(np.arange(1, 190000//_BLOCK), len(items), replace=False))*_BLOCK
    return {id(s): int(b) + int(k) for b, ss in zip(bases, items) for k, s in zip(rng.permutation(len(ss)), ss)}

def _pervl_split(root:Path, split:str, items:list, name, caps:dict, rng):
    "Write `{split}_fsl_train.txt` and `{split}_captions.csv` (detailed wording, rows grouped by pair id)."
    _fsl(root/f'{split}_fsl_train.txt', {pid: [name(s) for s in sup] for pid, _, sup, _ in items})
    rows = [(f'train/image/{name(s)}', items[k][0], caps[id(s)][0]) for k in rng.permutation(len(items)) for s in items[k][3]]
    _csv(root/f'{split}_captions.csv', ['image_name', 'pair_id', 'caption'], rows)

def _pervl_shared(root:Path, plan:dict, pool:list, extra:list, name, caps:dict, rng):
    "Write the two caption wordings (both pools, some support photos) and the coarse names of every pair id."
    both = [pool[k] for k in rng.permutation(len(pool))] + extra
    for j, kind in ((0, 'detailed'), (1, 'shortened')):
        _csv(root/f'{kind}_deepfashion2_captions.csv', ['image_name', 'pair_id', 'caption'], [(f'train/image/{name(s)}', pid, caps[id(s)][j]) for s, pid in both])
    _csv(root/'train_coarse_grained_names.csv', ['unique_pair_ids', 'pair_id_categories'], sorted((pid, c.coarse) for its in plan.values() for pid, c, _, _ in its))

def _pervl_info(plan:dict, seed:int, profile:str|dict, size:int, n_gen:int, labels:dict)->dict:
    "The content of a PerVL world's world.json."
    return dict(format='pervl', seed=seed, profile=profile, size=size,
                concepts={sp: [[pid, c.name, c.discriminative] for pid, c, _, _ in its] for sp, its in plan.items()},
                counts={sp: dict(concepts=len(its), support=sum(len(x[2]) for x in its), pool=sum(len(x[3]) for x in its)) for sp, its in plan.items()} | dict(generic=n_gen),
                vlm_labels=labels)

def _pervl_world(root:Path, seed:int, profile:str|dict, size:int):
    "Write the files of a PerVL DeepFashion2 world into the empty folder `root`, world.json last."
    (root/'train'/'image').mkdir(parents=True)
    plan, rng = pervl_plan(seed, profile), _rng(seed, 31, 0)
    num = _pervl_names(rng, plan); name = lambda s: f'{num[id(s)]:06d}.jpg'
    scenes = [s for its in plan.values() for _, _, sup, pool in its for s in sup + pool]
    for s in scenes: _save(_scenes.render(s, size), root/'train'/'image'/name(s))
    caps = {id(s): pervl_captions(s, np.random.default_rng(s.seed)) for s in scenes}
    pool = [(s, pid) for its in plan.values() for pid, _, _, ps in its for s in ps]
    extra = [(s, pid) for its in plan.values() for pid, _, sup, _ in its for s in sup if rng.random() < .15]
    for split, items in plan.items(): _pervl_split(root, split, items, name, caps, rng)
    _pervl_shared(root, plan, pool, extra, name, caps, rng)
    vcaps, labs = vlm_captions([s for s, _ in pool], seed)
    _write_json(root/'vlm_captions.json', {f'train/image/{name(s)}': v for (s, _), v in zip(pool, vcaps)})
    n_gen = _write_generic(root, profile_sizes('pervl', profile)['generic'], seed, size)
    _write_info(root, _pervl_info(plan, seed, profile, size, n_gen, {f'train/image/{name(s)}': l for (s, _), l in zip(pool, labs)}))

def write_pervl(root:str|Path, seed:int=0, profile:str|dict='small', size:int=64)->Path:
    "Write a PerVL DeepFashion2 world (test and validation splits) under `root`; returns `root`."
    seed, profile, size = _check_args(root, 'pervl', seed, profile, size)
    with _staged(root) as d: _pervl_world(d, seed, profile, size)
    return Path(root)


# %% [markdown]
# ## `make_benchmark`
#
# One entry point for both formats. The same arguments give byte-identical files; a world written
# again in the same folder replaces the files of the world there and keeps those a user added.

# %%
#| export
def make_benchmark(root:str|Path, # folder to write: absent, empty, or a world written before (its files are replaced, a user's stay)
                   fmt:str='conconchi', # 'conconchi' or 'pervl'
                   seed:int=0, # the photos' seed, a non-negative int (the concepts are the same for every seed)
                   profile:str|dict='small', # 'small' (a chapter runs in about a minute on CPU), 'full' (the real benchmarks' sizes) or a dict of sizes (`profile_sizes`)
                   size:int=64, # image side in pixels, at least `MIN_SIZE`
                  )->Path:
    "Write a world benchmark in the real on-disk format `fmt` under `root`; returns `root`."
    profile_sizes(fmt, profile)  # a clear error for an unknown format, profile or size; the writer checks the rest
    return (write_conconchi if fmt == 'conconchi' else write_pervl)(root, seed, profile, size)


# %% [markdown]
# ## Worlds shared by the chapters
#
# Most chapters run on the same few worlds. `shared_world` writes a world once into the settings'
# cache folder and hands the same folder to every chapter and test of a run (and to later runs):
# its name is the hash of everything the files depend on (format, seed, sizes, image size, the
# source of the two modules that draw and write it, and the numpy and Pillow versions), a list of
# every file's SHA-256 is kept beside it and checked each time it is handed out (a world that fails
# the check is written again, with a warning naming it), and a lock makes two processes asking for
# it at once write it once. The folder is for reading: a chapter that changes a world writes its own
# with `make_benchmark`.

# %%
#| export
def _world_key(fmt:str, seed:int, profile, size:int)->str:
    "The hash of what a world's files depend on."
    import PIL
    h = hashlib.sha256(json.dumps(dict(fmt=fmt, seed=seed, sizes=profile_sizes(fmt, profile), size=size, numpy=np.__version__,
                                       pillow=PIL.__version__), sort_keys=True).encode())
    for m in ('polar_nb.scenes', 'polar_nb.world'): h.update(Path(importlib.import_module(m).__file__).read_bytes())  # the code that draws it
    return h.hexdigest()[:20]

def _file_sums(root:Path)->dict:
    "SHA-256 of every file of the world at `root`."
    return {r: hashlib.sha256((root/r).read_bytes()).hexdigest() for r in json.loads((root/'world.json').read_text())['files']}

def shared_world(fmt:str='conconchi', seed:int=0, profile:str|dict='small', size:int=64, # as for `make_benchmark`
                 cache:str|Path|None=None, # the folder holding shared worlds (default: `<cache_dir>/worlds`)
                )->Path:
    "A world written once and shared (see above): `make_benchmark`'s world in the cache folder, checked each time it is handed out."
    profile_sizes(fmt, profile); seed, size = _int('seed', seed, 0), _int('size', size, MIN_SIZE, why=' (pixels)')
    base = Path(cache) if cache else get_settings().cache_dir/'worlds'
    root = base/f"{fmt}-s{seed}-{_world_key(fmt, seed, profile, size)}"
    sums = root.with_name(root.name + '.sha256.json')
    base.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + '.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer; the others wait and then read its world
        try:
            if sums.is_file() and (root/'world.json').is_file():
                try:
                    if _file_sums(root) == json.loads(sums.read_text()): return root
                except (OSError, ValueError, KeyError): pass
                warnings.warn(f"shared world {root} differs from the sums written with it: writing it again")
            if sums.exists(): sums.unlink()
            if root.exists(): shutil.rmtree(root)
            make_benchmark(root, fmt, seed, profile, size)
            tmp = sums.with_name(f'.{sums.name}.{os.getpid()}.tmp'); tmp.write_text(json.dumps(_file_sums(root), sort_keys=True)); os.replace(tmp, sums)
            return root
        finally: fcntl.flock(lock, fcntl.LOCK_UN)


# %%
with tempfile.TemporaryDirectory() as d:
    w = shared_world('pervl', seed=2, profile=dict(concepts=2, support=(2, 3), pool=(1,)), size=32, cache=d)
    test_eq(shared_world('pervl', seed=2, profile=dict(concepts=2, support=(2, 3), pool=(1,)), size=32, cache=d), w)  # handed out again
    assert w != shared_world('pervl', seed=3, profile=dict(concepts=2, support=(2, 3), pool=(1,)), size=32, cache=d)
    f = next((w/'train'/'image').iterdir()); f.write_bytes(b'changed')  # a damaged file: named, and the world written again
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always'); again = shared_world('pervl', seed=2, profile=dict(concepts=2, support=(2, 3), pool=(1,)), size=32, cache=d)
    assert any(str(w) in str(x.message) for x in ws) and f.read_bytes() != b'changed'
    test_fail(lambda: shared_world('coco', cache=d), contains='fmt must be one of')
    test_fail(lambda: shared_world('pervl', seed=-1, cache=d), contains='seed')

# %% [markdown]
# ## What the writers produce
#
# Both formats in the `small` profile, written to a temporary folder, timed, and read back with
# the project's own readers:

# %%
from polar_nb.data import ConConChi, PerVLDeepFashion2

# %%
tmp, times = Path(tempfile.mkdtemp()), {}
for fmt in ('conconchi', 'pervl'):
    t0 = time.perf_counter(); make_benchmark(tmp/fmt, fmt, seed=0); times[fmt] = time.perf_counter() - t0
cc, pv, pvv = ConConChi(tmp/'conconchi'), PerVLDeepFashion2(tmp/'pervl', 'test'), PerVLDeepFashion2(tmp/'pervl', 'validation')
test_eq([len(b.missing_images()) for b in (cc, pv, pvv)], [0, 0, 0])
pd.concat([b.summary() for b in (cc, pv, pvv)]).assign(split=['test', 'test', 'validation']).reset_index(drop=True)


# %%
def disk(root):
    fs = [p for p in root.rglob('*') if p.is_file()]
    return dict(files=len(fs), jpeg=sum(p.suffix in ('.jpg', '.jpeg') for p in fs), MB=round(sum(p.stat().st_size for p in fs)/2**20, 1))
pd.DataFrame([dict(format=f, **disk(tmp/f), seconds=round(times[f], 1), images_per_s=round(disk(tmp/f)['jpeg']/times[f])) for f in times])

# %% [markdown]
# The rows of the ConCon-Chi `test.json`, by kind, with the answers found beyond a row's own photos
# (`ADDITIONAL GTS`, from other rows at the same place, with the same named object):

# %%
tj = json.loads((tmp/'conconchi'/'data'/'annotations'/'test.json').read_text())
rows = pd.DataFrame(tj['data'])
test_eq(set(rows.KIND), {'common', 'uncommon', 'negative'})
assert all(r.LABEL.count('*') == len(r.CONCEPTS) for r in rows.itertuples() if r.KIND != 'negative')
rows.assign(concepts=rows.CONCEPTS.map(len), photos=rows.GTS.map(len), additional=rows['ADDITIONAL GTS'].map(len)).groupby(
    ['KIND', 'concepts']).agg(rows=('LABEL', 'size'), photos=('photos', 'sum'), additional=('additional', 'sum')).reset_index()

# %%
print(json.dumps(tj['data'][0])[:400])
print(*(tmp/'pervl'/'test_fsl_train.txt').read_text().splitlines()[:4], sep='\n')
print(*(tmp/'pervl'/'test_captions.csv').read_text().splitlines()[:3], sep='\n')

# %% [markdown]
# The simulated captioner's error mix, measured on both pools, and a few of its captions:

# %%
labs = {f: json.loads((tmp/f/'world.json').read_text())['vlm_labels'] for f in times}
mix = pd.DataFrame({f: pd.Series(l).value_counts(normalize=True) for f, l in labs.items()}).round(3)
for f in times: test_close(mix[f]['right'], .88, eps=.01)
mix

# %%
vc = json.loads((tmp/'conconchi'/'vlm_captions.json').read_text())
test_eq(sorted(vc), sorted(str(p.relative_to(cc.root)) for p in cc.pool))
list(vc.items())[:3]


# %% [markdown]
# The same seed writes the same bytes:

# %%
def digest(root): return hashlib.sha256(b''.join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file())).hexdigest()
make_benchmark(tmp/'again', 'conconchi', seed=0)
test_eq(digest(tmp/'again'), digest(tmp/'conconchi'))
make_benchmark(tmp/'again', 'conconchi', seed=1)
assert digest(tmp/'again') != digest(tmp/'conconchi')

# %% [markdown]
# Written again in the same folder, a world replaces the files of the world there and keeps a
# user's; a run that fails half-way (here the disk fills up after 100 photos) leaves the folder as
# it was, and nothing beside it:

# %%
(tmp/'again'/'notes.txt').write_text('my notes'); before = digest(tmp/'again')
real_save, saved = _save, []
def full_disk(img, path):
    "`_save` on a disk that fills up after 100 photos."
    if len(saved) == 100: raise OSError('No space left on device')
    saved.append(path); real_save(img, path)
with patch.dict(globals(), _save=full_disk): test_fail(lambda: make_benchmark(tmp/'again', 'conconchi', seed=0), contains='No space left')
test_eq(digest(tmp/'again'), before); test_eq([p.name for p in tmp.iterdir() if 'polar-nb' in p.name], [])
make_benchmark(tmp/'again', 'conconchi', seed=0)
test_eq((tmp/'again'/'notes.txt').read_text(), 'my notes'); (tmp/'again'/'notes.txt').unlink()
test_eq(digest(tmp/'again'), digest(tmp/'conconchi'))

# %% [markdown]
# The `full` profile's sizes, counted from its plans (drawing them takes about a minute, below):

# %%
ftr, fte = conconchi_plan(0, 'full'); fpv = pervl_plan(0, 'full')
full = pd.DataFrame([dict(benchmark='conconchi', split='test', concepts=len(CONCEPTS), support=len(ftr), pool=sum(len(r.scenes) for r in fte),
                          queries=sum(r.kind != 'negative' for r in fte))] +
                    [dict(benchmark='deepfashion2', split=sp, concepts=len(its), support=sum(len(x[2]) for x in its), pool=sum(len(x[3]) for x in its),
                          queries=sum(len(x[3]) for x in its)) for sp, its in fpv.items()])
full

# %%
#| slow
# NBVAL_SKIP
for fmt in ('conconchi', 'pervl'):
    t0 = time.perf_counter(); make_benchmark(tmp/f'full_{fmt}', fmt, seed=0, profile='full')
    print(fmt, f'{time.perf_counter() - t0:.0f} s', disk(tmp/f'full_{fmt}'))

# %%
import shutil; shutil.rmtree(tmp)

# %% [markdown]
# The users and photo collections of [Users and their photo collections](07_collections.ipynb) are
# drawn from this world; `make_collections` is reached from here too. The drawing names, which moved to
# [Drawing scenes](05_scenes.ipynb) (`render`, `Look`, `sample_scene`, …), are still reached from here
# for one release, with a `DeprecationWarning` that names their new place.

# %%
#| export
MOVED = ('COLOURS', 'PATTERNS', 'EMBLEMS', 'CLASSES', 'GARMENTS', 'CONTEXTS', 'SKINS', 'POSES', 'SHAPES', 'BACKGROUNDS', 'TEMPLATES', 'RELATIONS', 'VERBS', 'Context', 'Look', 'Outfit', 'shape_masks', 'pattern_mask', 'emblem_points', 'object_sprite', 'person_masks', 'garment_mask', 'person_sprite', 'background', 'Thing', 'Scene', 'render', 'phrase', 'thing_phrase', 'scene_caption', 'vlm_caption', 'sample_look', 'relate', 'sample_scene')  # names that moved to polar_nb.scenes

def __getattr__(name:str):
    "`make_collections` and `Collections` of `polar_nb.collections` (imported when first asked for); a name moved to `polar_nb.scenes`, with a DeprecationWarning."
    if name in ('make_collections', 'Collections'):
        from polar_nb import collections as c
        return getattr(c, name)
    if name in MOVED:
        warnings.warn(f"polar_nb.world.{name} has moved to polar_nb.scenes.{name}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(_scenes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# %%
import polar_nb.scenes as ps, polar_nb.collections as pc, polar_nb.world as pw
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    from polar_nb.world import render as old_render, make_collections as mc
test_eq((old_render is ps.render, mc is pc.make_collections), (True, True))
test_eq([x.category for x in w], [DeprecationWarning]); assert 'polar_nb.scenes.render' in str(w[0].message)
test_fail(lambda: pw.no_such_name, contains="has no attribute 'no_such_name'")

# %%
#| hide
import nbdev; nbdev.nbdev_export()
