"The embedded backbone: the shipped file, its loader, the saver and the training loop's pieces."
import json, math
import numpy as np, pytest, torch
from safetensors import safe_open
from polar_nb.clip import load_backbone, load_safetensors_backbone, frozen_token_embedding
from polar_nb.polar import encode_text
from polar_nb.world_tiny import (WORLD_TINY_CFG, TOKEN_SEED, build_world_tiny, save_world_tiny, world_tiny_path,
                                 encode_text_bucketed, _draw, _lr_at, scene_groups, choose_defaults)


@pytest.fixture(scope='module')
def bb():
    return load_backbone('world-tiny')


def test_shipped_file():
    p = world_tiny_path()
    assert p.is_file(), f"{p} is missing"
    assert p.stat().st_size <= 25 * 2**20
    with safe_open(str(p), 'pt') as f:
        meta, keys = f.metadata(), set(f.keys())
    assert 'token_embedding.weight' not in keys  # regenerated from its seed, never stored
    assert json.loads(meta['model_cfg']) == json.loads(json.dumps(WORLD_TINY_CFG))
    assert json.loads(meta['token_embedding'])['seed'] == TOKEN_SEED
    assert len(json.loads(meta['history'])) > 0 and json.loads(meta['train'])
    search = json.loads(meta['defaults_search'])
    assert search, 'the defaults were chosen from a stored search'


def test_loads_offline_with_its_defaults(bb):
    assert bb.name == 'world-tiny' and len(bb.model.transformer.resblocks) >= 6
    assert set(bb.defaults) >= {'lam', 'iters', 'lr'}
    assert bb.defaults['lam'] >= 0 and bb.defaults['iters'] > 0 and bb.defaults['lr'] > 0
    assert len(bb.tokenizer.encode('sks')) == 1  # the concept token is one BPE token
    W = bb.model.token_embedding.weight
    assert torch.equal(W, frozen_token_embedding(W.shape[0], W.shape[1], TOKEN_SEED))


def test_defaults_are_the_searched_choice(bb):
    import pandas as pd
    with safe_open(str(world_tiny_path()), 'pt') as f:
        search = pd.DataFrame(json.loads(f.metadata()['defaults_search']))
    assert choose_defaults(search) == bb.defaults


def test_save_load_roundtrip(tmp_path):
    m = build_world_tiny(seed=3).eval()
    p = save_world_tiny(m, tmp_path/'w.safetensors', dict(lam=0.01, iters=10, lr=1e-2), [1.0, 0.5], dict(steps=2))
    bb2 = load_safetensors_backbone(p)
    for (k, a), b in zip(m.state_dict().items(), bb2.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert bb2.defaults == dict(lam=0.01, iters=10, lr=1e-2)


def test_bucketed_encoding_is_exact(bb):
    tk = bb.tokenizer(['a cup', 'A photo of sks on the beach next to a red striped ball', 'snow', 'sks'])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_bucketed(bb.model, tk), bb.model.encode_text(tk), atol=1e-5, rtol=0)


def test_group_batches():
    g, gc = scene_groups(400), scene_groups(400, by='place+colour')
    assert (gc // 10 == g).all()
    for seed in range(5):
        idx = _draw(np.random.default_rng(seed), 400, 30, g, 3)
        assert len(set(idx)) == 30 and len(set(g[idx])) == 3
        assert sorted(np.bincount(g[idx])[np.bincount(g[idx]) > 0]) == [10, 10, 10]
    assert len(set(_draw(np.random.default_rng(0), 400, 30, None, 0))) == 30
    with pytest.raises(ValueError, match='groups hold'):
        _draw(np.random.default_rng(0), 400, 300, gc, 2)
    with pytest.raises(ValueError):
        scene_groups(3, by='colour')


def test_schedule():
    assert math.isclose(_lr_at(49, 500, 1e-3, 50), 1e-3)
    assert _lr_at(499, 500, 1e-3, 50) < 1e-6
    assert all(_lr_at(s, 500, 1e-3, 50) >= _lr_at(s + 1, 500, 1e-3, 50) for s in range(50, 499))


def test_update_refuses_another_backbone(bb, tmp_path):
    from polar_nb.polar import personalize, LowRankUpdate
    u = personalize(bb, torch.randn(3, bb.embed_dim), iters=3)
    p = u.save(tmp_path/'u.safetensors')
    other = load_backbone('ViT-B-32')
    with pytest.raises(ValueError):
        LowRankUpdate.load(p, other)
    assert encode_text(bb, ['A photo of sks.'], [LowRankUpdate.load(p, bb)]).shape == (1, bb.embed_dim)
