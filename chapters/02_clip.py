# %% [markdown]
# # Backbones and image features
#
# > Loading a CLIP backbone (any open_clip architecture, or the embedded one), tokenising prompts, and extracting cached, L2-normalised image features.

# %% [markdown]
# Which CLIP does an experiment run, and how is each image encoded only once? POLAR never changes
# the image encoder (the paper's §3): every image of a benchmark is encoded once, and only the text
# encoder is personalized; the paper's experiments run CLIP's ViT-B/32 and ViT-L/14 (§4, supplement
# §12). This chapter holds the two halves of that contract. A `Backbone`
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
import fcntl, hashlib, io, json, logging, os, re, tempfile, threading, warnings, weakref
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
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
def _shown_path(p):
    "`p` as a display shows it: a file shipped in the repository's `data/` relative to the repository, anything else as it is."
    try:
        rel = Path(p).resolve().relative_to(data_dir().parent)
        return rel.as_posix() if Path(p).is_absolute() else p
    except (TypeError, ValueError, OSError): return p


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
    tuned: bool = False  # whether `defaults` were tuned for this backbone (shipped with it) rather than taken from the paper

    @property
    def width(self)->int: return self.model.transformer.width
    @property
    def n_layers(self)->int: return len(self.model.transformer.resblocks)
    @property
    def embed_dim(self)->int:
        p = self.model.text_projection
        return p.out_features if isinstance(p, torch.nn.Linear) else p.shape[1]
    def __repr__(self): return (f"Backbone({self.name!r}, pretrained={_shown_path(self.pretrained)!r}, device={self.device!r}, "
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

def _hf_file(hub:str, cache_dir=None)->str|None:
    "The cached Hugging Face file of open_clip's `hf_hub` entry ('org/model/' or 'org/model/file'), or None."
    try: from huggingface_hub import try_to_load_from_cache
    except ImportError: return None
    repo, fname = os.path.split(hub)
    names = [fname] if fname else ['open_clip_model.safetensors', 'open_clip_pytorch_model.bin']
    if fname.endswith(('.bin', '.pth')): names.insert(0, fname[:-4] + '.safetensors')
    for n in names:
        f = try_to_load_from_cache(repo, n, cache_dir=cache_dir)
        if isinstance(f, str) and os.path.isfile(f): return f
    return None

def pretrained_file(name:str, # open_clip architecture
                    tag:str, # its pretrained tag (openai, laion2b_s34b_b79k, ...)
                    cache_dir:str|Path|None=None, # open_clip's cache folder (default: its own)
                   )->tuple[str|None, str|None, list[str]]:
    "Where the weights of (`name`, `tag`) are on this machine: (file, 'hf' or 'url', the places looked in); no network."
    cfg = import_open_clip().pretrained.get_pretrained_cfg(name, tag)
    looked = []
    if cfg.get('hf_hub'):
        from huggingface_hub.constants import HF_HUB_CACHE
        looked.append(f"the Hugging Face cache ({cache_dir or HF_HUB_CACHE}), repository {cfg['hf_hub'].rstrip('/')}")
        if f := _hf_file(cfg['hf_hub'], cache_dir): return f, 'hf', looked
    if cfg.get('url'):
        f = Path(cache_dir or '~/.cache/clip').expanduser()/os.path.basename(cfg['url'])
        looked.append(f"{f} (from {cfg['url']})")
        if f.is_file(): return str(f), 'url', looked
    return None, None, looked


# %% [markdown]
# Nothing is downloaded unless the caller asks: a pretrained tag is looked up in open_clip's caches
# first, and when its weights are not there the error says where to put them, at once. A tag's
# weights found in the Hugging Face cache load through open_clip with the hub held offline; a file
# in open_clip's own cache loads as a checkpoint, with the tag's preprocessing and activation
# (`quick_gelu`), exactly as open_clip would set them for the tag.

# %%
#| export
@contextmanager
def _hub_offline():
    "Within the block the Hugging Face hub answers from its cache only (no request leaves the machine)."
    try: import huggingface_hub.constants as c
    except ImportError: yield; return
    old = c.HF_HUB_OFFLINE; c.HF_HUB_OFFLINE = True
    try: yield
    finally: c.HF_HUB_OFFLINE = old

def _tag_kwargs(name:str, tag:str, download:bool, cache_dir=None)->dict:
    "open_clip's `pretrained` (and preprocessing) arguments for a tag, a local file, or None; refused when the weights are not here."
    oc = import_open_clip()
    cfg = oc.pretrained.get_pretrained_cfg(name, tag)
    if not cfg:
        if Path(tag).expanduser().is_file(): return dict(pretrained=str(Path(tag).expanduser()))
        raise ValueError(f"pretrained {tag!r} is neither a pretrained tag of {name} ({', '.join(oc.list_pretrained_tags_by_model(name)) or 'none'}) "
                         f"nor a checkpoint file")
    if download: return dict(pretrained=tag, cache_dir=cache_dir)
    f, kind, looked = pretrained_file(name, tag, cache_dir)
    if kind == 'hf': return dict(pretrained=tag, cache_dir=cache_dir)
    if kind == 'url': return dict(pretrained=f, force_quick_gelu=bool(cfg.get('quick_gelu', False)), image_mean=cfg.get('mean'),
                                  image_std=cfg.get('std'), image_interpolation=cfg.get('interpolation'), image_resize_mode=cfg.get('resize_mode'))
    raise FileNotFoundError(f"the weights of {name} (pretrained={tag!r}) are not on this machine, and nothing is downloaded unless asked. "
                            f"Looked in: {'; '.join(looked)}. Put the file there, set pretrained to a local checkpoint file, "
                            f"or pass download=True to let open_clip fetch it")

def _open_clip_backbone(name, pretrained, device, seed, download=False, cache_dir=None)->Backbone:
    "An open_clip architecture, random (seeded) or with the given pretrained weights (found on this machine unless `download`)."
    oc = import_open_clip()
    if name not in oc.list_models(): raise ValueError(
        f"unknown backbone {name!r}: neither registered ({sorted(BACKBONES)}) nor an open_clip architecture "
        f"(e.g. ViT-B-32, ViT-L-14; open_clip.list_models() lists {len(oc.list_models())})")
    kw = _tag_kwargs(name, pretrained, download, cache_dir) if pretrained else dict(pretrained=None)
    flt, root = _Quiet(), logging.getLogger()
    root.addFilter(flt)
    try:
        with torch.random.fork_rng(devices=[]), (nullcontext() if download else _hub_offline()):
            torch.manual_seed(seed)
            model, _, preprocess = oc.create_model_and_transforms(name, device=device, **{k: v for k,v in kw.items() if v is not None})
    finally: root.removeFilter(flt)
    return Backbone(model.eval(), oc.get_tokenizer(name), preprocess, name, pretrained or None, device)


# %%
#| export
def load_backbone(name:str|None=None, # open_clip architecture, registered name (world-tiny) or .safetensors file; default: the settings' backbone
                  pretrained:str|None=None, # open_clip pretrained tag or local checkpoint; None or '' = random weights
                  device:str='auto', # torch device; auto = a GPU when there is one
                  seed:int=0, # seed of the random weights (pretrained=None)
                  download:bool=False, # let open_clip download a pretrained tag's weights that are not on this machine
                  cache_dir:str|Path|None=None, # open_clip's weights cache (default: its own, ~/.cache/clip, and the Hugging Face cache)
                 )->Backbone:
    "Load a CLIP backbone for personalization, in eval mode and fp32; nothing is downloaded unless `download`."
    if name is None:
        s = get_settings(); name, pretrained = s.backbone, pretrained or s.pretrained or None
        if device == 'auto': device = s.device
    device = resolve_device(device)
    if name in BACKBONES: return BACKBONES[name](pretrained, device, seed)
    if str(name).endswith('.safetensors'): return load_safetensors_backbone(name, device=device)
    return _open_clip_backbone(name, pretrained, device, seed, download, None if cache_dir is None else str(cache_dir))


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
# A pretrained tag whose weights are not on this machine fails at once, saying where it looked; an
# unknown tag is named with the tags there are:

# %%
import time, tempfile
t0 = time.time()
with tempfile.TemporaryDirectory() as d:  # an empty cache: the weights are not here
    test_eq(pretrained_file('ViT-B-32', 'openai', cache_dir=d)[:2], (None, None))
    test_fail(lambda: load_backbone('ViT-B-32', pretrained='openai', device='cpu', cache_dir=d), contains='not on this machine')
    try: load_backbone('ViT-B-32', pretrained='openai', device='cpu', cache_dir=d)
    except FileNotFoundError as e: print(str(e).replace(d, '<cache>'))
assert time.time() - t0 < 20, 'no download was attempted'
test_fail(lambda: load_backbone('ViT-B-32', pretrained='openia', device='cpu'), contains="neither a pretrained tag of ViT-B-32")

# %% [markdown]
# A file in open_clip's own cache is found and loaded as the tag's weights, with the tag's
# preprocessing and activation. Here a random ViT-B-32's weights stand in for OpenAI's file:

# %%
with tempfile.TemporaryDirectory() as d:
    ref = load_backbone('ViT-B-32', device='cpu', seed=3)
    torch.save(ref.model.state_dict(), Path(d)/'ViT-B-32.pt')
    f, kind, _ = pretrained_file('ViT-B-32', 'openai', cache_dir=d)
    test_eq((Path(f).name, kind), ('ViT-B-32.pt', 'url'))
    got = load_backbone('ViT-B-32', pretrained='openai', device='cpu', cache_dir=d)
test_eq(got.pretrained, 'openai')
assert torch.equal(got.model.text_projection, ref.model.text_projection)
test_eq(type(got.model.transformer.resblocks[0].mlp.gelu).__name__, 'QuickGELU')  # as open_clip sets it for the openai tag
test_eq(type(ref.model.transformer.resblocks[0].mlp.gelu).__name__, 'GELU')
del ref, got


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
    return atomic_write(path, len(h).to_bytes(8, 'little') + h + b[8+n:])

def atomic_write(path:str|Path, # the file to write
                 data:bytes|Callable, # its bytes, or f(binary file) that writes them
                )->Path:
    "Write `path` complete or not at all: into a temporary file of its own (unique per writer, thread or process) moved into place."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as fh:
            if callable(data): data(fh)
            else: fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp): os.unlink(tmp)
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


# %% [markdown]
# Processes that share a cache folder (the chapters and tests of a run, on several workers) may set
# out to compute the same entries at once. `file_locks` holds an exclusive lock on each entry's
# `.lock` file, taken in sorted order (so two processes never wait on each other); the one that
# gets them computes, the others wait and then find the entries written.

# %%
#| export
@contextmanager
def file_locks(paths, # the cache files about to be written (None entries are skipped)
              ):
    "Exclusive locks (fcntl) on `<path>.lock` of each of `paths`, taken in sorted order and released at the end of the block."
    held = []
    try:
        for p in sorted({Path(p) for p in paths if p}):
            p.parent.mkdir(parents=True, exist_ok=True)
            f = open(p.with_name(p.name + '.lock'), 'a'); held.append(f)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        for f in held: fcntl.flock(f, fcntl.LOCK_UN); f.close()


# %%
import multiprocessing as mp
def _hold(path, q):
    with file_locks([path]): q.put('held'); time.sleep(1.0)
with tempfile.TemporaryDirectory() as d:
    q, f = mp.get_context('fork').Queue(), Path(d)/'entry.safetensors'
    other = mp.get_context('fork').Process(target=_hold, args=(f, q)); other.start(); q.get(timeout=30)
    t0 = time.perf_counter()
    with file_locks([f, None]): waited = time.perf_counter() - t0
    other.join()
    assert waited > 0.5, waited  # the second process waited for the first
    test_eq(sorted(p.name for p in Path(d).iterdir()), ['entry.safetensors.lock'])


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
    return Backbone(model.to(device).eval(), tok, pre, name or meta['name'], str(path), device, json.loads(meta['defaults']), tuned=True)


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
TOKEN_BYTES = 2**27  # memo of tokenised text lists per backbone (128 MiB)

def tokenize(bb:Backbone, texts:str|list[str])->torch.Tensor:
    "Token ids of `texts`, [n, context_length], on the backbone's device (a list tokenised before is read from a memo)."
    texts = [texts] if isinstance(texts, str) else list(texts)
    memo, key = bb.cache.setdefault('tokens', OrderedDict()), (id(bb.tokenizer), str(bb.device), tuple(texts))
    if (tok := memo.get(key)) is None:
        tok = memo[key] = bb.tokenizer(texts).to(bb.device)
        while sum(t.numel() * t.element_size() for t in memo.values()) > TOKEN_BYTES and len(memo) > 1: memo.popitem(last=False)
    memo.move_to_end(key)
    return tok.clone()  # the caller's own copy

def eot_positions(tokens:torch.Tensor)->torch.Tensor:
    "Position of the EOT token (the pooled one) in each row of `tokens`."
    return tokens.argmax(dim=-1)


# %%
toks = tokenize(bb, ['A photo of sks', 'sks'])
test_eq(toks.shape, (2, 77))
test_eq(eot_positions(toks).tolist(), [5, 2])
toks[0, 0] = -1  # the caller's copy: the memo is untouched
test_eq(tokenize(bb, ['A photo of sks', 'sks']), bb.tokenizer(['A photo of sks', 'sks']))
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
def _tensor_bytes(t:torch.Tensor)->bytes:
    "The raw bytes of a tensor's values (any dtype), in row-major order."
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b''

def content_hash(obj, # None, bool, int, float, str, bytes, Path, tensor, array, or lists / tuples / dicts of them
                 digest_size:int=16)->str:
    "A hash of `obj`'s full content: tensors and arrays by dtype, shape and every byte; anything else it cannot hash exactly is a TypeError."
    h = hashlib.blake2b(digest_size=digest_size)
    def feed(o):
        if isinstance(o, torch.Tensor): h.update(f'T{o.dtype}{tuple(o.shape)}'.encode()); h.update(_tensor_bytes(o))
        elif isinstance(o, np.ndarray): feed(torch.from_numpy(np.ascontiguousarray(o)))
        elif isinstance(o, np.generic): feed(o.item())
        elif o is None or isinstance(o, (bool, int, float, str)): h.update(f'{type(o).__name__}:{o!r};'.encode())
        elif isinstance(o, bytes): h.update(b'B%d:' % len(o) + o)
        elif isinstance(o, Path): feed(str(o))
        elif isinstance(o, (list, tuple)):
            h.update(f'L{len(o)}['.encode())
            for x in o: feed(x)
            h.update(b']')
        elif isinstance(o, dict):
            h.update(f'D{len(o)}{{'.encode())
            for k in sorted(o, key=repr): feed(k); feed(o[k])
            h.update(b'}')
        else: raise TypeError(f"content_hash cannot hash a {type(o).__name__} exactly ({o!r:.60}): give tensors, arrays, numbers, strings or containers of them")
    feed(obj)
    return h.hexdigest()


# %% [markdown]
# Every cache key in the package is a `content_hash` of everything the entry depends on. Tensors
# are hashed by every byte: two tensors that differ in one element deep inside have different
# keys (`str()` of a large tensor is abbreviated, so it is never used for a key), and a value the
# hash cannot take exactly is refused rather than turned into text.

# %%
A = torch.zeros(2000, 8); B = A.clone(); B[1000, 3] = 1e-6
assert str(A) == str(B) and content_hash(A) != content_hash(B)  # str() hides the change; the hash does not
test_eq(content_hash(dict(a=1, b=[A, 'x'])), content_hash(dict(b=[A.clone(), 'x'], a=1)))  # order of keys does not matter
assert content_hash(A) != content_hash(A.double()) and content_hash(1) != content_hash(1.0) and content_hash('1') != content_hash(1)
test_eq(content_hash(np.ones(3, np.float32)), content_hash(torch.ones(3)))
test_fail(lambda: content_hash(dict(f=object())), contains='cannot hash a object')

# %%
#| export
_FINGERPRINTS = weakref.WeakKeyDictionary()  # module -> (state of its tensors, fingerprint)

def _tensor_state(m:torch.nn.Module)->tuple:
    "Identity and in-place version of every tensor of `m`: changes whenever a weight is replaced or modified."
    return tuple((k, id(v), v._version, v.data_ptr()) for k,v in m.state_dict(keep_vars=True).items())

def fingerprint(weights:torch.nn.Module|dict, # a module, or a state dict
               )->str:
    "A hash of a module's weights, or of a state dict: names, dtypes, shapes and every byte of every tensor (memoised per module)."
    if not isinstance(weights, torch.nn.Module): return content_hash({k: v for k,v in weights.items()})
    st = _tensor_state(weights)
    if (hit := _FINGERPRINTS.get(weights)) and hit[0] == st: return hit[1]
    fp = content_hash(dict(weights.state_dict()))
    _FINGERPRINTS[weights] = (st, fp)
    return fp

def _cache_folder(bb:Backbone, cache)->Path|None:
    "The feature cache folder of `bb` (None when caching is off): its name, image tower's weights and preprocessing."
    if cache is False or cache is None: return None
    root = get_settings().cache_dir if cache is True else Path(cache)
    key = content_hash([fingerprint(bb.model.visual), repr(bb.preprocess)])
    return root/'image_features'/f"{re.sub(r'[^A-Za-z0-9_.-]', '_', bb.name)}-{key}"


# %%
test_eq(fingerprint(bb.model.visual), fingerprint(bb2.model.visual))  # same seed, same weights
with torch.no_grad(): bb2.model.visual.proj.mul_(2)
assert fingerprint(bb.model.visual) != fingerprint(bb2.model.visual)
test_eq(fingerprint(bb2.model.visual.state_dict()), fingerprint(bb2.model.visual))  # a state dict: the same hash
f0 = fingerprint(bb2.model.visual)
with torch.no_grad(): bb2.model.visual.transformer.resblocks[5].mlp.c_fc.weight[1000, 100] += 1e-4  # one element a sample would skip
assert fingerprint(bb2.model.visual) != f0
del bb2
_cache_folder(bb, True).parts[-3:]


# %%
#| export
def _key(item)->str:
    "The content hash of an image path (its bytes, read in chunks) or of a PIL image (mode, size, pixels)."
    h = hashlib.blake2b(digest_size=16)
    if isinstance(item, Image.Image): h.update(f'{item.mode}{item.size}'.encode() + item.tobytes()); return h.hexdigest()
    try:
        with open(item, 'rb') as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b''): h.update(chunk)
    except OSError as e: raise FileNotFoundError(f"cannot read image {item}: {e.strerror or e}") from e
    return h.hexdigest()

def _decode(item)->Image.Image:
    "A PIL RGB image of an image path or PIL image, naming the file when it is not a readable image."
    if isinstance(item, Image.Image): return item.convert('RGB')
    try:
        with Image.open(item) as im: im.load(); return im.convert('RGB')
    except Exception as e: raise ValueError(f"cannot read image {item}: {type(e).__name__}: {e}") from e

def _load_cached(f:Path, dim:int)->np.ndarray|None:
    "The feature cached in `f`, or None (with a warning naming it) when it is unreadable or not a unit vector of `dim` floats."
    try: v = np.load(f, allow_pickle=False)
    except Exception as e: why = f"unreadable ({type(e).__name__}: {e})"
    else:
        if v.shape != (dim,) or v.dtype != np.float32: why = f"holds a {v.dtype} array of shape {v.shape}, not {dim} float32 values"
        elif not np.isfinite(v).all(): why = "holds NaN or inf"
        elif abs(float(np.linalg.norm(v)) - 1) > 1e-3: why = f"holds a vector of norm {np.linalg.norm(v):.4g}, not a unit vector"
        else: return v
    warnings.warn(f"cached image feature {f} {why}: computing it again")
    return None


# %%
#| export
@torch.no_grad()
def _encode_images(bb:Backbone, ims:list)->np.ndarray:
    "Normalised features of one batch of decoded images."
    x = torch.stack([bb.preprocess(im) for im in ims]).to(bb.device)
    return F.normalize(bb.model.encode_image(x).float(), dim=-1).cpu().numpy()

def image_features(bb:Backbone, # the backbone whose image tower encodes
                   images:list, # image paths and/or PIL images
                   batch_size:int=64, # images per forward pass (and files held in memory at once)
                   cache:bool|str|Path=True, # True: settings' cache_dir; a folder; False: no cache
                   progress:bool|None=None, # tqdm bar; None: only when more than one batch is encoded
                  )->torch.Tensor:
    "L2-normalised image features [n, embed_dim] (float32, CPU), cached per backbone and image content."
    images = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
    folder = _cache_folder(bb, cache)
    out = np.zeros((len(images), bb.embed_dim), dtype=np.float32)
    todo = []  # (index, key) of images not in the cache
    for i,item in enumerate(images):
        key = _key(item)
        v = _load_cached(f, bb.embed_dim) if folder and (f := folder/f'{key}.npy').is_file() else None
        if v is None: todo.append((i, key))
        else: out[i] = v
    batches, bad = [todo[s:s+batch_size] for s in range(0, len(todo), batch_size)], []
    show = len(batches) > 1 if progress is None else progress
    for b in tqdm(batches, desc=f'image features ({bb.name})', disable=not show):
        ims = []
        for i,key in b:
            try: ims.append((i, key, _decode(images[i])))
            except ValueError as e: bad.append(str(e))
        if not ims: continue
        for (i,key,_),v in zip(ims, _encode_images(bb, [im for _,_,im in ims])):
            out[i] = v
            if folder: _save_npy(folder/f'{key}.npy', v)
    if bad: raise ValueError(f"{len(bad)} of {len(images)} image(s) cannot be read (the others are encoded{' and cached' if folder else ''}):\n" + '\n'.join(bad))
    return torch.from_numpy(out)

def _save_npy(path:Path, v:np.ndarray):
    "Write one cached feature atomically."
    atomic_write(path, lambda fh: np.save(fh, v))


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
    (d/'empty.png').write_bytes(b'')
    try: image_features(bb, [d/'broken.jpg', d/'a.png', d/'empty.png'], cache=d/'cache')  # every bad file is named
    except ValueError as e: msg = str(e); print(msg.replace(str(d), "<folder>"))
    assert 'broken.jpg' in msg and 'empty.png' in msg and msg.startswith('2 of 3')
    test_fail(lambda: image_features(bb, [d/'missing.png'], cache=False), contains='missing.png')
X[:, :4]

# %% [markdown]
# What is read from the cache is checked: a cached file that is truncated, or holds something
# other than a unit vector of the backbone's width (zeros, NaN, another shape), is named in a
# warning and computed again.

# %%
import warnings
with tempfile.TemporaryDirectory() as d:
    X = image_features(bb, pics, cache=Path(d))
    fs = {f.stem: f for f in Path(d).rglob('*.npy')}
    f0, f1, f2 = (fs[_key(p)] for p in pics)
    f0.write_bytes(f0.read_bytes()[:40])                     # truncated
    np.save(f1, np.zeros(512, np.float32))                   # zeros
    np.save(f2, np.ones(7, np.float32))                      # another shape
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        Y = image_features(bb, pics, cache=Path(d))
    test_close(Y, X, eps=1e-5)
    said = ' '.join(str(x.message) for x in w)
    for f,why in ((f0, 'unreadable'), (f1, 'norm 0'), (f2, 'shape (7,)')): assert str(f) in said and why in said, why
    assert all(_load_cached(f, 512) is not None for f in (f0, f1, f2))  # rewritten, valid now
    print(str(w[1].message).replace(d, '<cache>'))

# %% [markdown]
# Writers never share a temporary file: threads encoding into one cache at once each write their
# own and move it into place.

# %%
from concurrent.futures import ThreadPoolExecutor
with tempfile.TemporaryDirectory() as d:
    with ThreadPoolExecutor(4) as ex: outs = list(ex.map(lambda _: image_features(bb, pics, cache=Path(d)), range(4)))
    for o in outs: test_close(o, outs[0], eps=1e-6)
    test_eq(sorted(p.suffix for p in Path(d).rglob('*') if p.is_file()), ['.npy']*3)  # no temporary file left

# %% [markdown]
# ## What we found
#
# - open_clip's architectures load with seeded random weights (the same call gives the same model),
#   and nothing is downloaded unless asked: a pretrained tag whose weights are not on the machine
#   fails at once, naming the caches it looked in, and a file in open_clip's own cache loads with
#   the tag's preprocessing and activation.
# - `sks` is one BPE token of open_clip's tokenizer (id 48136), and a text is pooled at its EOT
#   token, the largest id of its row ("A photo of sks" at position 5).
# - A backbone made by this package is one safetensors file whose header keys are sorted, so the same
#   content is the same bytes; `world-tiny` is such a file.
# - Image features are cached under the image tower's fingerprint and each file's bytes. Unreadable
#   images are named and the others encoded (2 of 3 in the check above), and a damaged cache entry
#   (a zero vector above) is named in a warning and computed again.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
