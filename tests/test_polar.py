"POLAR core: exactness of the low-rank updates against open_clip with merged weights, training, checkpoints, bad input."
import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from polar_nb.clip import Backbone, load_backbone, image_features, tokenize, data_dir
from polar_nb.compat import import_open_clip
from polar_nb.polar import (PARAMS, LowRankUpdate, encode_text, personalize, random_update, site_shape,
                            eot_summaries, finish_eot, _prefix, _run_from, _truncate, merged_weights)

QUERIES = ['A photo of sks.', 'sks on the beach at sunset', 'a dog and sks playing in the park', 'A photo of a cat.']

@pytest.fixture(scope='module')
def bb(): return load_backbone('ViT-B-32', pretrained=None, device='cpu')

@pytest.fixture(scope='module')
def before(bb):
    "The backbone's weights before any test ran: every test must leave them untouched."
    return {k: v.clone() for k, v in bb.model.state_dict().items()}

@pytest.fixture(scope='module')
def base(bb):
    "open_clip's own embeddings of QUERIES, no update."
    with torch.no_grad(): return bb.model.encode_text(tokenize(bb, QUERIES), normalize=True)

@pytest.fixture(scope='module')
def feats(bb):
    rng = np.random.default_rng(0)
    return image_features(bb, [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(5)], cache=False)

def reference(bb, texts, updates):
    "open_clip's own encode_text with B·A added to the weights by hand (restored bit for bit afterwards)."
    m, d = bb.model, bb.width
    saved = {}
    try:
        with torch.no_grad():
            for u in updates:
                As, Bs = (u.A, u.B) if u.A.dim() == 3 else (u.A[None], u.B[None])
                for l, A, B in zip(u.layers, As, Bs):
                    dW = B @ A
                    if u.param == 'proj': W, dW = m.text_projection, dW.T
                    else:
                        blk = m.transformer.resblocks[l]
                        W = dict(q=blk.attn.in_proj_weight, k=blk.attn.in_proj_weight, v=blk.attn.in_proj_weight,
                                 o=blk.attn.out_proj.weight, mlp1=blk.mlp.c_fc.weight, mlp2=blk.mlp.c_proj.weight)[u.param]
                    saved.setdefault(id(W), (W, W.clone()))
                    if u.param in 'qkv': W['qkv'.index(u.param)*d:('qkv'.index(u.param)+1)*d] += dW
                    else: W += dW
            return m.encode_text(tokenize(bb, texts), normalize=True)
    finally:
        with torch.no_grad():
            for W, orig in saved.values(): W.copy_(orig)

def assert_same_state(bb, before):
    after = bb.model.state_dict()
    assert before.keys() == after.keys()
    for k in before: assert torch.equal(before[k], after[k]), k

def test_no_update_is_open_clip(bb, before, base):
    assert torch.equal(encode_text(bb, QUERIES), base)
    assert torch.equal(encode_text(bb, QUERIES, []), base)

@pytest.mark.parametrize('param', list(PARAMS))
def test_one_update_exact(bb, before, base, param):
    u = random_update(bb, param, scale=5.0 if param in ('q', 'k') else 0.5, seed=1)
    mine, ref = encode_text(bb, QUERIES, [u]), reference(bb, QUERIES, [u])
    assert (mine - ref).abs().max() < 1e-5
    assert (mine - base).abs().max() > 1e-3  # the update does move the embeddings
    assert_same_state(bb, before)

@pytest.mark.parametrize('pair', [('v', 'v'), ('v', 'mlp1'), ('q', 'v'), ('o', 'proj')])
def test_two_updates_exact(bb, before, pair):
    ups = [random_update(bb, p, scale=0.5, seed=i+2) for i, p in enumerate(pair)]
    mine, ref = encode_text(bb, QUERIES, ups), reference(bb, QUERIES, ups)
    assert (mine - ref).abs().max() < 1e-5
    assert (mine - encode_text(bb, QUERIES, ups[:1])).abs().max() > 1e-4  # the second update counts
    assert_same_state(bb, before)

def test_several_layers_exact(bb):
    u = random_update(bb, 'mlp2', layer=[4, -1], rank=2, scale=0.5)
    assert (encode_text(bb, QUERIES, [u]) - reference(bb, QUERIES, [u])).abs().max() < 1e-5

def test_fast_path_gradients_match_general_path(bb):
    tok = tokenize(bb, QUERIES)
    g = torch.Generator().manual_seed(0)
    A0, B0 = F.normalize(torch.randn(1, 512, generator=g), dim=-1), 0.3*torch.randn(512, 1, generator=g)
    grads = []
    for fast in (True, False):
        A, B = A0.clone().requires_grad_(), B0.clone().requires_grad_()
        f = [('v', 11, A, B)]
        if fast: e = finish_eot(bb, eot_summaries(bb, tok), f)
        else: t = _truncate(tok); e = _run_from(bb, _prefix(bb, t, 11), t, 11, merged_weights(bb, f))
        (F.normalize(e, dim=-1) @ torch.linspace(-1, 1, 512)).sum().backward()
        grads.append((A.grad, B.grad))
    for a, b in zip(*grads): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for p in bb.model.parameters(): p.grad = None

def test_training_moves_prompt_towards_images(bb, before, feats):
    u = personalize(bb, feats, iters=60, lr=1e-2)
    c = F.normalize(feats.mean(0), dim=-1)
    texts = ['A photo of sks', 'A photo of a red car.']
    b, a = encode_text(bb, texts), encode_text(bb, texts, [u])
    assert a[0] @ c > b[0] @ c + 0.05
    assert a[1] @ b[1] > 0.9  # a small update (random weights do not single out the token, so every text moves a little)
    assert u.history[-1] < u.history[0] and len(u.history) == 60
    assert (u.A.shape, u.B.shape, u.param, u.layer, u.token, u.backbone, u.width) == ((1, 512), (512, 1), 'v', 11, 'sks', 'ViT-B-32', 512)
    torch.testing.assert_close(u.A.norm(dim=-1), torch.ones(1))
    assert_same_state(bb, before)
    assert all(p.grad is None for p in bb.model.parameters())
    assert all(p.requires_grad for p in bb.model.parameters())

def test_default_hyperparameters(bb, feats):
    u = personalize(bb, feats, iters=5)
    assert (u.meta['lam'], u.meta['lr']) == (0.35, 1e-3)

def test_same_seed_bit_identical(bb, feats):
    a, b = personalize(bb, feats, iters=20, seed=7), personalize(bb, feats, iters=20, seed=7)
    assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B) and a.history == b.history
    assert not torch.equal(a.A, personalize(bb, feats, iters=2, seed=8).A)

def test_more_images_than_templates(bb, feats):
    u = personalize(bb, torch.cat([feats]*3), iters=3)  # 15 images, 12 templates
    assert u.meta['n_images'] == 15

def test_general_path_training(bb, feats):
    for param, layer in [('q', 10), ('mlp1', [10, 11])]:
        u = personalize(bb, feats, param=param, layer=layer, iters=5, lr=1e-2)
        assert u.B.abs().sum() > 0
        assert (encode_text(bb, QUERIES, [u]) - reference(bb, QUERIES, [u])).abs().max() < 1e-5

def test_approximation_and_negatives(bb, feats):
    ex, ap = personalize(bb, feats, iters=30), personalize(bb, feats, iters=30, exact=False)
    assert not torch.allclose(ex.B, ap.B)
    neg = F.normalize(torch.randn(6, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    plain, pushed = personalize(bb, feats, iters=60, lr=1e-2), personalize(bb, feats, iters=60, lr=1e-2, negatives=neg)
    sim = lambda u: (encode_text(bb, ['A photo of sks.'], [u]) @ neg.T).mean()
    assert sim(pushed) < sim(plain)
    assert personalize(bb, feats, iters=3, optimizer='adamw', weight_decay=1e-2).meta['optimizer'] == 'adamw'

def test_save_load_exact(bb, feats, tmp_path):
    u = personalize(bb, feats, iters=20)
    back = LowRankUpdate.load(u.save(tmp_path/'fido.safetensors'), bb)
    assert torch.equal(back.A, u.A) and torch.equal(back.B, u.B)
    assert (back.param, back.layer, back.token, back.backbone, back.width, back.rank, back.history, back.meta) == \
           (u.param, u.layer, u.token, u.backbone, u.width, u.rank, u.history, u.meta)
    assert torch.equal(encode_text(bb, QUERIES, [back]), encode_text(bb, QUERIES, [u]))
    m = random_update(bb, 'k', layer=[1, 2], rank=3)
    back = LowRankUpdate.load(m.save(tmp_path/'m.safetensors'))
    assert back.layer == [1, 2] and torch.equal(back.A, m.A) and torch.equal(back.B, m.B)

def test_load_into_other_backbone_refuses(bb, tmp_path):
    path = random_update(bb, 'v').save(tmp_path/'u.safetensors')
    with pytest.raises(ValueError, match="trained on backbone 'ViT-B-32', not 'ViT-L-14'"):
        LowRankUpdate.load(path, dataclasses.replace(bb, name='ViT-L-14'))
    oc = import_open_clip()
    cfg = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
               text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
    narrow = Backbone(oc.CLIP(**cfg).eval(), bb.tokenizer, bb.preprocess, 'ViT-B-32')
    with pytest.raises(ValueError, match='width'): LowRankUpdate.load(path, narrow)
    with pytest.raises(ValueError, match='width'): encode_text(narrow, QUERIES, [LowRankUpdate.load(path)])
    (tmp_path/'junk.safetensors').write_bytes(b'nothing')
    with pytest.raises(ValueError, match='junk.safetensors'): LowRankUpdate.load(tmp_path/'junk.safetensors')

def test_bad_input_errors(bb, feats):
    with pytest.raises(ValueError, match='512 dimensions'): personalize(bb, torch.randn(4, 768), iters=1)
    with pytest.raises(ValueError, match='empty image set'): personalize(bb, torch.zeros(0, 512), iters=1)
    with pytest.raises(ValueError, match='single BPE token'): personalize(bb, feats, token='skswxyz', iters=1)
    with pytest.raises(ValueError, match='lam must be a finite number'): personalize(bb, feats, iters=2, lam=float('nan'))
    with pytest.raises(ValueError, match='diverged'): personalize(bb, feats, iters=20, lr=1e6)
    with pytest.raises(ValueError, match='512 dimensions'): personalize(bb, feats, negatives=torch.randn(2, 64), iters=1)
    with pytest.raises(ValueError, match='unknown param'): personalize(bb, feats, param='w', iters=1)
    with pytest.raises(ValueError, match='layer'): personalize(bb, feats, layer=12, iters=1)

def test_image_features_cache_and_corrupt_file(bb, tmp_path):
    rng = np.random.default_rng(1)
    for i in range(2): Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path/f'{i}.png')
    paths = [tmp_path/'0.png', tmp_path/'1.png']
    X = image_features(bb, paths, cache=tmp_path/'cache')
    assert X.shape == (2, 512) and torch.allclose(X.norm(dim=-1), torch.ones(2))
    (tmp_path/'copy.png').write_bytes(paths[1].read_bytes())  # same content under another name: a cache hit
    fresh = dataclasses.replace(bb, model=bb.model)
    def fail(*a, **k): raise AssertionError('encoded although cached')
    bb.model.encode_image = fail
    try: assert torch.equal(image_features(fresh, [paths[0], tmp_path/'copy.png'], cache=tmp_path/'cache'), X)
    finally: del bb.model.encode_image
    (tmp_path/'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    with pytest.raises(ValueError, match='broken.jpg'): image_features(bb, [paths[0], tmp_path/'broken.jpg'], cache=False)

def test_backbone_loading(bb):
    assert bb.defaults == dict(lam=0.35, iters=500, lr=1e-3)
    assert (bb.name, bb.width, bb.embed_dim, bb.n_layers) == ('ViT-B-32', 512, 512, 12)
    if not (data_dir()/'world-tiny.safetensors').exists():
        with pytest.raises(FileNotFoundError, match='data/world-tiny.safetensors'): load_backbone('world-tiny', device='cpu')
    with pytest.raises(ValueError, match='unknown backbone'): load_backbone('ViT-Q-99', device='cpu')
    assert site_shape(bb, 'mlp1') == (2048, 512)

def test_backbone_untouched_at_the_end(bb, before):
    assert_same_state(bb, before)
    assert all(p.grad is None and p.requires_grad for p in bb.model.parameters())
    assert not bb.model.training

def per_site(u):
    "A multi-weight update as one single-weight, single-layer update per (weight, layer): what `reference` merges by hand."
    As, Bs = (u.A, u.B) if u.A.dim() == 3 else (u.A[None], u.B[None])
    return [dataclasses.replace(u, param=p, layer=l, A=a, B=b) for (p, l), a, b in zip(u.sites, As, Bs)]

@pytest.mark.parametrize('params,layer,rank', [(('q', 'v'), -1, 1), (('q', 'k', 'v', 'o'), -1, 1), (('q', 'v'), [9, 10, 11], 2),
                                               (('v', 'o'), -1, 1), (('mlp2',), [10, 11], 4), (('k', 'o'), [0, 11], 1)])
def test_update_spanning_several_weights_exact(bb, before, base, params, layer, rank, tmp_path):
    u = random_update(bb, params, layer=layer, rank=rank, scale=2.0, seed=5)
    assert u.sites == [(p, l % 12) for p in params for l in (layer if isinstance(layer, list) else [layer])]
    mine, ref = encode_text(bb, QUERIES, [u]), reference(bb, QUERIES, per_site(u))
    assert (mine - ref).abs().max() < 1e-5 and (mine - base).abs().max() > 1e-3
    back = LowRankUpdate.load(u.save(tmp_path/'u.safetensors'), bb)  # one file, one update
    assert back.param == u.param and back.layer == u.layer and torch.equal(back.A, u.A) and torch.equal(back.B, u.B)
    assert torch.equal(encode_text(bb, QUERIES, [back]), mine)
    assert_same_state(bb, before)

@pytest.mark.parametrize('params', [('q', 'v'), ('q', 'k', 'v', 'o'), ('v', 'o')])
def test_training_several_weights_lowers_the_loss(bb, feats, params):
    u = personalize(bb, feats, iters=10, lr=1e-2, lam=0.0, param=params)
    assert u.param == params and u.A.shape == (len(params), 1, 512) and u.history[-1] < u.history[0]
    assert (encode_text(bb, QUERIES, [u]) - reference(bb, QUERIES, per_site(u))).abs().max() < 1e-5

def test_several_weights_bad_input(bb, feats):
    with pytest.raises(ValueError, match='weights of one shape'): personalize(bb, feats, iters=1, param=('v', 'mlp1'))
    with pytest.raises(ValueError, match='at most once'): random_update(bb, ('v', 'v'))
    with pytest.raises(ValueError, match='not proj'): random_update(bb, ('v', 'proj'))
    u = random_update(bb, ('q', 'v'))
    with pytest.raises(ValueError, match='one factor pair per weight and layer'): dataclasses.replace(u, A=u.A[:1], B=u.B[:1]).check(bb)
