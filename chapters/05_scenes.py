# %% [markdown]
# # Drawing scenes
#
# > The embedded world's photos: things, people and places drawn with PIL and numpy from a seed, and the captions that describe them.

# %% [markdown]
# What does a photo of the embedded world show, how is it drawn, and how is it described? No
# pretrained CLIP and no real photo reach the machines this book is built on, yet every chapter
# must run end to end. So the package draws its own photos: small scenes drawn with PIL and numpy,
# fully determined by a seed. Generic objects (cups, balls, cars, teddy bears, …) of ten colours and
# five patterns sit in eleven textured places, alone or in relation to each other, and a small
# grammar describes them in the phrasings personalised retrieval uses ("a photo of …", "… is shown
# in this image", object-only and place-first captions). People wear garments of the same colours
# and patterns.
#
# This chapter is the drawing: the vocabulary, how one object, one person and one place are drawn,
# how a scene is rendered and captioned, and how a random concept-free scene is sampled.
# [The embedded world](06_world.ipynb) adds the personal concepts and writes the benchmarks from
# these scenes; [world-tiny](08_world_tiny.ipynb) trains the embedded CLIP on them.

# %%
#| default_exp scenes

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_close, test_fail

# %%
#| export
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple
import numpy as np
from PIL import Image, ImageDraw

# %%
import textwrap
import matplotlib.pyplot as plt
import pandas as pd

# %% [markdown]
# ## The vocabulary
#
# Ten colours, five patterns (the second colour of a pattern is named too), six emblems drawn on an
# object, fifteen object classes (with synonyms, so captions vary) and the garment classes of
# DeepFashion2.

# %%
#| export
COLOURS = dict(red=(205, 35, 35), orange=(245, 135, 25), yellow=(245, 215, 40), green=(45, 160, 60), blue=(35, 80, 215),
               purple=(130, 50, 175), pink=(245, 135, 190), brown=(125, 75, 35), black=(30, 30, 30), white=(242, 242, 242))
PATTERNS = ('plain', 'striped', 'dotted', 'checked', 'two-tone')
EMBLEMS = ('star', 'heart', 'circle', 'cross', 'moon', 'diamond')
CLASSES = {'cube': ('cube', 'box'), 'ball': ('ball',), 'cup': ('cup', 'mug'), 'bottle': ('bottle',), 'hat': ('hat',),
           'car': ('car', 'toy car'), 'fish': ('fish', 'toy fish'), 'umbrella': ('umbrella',), 'bag': ('bag', 'handbag'),
           'shoe': ('shoe', 'sneaker'), 'book': ('book',), 'lamp': ('lamp', 'desk lamp'),
           'teddy bear': ('teddy bear', 'teddy', 'stuffed bear'), 'kite': ('kite',), 'duck': ('duck', 'rubber duck')}
GARMENTS = {'short sleeve top': 'top', 'long sleeve top': 'top', 'vest': 'top', 'trousers': 'bottom', 'shorts': 'bottom',
            'skirt': 'bottom', 'short sleeve dress': 'dress', 'long sleeve dress': 'dress', 'vest dress': 'dress'}


# %% [markdown]
# Each place has the phrases that put an object there, those that put a person there, a noun
# phrase for place-first captions, and the band of the image where things stand.

# %%
#| export
class Context(NamedTuple):
    "A place: how captions put an object or a person there, its noun phrase, and where the ground is."
    place: tuple  # "on the beach", ...
    person: tuple  # "on the beach", "in a kitchen", ...
    noun: str  # "a beach"
    ground: tuple  # (top, bottom) of the band where things stand, fractions of the height

CONTEXTS = {
    'beach': Context(('on the beach', 'on the sand'), ('on the beach',), 'a beach', (.6, 1.)),
    'snow': Context(('in the snow',), ('in the snow',), 'a snowy field', (.55, 1.)),
    'grass': Context(('on the grass', 'on a lawn'), ('on the grass', 'on a lawn'), 'a green lawn', (.55, 1.)),
    'kitchen table': Context(('on a kitchen table', 'on the kitchen table'), ('in a kitchen',), 'a kitchen table', (.4, 1.)),
    'night sky': Context(('under the night sky', 'at night'), ('under the night sky', 'at night'), 'the night sky', (.78, 1.)),
    'desert': Context(('in the desert',), ('in the desert',), 'a desert', (.55, 1.)),
    'forest': Context(('in the forest', 'in the woods'), ('in the forest', 'in the woods'), 'a forest', (.65, 1.)),
    'street': Context(('on the street', 'on the road'), ('on the street', 'on a sidewalk'), 'a street', (.6, 1.)),
    'living-room carpet': Context(('on a living-room carpet', 'on the carpet'), ('in a living room',), 'a living-room carpet', (.3, 1.)),
    'lake': Context(('by the lake', 'at the lake'), ('by the lake', 'at the lake'), 'a lake', (.8, 1.)),
    'office desk': Context(('on an office desk', 'on a desk'), ('in an office',), 'an office desk', (.4, 1.))}

# %%
test_eq(len(COLOURS), 10); test_eq(len(CLASSES), 15); test_eq(len(CONTEXTS), 11)
pd.DataFrame([dict(context=k, place=' / '.join(c.place), person=' / '.join(c.person), noun=c.noun) for k,c in CONTEXTS.items()])


# %% [markdown]
# ## Looks
#
# A `Look` is everything that decides how one object (or garment) is drawn. The first four fields
# are what a caption can name, and form its `key`; the rest are details no caption names: the
# period and angle of the pattern, where the emblem sits, a silhouette borrowed from another class.

# %%
#| export
@dataclass(frozen=True)
class Look:
    "How one object or garment looks: what captions name (class, colours, pattern, emblem) and details they don't."
    cls: str  # class word: an object class or a garment
    colour: str
    pattern: str = 'plain'  # one of PATTERNS
    colour2: str|None = None  # second colour of the pattern
    emblem: str|None = None  # shape drawn on the object, one of EMBLEMS
    emblem_colour: str|None = None
    aspect: float = 1.  # height stretch: above 1.3 reads "tall", below 0.78 "wide"
    body: str|None = None  # silhouette drawn when it is not the class's own (a misleading name)
    accent: str|None = None  # colour of a hybrid's extra part (a cap, a shade, a handle)
    scale: float = .22  # pattern period, as a fraction of the object's size
    angle: float = 0.  # pattern orientation in degrees
    spot: tuple = (0., 0.)  # emblem offset from the centre of its face, fractions of the size

    @property
    def key(self): return (self.cls, self.colour, self.pattern, self.colour2)


# %% [markdown]
# A person is an `Outfit`: garments (looks whose class is a garment), skin, hair and a pose.

# %%
#| export
SKINS = ((240, 200, 170), (210, 160, 120), (160, 110, 75), (100, 65, 45))
POSES = ('stands', 'walks', 'poses')

@dataclass(frozen=True)
class Outfit:
    "A person: the garments worn (bottom first), skin tone, hair colour and pose."
    garments: tuple  # Looks whose cls is in GARMENTS
    skin: int = 0  # index into SKINS
    hair: str = 'black'  # a colour name
    pose: str = 'stands'  # one of POSES


# %% [markdown]
# ## Drawing one object
#
# Silhouettes are a few primitives in the unit box: ellipses `e`, rectangles `r`, polygons `p`,
# chords `c` and erasers `x`; dark `lines` and `dark` parts add detail, `acc` parts are drawn in a
# hybrid's accent colour, `face` is where an emblem goes and `wh` the natural width/height.

# %%
#| export
def _P(*pts):
    "A polygon primitive."
    return ('p', pts)
def _up(prims, top):
    "`prims` squeezed into the part of the unit box below `top`."
    return [('p', tuple((x, top+(1-top)*y) for x,y in g)) if k=='p' else (k, (g[0], top+(1-top)*g[1], g[2], top+(1-top)*g[3])) for k,g in prims]

_TEDDY = [('e', (.18, 0, .38, .18)), ('e', (.62, 0, .82, .18)), ('e', (.24, .03, .76, .45)), ('e', (.14, .38, .86, 1)),
          ('e', (0, .45, .26, .7)), ('e', (.74, .45, 1, .7))]
_CAR = [_P((.22, .42), (.32, .15), (.7, .15), (.8, .42)), ('r', (0, .4, 1, .82))]
_FISH = [('e', (.08, .15, .8, .85)), _P((.72, .5), (1, .12), (1, .88))]
SHAPES = {
 'cube': dict(fill=[_P((0, .25), (.25, 0), (1, 0), (1, .75), (.75, 1), (0, 1))], lines=[((0, .25), (.75, .25), (1, 0)), ((.75, .25), (.75, 1))], face=(.38, .62, .3), wh=1.),
 'ball': dict(fill=[('e', (0, 0, 1, 1))], face=(.5, .5, .2), wh=1.),
 'cup': dict(fill=[('e', (.52, .22, 1, .78)), ('x', (.64, .36, .88, .64)), ('r', (.02, .08, .72, 1))], face=(.37, .55, .25), wh=1.),
 'bottle': dict(fill=[('r', (.36, 0, .64, .3)), _P((.36, .25), (.64, .25), (.85, .42), (.15, .42)), ('r', (.15, .4, .85, 1))], lines=[((.36, .1), (.64, .1))], face=(.5, .7, .25), wh=.45),
 'hat': dict(fill=[('e', (0, .68, 1, 1)), ('r', (.22, .12, .78, .86)), ('e', (.22, 0, .78, .25))], lines=[((.22, .7), (.78, .7))], face=(.5, .48, .22), wh=1.1),
 'car': dict(fill=_CAR, lines=[((.51, .18), (.51, .42))], dark=[('e', (.1, .65, .32, .98)), ('e', (.68, .65, .9, .98))], face=(.5, .6, .16), wh=1.8),
 'fish': dict(fill=_FISH, dark=[('e', (.2, .38, .28, .48))], face=(.45, .5, .2), wh=1.6),
 'umbrella': dict(fill=[('c', (0, .02, 1, .9))], lines=[((.5, .46), (.5, .95), (.4, .95))], face=(.5, .28, .16), wh=1.1),
 'bag': dict(fill=[('e', (.25, 0, .75, .6)), ('x', (.34, .1, .66, .5)), ('r', (.05, .3, .95, 1))], face=(.5, .66, .24), wh=1.),
 'shoe': dict(fill=[_P((0, .45), (.08, .2), (.45, .2), (.58, .5), (.95, .6), (1, .92), (0, .92))], lines=[((0, .82), (1, .82))], face=(.3, .5, .18), wh=1.8),
 'book': dict(fill=[('r', (.08, 0, .92, 1))], lines=[((.2, 0), (.2, 1))], face=(.56, .5, .24), wh=.75),
 'lamp': dict(fill=[_P((.26, 0), (.74, 0), (.96, .45), (.04, .45)), ('r', (.45, .44, .55, .9)), ('e', (.18, .86, .82, 1))], face=(.5, .24, .18), wh=.7),
 'teddy bear': dict(fill=_TEDDY, dark=[('e', (.38, .16, .45, .23)), ('e', (.55, .16, .62, .23))], face=(.5, .7, .2), wh=.8),
 'kite': dict(fill=[_P((.5, 0), (.9, .38), (.5, .8), (.1, .38))], lines=[((.5, 0), (.5, .8)), ((.1, .38), (.9, .38)), ((.5, .8), (.42, .9), (.55, 1))], face=(.5, .36, .16), wh=.75),
 'duck': dict(fill=[('e', (0, .4, .85, 1)), ('e', (.45, 0, .9, .5)), _P((.85, .2), (1, .28), (.85, .36))], dark=[('e', (.65, .14, .73, .22))], face=(.4, .7, .2), wh=1.1),
 # hybrids: a class's silhouette with a part of another class, for concepts whose name misleads
 'fish bottle': dict(like='fish', fill=_FISH, acc=[('r', (0, .38, .12, .62))], dark=[('e', (.2, .38, .28, .48))], face=(.45, .5, .2), wh=1.6),
 'teddy lamp': dict(like='teddy bear', fill=_up(_TEDDY, .3), acc=[_P((.3, 0), (.7, 0), (.88, .33), (.12, .33))], face=(.5, .79, .16), wh=.7),
 'car bag': dict(like='car', fill=_CAR, acc=[('e', (.32, 0, .68, .3)), ('x', (.38, .05, .62, .25))], dark=[('e', (.1, .65, .32, .98)), ('e', (.68, .65, .9, .98))], face=(.5, .6, .16), wh=1.8)}

# %%
test_eq(set(CLASSES) <= set(SHAPES), True)


# %% [markdown]
# Masks are drawn once per silhouette and pixel size (cached): the primitives are scaled to the box
# and drawn with PIL.

# %%
#| export
def _prims(d:ImageDraw.ImageDraw, prims, w:int, h:int, value=255):
    "Draw unit-box primitives onto `d` at w×h pixels (erasers draw 0)."
    sx, sy = w-1, h-1
    for kind, g in prims:
        if kind == 'p': d.polygon([(x*sx, y*sy) for x,y in g], fill=value); continue
        box = (g[0]*sx, g[1]*sy, g[2]*sx, g[3]*sy)
        if kind == 'r': d.rectangle(box, fill=value)
        elif kind == 'c': d.chord(box, 180, 360, fill=value)
        else: d.ellipse(box, fill=0 if kind == 'x' else value)

def _mask(prims, w:int, h:int, lines=(), width:int=1)->np.ndarray:
    "Boolean w×h mask of unit-box `prims` and polylines `lines`."
    im = Image.new('L', (w, h), 0); d = ImageDraw.Draw(im)
    _prims(d, prims, w, h)
    for pts in lines: d.line([(x*(w-1), y*(h-1)) for x,y in pts], fill=255, width=width)
    return np.asarray(im) > 127

@lru_cache(maxsize=8192)
def shape_masks(body:str, w:int, h:int)->tuple:
    "Masks (fill, lines, dark, acc) of silhouette `body` at w×h pixels."
    s, lw = SHAPES[body], max(1, round(min(w, h)*.06))
    return (_mask(s['fill'], w, h), _mask((), w, h, s.get('lines', ()), lw), _mask(s.get('dark', ()), w, h),
            _mask(s.get('acc', ()), w, h))


# %%
f, l, d, a = shape_masks('cup', 40, 40)
test_eq(f.shape, (40, 40)); assert 0.4 < f.mean() < 0.9 and not a.any()
assert shape_masks('fish bottle', 48, 30)[3].any()


# %% [markdown]
# Patterns give the second colour's mask: stripes, dots, checks (at the look's period and angle) or
# two tones split through the centre. The phase moves with every photo.

# %%
#| export
@lru_cache(maxsize=1024)
def _yx(h:int, w:int)->np.ndarray:
    "Row and column coordinates of an h×w grid (cached)."
    return np.mgrid[0:h, 0:w].astype(np.float32)

def pattern_mask(look:Look, w:int, h:int, phase:float=0.)->np.ndarray:
    "Where the second colour of `look`'s pattern goes on a w×h sprite."
    if look.pattern == 'plain': return np.zeros((h, w), bool)
    y, x = _yx(h, w); a = math.radians(look.angle); p = max(3., look.scale*max(w, h))
    u, v = x*math.cos(a) + y*math.sin(a), y*math.cos(a) - x*math.sin(a)
    if look.pattern == 'two-tone': return v > (h/2)*math.cos(a) - (w/2)*math.sin(a)
    u, v = u + phase, v + phase
    if look.pattern == 'striped': return (u/p) % 1 < .5
    if look.pattern == 'checked': return (np.floor(u/p) + np.floor(v/p)) % 2 == 0
    return ((u % p) - p/2)**2 + ((v % p) - p/2)**2 < (.3*p)**2


# %%
fig, axs = plt.subplots(1, 5, figsize=(7, 1.5))
for ax, p in zip(axs, PATTERNS):
    ax.imshow(pattern_mask(Look('ball', 'red', p, 'white', angle=30 if p=='striped' else 0), 40, 40, 3.), cmap='gray'); ax.set_title(p, fontsize=8); ax.axis('off')
plt.show()


# %% [markdown]
# Emblems are small polygons drawn on the object's face, clipped to its silhouette.

# %%
#| export
def emblem_points(kind:str, cx:float, cy:float, r:float)->list:
    "Polygon of emblem `kind` centred at (cx, cy) with radius r."
    t = np.linspace(0, 2*np.pi, 24, endpoint=False)
    if kind == 'star': rr = np.where(np.arange(10) % 2, .45*r, r); t = np.arange(10)*np.pi/5; return list(zip(cx + rr*np.sin(t), cy - rr*np.cos(t)))
    if kind == 'heart': return list(zip(cx + r*np.sin(t)**3, cy - r*(13*np.cos(t) - 5*np.cos(2*t) - 2*np.cos(3*t) - np.cos(4*t))/16))
    if kind == 'diamond': return [(cx, cy-r), (cx+.7*r, cy), (cx, cy+r), (cx-.7*r, cy)]
    if kind == 'cross': a = .35*r; return [(cx-a, cy-r), (cx+a, cy-r), (cx+a, cy-a), (cx+r, cy-a), (cx+r, cy+a), (cx+a, cy+a), (cx+a, cy+r),
                                           (cx-a, cy+r), (cx-a, cy+a), (cx-r, cy+a), (cx-r, cy-a), (cx-a, cy-a)]
    if kind == 'moon': o, i = np.linspace(.7, 5.6, 14), np.linspace(5.3, 1., 12); return (list(zip(cx + r*np.cos(o), cy + r*np.sin(o))) + list(zip(cx + .5*r + .75*r*np.cos(i), cy + .75*r*np.sin(i))))
    return list(zip(cx + r*np.cos(t), cy + r*np.sin(t)))

def _emblem_mask(look:Look, face:tuple, w:int, h:int)->np.ndarray:
    "Boolean mask of `look`'s emblem on a w×h sprite whose face is (cx, cy, r) in unit coordinates."
    im = Image.new('L', (w, h), 0); s = min(w, h)
    cx, cy = (face[0] + look.spot[0])*(w-1), (face[1] + look.spot[1])*(h-1)
    ImageDraw.Draw(im).polygon(emblem_points(look.emblem, cx, cy, face[2]*s), fill=255)
    return np.asarray(im) > 127


# %% [markdown]
# A sprite is the textured silhouette with shading from a random side, a darker outline, the
# emblem and the accent parts, as RGBA.

# %%
#| export
def _rgb(name:str)->np.ndarray:
    "The RGB values of colour `name` as floats."
    return np.array(COLOURS[name], np.float32)

def _edge(m:np.ndarray)->np.ndarray:
    "The border pixels of mask `m`."
    e = m.copy(); e[1:] &= m[:-1]; e[:-1] &= m[1:]; e[:, 1:] &= m[:, :-1]; e[:, :-1] &= m[:, 1:]
    return m & ~e

def _shade(tex:np.ndarray, rng:np.random.Generator, amount:float=.22)->np.ndarray:
    "`tex` lit from a random side."
    h, w = tex.shape[:2]; y, x = _yx(h, w); a = rng.uniform(0, 2*np.pi)
    return tex*(1 + amount*((x/max(w-1, 1) - .5)*np.cos(a) + (y/max(h-1, 1) - .5)*np.sin(a)))[..., None]

def _texture(look:Look, w:int, h:int, rng:np.random.Generator)->np.ndarray:
    "Float RGB w×h texture of `look`: its colours in its pattern, shaded."
    m = pattern_mask(look, w, h, rng.uniform(0, 40))
    return _shade(np.where(m[..., None], _rgb(look.colour2 or look.colour), _rgb(look.colour)), rng)

def _sprite(rgb:np.ndarray, alpha:np.ndarray)->Image.Image:
    "An RGBA image from a float RGB array and a boolean alpha."
    return Image.fromarray(np.dstack([np.clip(rgb, 0, 255), alpha*255.]).astype(np.uint8), 'RGBA')

def object_sprite(look:Look, w:int, h:int, rng:np.random.Generator)->Image.Image:
    "RGBA image of `look` drawn at w×h pixels."
    body = look.body or look.cls
    fill, lines, dark, acc = shape_masks(body, w, h)
    tex = _texture(look, w, h, rng)
    if look.emblem: tex[_emblem_mask(look, SHAPES[body]['face'], w, h) & fill] = _rgb(look.emblem_colour or 'white')
    tex[_edge(fill)] *= .55
    tex[lines] = _rgb(look.colour)*.35
    tex[dark] = 35.
    if look.accent: tex[acc] = _shade(np.broadcast_to(_rgb(look.accent), tex.shape).copy(), rng)[acc]
    return _sprite(tex, fill | lines | dark | acc)


# %%
rng = np.random.default_rng(0)
spr = object_sprite(Look('cup', 'blue', 'dotted', 'yellow', 'heart', 'white'), 48, 48, rng)
test_eq(spr.mode, 'RGBA'); test_eq(spr.size, (48, 48))
spr.resize((96, 96), Image.NEAREST)

# %% [markdown]
# ## Drawing one person
#
# A person is drawn from limbs (thick lines) and a torso in the unit box (width half the height);
# garments are masks over those parts: sleeves cover part or all of the arms, shorts part of the
# legs, skirts and dresses a trapezoid.

# %%
#| export
_ARMS = dict(stands=(((.3, .18), (.24, .34), (.22, .5)), ((.7, .18), (.76, .34), (.78, .5))),
             walks=(((.3, .18), (.2, .33), (.14, .47)), ((.7, .18), (.78, .34), (.84, .46))),
             poses=(((.3, .18), (.14, .1), (.06, 0)), ((.7, .18), (.86, .1), (.94, 0))))
_LEGS = dict(stands=(((.42, .56), (.41, .77), (.4, .97)), ((.58, .56), (.59, .77), (.6, .97))),
             walks=(((.42, .56), (.34, .77), (.26, .97)), ((.58, .56), (.66, .77), (.74, .97))),
             poses=(((.42, .56), (.38, .77), (.36, .97)), ((.58, .56), (.62, .77), (.64, .97))))

def _part(limbs, upto:float)->list:
    "The first `upto` (a fraction, counted in segments) of each 3-point limb, as polylines."
    def cut(a, b, c):
        t = 2*upto
        return [a, tuple(np.add(a, np.subtract(b, a)*t))] if t <= 1 else [a, b, tuple(np.add(b, np.subtract(c, b)*(t-1)))]
    return [cut(*l) for l in limbs]

@lru_cache(maxsize=2048)
def person_masks(pose:str, w:int, h:int)->dict:
    "Boolean masks of a person's body and garment regions at w×h pixels."
    arms, legs, aw, lw = _ARMS[pose], _LEGS[pose], max(1, round(w*.14)), max(1, round(w*.19))
    torso, pelvis = [_P((.3, .15), (.7, .15), (.68, .52), (.32, .52))], [('r', (.32, .5, .68, .6))]
    skirt, long = [_P((.3, .5), (.7, .5), (.8, .78), (.2, .78))], [_P((.3, .46), (.7, .46), (.84, .86), (.16, .86))]
    m = lambda prims=(), lines=(), width=aw: _mask(prims, w, h, lines, width)
    return dict(body=m([('e', (.36, 0, .64, .14)), ('r', (.45, .12, .55, .17))] + torso + pelvis, arms) | m((), legs, lw),
                head=m([('e', (.36, 0, .64, .14))]), hair=m([('c', (.35, -.01, .65, .16))]), torso=m(torso),
                sleeve=m((), _part(arms, .35)), arm=m((), arms), pelvis=m(pelvis), leg=m((), legs, lw), short=m((), _part(legs, .3), lw),
                skirt=m(skirt), long=m(long), feet=m([('e', (.3, .94, .46, 1)), ('e', (.54, .94, .7, 1))]))


# %%
#| export
_GARMENT_PARTS = {'short sleeve top': ('torso', 'sleeve'), 'long sleeve top': ('torso', 'arm'), 'vest': ('torso',),
                  'trousers': ('pelvis', 'leg'), 'shorts': ('pelvis', 'short'), 'skirt': ('skirt',),
                  'short sleeve dress': ('torso', 'sleeve', 'long'), 'long sleeve dress': ('torso', 'arm', 'long'), 'vest dress': ('torso', 'long')}
_GARMENT_FACE = dict(top=(.5, .32, .12), bottom=(.5, .64, .1), dress=(.5, .32, .12))

def garment_mask(cls:str, pose:str, w:int, h:int)->np.ndarray:
    "Where garment class `cls` covers a person in `pose` drawn at w×h."
    pm = person_masks(pose, w, h)
    return np.logical_or.reduce([pm[p] for p in _GARMENT_PARTS[cls]])

def person_sprite(o:Outfit, w:int, h:int, rng:np.random.Generator)->Image.Image:
    "RGBA image of a person wearing outfit `o`, drawn at w×h pixels."
    pm = person_masks(o.pose, w, h)
    tex = _shade(np.broadcast_to(np.array(SKINS[o.skin], np.float32), (h, w, 3)).copy(), rng, .15)
    for g in o.garments:
        m = garment_mask(g.cls, o.pose, w, h); t = _texture(g, w, h, rng)
        if g.emblem: t[_emblem_mask(g, _GARMENT_FACE[GARMENTS[g.cls]], w, h)] = _rgb(g.emblem_colour or 'white')
        tex[m] = t[m]
    tex[pm['hair']] = _rgb(o.hair)*.8; tex[pm['feet']] = 40.
    alpha = pm['body'] | pm['feet'] | pm['hair'] | np.logical_or.reduce([garment_mask(g.cls, o.pose, w, h) for g in o.garments])
    tex[_edge(alpha)] *= .55
    return _sprite(tex, alpha)


# %%
o = Outfit((Look('skirt', 'purple', 'checked', 'white'), Look('short sleeve top', 'yellow', 'striped', 'blue', 'star', 'red')), 1, 'brown', 'walks')
person_sprite(o, 40, 80, np.random.default_rng(0)).resize((80, 160), Image.NEAREST)


# %% [markdown]
# ## Places
#
# Each background is a few numpy layers (sky or wall, ground, a texture) plus clutter drawn with
# PIL (shells, snowflakes, flowers, tiles, stars, cacti, trunks, windows, a carpet motif, reeds, a
# keyboard), all jittered by the photo's random generator. `hz` is where the ground starts; each
# function paints the numpy layers and returns the one that draws its clutter.

# %%
#| export
def _noise(rng:np.random.Generator, R:int, cells:int=8)->np.ndarray:
    "Smooth value noise in [0, 1] at R×R."
    im = Image.fromarray((rng.random((cells, cells))*255).astype(np.uint8)).resize((R, R), Image.BILINEAR)
    return np.asarray(im, np.float32)/255

def _layer(img, m, colour, rng, amp=20., cells=8, jitter=12.):
    "Paint `colour` (jittered, with noise of amplitude `amp`) where mask `m` is set."
    c = np.asarray(colour, np.float32) + rng.uniform(-jitter, jitter, 3)
    img[m] = (c + amp*(_noise(rng, img.shape[0], cells)[..., None] - .5))[m]
    return img

def _sky(img, yy, hz, top, bottom, rng):
    "A vertical gradient from `top` to `bottom` above the horizon `hz`."
    t = np.clip(yy/max(hz, 1e-3), 0, 1)[..., None]; m = yy < hz
    img[m] = ((1-t)*(np.asarray(top) + rng.uniform(-10, 10, 3)) + t*np.asarray(bottom))[m]
    return img


# %%
#| export
def _dots(d, rng, n, R, colour, r=(1, 2), y=(0, 1)):
    "Scatter `n` small discs of `colour` over rows `y` (fractions)."
    for _ in range(n):
        x0, y0, rr = rng.uniform(0, R), rng.uniform(y[0]*R, y[1]*R), rng.uniform(*r)
        d.ellipse((x0-rr, y0-rr, x0+rr, y0+rr), fill=tuple(int(c) for c in colour))

def _bg_beach(img, rng, R, yy, xx, hz):
    "Sky, a band of sea, sand; shells and a sun."
    _sky(img, yy, hz-.1, (110, 170, 235), (190, 225, 250), rng)
    _layer(img, (yy >= hz-.1) & (yy < hz), (40, 110, 190), rng, 30, 16)
    _layer(img, yy >= hz, (232, 205, 150), rng, 35, 24)
    return lambda d: (_dots(d, rng, rng.integers(3, 7), R, (250, 235, 225), (1.5, 3), (hz+.05, 1)),
                      _dots(d, rng, 1, R, (255, 230, 90), (6, 9), (.04, .15)))

def _bg_snow(img, rng, R, yy, xx, hz):
    "Pale sky, snow; distant pines and snowflakes."
    _sky(img, yy, hz, (160, 180, 205), (215, 225, 235), rng)
    _layer(img, yy >= hz, (236, 240, 248), rng, 18, 12, 6)
    def clutter(d):
        for _ in range(rng.integers(2, 5)):
            x0, s = rng.uniform(0, R), rng.uniform(.06, .12)*R
            d.polygon([(x0, hz*R - 1.6*s), (x0 - s/2, hz*R + 2), (x0 + s/2, hz*R + 2)], fill=(30, 80, 50))
        _dots(d, rng, 40, R, (255, 255, 255), (.6, 1.4))
    return clutter

def _bg_grass(img, rng, R, yy, xx, hz):
    "Sky over a lawn with blades of grass and flowers."
    _sky(img, yy, hz, (90, 160, 235), (175, 215, 245), rng)
    _layer(img, yy >= hz, (70, 150, 55), rng, 40, 32)
    img[(yy >= hz) & (np.sin(xx*R*2.1 + 6*_noise(rng, R, 16)) > .85)] *= .8
    return lambda d: _dots(d, rng, rng.integers(4, 10), R, COLOURS[str(rng.choice(['yellow', 'white', 'pink']))], (1, 2), (hz+.05, 1))

def _bg_kitchen_table(img, rng, R, yy, xx, hz):
    "A tiled wall over a wooden table; sometimes a plate."
    _layer(img, yy < hz, (225, 225, 215), rng, 8, 4, 8)
    img[(yy < hz) & (((xx*R) % 12 < 1) | ((yy*R) % 12 < 1))] = (170, 170, 165)
    _layer(img, yy >= hz, (175, 115, 65), rng, 20, 6)
    img[(yy >= hz) & (np.sin(yy*R*1.3 + 4*_noise(rng, R, 4)) > .7)] *= .85
    def clutter(d):
        if rng.random() < .5: x0 = rng.uniform(0, R*.8); d.ellipse((x0, (hz+.08)*R, x0 + .25*R, (hz+.15)*R), fill=(245, 245, 245))
    return clutter

def _bg_night_sky(img, rng, R, yy, xx, hz):
    "A dark sky with stars and a moon over dark ground."
    _sky(img, yy, hz, (8, 10, 35), (30, 35, 80), rng)
    _layer(img, yy >= hz, (25, 35, 30), rng, 10, 4, 6)
    def clutter(d):
        _dots(d, rng, 35, R, (250, 250, 230), (.5, 1.2), (0, hz))
        x0, y0, r = rng.uniform(.1, .9)*R, rng.uniform(.08, .3)*R, .07*R
        d.ellipse((x0-r, y0-r, x0+r, y0+r), fill=(245, 240, 200))
    return clutter

def _bg_desert(img, rng, R, yy, xx, hz):
    "A hazy sky over dunes; cacti."
    _sky(img, yy, hz, (150, 190, 230), (235, 220, 190), rng)
    _layer(img, yy >= hz, (225, 165, 95), rng, 20, 6)
    img[(yy >= hz) & (np.sin((yy + .05*np.sin(xx*9 + rng.uniform(0, 6)))*R*.5) > .8)] *= .88
    def clutter(d):
        for _ in range(rng.integers(1, 3)):
            x0, y0, s = rng.uniform(0, R), rng.uniform(hz, hz+.15)*R, rng.uniform(.08, .14)*R
            d.rectangle((x0-s*.15, y0-s, x0+s*.15, y0), fill=(60, 130, 60)); d.rectangle((x0-s*.45, y0-s*.6, x0-s*.15, y0-s*.5), fill=(60, 130, 60))
    return clutter

def _bg_forest(img, rng, R, yy, xx, hz):
    "Dark foliage, tree trunks, a forest floor."
    _layer(img, yy < hz, (40, 90, 45), rng, 40, 10)
    _layer(img, yy >= hz, (95, 80, 45), rng, 30, 16)
    def clutter(d):
        for _ in range(rng.integers(4, 8)):
            x0, wd = rng.uniform(0, R), rng.uniform(.03, .06)*R
            d.rectangle((x0, 0, x0+wd, hz*R + rng.uniform(0, .05)*R), fill=(75, 50, 30))
        _dots(d, rng, 12, R, (30, 110, 40), (3, 7), (0, hz*.6))
    return clutter

def _bg_street(img, rng, R, yy, xx, hz):
    "A building with windows, a sidewalk, asphalt with a dashed line."
    _layer(img, yy < hz-.12, (150, 120, 110), rng, 15, 6, 25)
    _layer(img, (yy >= hz-.12) & (yy < hz), (185, 185, 180), rng, 10, 8)
    _layer(img, yy >= hz, (75, 75, 80), rng, 15, 24)
    img[(np.abs(yy - (hz + 1)/2) < .012) & ((xx*R) % 24 < 12)] = (235, 235, 225)
    def clutter(d):
        for y0 in np.arange(.06, hz-.2, .12):
            for x0 in np.arange(.08, 1, .18): d.rectangle((x0*R, y0*R, (x0+.08)*R, (y0+.06)*R), fill=(90, 130, 170))
    return clutter

def _bg_living_room_carpet(img, rng, R, yy, xx, hz):
    "A wall over a coloured carpet with a diamond motif."
    _layer(img, yy < hz, (225, 210, 180), rng, 8, 4)
    c = np.array(COLOURS[str(rng.choice(['red', 'purple', 'blue']))], np.float32)*.7
    _layer(img, yy >= hz, c, rng, 15, 16)
    p = rng.uniform(.08, .12)
    img[(yy >= hz) & ((np.abs((xx % p) - p/2) + np.abs((yy % p) - p/2)) < p*.18)] = (230, 200, 120)
    return lambda d: None

def _bg_lake(img, rng, R, yy, xx, hz):
    "Sky, a far shore, rippled water, a near shore with reeds."
    _sky(img, yy, .3, (110, 170, 235), (190, 220, 245), rng)
    _layer(img, (yy >= .3) & (yy < .38), (50, 110, 55), rng, 20, 16)
    _layer(img, (yy >= .38) & (yy < hz), (45, 100, 170), rng, 20, 8)
    img[(yy >= .38) & (yy < hz) & (np.sin(yy*R*2.5 + 3*np.sin(xx*R*.3)) > .92)] = (170, 200, 235)
    _layer(img, yy >= hz, (105, 140, 70), rng, 25, 16)
    def clutter(d):
        for _ in range(rng.integers(3, 7)):
            x0 = rng.uniform(0, R); d.line((x0, hz*R, x0 + rng.uniform(-2, 2), (hz - rng.uniform(.05, .12))*R), fill=(70, 100, 40), width=1)
    return clutter

def _bg_office_desk(img, rng, R, yy, xx, hz):
    "A wall, a monitor, a grey desk with a keyboard."
    _layer(img, yy < hz, (200, 205, 210), rng, 6, 4, 10)
    _layer(img, yy >= hz, (150, 150, 158), rng, 12, 16, 20)
    def clutter(d):
        x0 = rng.uniform(.05, .55)*R; y0 = (hz + rng.uniform(.02, .08))*R
        d.rectangle((x0, y0, x0 + .4*R, y0 + .1*R), fill=(45, 45, 50))
        for i in range(6): d.line((x0 + 3, y0 + 2 + i*.015*R, x0 + .4*R - 3, y0 + 2 + i*.015*R), fill=(110, 110, 115))
        d.rectangle((rng.uniform(.1, .6)*R, (hz - .28)*R, rng.uniform(.7, .9)*R, (hz - .02)*R), fill=(30, 30, 35))
    return clutter


# %%
#| export
BACKGROUNDS = {k: globals()['_bg_' + k.replace(' ', '_').replace('-', '_')] for k in CONTEXTS}

def background(context:str, rng:np.random.Generator, R:int)->Image.Image:
    "An R×R RGB image of place `context`, textured and cluttered at random."
    yy, xx = _yx(R, R)/R
    hz = CONTEXTS[context].ground[0] + rng.uniform(-.04, .02)
    img = np.zeros((R, R, 3), np.float32)
    clutter = BACKGROUNDS[context](img, rng, R, yy, xx, hz)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    clutter(ImageDraw.Draw(im))
    return im


# %%
fig, axs = plt.subplots(1, len(CONTEXTS), figsize=(14, 1.8))
for ax, c in zip(axs, CONTEXTS):
    ax.imshow(background(c, np.random.default_rng(1), 128)); ax.set_title(c, fontsize=7); ax.axis('off')
plt.show()


# %% [markdown]
# ## Scenes
#
# A `Scene` lists its things (objects and people) with their position, height, rotation, flip and
# drawing order, the relations a caption may state between them, and the seed of everything left
# to chance when it is drawn (textures, clutter, lighting), so rendering a scene is a pure
# function of it.

# %%
#| export
@dataclass
class Thing:
    "One object or person in a scene, positioned in fractions of the image."
    look: Look|Outfit
    x: float = .5  # centre
    y: float = .9  # bottom
    h: float = .3  # height
    angle: float = 0.  # rotation in degrees
    flip: bool = False
    z: float|None = None  # drawing order (default: y, nearer things later)
    concept: int|None = None  # id of the personal concept it is, if any

    @property
    def person(self)->bool: return isinstance(self.look, Outfit)
    @property
    def w(self)->float: return self.h*(.5 if self.person else SHAPES[self.look.body or self.look.cls]['wh']/self.look.aspect)

@dataclass
class Scene:
    "A place, the things in it, relations (i, relation, j) meaning things[i] is <relation> things[j], and a seed."
    context: str
    things: list
    relations: list = field(default_factory=list)
    seed: int = 0
    light: tuple = (1., (1., 1., 1.), 0., 0.)  # gain, tint, gradient strength, gradient angle


# %% [markdown]
# Rendering draws at `ss`× the size (a soft shadow under each thing on the ground), pastes the
# rotated sprites in drawing order, downsamples (box filter, so edges are anti-aliased) and applies
# the photo's lighting: a gain, a colour tint and a gradient.

# %%
#| export
def _paste(im:Image.Image, t:Thing, rng:np.random.Generator, R:int):
    "Draw thing `t` onto canvas `im` (R×R): shadow, sprite, rotation and flip."
    h = max(4, round(t.h*R)); w = max(3, round(t.w*R))
    spr = person_sprite(t.look, w, h, rng) if t.person else object_sprite(t.look, w, h, rng)
    if t.flip: spr = spr.transpose(Image.FLIP_LEFT_RIGHT)
    if t.angle: spr = spr.rotate(t.angle, resample=Image.BILINEAR, expand=True)
    cx, by = t.x*R, t.y*R
    sh = Image.new('L', (w, max(2, h//6)), 0); ImageDraw.Draw(sh).ellipse((0, 0, w-1, max(1, h//6-1)), fill=70)
    im.paste((0, 0, 0), (round(cx - w/2), round(by - h/12)), sh)
    im.paste(spr, (round(cx - spr.width/2), round(by - h/2 - spr.height/2)), spr)

def _light(a:np.ndarray, light:tuple, rng:np.random.Generator)->np.ndarray:
    "Apply gain, tint and a lighting gradient to float image `a`; add a little sensor noise."
    gain, tint, g, ang = light; h, w = a.shape[:2]; y, x = _yx(h, w)
    grad = 1 + g*((x/w - .5)*math.cos(ang) + (y/h - .5)*math.sin(ang))
    a = a*gain*np.asarray(tint, np.float32)*grad[..., None] + rng.normal(0, 2., a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)

def render(scene:Scene, size:int=64, ss:int=2)->np.ndarray:
    "The size×size×3 uint8 image of `scene`, drawn at `ss`× resolution and downsampled."
    rng, R = np.random.default_rng(scene.seed), size*ss
    im = background(scene.context, rng, R)
    for t in sorted(scene.things, key=lambda t: t.y if t.z is None else t.z): _paste(im, t, rng, R)
    a = np.asarray(im.reduce(ss) if ss > 1 else im, np.float32)
    return _light(a, scene.light, rng)


# %%
sc = Scene('beach', [Thing(Look('cup', 'red', 'striped', 'white', angle=90), .35, .9, .35),
                     Thing(Look('ball', 'blue', 'dotted', 'yellow'), .7, .88, .25)], [(0, 'next to', 1)], seed=3)
img = render(sc)
test_eq(img.shape, (64, 64, 3)); test_eq(img.dtype, np.uint8)
test_eq(render(sc), img)  # a pure function of the scene
Image.fromarray(img).resize((192, 192), Image.NEAREST)


# %% [markdown]
# ## Captions
#
# A noun phrase names a look from a random subset of its attributes in one of several wordings
# ("a red cup with blue stripes", "a red and blue striped cup", "a red striped cup with a white
# star on it", "a tall green bottle", "a cup"); `full=True` names everything, always in the same
# wording (used for the concept texts and by the simulated captioner).

# %%
#| export
def _plural(p:str)->bool:
    "Whether phrase `p` names a plural garment."
    return bool({'trousers', 'shorts'} & set(p.split()))

def _a(p:str)->str:
    "`p` with its indefinite article (none for plural garments)."
    return p if _plural(p) else ('an ' if p[0] in 'aeiou' else 'a ') + p

_PATTERN_WORDS = {'striped': ('{c} striped {n}', '{c} {n} with {c2} stripes', '{c} and {c2} striped {n}'),
                  'dotted': ('{c} dotted {n}', '{c} {n} with {c2} dots', '{c} {n} with {c2} polka dots'),
                  'checked': ('{c} checked {n}', '{c} {n} with {c2} checks', '{c} and {c2} checked {n}'),
                  'two-tone': ('{c} and {c2} {n}', 'two-tone {c} and {c2} {n}', 'half {c} half {c2} {n}')}

def _noun(l:Look, rng)->str:
    "The class word of `l` (a random synonym when `rng` is given)."
    words = CLASSES.get(l.cls, (l.cls,))
    return words[0] if rng is None else str(rng.choice(words))

def phrase(l:Look, rng:np.random.Generator|None=None, # None: name everything, canonical wording
           full:bool=False, size:str='')->str:
    "A noun phrase (no article) naming look `l`: some or all of its attributes."
    keep = (lambda p: True) if full or rng is None else (lambda p: rng.random() < p)
    n, pat = _noun(l, None if full else rng), l.pattern if l.pattern != 'plain' and keep(.75) else 'plain'
    forms = _PATTERN_WORDS.get(pat, ('{c} {n}',))
    core = (forms[pat in ('striped', 'dotted', 'checked')] if full or rng is None else str(rng.choice(forms))) if keep(.85) or pat != 'plain' else '{n}'
    s = core.format(c=l.colour, c2=l.colour2, n=n)
    if l.aspect > 1.3 and keep(.7): s = 'tall ' + s
    if l.aspect < .78 and keep(.7): s = 'wide ' + s
    if size and keep(.5): s = f'{size} {s}'
    if l.emblem and keep(.6):
        s += (' and ' if ' with ' in s else ' with ') + _a(l.emblem_colour + ' ' + l.emblem if keep(.8) else l.emblem) + ((' on them' if _plural(n) else ' on it') if full or keep(.5) else '')
    return s


# %%
l = Look('cup', 'red', 'striped', 'blue', 'star', 'white')
test_eq(phrase(l, full=True), 'red cup with blue stripes and a white star on it')
r = np.random.default_rng(0)
[phrase(l, r) for _ in range(6)]

# %% [markdown]
# Scene captions come in the styles the method's prompts use: a full sentence, one of the 13
# PALAVRA prompt templates around an object (with or without its place), the object alone,
# place-first sentences, and for people "a person wearing …" and DeepFashion2-style sentences.

# %%
#| export
TEMPLATES = ('This is a photo of {}', 'This photo contains {}', '{}', 'A photo of {}', 'An image of {}', 'This is {}',
             'An image showing {}', '{} is shown in this image', '{} can be seen in this picture', '{} is visible in this photo',
             'This photo shows {}', 'We can see {} in this scene', 'A scene containing {}')
RELATIONS = {'next to': ('next to', 'beside'), 'left of': ('to the left of', 'left of'), 'right of': ('to the right of', 'right of'),
             'above': ('above',), 'on': ('on top of', 'on'), 'in front of': ('in front of',), 'behind': ('behind',)}
VERBS = dict(stands=('stands', 'is standing'), walks=('walks', 'is walking'), poses=('poses', 'is posing'))

def _size_word(t:Thing)->str:
    "small or big, for an object much smaller or larger than usual."
    return '' if t.person else 'small' if t.h < .2 else 'big' if t.h > .5 else ''

def thing_phrase(t:Thing, rng=None, full:bool=False)->str:
    "A noun phrase with its article for thing `t` (a person: 'a person wearing …')."
    if not t.person: return _a(phrase(t.look, rng, full, _size_word(t)))
    gs = [phrase(g, rng, full) for g in t.look.garments[::-1]]
    if not full and len(gs) > 1 and rng.random() < .4: gs = gs[:1]
    return 'a person wearing ' + ' and '.join(_a(g) for g in gs)

def _finish(s:str, rng)->str:
    "Capitalise and end with a period, at random (always without `rng`)."
    if rng is None or rng.random() < .5: s = s[0].upper() + s[1:]
    return s + '.' if rng is None or rng.random() < .5 else s


# %%
#| export
def _related(scene:Scene, rng, full=False)->str:
    "' next to a blue ball and a hat': the relations of things[0], as a phrase."
    rels = [(RELATIONS[r][0] if rng is None else str(rng.choice(RELATIONS[r])), thing_phrase(scene.things[j], rng, full))
            for i, r, j in scene.relations if i == 0]
    return ''.join(f" {r} {p}" if k == 0 or r != rels[k-1][0] else f" and {p}" for k, (r, p) in enumerate(rels))

def _place(scene:Scene, rng, person=False)->str:
    "A phrase putting things at the scene's place."
    c = CONTEXTS[scene.context]; ps = c.person if person else c.place
    return ps[0] if rng is None else str(rng.choice(ps))

def scene_caption(scene:Scene, rng:np.random.Generator, style:str|None=None)->str:
    "One caption of `scene` in `style` (scene, template, object, place-first or person; random when None)."
    styles = ('scene', 'template', 'object', 'place-first') + (('person', 'person') if scene.things[0].person else ())
    style = style or str(rng.choice(styles))
    main, rel, place = thing_phrase(scene.things[0], rng), _related(scene, rng) if rng.random() < .7 else '', _place(scene, rng, scene.things[0].person)
    if style == 'scene': s = f"{main} {place}{rel}" if rng.random() < .6 else f"{main}{rel} {place}"
    elif style == 'template': s = str(rng.choice(TEMPLATES)).format(main + (f" {place}" if rng.random() < .5 else '') + (rel if rng.random() < .5 else ''))
    elif style == 'object': s = main + (rel if rng.random() < .5 else '')
    elif style == 'place-first': s = _place_first(scene, main, rel, place, rng)
    else: s = _person_caption(scene, rng, wearing=rng.random() < .6)
    return _finish(s, rng)

def _place_first(scene, main, rel, place, rng)->str:
    "Captions that start with the place: 'on the beach, a red cup …', 'a beach with a red cup', 'a beach'."
    noun, k = CONTEXTS[scene.context].noun, rng.integers(4)
    return [f"{place}, {main}{rel}", f"{noun} with {main}{rel}", f"a photo of {noun} with {main}", noun][k]


# %%
#| export
def _person_caption(scene:Scene, rng, wearing:bool=True, detailed:bool=True)->str:
    "A DeepFashion2-style sentence about the scene's person: '[the|a] person [wearing …] stands on the beach next to a ball.'"
    t, v = scene.things[0], rng.choice(VERBS[scene.things[0].look.pose])
    who = thing_phrase(t, rng) if wearing else str(rng.choice(['a person', 'the person']))
    place, rel = _place(scene, rng, True), _related(scene, rng) if detailed else ''
    if not detailed and rng.random() < .1: return f"{who} {v}"
    return f"{place}, {who} {v}{rel}" if rng.random() < .25 else f"{who} {v} {place}{rel}"

def _brief(t:Thing)->str:
    "A short phrase for a secondary thing: its colour and class."
    return 'a person' if t.person else _a(f"{t.look.colour} {_noun(t.look, None)}")

def vlm_caption(scene:Scene, rng:np.random.Generator)->str:
    "A whole-scene caption as a captioning model writes it: the main thing in detail, up to two others briefly."
    t, rest = scene.things[0], [_brief(u) for u in scene.things[1:3]]
    verb = str(rng.choice(VERBS[t.look.pose])) if t.person else str(rng.choice(['sits', 'is sitting', 'is placed', 'lies']))
    tail = f" next to {' and '.join(rest)}" if rest else ''
    return _finish(f"{thing_phrase(t, None, True)} {verb} {_place(scene, rng, t.person)}{tail}", None)


# %% [markdown]
# ## Sampling scenes
#
# Generic looks never have the caption-level key of a personal concept (class, colour, pattern,
# second colour), for the concept's class or for the silhouette it borrows; so no generic scene shows
# a concept instance, while every feature a concept is built from appears in generic scenes. The
# concepts and their keys are [the embedded world](06_world.ipynb)'s (`concept_keys`): the sampler
# reads them from there the first time it draws a look.

# %%
#| export
def _random_look(rng:np.random.Generator, cls:str, plain:float=.4, emblem:float=.2)->Look:
    "A random look of class `cls`: colour, pattern, second colour, emblem and fine details."
    c, pattern = str(rng.choice(list(COLOURS))), str(rng.choice(PATTERNS, p=[plain] + [(1-plain)/4]*4))
    c2 = str(rng.choice([k for k in COLOURS if k != c])) if pattern != 'plain' else None
    e = str(rng.choice(EMBLEMS)) if rng.random() < emblem else None
    ec = str(rng.choice([k for k in COLOURS if k not in (c, c2)])) if e else None
    return Look(cls, c, pattern, c2, e, ec, scale=float(rng.uniform(.15, .3)), angle=float(rng.choice([0, 45, 90, 135])))

def _concept_keys()->frozenset:
    "The keys no generic look may have: every personal concept's (`polar_nb.world.concept_keys`, computed once)."
    from polar_nb.world import _EXCLUDE  # the concepts are the world's, which builds on this module: read when first needed
    return _EXCLUDE()

def sample_look(rng:np.random.Generator, cls:str|None=None, exclude:set|None=None)->Look:
    "A random generic look (of class `cls` if given) whose key is not in `exclude` (default: every concept's)."
    exclude = _concept_keys() if exclude is None else exclude
    cls = cls or str(rng.choice(list(CLASSES)))
    while True:
        l = _random_look(rng, cls)
        a = rng.random()
        if cls not in GARMENTS: l = replace(l, aspect=float(rng.uniform(1.4, 1.8) if a < .12 else rng.uniform(.55, .72) if a < .22 else rng.uniform(.88, 1.12)))
        if l.key not in exclude: return l


# %%
r = np.random.default_rng(0)
looks = [sample_look(r) for _ in range(2000)]
assert not any(l.key in _concept_keys() for l in looks) and len(_concept_keys()) > 100
test_eq({l.cls for l in looks}, set(CLASSES))
[phrase(l, full=True) for l in looks[:5]]


# %% [markdown]
# Placing things: the first is put on the ground band of the place, the others relative to it
# (next to, left or right of, above, on top of, in front of, behind), then the group is shifted to
# fit in the frame. A lighting draw and a seed complete the scene.

# %%
#| export
def _on_ground(rng, context:str, t:Thing)->Thing:
    "Put `t` at a random spot of `context`'s ground band."
    lo, hi = CONTEXTS[context].ground
    t.x, t.y = float(rng.uniform(.15, .85)), float(rng.uniform(lo + .3*(hi - lo), hi - .02))
    return t

def relate(rng, a:Thing, b:Thing, rel:str, others:list=())->Thing:
    "Move `b` so that `a` is `rel` `b` (a stays; beside it, `b` goes to a free side, past `others`); returns b."
    gap, s = rng.uniform(1.02, 1.25), (a.w + b.w)/2
    if rel in ('next to', 'left of', 'right of'):
        busy = {int(np.sign(t.x - a.x)) for t in others}
        side = {'left of': 1, 'right of': -1}.get(rel) or next((int(v) for v in rng.permutation([-1, 1]) if v not in busy), 1)
        far = sum(t.w for t in others if np.sign(t.x - a.x) == side)
        b.x, b.y = a.x + side*(s*gap + far), a.y + rng.uniform(-.03, .03)
    elif rel == 'above': b.x, b.y = a.x + rng.uniform(-.1, .1)*s, a.y + b.h + rng.uniform(.03, .1)
    elif rel == 'on': b.x, b.y, a.z = a.x + rng.uniform(-.1, .1)*s, a.y + b.h*.92, a.y + b.h + .01
    elif rel == 'in front of': b.x, b.y = a.x + rng.choice([-1, 1])*s*rng.uniform(.35, .6), a.y - rng.uniform(.04, .09)
    elif rel == 'behind': b.x, b.y = a.x + rng.choice([-1, 1])*s*rng.uniform(.35, .6), a.y + rng.uniform(.04, .09)
    return b

def _shrink(things:list, f:float)->list:
    "Scale the group `things` by `f` around its first thing (sizes and offsets)."
    a = things[0]; ax, ay = a.x, a.y
    for t in things: t.x, t.y, t.h, t.z = ax + (t.x - ax)*f, ay + (t.y - ay)*f, t.h*f, None if t.z is None else ay + (t.z - ay)*f
    return things

def _fit(things:list)->list:
    "Shift (and if too wide, shrink) the group `things` so that it fits in the frame."
    span = lambda: (min(t.x - t.w/2 for t in things), max(t.x + t.w/2 for t in things))
    if span()[1] - span()[0] > .96: _shrink(things, .96/(span()[1] - span()[0]))
    x0, x1 = span()
    dx = (.02 - x0) if x0 < .02 else (.98 - x1) if x1 > .98 else 0.
    dy = min(0., 1. - max(t.y for t in things))
    dy -= min(0., min(t.y - t.h for t in things) + dy)  # keep tops in the frame before bottoms
    for t in things: t.x, t.y, t.z = t.x + dx, t.y + dy, None if t.z is None else t.z + dy
    return things

def _light_draw(rng)->tuple:
    "A random lighting: gain, tint, gradient strength and angle."
    return (float(rng.uniform(.75, 1.15)), tuple(float(v) for v in rng.uniform(.9, 1.1, 3)), float(rng.uniform(0, .35)), float(rng.uniform(0, 2*np.pi)))


# %% [markdown]
# A generic scene: a place; an object (or, one time in four, a person wearing one or two garments)
# with up to two more objects related to it; random rotations, flips and sizes.

# %%
#| export
_SUPPORTS = ('cube', 'book', 'car', 'bag')  # what another object can stand on

def _object(rng, h:tuple=(.2, .5), exclude=None, cls=None)->Thing:
    "A generic object of random look, height in `h`, tilt and flip."
    return Thing(sample_look(rng, cls, exclude), h=float(rng.uniform(*h)), angle=float(rng.normal(0, 12)), flip=bool(rng.random() < .5))

def _outfit(rng, exclude=None)->Outfit:
    "A random person: a dress, or a top over a bottom."
    pick = lambda part: str(rng.choice([g for g,p in GARMENTS.items() if p == part]))
    gs = [pick('dress')] if rng.random() < .25 else [pick('bottom'), pick('top')]
    return Outfit(tuple(sample_look(rng, g, exclude) for g in gs), int(rng.integers(len(SKINS))),
                  str(rng.choice(['black', 'brown', 'yellow', 'orange', 'white'])), str(rng.choice(POSES)))

def _relation(rng, a:Thing, b:Thing)->str:
    "A random relation between the main thing `a` and a new object `b`."
    rels = ['next to']*3 + ['left of', 'right of', 'in front of', 'behind'] + ([] if a.person else ['above']) + (['on'] if b.look.cls in _SUPPORTS and not a.person else [])
    return str(rng.choice(rels))

def sample_scene(rng:np.random.Generator, context:str|None=None, person:bool|None=None)->Scene:
    "A random concept-free scene: a place, a main object or person, up to two related objects."
    context = context or str(rng.choice(list(CONTEXTS)))
    person = rng.random() < .25 if person is None else person
    main = Thing(_outfit(rng), h=float(rng.uniform(.55, .9)), flip=bool(rng.random() < .5)) if person else _object(rng)
    things, rels = [_on_ground(rng, context, main)], []
    for _ in range(int(rng.choice([0, 1, 2], p=[.45, .4, .15]))):
        b = _object(rng, (.12, .3) if person else (.15, .45)); r = _relation(rng, main, b)
        things.append(relate(rng, main, b, r, things[1:])); rels.append((0, r, len(things)-1))
    return Scene(context, _fit(things), rels, int(rng.integers(2**31)), _light_draw(rng))


# %%
r = np.random.default_rng(5)
scs = [sample_scene(r) for _ in range(12)]
fig, axs = plt.subplots(2, 6, figsize=(14, 5.6))
for ax, s in zip(axs.flat, scs):
    ax.imshow(render(s)); ax.axis('off')
    ax.set_title('\n'.join(textwrap.wrap(scene_caption(s, np.random.default_rng(s.seed), 'scene'), 28)), fontsize=6.5)
plt.show()

# %% [markdown]
# The same scene, several captions (one is drawn per training step):

# %%
r = np.random.default_rng(s.seed)
[scene_caption(scs[1], r) for _ in range(6)] + [vlm_caption(scs[1], r)]

# %% [markdown]
# [The embedded world](06_world.ipynb) puts the personal concepts into such scenes and writes
# the benchmarks.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
