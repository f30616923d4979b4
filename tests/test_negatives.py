"""`polar_nb.negatives` on hand-made support sets: λ_neg = 0 is POLAR, updates are cached by their negatives, errors are named."""
import pytest
import torch
import torch.nn.functional as F
from polar_nb.baselines import ConceptSet, Polar
from polar_nb.clip import load_backbone
from polar_nb.negatives import PolarNeg, look_alikes, other_images, personalize_negs
from polar_nb.polar import TrainingDiverged

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def bb(): return load_backbone('world-tiny', device='cpu')

def support(bb, n=3, k=4, seed=0, shift=None):
    "A DeepFashion2 support set of `n` concepts with `k` random unit features each."
    g = torch.Generator().manual_seed(seed)
    feats = {c: F.normalize(torch.randn(k, bb.embed_dim, generator=g), dim=-1) for c in range(n)}
    if shift is not None: feats[n-1] = F.normalize(feats[n-1] + shift, dim=-1)
    return ConceptSet('deepfashion2', feats, {c: dict(coarse='skirt') for c in feats}, {c: [f'{seed}-{c}-{i}' for i in range(k)] for c in feats})

def test_other_images(bb):
    cs = support(bb)
    N = other_images(cs, 0)
    assert N.shape == (8, bb.embed_dim)
    assert torch.equal(N, torch.cat([cs.feats[1], cs.feats[2]]))
    with pytest.raises(ValueError, match='no other concepts'): other_images(cs.subset([0]), 0)
    with pytest.raises(KeyError, match='not in the support set'): other_images(cs, 9)

def test_zero_weight_is_polar(bb):
    cs = support(bb)
    p, n = Polar(iters=20).fit(bb, cs, False), PolarNeg(neg_weight=0, iters=20).fit(bb, cs, False)
    for c in cs.ids: assert torch.equal(p.updates[c].B, n.updates[c].B) and torch.equal(p.updates[c].A, n.updates[c].A)

def test_negatives_push_away(bb):
    cs = support(bb)
    p, n = Polar(iters=30).fit(bb, cs, False), PolarNeg(neg_weight=1, iters=30).fit(bb, cs, False)
    assert not torch.equal(p.updates[0].B, n.updates[0].B)
    assert n.updates[0].meta['n_negatives'] == 8 and n.updates[0].meta['neg_weight'] == 1

def test_cache_keyed_by_negatives(bb, tmp_path):
    cs = support(bb)
    first = PolarNeg(iters=10).fit(bb, cs, tmp_path)
    assert first.counts == dict(trained=3, loaded=0)
    assert PolarNeg(iters=10).fit(bb, cs, tmp_path).counts == dict(trained=0, loaded=3)
    other = support(bb, shift=torch.ones(bb.embed_dim))  # concept 2's features change (its file hashes here do not)
    assert PolarNeg(iters=10).fit(bb, other, tmp_path).counts == dict(trained=2, loaded=1)  # 0 and 1: other negatives
    assert PolarNeg(iters=10, neg_weight=0.5).fit(bb, cs, tmp_path).counts == dict(trained=3, loaded=0)

def test_divergence_is_named(bb):
    cs = support(bb)
    with pytest.raises(TrainingDiverged, match='times the norm of the weight'):
        personalize_negs(bb, cs.feats[0], other_images(cs, 0), lr=1e6, lam=0.0, iters=20)

def test_look_alikes(bb):
    cs = support(bb, n=4)
    cs.feats[3] = F.normalize(cs.feats[0] + 0.01, dim=-1)  # a near copy of concept 0
    t = look_alikes(cs)
    assert set(t.concept[:2]) == {0, 3} and t.cos.is_monotonic_decreasing
    with pytest.raises(ValueError, match='two concepts or more'): look_alikes(cs.subset([0]))
