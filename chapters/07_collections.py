# %% [markdown]
# # Users and their photo collections
#
# > The world's users: photo collections with recurring personal things, places and people, and the retrieval episodes CAP is trained and tested on.

# %% [markdown]
# CAP (the poster in the seeds, "collection-aware personalisation") asks whether a search engine can
# adapt to a user from their photo collection alone, with no labelled concept and no caption: "my
# bag on the beach" should retrieve *this* user's bag. Its training data are *episodes*, the
# poster's (X_S, X_T, X_C, X_Q): a user's collection X_S (images only), a query text X_T, challenge
# images X_C to rank, and the correct image X_Q. This chapter draws such users in the embedded world
# (its scenes are [Drawing scenes](05_scenes.ipynb)'s, its writers [The embedded world](06_world.ipynb)'s)
# and writes them to disk; [CAP](30_cap.ipynb) trains and measures the model on them.
#
# A user owns a few personal things (a bag, a cup, a toy car: generic looks of the world, drawn once
# per user) and one person close to them (a friend, a sister), has favourite places, and photographs
# them there among everyday scenes. Users share classes, colours and places, so one user's "my bag"
# is another user's look-alike. A personal episode's query names a thing the way people do ("my bag
# on the beach", "our cup on a kitchen table"): the class and the place, never its look. Its
# challenge images hold the one correct photo (the user's thing at that place, not in the
# collection), the same thing at other places, *other users'* things of the same class at the same
# place and elsewhere, the user's other things at that place, and everyday scenes. Only the
# collection says which bag is "mine". A generic episode's query is an ordinary caption of an
# everyday scene ("a red ball on the grass"), ranked among a hundred everyday photos: personalising
# must not hurt it. Train, validation and test users are disjoint, and the look-alikes of an episode
# come from users of its own split.

# %%
#| default_exp collections

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail

# %%
#| export
import json, numbers
from dataclasses import dataclass, replace
from pathlib import Path
import numpy as np
from polar_nb.scenes import (CONTEXTS, Look, Thing, Scene, Outfit, render, sample_look, sample_scene, scene_caption, _fit,
                             _light_draw, _on_ground, _outfit)
from polar_nb.world import _clutter, _rng, _save, _staged, _write_json, _write_info, _int, MIN_SIZE

# %%
import tempfile, shutil, time
import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image

# %% [markdown]
# ## Profiles
#
# `tiny` is for tests and the CI run of the CAP chapter (seconds to write); `small` is what the
# shipped CAP weights are trained on. `photos` is the range of collection sizes (a user gets `low`
# to `high - 1` photos), `things` the personal objects per user, `episodes` and `generic` the
# personal and generic episodes per user, `challenge` the personal challenge set's size and
# `generic_pool` the everyday photos of a split (the generic challenge set).

# %%
#| export
COLLECTION_PROFILES = dict(
    tiny=dict(train=12, validation=4, test=6, photos=(12, 30), things=3, episodes=4, generic=4, challenge=20, generic_pool=60),
    small=dict(train=100, validation=12, test=24, photos=(16, 64), things=3, episodes=6, generic=6, challenge=24, generic_pool=100))
OWN_CLASSES = ('bag', 'cup', 'car', 'teddy bear', 'ball', 'umbrella', 'shoe', 'hat')  # what users own: shared, so look-alikes abound
PEOPLE = ('friend', 'sister', 'brother', 'partner', 'mum', 'dad')  # how a user names the person in their photos
SPLITS = ('train', 'validation', 'test')

def collection_sizes(profile:str|dict, # 'tiny', 'small', or a dict changing some of `small`'s sizes
                    )->dict:
    "The sizes users and episodes are drawn with, checked."
    if isinstance(profile, str):
        if profile not in COLLECTION_PROFILES: raise ValueError(f"profile must be one of {list(COLLECTION_PROFILES)} or a dict of sizes, not {profile!r}")
        return dict(COLLECTION_PROFILES[profile])
    if not isinstance(profile, dict): raise TypeError(f"profile must be a name or a dict of sizes, not {profile!r}")
    p = dict(COLLECTION_PROFILES['small'])
    if bad := sorted(set(profile) - set(p)): raise ValueError(f"unknown size(s) {bad}: the sizes are {list(p)}")
    for k, v in profile.items():
        if k == 'photos':
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, numbers.Integral) for x in v) and 1 <= v[0] < v[1]):
                raise ValueError(f"profile size 'photos' must be a range (low, high) with 1 <= low < high, not {v!r}")
            p[k] = (int(v[0]), int(v[1]))
        else: p[k] = _int(f'profile size {k!r}', v, {'challenge': 12, 'generic_pool': 11, 'things': 1}.get(k, 1), len(OWN_CLASSES) if k == 'things' else None)
    return p


# %%
test_eq(collection_sizes('tiny')['train'], 12)
test_eq(collection_sizes(dict(train=3, photos=[2, 5]))['photos'], (2, 5))
test_fail(lambda: collection_sizes('huge'), contains="not 'huge'")
test_fail(lambda: collection_sizes(dict(photos=(5, 5))), contains="'photos' must be a range")
test_fail(lambda: collection_sizes(dict(challenge=4)), contains="'challenge' must be an int of at least 12")
test_fail(lambda: collection_sizes(dict(users=4)), contains="unknown size(s) ['users']")


# %% [markdown]
# ## A user
#
# A `User` is drawn from its own generator: three personal objects of distinct classes (generic
# looks: a caption could name them, but the user's query never does), one person (an outfit), and
# three favourite places.

# %%
#| export
@dataclass
class User:
    "A user of the world: id, split, personal things [(word, Look or Outfit)], favourite places."
    id: str
    split: str
    things: list  # [(word, look)]: 'bag' -> Look, 'sister' -> Outfit
    places: list  # favourite places (CONTEXTS keys)

def draw_user(seed:int, split:str, k:int, n_things:int=3)->User:
    "User `k` of `split` under `seed`: `n_things` objects of distinct classes, one person, three favourite places."
    rng = _rng(seed, 40 + SPLITS.index(split), k)
    classes = rng.choice(OWN_CLASSES, n_things, replace=False).tolist()
    things = [(c, sample_look(rng, c)) for c in classes] + [(str(rng.choice(PEOPLE)), _outfit(rng))]
    return User(f'{split[:2]}{k:03d}', split, things, rng.choice(list(CONTEXTS), 3, replace=False).tolist())


# %%
u = draw_user(0, 'test', 0)
test_eq(len(u.things), 4); test_eq(isinstance(u.things[-1][1], Outfit), True)
test_eq(draw_user(0, 'test', 0), u); assert draw_user(1, 'test', 0) != u
[(w, type(l).__name__) for w, l in u.things], u.places


# %% [markdown]
# ## Photos
#
# A photo of a thing puts it on the ground of a place at a random size, tilt and flip, among up to
# two everyday objects of other classes; a person stands taller. An everyday photo is the world's
# generic scene. Collections are mostly at the user's favourite places.

# %%
#| export
def thing_photo(rng, look, context:str, tid:int=0)->Scene:
    "A photo of one thing (a Look or an Outfit, marked `tid`) at `context`, among clutter."
    person = isinstance(look, Outfit)
    t = Thing(look, h=float(rng.uniform(.55, .9) if person else rng.uniform(.2, .5)), angle=0. if person else float(rng.normal(0, 12)),
              flip=bool(rng.random() < .5), concept=tid)
    sc = Scene(context, [_on_ground(rng, context, t)], [], int(rng.integers(2**31)), _light_draw(rng))
    _fit(sc.things)
    return _clutter(rng, sc, set() if person else {look.cls}, int(rng.integers(0, 3)))

def _place(rng, user:User)->str:
    "A place for a collection photo: a favourite one seven times in ten."
    return str(rng.choice(user.places)) if rng.random() < .7 else str(rng.choice(list(CONTEXTS)))

def collection_plan(rng, user:User, n:int)->list:
    "`n` collection photos of `user` as (scene, id of the thing shown or None): about half show one of the user's things."
    out = []
    for _ in range(n):
        if rng.random() < .5: k = int(rng.integers(len(user.things))); out.append((thing_photo(rng, user.things[k][1], _place(rng, user), k), k))
        else: out.append((sample_scene(rng, _place(rng, user)), None))
    return out


# %%
r = np.random.default_rng(0); plan = collection_plan(r, u, 12)
fig, axs = plt.subplots(1, 12, figsize=(14, 1.6))
for ax, (s, k) in zip(axs, plan): ax.imshow(render(s)); ax.axis('off'); ax.set_title('—' if k is None else u.things[k][0], fontsize=7)
plt.show()
test_eq({k for _, k in plan} - {None} <= set(range(4)), True)

# %% [markdown]
# ## Episodes
#
# A personal query names a thing and a place in one of a few everyday phrasings; it never names the
# thing's look. A personal episode's challenge set is built from the pieces listed at the top, in a
# shuffled order; its look-alikes are other users' things of the same class (for a person: other
# users' people) from the same split.

# %%
#| export
QUERY_FORMS = ('my {w} {p}', 'our {w} {p}', 'a photo of my {w} {p}', '{P}, my {w}', 'my {w}, {p}')

def personal_query(rng, word:str, context:str)->str:
    "A query naming the user's `word` at `context`: 'my bag on the beach', 'on the sand, my bag', ..."
    p = str(rng.choice(CONTEXTS[context].person if word in PEOPLE else CONTEXTS[context].place))
    return str(rng.choice(QUERY_FORMS)).format(w=word, p=p, P=p[0].upper() + p[1:])

def _alikes(users:list, user:User, k:int)->list:
    "The things of other users that look-alike user's thing `k`: same class (people: any person)."
    word, look = user.things[k]; person = isinstance(look, Outfit)
    return [l for v in users if v.id != user.id for w, l in v.things if (isinstance(l, Outfit) if person else w == word)]

def personal_episode(rng, user:User, users:list, size:int)->dict:
    "One personal episode of `user` as scenes: query, target, challenge [(scene, role)] (roles say what each photo is)."
    k = int(rng.integers(len(user.things))); word, look = user.things[k]; P = str(rng.choice(list(CONTEXTS)))
    others = [c for c in CONTEXTS if c != P]; alikes = _alikes(users, user, k) or [_outfit(rng) if isinstance(look, Outfit) else sample_look(rng, look.cls)]  # no other user has one: a stranger's
    pick = lambda xs, n: [xs[i] for i in rng.choice(len(xs), n, replace=len(xs) < n)]
    ch = [(thing_photo(rng, look, P, k), 'target')]
    ch += [(thing_photo(rng, look, str(c), k), 'mine elsewhere') for c in rng.choice(others, 3, replace=False)]
    ch += [(thing_photo(rng, l, P, -1), 'look-alike here') for l in pick(alikes, 4)]
    ch += [(thing_photo(rng, l, str(rng.choice(others)), -1), 'look-alike elsewhere') for l in pick(alikes, 2)]
    ch += [(thing_photo(rng, user.things[j][1], P, j), 'my other thing here') for j in rng.choice([j for j in range(len(user.things)) if j != k], 2, replace=False)]
    ch += [(sample_scene(rng, P if rng.random() < .3 else None), 'everyday') for _ in range(size - len(ch))]
    return dict(kind='personal', query=personal_query(rng, word, P), thing=k, place=P, challenge=[ch[i] for i in rng.permutation(len(ch))])


# %%
ep = personal_episode(np.random.default_rng(1), u, [u, draw_user(0, 'test', 1), draw_user(0, 'test', 2)], 24)
test_eq(len(ep['challenge']), 24); test_eq([r for _, r in ep['challenge']].count('target'), 1)
print(ep['query'])
fig, axs = plt.subplots(2, 12, figsize=(14, 3.2))
for ax, (s, role) in zip(axs.flat, ep['challenge']): ax.imshow(render(s)); ax.axis('off'); ax.set_title(role, fontsize=6, color='red' if role == 'target' else 'k')
plt.show()


# %% [markdown]
# ## Writing them
#
# `make_collections` writes, under `root`:
#
# ```
# splits.json                    {"train": [user ids], "validation": [...], "test": [...]}
# users/<id>/collection/NNNN.jpg the user's photos (X_S): all a method may read of the user
# users/<id>/user.json           {"id", "split", "photos": [paths relative to root], "truth": {...}}
# pool/<split>/NNNNNN.jpg        challenge photos (X_C) of the split's episodes, the split's everyday pool
# episodes/<split>.json          [{"id", "user", "kind": personal|generic, "query", "target", "challenge": [paths], ...}]
# world.json                     how it was made (seed, profile, size, counts) and every file written
# ```
#
# Paths in the JSON files are relative to `root`. `truth` in `user.json` (which photo shows which
# thing, the things' words, the favourite places) and an episode's `roles` (what each challenge
# photo is) are the world's answers, for analysis and for methods that need labels (the POLAR
# oracle); CAP never reads them. A user with their own photos fills the same layout: a folder of
# photos per user, a `user.json` listing them (no `truth` needed) and episodes naming queries and
# challenge photos. Writing goes through the world's staging: a failed run leaves `root` as it was,
# and files a user added to a world written there before stay.

# %%
#| export
def _write_user(root:Path, user:User, plan:list, size:int)->dict:
    "Render `user`'s collection under root/users/<id>/collection; its user.json content."
    d = root/'users'/user.id/'collection'; d.mkdir(parents=True)
    photos = [f'users/{user.id}/collection/{i:04d}.jpg' for i in range(len(plan))]
    for (s, _), f in zip(plan, photos): _save(render(s, size), root/f)
    things = [dict(id=k, word=w, kind='person' if isinstance(l, Outfit) else 'object', photos=[i for i, (_, t) in enumerate(plan) if t == k])
              for k, (w, l) in enumerate(user.things)]
    return dict(id=user.id, split=user.split, photos=photos, truth=dict(things=things, places=user.places))

def _write_episode(root:Path, split:str, eid:str, user:User, ep:dict, size:int, counter:list)->dict:
    "Render a personal episode's challenge photos into pool/<split>/; its JSON record."
    paths = []
    for s, _ in ep['challenge']:
        f = f'pool/{split}/{counter[0]:06d}.jpg'; counter[0] += 1; _save(render(s, size), root/f); paths.append(f)
    roles = [r for _, r in ep['challenge']]
    return dict(id=eid, user=user.id, kind='personal', query=ep['query'], target=paths[roles.index('target')], challenge=paths,
                roles=roles, thing=ep['thing'], place=ep['place'])


# %%
#| export
def _generic_pool(root:Path, rng, split:str, n:int, size:int, counter:list)->list:
    "Render the split's everyday pool; [(path, caption)]."
    out = []
    for _ in range(n):
        s = sample_scene(rng); f = f'pool/{split}/{counter[0]:06d}.jpg'; counter[0] += 1
        _save(render(s, size), root/f); out.append((f, scene_caption(s, np.random.default_rng(s.seed), 'scene')))
    return out

def _generic_episodes(rng, user:User, pool:list, n:int)->list:
    "`n` generic episodes of `user`: an everyday caption ranked among the split's whole everyday pool."
    paths = [f for f, _ in pool]
    return [dict(id=f'{user.id}-g{j}', user=user.id, kind='generic', query=pool[i][1], target=pool[i][0], challenge=paths)
            for j, i in enumerate(rng.choice(len(pool), n, replace=False))]


# %%
#| export
def _split_files(root:Path, seed:int, split:str, p:dict, size:int)->tuple:
    "Write one split's users, pool and episodes; (user ids, number of episodes, number of photos)."
    users = [draw_user(seed, split, k, p['things']) for k in range(p[split])]
    rng, counter, eps = _rng(seed, 50 + SPLITS.index(split), 0), [0], []
    (root/'pool'/split).mkdir(parents=True)
    pool = _generic_pool(root, rng, split, p['generic_pool'], size, counter)
    n_photos = 0
    for user in users:
        plan = collection_plan(rng, user, int(rng.integers(*p['photos'])))
        _write_json(root/'users'/user.id/'user.json', _write_user(root, user, plan, size), 1); n_photos += len(plan)
        eps += [_write_episode(root, split, f'{user.id}-p{j}', user, personal_episode(rng, user, users, p['challenge']), size, counter) for j in range(p['episodes'])]
        eps += _generic_episodes(rng, user, pool, min(p['generic'], len(pool)))
    _write_json(root/'episodes'/f'{split}.json', eps, 1)
    return [u.id for u in users], len(eps), n_photos + counter[0]


# %%
#| export
def make_collections(root:str|Path, # folder to write: absent, empty, or collections written before (replaced; a user's own files stay)
                     seed:int=0, # the users' seed, a non-negative int
                     profile:str|dict='small', # 'tiny', 'small', or a dict of sizes (`collection_sizes`)
                     size:int=64, # photo side in pixels, at least `MIN_SIZE`
                    )->Path:
    "Write users (collections), challenge pools, episodes and splits for CAP under `root`; returns `root`."
    p, seed, size = collection_sizes(profile), _int('seed', seed, 0), _int('size', size, MIN_SIZE, why=' (pixels)')
    if not isinstance(root, (str, Path)): raise TypeError(f"root must be a folder's path (str or Path), not {root!r}")
    with _staged(root) as d:
        out = {sp: _split_files(d, seed, sp, p, size) for sp in SPLITS}
        _write_json(d/'splits.json', {sp: o[0] for sp, o in out.items()}, 1)
        _write_info(d, dict(format='collections', seed=seed, profile=profile, size=size,
                            counts={sp: dict(users=len(o[0]), episodes=o[1], photos=o[2]) for sp, o in out.items()}))
    return Path(root)


# %%
tmp = Path(tempfile.mkdtemp())
t0 = time.perf_counter(); root = make_collections(tmp/'c', seed=0, profile='tiny'); dt = time.perf_counter() - t0
info = json.loads((root/'world.json').read_text())
print(f'{dt:.1f} s'); pd.DataFrame(info['counts']).T


# %% [markdown]
# ## Reading them
#
# `Collections` reads the layout back and checks it: every photo a user or an episode names must
# exist, an episode's target must be one of its challenge photos and its user must exist.

# %%
#| export
class Collections:
    "The users, episodes and splits written by `make_collections` (or by hand in its layout) under `root`."
    def __init__(self, root:str|Path):
        self.root = Path(root)
        if not (self.root/'splits.json').is_file(): raise FileNotFoundError(f"{self.root} holds no splits.json: not a collections folder (see make_collections)")
        self.splits = json.loads((self.root/'splits.json').read_text())
        self._users, self._eps = {}, {}

    def user(self, uid:str)->dict:
        "user.json of user `uid`, photo paths made absolute."
        if uid not in self._users:
            f = self.root/'users'/uid/'user.json'
            if not f.is_file(): raise FileNotFoundError(f"user {uid!r} has no {f}")
            u = json.loads(f.read_text()); u['paths'] = [self.root/p for p in u.get('photos', [])]
            if miss := [str(p) for p in u['paths'] if not p.is_file()]: raise FileNotFoundError(f"user {uid!r}: {len(miss)} photo(s) missing, e.g. {miss[0]}")
            self._users[uid] = u
        return self._users[uid]

    def episodes(self, split:str)->list:
        "The episodes of `split`, checked."
        if split not in self.splits: raise ValueError(f"split must be one of {list(self.splits)}, not {split!r}")
        if split not in self._eps: self._eps[split] = [self._check(e, split) for e in json.loads((self.root/'episodes'/f'{split}.json').read_text())]
        return self._eps[split]

    def _check(self, e:dict, split:str)->dict:
        "Episode `e`, or an error naming it and what is wrong."
        if e['user'] not in self.splits[split]: raise ValueError(f"episode {e['id']}: user {e['user']!r} is not in split {split!r}")
        if e['target'] not in e['challenge']: raise ValueError(f"episode {e['id']}: its target {e['target']} is not among its challenge photos")
        return e


# %%
cols = Collections(root)
test_eq(sorted(cols.splits), sorted(SPLITS))
test_eq(set(cols.splits['train']) & set(cols.splits['test']), set())
e = cols.episodes('test')[0]; usr = cols.user(e['user'])
test_eq(len(e['challenge']), collection_sizes('tiny')['challenge'])
test_eq(set(e['challenge']) & set(usr['photos']), set())  # the correct photo is never in the collection
test_fail(lambda: cols.episodes('dev'), contains="split must be one of")
test_fail(lambda: Collections(tmp), contains='holds no splits.json')
pd.DataFrame(cols.episodes('test')).groupby('kind').agg(episodes=('id', 'size'), challenge=('challenge', lambda c: c.map(len).mean()))

# %% [markdown]
# What a test episode looks like: the query, the user's collection (a few photos), and the
# challenge set with the correct photo in red.

# %%
fig, axs = plt.subplots(3, 10, figsize=(14, 4.8))
for ax in axs.flat: ax.axis('off')
for ax, p in zip(axs[0], usr['paths']): ax.imshow(Image.open(p))
axs[0, 0].set_title(f"collection of {usr['id']} ({len(usr['photos'])} photos)", fontsize=8, loc='left')
for ax, p, r in zip(axs[1:].flat, e['challenge'], e['roles']): ax.imshow(Image.open(root/p)); ax.set_title(r, fontsize=6, color='red' if r == 'target' else 'k')
axs[1, 0].set_title(f"query: {e['query']!r}  ·  target", fontsize=8, loc='left', color='red')
plt.show()

# %% [markdown]
# The same seed writes the same files, and `make_collections` is reached from `polar_nb.world` as
# well:

# %%
import hashlib
def digest(r): return hashlib.sha256(b''.join(p.relative_to(r).as_posix().encode() + p.read_bytes() for p in sorted(r.rglob('*')) if p.is_file())).hexdigest()
test_eq(digest(make_collections(tmp/'again', seed=0, profile='tiny')), digest(root))
import polar_nb.collections as pc
from polar_nb.world import make_collections as mc
test_eq(mc is pc.make_collections, True)
test_fail(lambda: make_collections(tmp/'x', seed=-1, profile='tiny'), contains='seed must be a non-negative int')

# %%
shutil.rmtree(tmp)

# %%
#| hide
import nbdev; nbdev.nbdev_export()
