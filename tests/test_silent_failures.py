"Inputs that once gave a wrong number with no error: each is now refused, told apart or recomputed, through the public API."
import dataclasses, threading, time, warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
import polar_nb.baselines as B
from polar_nb.baselines import AvgImText, Polar, TextOnly, caption_recall, concept_set, draw_support, evaluate, general_knowledge, polar_defaults
from polar_nb.clip import content_hash, fingerprint, image_features, load_backbone, pretrained_file
from polar_nb.metrics import metrics_table, positive_ranks
from polar_nb.polar import LowRankUpdate, TrainingDiverged, encode_text, personalize, random_update
from test_baselines import tiny_backbone, _images, _counting, cc, bb  # noqa: F401  (fixtures)


# 1. methods with the same name
def test_same_named_methods_are_kept_apart(cc, bb):
    t = evaluate([Polar(iters=2), Polar(iters=3)], cc, bb, cache=False)
    assert set(t.method) == {'POLAR (iters=2)', 'POLAR (iters=3)'}
    n = len(cc.queries('context'))
    assert t[t.split == 'context-all'].n_queries.tolist() == [n, n]
    assert {'iters': 2} .items() <= __import__('json').loads(t.settings.iloc[0]).items()
    t = evaluate([AvgImText(), AvgImText(description='rich')], cc, bb, cache=False)
    assert t.method.nunique() == 2 and t[t.split == 'context-all'].n_queries.tolist() == [n, n]
    with pytest.raises(ValueError, match='the same method is given twice'): evaluate([TextOnly(), TextOnly()], cc, bb, cache=False)
    with pytest.raises(ValueError, match='no method'): evaluate([], cc, bb, cache=False)

# 2. cache keys hash the full content
def test_cache_key_sees_a_change_deep_inside_a_tensor(cc, bb, tmp_path, monkeypatch):
    cs = concept_set(cc, bb, cache=False)
    N1 = torch.nn.functional.normalize(torch.randn(1000, bb.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    N2 = N1.clone(); N2[500:510] = N1[:10]  # differs in middle rows; str() of the two is the same
    assert str(N1) == str(N2) and content_hash(N1) != content_hash(N2)
    calls = _counting(monkeypatch, 'personalize_many', runs=lambda a: len(a[1]))
    Polar(iters=2, negatives=N1).fit(bb, cs, cache=tmp_path)
    again = Polar(iters=2, negatives=N2).fit(bb, cs, cache=tmp_path)
    assert again.counts == dict(trained=3, loaded=0) and len(calls) == 6
    with pytest.raises(TypeError, match='cannot hash'): content_hash(dict(x=object()))

def test_fingerprint_sees_every_element():
    bb = tiny_backbone(0)
    f0 = fingerprint(bb.model)
    with torch.no_grad(): bb.model.token_embedding.weight.view(-1)[777] += 1e-5  # 1.6M values: a strided sample would skip it
    assert fingerprint(bb.model) != f0

# 3. updates and the weights they were trained on
def test_update_on_other_weights_or_corrupt_is_refused(bb, tmp_path):
    u = random_update(bb, scale=0.1)
    other = tiny_backbone(seed=1)  # same name and architecture, other weights
    with pytest.raises(ValueError, match='trained on other weights'): encode_text(other, ['a photo of sks'], [u])
    path = u.save(tmp_path/'u.safetensors')
    with pytest.raises(ValueError, match='trained on other weights'): LowRankUpdate.load(path, other)
    moved = LowRankUpdate.load(path, other, check_weights=False)
    encode_text(other, ['a photo of sks'], [moved])
    raw = bytearray(path.read_bytes()); raw[-5] ^= 0x40
    (tmp_path/'flip.safetensors').write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='corrupt'): LowRankUpdate.load(tmp_path/'flip.safetensors', bb)
    nan = dataclasses.replace(u, B=torch.full_like(u.B, float('nan'))).save(tmp_path/'nan.safetensors')
    with pytest.raises(ValueError, match='NaN'): LowRankUpdate.load(nan, bb)

# 4. arguments and divergence
@pytest.mark.parametrize('kw,msg', [(dict(iters=0), 'iters'), (dict(iters=-3), 'iters'), (dict(lam=-1.0), 'lam'), (dict(rank=True), 'rank'),
                                    (dict(rank=2.5), 'rank'), (dict(layer=True), 'layers'), (dict(lr=float('nan')), 'lr'), (dict(lr=-1e-3), 'lr')])
def test_personalize_refuses_bad_arguments(bb, kw, msg):
    X = torch.randn(3, bb.embed_dim)
    with pytest.raises(ValueError, match=msg): personalize(bb, X, **{'iters': 2, **kw})

def test_personalize_detects_a_run_that_blows_up(bb):
    X = torch.randn(3, bb.embed_dim, generator=torch.Generator().manual_seed(0))
    for lam in (0.35, 0.0):
        with pytest.raises(TrainingDiverged, match='diverged'): personalize(bb, X, iters=20, lr=1e6, lam=lam)
    personalize(bb, X, iters=20, lr=1e-2, lam=0.0)  # a normal run passes

# 6. caption lists aligned with the pool
def test_captions_must_align_with_the_pool(cc, bb):
    pool = image_features(bb, cc.pool, cache=False)
    with pytest.raises(ValueError, match='captions'): caption_recall(bb, ['a photo'] * 3, pool)
    with pytest.raises(ValueError, match='captions'): general_knowledge(TextOnly(), cc, bb, captions=['a photo'] * 3, cache=False)

# 8, 9, 12. the image feature cache
def test_bad_cache_entries_are_recomputed(tmp_path):
    bb = tiny_backbone(0)
    pics = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(3)]
    X = image_features(bb, pics, cache=tmp_path)
    fs = sorted(tmp_path.rglob('*.npy'))
    fs[0].write_bytes(fs[0].read_bytes()[:30]); np.save(fs[1], np.zeros(bb.embed_dim, np.float32))
    with pytest.warns(UserWarning, match='computing it again') as w: Y = image_features(bb, pics, cache=tmp_path)
    assert torch.allclose(X, Y, atol=1e-5) and len(w) == 2 and {str(fs[0]), str(fs[1])} <= {str(x.message).split(' ')[3] for x in w}

def test_threads_share_one_cache(tmp_path):
    bb = tiny_backbone(0)
    pics = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(6)]
    with ThreadPoolExecutor(4) as ex: outs = list(ex.map(lambda _: image_features(bb, pics, cache=tmp_path, batch_size=2), range(4)))
    assert all(torch.allclose(o, outs[0]) for o in outs) and not [p for p in tmp_path.rglob('*') if p.suffix == '.tmp']

def test_every_bad_image_is_named(tmp_path):
    bb = tiny_backbone(0)
    good = tmp_path/'good.png'; Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    for n in ('bad one.jpg', 'ünïcode.png'): (tmp_path/n).write_bytes(b'not an image')
    with pytest.raises(ValueError) as e: image_features(bb, [tmp_path/'bad one.jpg', good, tmp_path/'ünïcode.png'], cache=tmp_path)
    assert 'bad one.jpg' in str(e.value) and 'ünïcode.png' in str(e.value)
    assert len(list(tmp_path.rglob('*.npy'))) == 1  # the good one is kept

# 11. offline by default
def test_pretrained_weights_not_here_fail_at_once(tmp_path):
    t0 = time.time()
    assert pretrained_file('ViT-B-32', 'openai', cache_dir=tmp_path)[0] is None
    with pytest.raises(FileNotFoundError, match='not on this machine'):
        load_backbone('ViT-B-32', pretrained='openai', device='cpu', cache_dir=tmp_path)
    assert time.time() - t0 < 30

# protocol: per benchmark defaults and support draws
def test_paper_protocol_per_benchmark():
    vit = dataclasses.replace(tiny_backbone(0), name='ViT-B-32', tuned=False)
    assert polar_defaults(vit, 'deepfashion2') == dict(lam=0.1, iters=50, lr=1e-3)
    assert polar_defaults(dataclasses.replace(vit, name='ViT-L-14'), 'deepfashion2')['iters'] == 200
    assert polar_defaults(vit, 'conconchi') == dict(lam=0.35, iters=500, lr=1e-3)
    assert Polar(iters=7).resolved(vit, 'deepfashion2') == dict(lam=0.1, iters=7, lr=1e-3)
    paths = [f'{i}.jpg' for i in range(15)]
    d = draw_support(paths, 5, seed=123, k=2)
    assert len(d) == 5 and d == sorted(d, key=paths.index) and d == draw_support(paths, 5, seed=123, k=2)

def test_tie_conventions():
    s = [0.5, 0.5, 0.5, 0.2]
    assert positive_ranks(s, [1], 'pessimistic').tolist() == [3]
    assert positive_ranks(s, [1], 'optimistic').tolist() == [1]
    assert positive_ranks(s, [1], 'index').tolist() == [2]
    assert metrics_table(np.array([s]), [[1]], ties='optimistic').mrr.iloc[0] == 1.0
