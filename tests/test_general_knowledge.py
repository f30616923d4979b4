"General knowledge: own-image ranks and ties, recall curves, the cost of updates, the generic set's file, described queries."
import json
import numpy as np
import pandas as pd
import pytest
import torch
from polar_nb.clip import fingerprint
from polar_nb.baselines import ConceptSet, Polar, TextOnly, caption_recall
from polar_nb.data import Query
from polar_nb.knowledge import described_embeddings, generic_set, own_ranks, recall_curve, recall_under_updates, update_cost
from polar_nb.polar import LowRankUpdate, encode_text
from test_baselines import tiny_backbone

CAPS = ['a red cup on the sand', 'a blue kite in the sky', 'a green shoe on the road', 'a white ball on the grass']

@pytest.fixture(scope='module')
def bb(): return tiny_backbone()

@pytest.fixture(scope='module')
def feats(bb): return encode_text(bb, CAPS)  # each caption's "image" is its own text embedding: rank 1 for all

def update(bb, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.nn.functional.normalize(torch.randn(1, bb.width, generator=g), dim=-1)
    return LowRankUpdate(A=A, B=scale*torch.randn(bb.width, 1, generator=g), param='v', layer=bb.n_layers-1, token='sks',
                         backbone=bb.name, width=bb.width, weights=fingerprint(bb.model))

def test_own_ranks_and_ties(bb, feats):
    assert own_ranks(bb, CAPS, feats).tolist() == [1, 1, 1, 1]
    assert own_ranks(bb, CAPS[:2], feats[[0, 0]]).tolist() == [2, 2]  # a tie counts against the caption
    with pytest.raises(ValueError, match='4 images, 3 captions'): own_ranks(bb, CAPS[:3], feats)
    with pytest.raises(ValueError, match='a single string'): own_ranks(bb, 'a cup', feats[:1])

def test_recall_curve_matches_caption_recall(bb, feats):
    X = torch.nn.functional.normalize(torch.randn(4, bb.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    rc = recall_curve(own_ranks(bb, CAPS, X), [1, 2, 4])
    assert rc.index.tolist() == [1, 2, 4] and rc[4] == 1.0 and rc.is_monotonic_increasing
    assert rc[2] == pytest.approx(caption_recall(bb, CAPS, X, k=2))
    assert recall_curve(torch.tensor([1, 3, 5]), [2, 5]).tolist() == pytest.approx([1/3, 1.0])

def test_recall_under_updates_and_cost(bb):
    X = torch.nn.functional.normalize(torch.randn(4, bb.embed_dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    pol = Polar(); pol.updates = {0: update(bb, 0, 50.0), 1: update(bb, 1, 0.0)}
    per = recall_under_updates(bb, CAPS, X, pol, [0, 1], [1, 2, 4])
    orig = recall_curve(own_ranks(bb, CAPS, X), [1, 2, 4])
    assert per.index.tolist() == [0, 1] and per.columns.tolist() == [1, 2, 4]
    assert per.loc[1].tolist() == orig.tolist()  # a zero update is the original encoder
    assert per.loc[0].tolist() == recall_curve(own_ranks(bb, CAPS, X, [pol.updates[0]]), [1, 2, 4]).tolist()
    c = update_cost(orig, per)
    assert c.columns.tolist() == ['original', 'mean', 'worst', 'mean_drop', 'worst_drop', 'beyond']
    assert np.allclose(c.worst_drop, orig - per.min()) and np.allclose(c.mean_drop, orig - per.mean())
    assert c.loc[4, 'worst_drop'] == 0 and c.loc[4, 'beyond'] == 0
    flat = recall_under_updates(bb, CAPS, X, TextOnly(), [0, 1], [1, 2])  # no text updates: no cost
    assert (update_cost(orig[[1, 2]], flat)[['mean_drop', 'worst_drop', 'beyond']].to_numpy() == 0).all()

def test_generic_set(tmp_path):
    with pytest.raises(FileNotFoundError, match='real benchmarks do not'): generic_set(tmp_path)
    (tmp_path/'generic'/'images').mkdir(parents=True)
    (tmp_path/'generic'/'images'/'a.jpg').write_bytes(b'x')
    f = tmp_path/'generic'/'captions.json'
    f.write_text(json.dumps({'generic/images/a.jpg': 'a cup', 'generic/images/b.jpg': 'a kite'}))
    with pytest.raises(FileNotFoundError, match='1 image'): generic_set(tmp_path)
    f.write_text(json.dumps({'generic/images/a.jpg': 3}))
    with pytest.raises(ValueError, match='relative image path'): generic_set(tmp_path)
    f.write_text(json.dumps({'generic/images/a.jpg': 'a cup'}))
    assert generic_set(tmp_path) == ([tmp_path/'generic'/'images'/'a.jpg'], ['a cup'])

def test_described_embeddings(bb):
    cs = ConceptSet('conconchi', {0: None, 1: None}, {0: dict(discriminative='red cup with dots'), 1: dict(discriminative='blue kite')}, {})
    qs = [Query('* on the sand', [0], []), Query('* next to *', [0, 1], []), Query('* and * again', [0, 0], [])]
    pol = Polar(); pol.updates = {0: update(bb, 0), 1: update(bb, 1)}
    assert torch.allclose(described_embeddings(bb, qs, cs), encode_text(bb, ['red cup with dots on the sand', 'red cup with dots next to blue kite',
                                                                             'red cup with dots and red cup with dots again']), atol=1e-5)
    E = described_embeddings(bb, qs, cs, pol)
    assert torch.allclose(E[0], encode_text(bb, 'red cup with dots on the sand', [pol.updates[0]])[0], atol=1e-5)
    assert torch.allclose(E[1], encode_text(bb, 'red cup with dots next to blue kite', [pol.updates[0], pol.updates[1]])[0], atol=1e-5)
    assert torch.allclose(E[2], encode_text(bb, 'red cup with dots and red cup with dots again', [pol.updates[0]])[0], atol=1e-5)  # once
    assert torch.allclose(described_embeddings(bb, qs, cs, TextOnly()), described_embeddings(bb, qs, cs), atol=1e-6)  # no updates
