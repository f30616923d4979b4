"Combining concepts: the strategies' algebra, token-local updates exact against the explicit reference, their training path, Polar's dispatch, bad input."
import dataclasses
import pytest
import torch
import torch.nn.functional as F
from polar_nb.clip import load_backbone, tokenize
from polar_nb.polar import encode_text, personalize, random_update, merge_updates, LowRankUpdate
from polar_nb.combine import (STRATEGIES, check_strategy, combine_updates, concept_tokens, encode_combined, local_reference,
                              token_summaries, RARE_TOKENS)
from polar_nb.baselines import Polar

TEXTS = ['A photo of sks.', 'sks next to rcn on the beach', 'a red cup on the grass', 'rcn and rcn at night']

@pytest.fixture(scope='module')
def bb(): return load_backbone('ViT-B-32', pretrained=None, device='cpu')

@pytest.fixture(scope='module')
def ups(bb): return random_update(bb, 'v', scale=2.0, seed=1, token='sks'), random_update(bb, 'v', scale=2.0, seed=2, token='rcn')

def test_strategy_names():
    assert list(STRATEGIES) == ['sum', 'mean', 'orthogonal', 'norm', 'token']
    with pytest.raises(ValueError, match="'sum' or 'mean'"): check_strategy('max')
    with pytest.raises(ValueError, match="'sum' or 'mean'"): Polar(combine='max')
    assert Polar(combine='norm').name == 'POLAR (norm)' and Polar().name == 'POLAR'

def test_algebra(bb, ups):
    a, b = ups
    b = dataclasses.replace(b, B=b.B + a.B)
    m = combine_updates([a, b], 'mean'); assert torch.allclose(m[0].B, a.B / 2)
    n = combine_updates([a, b], 'norm')
    assert torch.isclose((n[0].delta() + n[1].delta()).norm(), (a.delta().norm() + b.delta().norm()) / 2, rtol=1e-4)
    o = combine_updates([a, b], 'orthogonal'); assert torch.equal(o[0].B, a.B) and abs(float(o[1].B.T @ a.B)) < 1e-3
    assert combine_updates([a, b], 'sum')[1] is b and combine_updates([a], 'norm')[0] is a
    with pytest.raises(ValueError, match='one weight'): combine_updates([a, random_update(bb, 'mlp1')], 'orthogonal')

def test_strategies_through_encode_text(bb, ups):
    a, b = ups
    for how in ('mean', 'norm', 'orthogonal'):
        assert torch.allclose(encode_text(bb, TEXTS, [a, b], combine=how), encode_text(bb, TEXTS, combine_updates([a, b], how)), atol=1e-6)
    with pytest.raises(ValueError, match="'sum' or 'mean'"): encode_text(bb, TEXTS, [a], combine='avg')

def test_concept_tokens(bb):
    toks = concept_tokens(bb, 30)
    assert toks[0] == 'sks' and len(set(toks)) == 30
    ids = tokenize(bb, toks)
    assert ((ids != 0).sum(1) == 3).all()  # start, one BPE token, end
    assert 'sks' not in concept_tokens(bb, 3, avoid=['sks on the beach'])
    with pytest.raises(ValueError, match='has only'): concept_tokens(bb, len(RARE_TOKENS) + 1)

def test_reference_is_open_clip(bb, ups):
    with merge_updates(bb, list(ups)), torch.no_grad(): merged = bb.model.encode_text(tokenize(bb, TEXTS), normalize=True)
    assert (local_reference(bb, TEXTS, list(ups), everywhere=True) - merged).abs().max() < 1e-5

def test_token_fast_path_exact(bb, ups):
    base = encode_text(bb, TEXTS)
    fast, ref = encode_text(bb, TEXTS, list(ups), combine='token'), local_reference(bb, TEXTS, list(ups))
    assert (fast - ref).abs().max() < 1e-5 and (fast - base).abs().max() > 1e-2
    assert (fast[2] - base[2]).abs().max() < 1e-6  # no token, no change
    assert torch.equal(encode_text(bb, TEXTS[3:], list(ups), combine='token'), encode_text(bb, TEXTS[3:], [ups[1]], combine='token'))
    from polar_nb.clip import token_id
    S = token_summaries(bb, tokenize(bb, TEXTS), [token_id(bb, 'sks'), token_id(bb, 'rcn')])
    assert S.shape == (4, 2, 8, 512) and (S[2] == 0).all() and (S[0, 1] == 0).all() and (S[1] != 0).any(-1).all()

def test_local_training_and_file(bb, tmp_path):
    feats = F.normalize(torch.randn(5, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    u = personalize(bb, feats, token='rcn', local=True, iters=30, lr=1e-2)
    assert u.meta['local'] and u.history[-1] < u.history[0]
    assert torch.equal(encode_text(bb, TEXTS, u), encode_text(bb, TEXTS, u, combine='token'))  # applied token-locally by default
    back = LowRankUpdate.load(u.save(tmp_path/'u.safetensors'), bb)
    assert back.meta['local'] and torch.equal(encode_text(bb, TEXTS, back), encode_text(bb, TEXTS, u))
    with pytest.raises(ValueError, match='V of the last layer'): personalize(bb, feats, token='rcn', local=True, iters=1, param='o')
    with pytest.raises(ValueError, match='exact function'): personalize(bb, feats, token='rcn', local=True, iters=1, exact=False)
    with pytest.raises(ValueError, match='single BPE token'): encode_combined(bb, TEXTS, [dataclasses.replace(u, token='skswxyz')])
    with pytest.raises(ValueError, match='last layer'): encode_text(bb, TEXTS, [u, random_update(bb, 'q')])
