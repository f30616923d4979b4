# %% [markdown]
# # Backbones and image features
#
# > Loading a CLIP backbone (any open_clip architecture, or the embedded one), tokenising prompts, and extracting cached, L2-normalised image features.

# %% [markdown]
# POLAR never changes the image encoder: every image of a benchmark is encoded once, and only the
# text encoder is personalized. This chapter holds the two halves of that contract. A `Backbone`
# bundles a CLIP model with its tokenizer and image preprocessing; `image_features` turns image
# files (or PIL images) into normalised features, cached on disk so that each image is encoded once
# per backbone.
#
# Nothing here downloads anything. `pretrained=None` gives an open_clip architecture with random
# weights (seeded, so the same call gives the same model); a pretrained tag or a local checkpoint
# is passed to open_clip unchanged, for users who have the weights in open_clip's cache.

# %%
#| default_exp clip

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_fail, test_close

# %%
#| export
import hashlib, io, json, logging, os, re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
import numpy as np, torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from polar_nb.compat import import_open_clip
from polar_nb.config import get_settings, resolve_device

# %% [markdown]
# ## The backbone
#
# The paper's hyper-parameters for open_clip backbones (λ = 0.35, 500 iterations, Adam with
# lr 1e-3; §4 and supplement §12) are each backbone's `defaults`; backbones made for this package
# ship their own tuned values.

# %%
#| export
OPEN_CLIP_DEFAULTS = dict(lam=0.35, iters=500, lr=1e-3)

@dataclass(eq=False, repr=False)
class Backbone:
    "A CLIP model with its tokenizer and image preprocessing, by name, on one device."
    model: torch.nn.Module  # an open_clip `CLIP` in eval mode
    tokenizer: Callable  # texts -> LongTensor [n, context_length]
    preprocess: Callable  # PIL image -> image tensor
    name: str  # architecture or registered name: what an update trained on it records
    pretrained: str|None = None  # weights tag or checkpoint, None for random weights
    device: str = 'cpu'
    defaults: dict = field(default_factory=lambda: dict(OPEN_CLIP_DEFAULTS))  # lam, iters, lr
    cache: dict = field(default_factory=dict)  # per-backbone memo (text prefixes), managed by polar_nb.polar

    @property
    def width(self)->int: return self.model.transformer.width
    @property
    def n_layers(self)->int: return len(self.model.transformer.resblocks)
    @property
    def embed_dim(self)->int:
        p = self.model.text_projection
        return p.out_features if isinstance(p, torch.nn.Linear) else p.shape[1]
    def __repr__(self): return (f"Backbone({self.name!r}, pretrained={self.pretrained!r}, device={self.device!r}, "
                                f"width={self.width}, layers={self.n_layers}, embed_dim={self.embed_dim})")


# %% [markdown]
# ## Loading one
#
# Names that are not open_clip architectures are looked up in a registry of loaders first; the
# embedded backbone `world-tiny` is registered there and reads its weights from
# `data/world-tiny.safetensors`.

# %%
#| export
BACKBONES = {}  # registered name -> loader(pretrained, device, seed) -> Backbone

def register_backbone(name:str):
    "Decorator: register a loader `f(pretrained, device, seed) -> Backbone` under `name`."
    def _reg(f): BACKBONES[name] = f; return f
    return _reg


# %%
#| export
class _Quiet(logging.Filter):
    "Drop open_clip's warning that a model was initialised randomly: that is what we asked for."
    def filter(self, r): return 'Model initialized randomly' not in r.getMessage()

def _open_clip_backbone(name, pretrained, device, seed)->Backbone:
    "An open_clip architecture, random (seeded) or with the given pretrained weights."
    oc = import_open_clip()
    if name not in oc.list_models(): raise ValueError(
        f"unknown backbone {name!r}: neither registered ({sorted(BACKBONES)}) nor an open_clip architecture "
        f"(e.g. ViT-B-32, ViT-L-14; open_clip.list_models() lists {len(oc.list_models())})")
    flt, root = _Quiet(), logging.getLogger()
    root.addFilter(flt)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = oc.create_model_and_transforms(name, pretrained=pretrained or None, device=device)
    finally: root.removeFilter(flt)
    return Backbone(model.eval(), oc.get_tokenizer(name), preprocess, name, pretrained or None, device)


# %%
#| export
def load_backbone(name:str|None=None, # open_clip architecture, registered name (world-tiny) or .safetensors file; default: the settings' backbone
                  pretrained:str|None=None, # open_clip pretrained tag or local checkpoint; None or '' = random weights
                  device:str='auto', # torch device; auto = a GPU when there is one
                  seed:int=0, # seed of the random weights (pretrained=None)
                 )->Backbone:
    "Load a CLIP backbone for personalization, in eval mode and fp32."
    if name is None:
        s = get_settings(); name, pretrained = s.backbone, pretrained or s.pretrained or None
        if device == 'auto': device = s.device
    device = resolve_device(device)
    if name in BACKBONES: return BACKBONES[name](pretrained, device, seed)
    if str(name).endswith('.safetensors'): return load_safetensors_backbone(name, device=device)
    return _open_clip_backbone(name, pretrained, device, seed)


# %%
bb = load_backbone('ViT-B-32', pretrained=None, device='cpu')
test_eq((bb.name, bb.width, bb.n_layers, bb.embed_dim, bb.pretrained), ('ViT-B-32', 512, 12, 512, None))
test_eq(bb.defaults, dict(lam=0.35, iters=500, lr=1e-3))
test_eq(bb.model.training, False)
bb

# %% [markdown]
# Random weights are seeded, so a random backbone is reproducible; an unknown name is a clear error:

# %%
bb2 = load_backbone('ViT-B-32', device='cpu')
test_eq(torch.equal(bb2.model.text_projection, bb.model.text_projection), True)
test_fail(lambda: load_backbone('ViT-Q-99', device='cpu'), contains='unknown backbone')


# %% [markdown]
# ## Backbones stored as one safetensors file
#
# A backbone made by this package is one safetensors file: the weights, plus metadata holding the
# open_clip model configuration, the name, and the backbone's tuned defaults. The embedded
# `world-tiny` is such a file, shipped under `data/`.

# %% [markdown]
# Every safetensors file the package writes goes through `save_safetensors`. The safetensors
# library orders the keys of a file's header as a hash map happens to (the order changes from one
# process to the next), so the same tensors and metadata would give a different file each time;
# `save_safetensors` writes the header with its keys sorted, so the same content is the same bytes,
# and moves a complete file into place (an interrupted write leaves no truncated file behind; a
# missing folder is made).

# %%
#| export
def save_safetensors(tensors:dict, # name -> tensor
                     path:str|Path, # the .safetensors file to write
                     metadata:dict|None=None, # str -> str, stored in the header
                    )->Path:
    "Write `tensors` and `metadata` to a safetensors file whose bytes depend on its content only (header keys sorted); atomic."
    from safetensors.torch import save
    b = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(b[:8], 'little')
    h = json.dumps(json.loads(b[8:8+n]), sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode()
    h += b' ' * (-len(h) % 8)  # the data that follows stays 8-byte aligned
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True); tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as fh: fh.write(len(h).to_bytes(8, 'little') + h + b[8+n:])
        os.replace(tmp, path)
    finally: tmp.unlink(missing_ok=True)
    return path


# %%
import tempfile
from safetensors import safe_open
with tempfile.TemporaryDirectory() as d:
    ts = dict(b=torch.arange(6.).view(2, 3), a=torch.ones(3, dtype=torch.float16), c=torch.zeros(1, dtype=torch.int64))
    md = {k: f'value of {k} – ü' for k in 'hgfedcba'}
    files = [save_safetensors(ts, Path(d)/f'{i}.safetensors', md) for i in range(4)]
    blobs = [f.read_bytes() for f in files]
    with safe_open(str(files[0]), 'pt') as f:
        test_eq(f.metadata(), md)
        for k, v in ts.items(): test_eq(f.get_tensor(k), v)
    test_eq(sorted(p.name for p in Path(d).iterdir()), [f'{i}.safetensors' for i in range(4)])  # no temporary file left
test_eq(len(set(blobs)), 1)  # four writes, one byte string
n = int.from_bytes(blobs[0][:8], 'little'); head = json.loads(blobs[0][8:8+n])
test_eq(list(head), sorted(head)); test_eq(list(head['__metadata__']), sorted(md))
test_eq((8 + n) % 8, 0)
blobs[0][8:8+n].decode()[:120]


# %%
#| export
def save_safetensors_backbone(bb:Backbone, # the backbone to store
                              path:str|Path, # the .safetensors file to write
                              model_cfg:dict, # open_clip model configuration (embed_dim, vision_cfg, text_cfg, ...)
                             )->Path:
    "Write `bb`'s weights, configuration, name and defaults to one safetensors file."
    sd = {k: v.detach().cpu().contiguous() for k,v in bb.model.state_dict().items()}
    meta = dict(format='polar-nb/backbone-1', name=bb.name, model_cfg=json.dumps(model_cfg), defaults=json.dumps(bb.defaults))
    return save_safetensors(sd, path, meta)


# %% [markdown]
# A backbone may leave a large *frozen* tensor out of its file and record how to regenerate it
# instead: the embedded backbone's token table is a seeded random initialisation that training never
# changes (metadata `token_embedding = {"init": "normal(0, 0.02)", "seed": ...}`).

# %%
#| export
def frozen_token_embedding(vocab:int, width:int, seed:int)->torch.Tensor:
    "A frozen token embedding table: N(0, 0.02²) drawn by a CPU generator seeded with `seed`."
    return torch.randn(vocab, width, generator=torch.Generator().manual_seed(seed)) * 0.02


# %%
fe = frozen_token_embedding(100, 8, seed=3)
test_eq(fe, frozen_token_embedding(100, 8, seed=3))
assert abs(fe.std().item() - 0.02) < 0.005


# %%
#| export
def load_safetensors_backbone(path:str|Path, # a file written by `save_safetensors_backbone`
                              name:str|None=None, # the backbone's name (default: the one stored)
                              device:str='cpu',
                             )->Backbone:
    "Load a backbone stored as one safetensors file (weights + open_clip configuration)."
    from safetensors import safe_open
    from safetensors.torch import load_file
    oc, path = import_open_clip(), Path(path)
    if not path.is_file(): raise FileNotFoundError(f"backbone weights file {path} does not exist")
    with safe_open(str(path), 'pt') as f: meta = f.metadata() or {}
    if meta.get('format') != 'polar-nb/backbone-1': raise ValueError(f"{path} is not a polar-nb backbone file")
    cfg = json.loads(meta['model_cfg'])
    model = oc.CLIP(**cfg)
    sd = load_file(str(path))
    if 'token_embedding' in meta:  # a frozen table the file does not store: regenerate it from its seed
        t = cfg['text_cfg']
        sd['token_embedding.weight'] = frozen_token_embedding(t['vocab_size'], t['width'], json.loads(meta['token_embedding'])['seed'])
    model.load_state_dict(sd)
    v, t = cfg['vision_cfg'], cfg['text_cfg']
    pre = oc.image_transform(v['image_size'], is_train=False)
    tok = oc.tokenizer.SimpleTokenizer(context_length=t.get('context_length', 77))
    return Backbone(model.to(device).eval(), tok, pre, name or meta['name'], str(path), device, json.loads(meta['defaults']))


# %% [markdown]
# A tiny round trip (a 1-layer CLIP, seconds to build):

# %%
import tempfile
_oc = import_open_clip()
tiny_cfg = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
tiny = Backbone(_oc.CLIP(**tiny_cfg).eval(), _oc.tokenizer.SimpleTokenizer(context_length=16),
                _oc.image_transform(32, is_train=False), 'tiny', defaults=dict(lam=0.1, iters=50, lr=1e-2))
with tempfile.TemporaryDirectory() as d:
    back = load_safetensors_backbone(save_safetensors_backbone(tiny, Path(d)/'tiny.safetensors', tiny_cfg))
    test_eq((back.name, back.defaults, back.width), ('tiny', dict(lam=0.1, iters=50, lr=1e-2), 32))
    for k,v in tiny.model.state_dict().items(): assert torch.equal(v, back.model.state_dict()[k]), k
back.name, back.width, back.embed_dim, back.defaults


# %% [markdown]
# The embedded backbone is registered under its name; until its weights file exists, loading it says
# which file it expects.

# %%
#| export
def data_dir()->Path:
    "The repository's `data/` folder, where shipped assets such as the embedded backbone live."
    import polar_nb
    return Path(polar_nb.__file__).resolve().parent.parent/'data'

EMBEDDED = {'world-tiny': 'world-tiny.safetensors'}  # embedded backbone name -> file in data/

def _embedded_loader(name):
    def load(pretrained, device, seed):
        path = Path(pretrained) if pretrained and str(pretrained).endswith('.safetensors') else data_dir()/EMBEDDED[name]
        if not path.is_file(): raise FileNotFoundError(
            f"the embedded backbone {name!r} needs its weights file data/{EMBEDDED[name]} ({path}), which does not "
            f"exist: build the embedded world first, or load an open_clip architecture such as 'ViT-B-32'")
        return load_safetensors_backbone(path, name=name, device=device)
    return load

for _n in EMBEDDED: register_backbone(_n)(_embedded_loader(_n))

# %%
if not (data_dir()/'world-tiny.safetensors').exists():
    test_fail(lambda: load_backbone('world-tiny', device='cpu'), contains='data/world-tiny.safetensors')
test_eq('world-tiny' in BACKBONES, True)


# %% [markdown]
# ## Tokens
#
# POLAR's concept token (`sks` in the paper) must be a single BPE token: the update is learned for
# what that one token does to the EOT embedding. The pooled position is the EOT token, the largest
# id of each row (open_clip's `argmax` pooling).

# %%
#| export
def tokenize(bb:Backbone, texts:str|list[str])->torch.Tensor:
    "Token ids of `texts`, [n, context_length], on the backbone's device."
    return bb.tokenizer([texts] if isinstance(texts, str) else list(texts)).to(bb.device)

def eot_positions(tokens:torch.Tensor)->torch.Tensor:
    "Position of the EOT token (the pooled one) in each row of `tokens`."
    return tokens.argmax(dim=-1)


# %%
toks = tokenize(bb, ['A photo of sks', 'sks'])
test_eq(toks.shape, (2, 77))
test_eq(eot_positions(toks).tolist(), [5, 2])
toks[:, :7]


# %%
#| export
def token_id(bb:Backbone, token:str)->int:
    "The id of `token`, which must be exactly one BPE token (else ValueError)."
    ids = tokenize(bb, token)[0]
    ids = ids[ids != 0][1:-1].tolist()  # drop padding, start and end of text
    if len(ids) != 1: raise ValueError(
        f"token {token!r} is {len(ids)} BPE tokens {ids}, not one: the concept token must be a single BPE token, such as 'sks'")
    return ids[0]


# %%
test_eq(token_id(bb, 'sks'), 48136)
test_fail(lambda: token_id(bb, 'skswxyz'), contains='not one')
test_fail(lambda: token_id(bb, ''), contains='not one')


# %% [markdown]
# ## Image features
#
# Features are L2-normalised. Each image is read once per backbone: the cache key is the backbone
# (its name and a fingerprint of the image tower's weights, so two random backbones never share
# entries) and the image's content (the file's bytes, not its path), so renaming or copying a
# dataset keeps the cache valid. A file that is not a readable image is named in the error.

# %%
#| export
def fingerprint(weights:torch.nn.Module|dict, # a module, or a state dict
               )->str:
    "A short hash of a module's weights, or of a state dict (names, shapes and a strided sample of every tensor)."
    h = hashlib.blake2b(digest_size=16)
    for k,v in (weights.state_dict() if isinstance(weights, torch.nn.Module) else weights).items():
        flat = v.detach().reshape(-1)
        sample = flat[::max(1, flat.numel()//4096)].float().cpu().numpy()
        h.update(f'{k}{tuple(v.shape)}'.encode()); h.update(sample.tobytes())
    return h.hexdigest()

def _cache_folder(bb:Backbone, cache)->Path|None:
    "The feature cache folder of `bb` (None when caching is off)."
    if cache is False or cache is None: return None
    root = get_settings().cache_dir if cache is True else Path(cache)
    return root/'image_features'/f"{re.sub(r'[^A-Za-z0-9_.-]', '_', bb.name)}-{fingerprint(bb.model.visual)}"


# %%
test_eq(fingerprint(bb.model.visual), fingerprint(bb2.model.visual))  # same seed, same weights
with torch.no_grad(): bb2.model.visual.proj.mul_(2)
assert fingerprint(bb.model.visual) != fingerprint(bb2.model.visual)
test_eq(fingerprint(bb2.model.visual.state_dict()), fingerprint(bb2.model.visual))  # a state dict: the same hash
del bb2
_cache_folder(bb, True).parts[-3:]


# %%
#| export
def _read(item)->tuple[str, Image.Image|bytes]:
    "The content hash of an image path or PIL image, and its content."
    if isinstance(item, Image.Image):
        h = hashlib.blake2b(f'{item.mode}{item.size}'.encode() + item.tobytes(), digest_size=16).hexdigest()
        return h, item
    data = Path(item).read_bytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest(), data

def _decode(item, content)->Image.Image:
    "A PIL RGB image from `content`, naming the file when it is not a readable image."
    if isinstance(content, Image.Image): return content.convert('RGB')
    try:
        im = Image.open(io.BytesIO(content)); im.load()
        return im.convert('RGB')
    except Exception as e: raise ValueError(f"cannot read image {item}: {type(e).__name__}: {e}") from e


# %%
#| export
@torch.no_grad()
def _encode_images(bb:Backbone, items:list, contents:list)->np.ndarray:
    "Normalised features of one batch of images."
    x = torch.stack([bb.preprocess(_decode(i, c)) for i,c in zip(items, contents)]).to(bb.device)
    return F.normalize(bb.model.encode_image(x).float(), dim=-1).cpu().numpy()

def image_features(bb:Backbone, # the backbone whose image tower encodes
                   images:list, # image paths and/or PIL images
                   batch_size:int=64, # images per forward pass
                   cache:bool|str|Path=True, # True: settings' cache_dir; a folder; False: no cache
                   progress:bool|None=None, # tqdm bar; None: only when more than one batch is encoded
                  )->torch.Tensor:
    "L2-normalised image features [n, embed_dim] (float32, CPU), cached per backbone and image content."
    images = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
    folder = _cache_folder(bb, cache)
    out = np.zeros((len(images), bb.embed_dim), dtype=np.float32)
    todo = []  # (index, key, content) of images not in the cache
    for i,item in enumerate(images):
        key, content = _read(item)
        f = folder/f'{key}.npy' if folder else None
        if f is not None and f.is_file(): out[i] = np.load(f)
        else: todo.append((i, key, content))
    batches = [todo[s:s+batch_size] for s in range(0, len(todo), batch_size)]
    show = len(batches) > 1 if progress is None else progress
    for b in tqdm(batches, desc=f'image features ({bb.name})', disable=not show):
        feats = _encode_images(bb, [images[i] for i,_,_ in b], [c for _,_,c in b])
        for (i,key,_),v in zip(b, feats):
            out[i] = v
            if folder: _save_npy(folder/f'{key}.npy', v)
    return torch.from_numpy(out)

def _save_npy(path:Path, v:np.ndarray):
    "Write one cached feature atomically."
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f'.{os.getpid()}.tmp')
    with open(tmp, 'wb') as fh: np.save(fh, v)
    os.replace(tmp, path)


# %% [markdown]
# A few random images (the backbone has random weights too, so the features mean nothing yet):
# normalised, the same from the cache as from the model, and the same for a path as for the
# image it holds.

# %%
rng = np.random.default_rng(0)
pics = [Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)) for _ in range(3)]
with tempfile.TemporaryDirectory() as d:
    d = Path(d); pics[0].save(d/'a.png')
    X = image_features(bb, pics, cache=d/'cache')
    test_eq(X.shape, (3, 512)); test_close(X.norm(dim=-1), torch.ones(3), eps=1e-5)
    test_eq(len(list((d/'cache').rglob('*.npy'))), 3)
    assert torch.equal(image_features(bb, pics, cache=d/"cache"), X)  # from the cache
    test_close(image_features(bb, [d/'a.png'], cache=False)[0], X[0], eps=1e-5)  # a file, no cache
    (d/'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    test_fail(lambda: image_features(bb, [d/'a.png', d/'broken.jpg'], cache=False), contains='broken.jpg')
    try: image_features(bb, [d/'broken.jpg'], cache=False)
    except ValueError as e: print(str(e).replace(str(d), "<folder>"))
X[:, :4]

# %%
#| hide
import nbdev; nbdev.nbdev_export()
