"Baselines and the evaluation runner: embeddings, AvgIm+Text's limits, POLAR's sums and zero update, textual inversion, the cache, evaluate's tables."
import dataclasses
import json
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
import polar_nb.baselines as B
from polar_nb.baselines import (AvgImText, ImageOnly, Method, Polar, SPLITS, TextOnly, TextualInversion, caption_recall, concept_set,
                                encode_with_vectors, evaluate, evaluate_queries, fill, general_knowledge, summarize)
from polar_nb.clip import Backbone, image_features, token_id, tokenize
from polar_nb.compat import import_open_clip
from polar_nb.data import ConConChi, PerVLDeepFashion2
from polar_nb.polar import LowRankUpdate, encode_text
from fixtures_formats import make_conconchi, make_pervl, TRAIN_ROWS, TEST_ROWS, PERVL_SUPPORT, PERVL_POOL

torch.set_num_threads(1)
CFG = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
           text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=2))

def tiny_backbone(seed=0, name='tiny'):
    oc = import_open_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = oc.CLIP(**CFG).eval()
    return Backbone(model, oc.tokenizer.SimpleTokenizer(context_length=32), oc.image_transform(32, is_train=False), name,
                    defaults=dict(lam=0.1, iters=5, lr=1e-2))

def _images(paths, seed):
    rng = np.random.default_rng(seed)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p, format='PNG')

@pytest.fixture(scope='module')
def bb(): return tiny_backbone()

@pytest.fixture(scope='module')
def cc(tmp_path_factory):
    "The tiny ConCon-Chi fixture with random images: 3 concepts, 10 pool images, 5 context queries (2 multi-concept)."
    root = make_conconchi(tmp_path_factory.mktemp('cc'))
    _images([root/'data'/'images'/g for r in TRAIN_ROWS + TEST_ROWS for g in r['GTS']], 0)
    return ConConChi(root)

@pytest.fixture(scope='module')
def df2(tmp_path_factory):
    root = make_pervl(tmp_path_factory.mktemp('df2'))
    _images([root/'train'/'image'/n for ns in PERVL_SUPPORT.values() for n in ns] + [root/n for n,_,_ in PERVL_POOL], 1)
    return PerVLDeepFashion2(root)

@pytest.fixture(scope='module')
def cs(cc, bb): return concept_set(cc, bb, cache=False)

@pytest.fixture(scope='module')
def queries(cc): return cc.queries('context') + cc.queries('concept')

@pytest.fixture(scope='module')
def multi(cc): return next(q for q in cc.queries('context') if q.text == '* next to *')

def test_fill():
    assert fill('* next to *', ['a', 'b']) == 'a next to b'
    with pytest.raises(ValueError, match="1 '\\*' for 2"): fill('* here', ['a', 'b'])

def test_concept_set(cs, cc):
    assert cs.ids == [0, 1, 2] and [len(cs.feats[c]) for c in cs.ids] == [3, 1, 2]
    assert cs.benchmark == 'conconchi' and cs.descriptions[1]['coarse'] == 'bottle'
    assert torch.allclose(cs.feats[0].norm(dim=-1), torch.ones(3), atol=1e-5)

@pytest.mark.parametrize('method', [TextOnly('coarse'), TextOnly('discriminative'), TextOnly('rich'), ImageOnly(), AvgImText(),
                                    AvgImText(0.3), Polar(iters=3), TextualInversion(iters=3)], ids=lambda m: m.name)
def test_embedding_shape_and_norm(method, bb, cs, queries):
    E = method.fit(bb, cs, cache=False).embed(bb, queries, cs)
    assert E.shape == (len(queries), 32) and E.dtype == torch.float32
    assert torch.allclose(E.norm(dim=-1), torch.ones(len(queries)), atol=1e-5)
    assert method.embed(bb, [], cs).shape == (0, 32)

def test_avgim_text_limits(bb, cs, queries, multi):
    I, T = ImageOnly().embed(bb, queries, cs), TextOnly('coarse').embed(bb, queries, cs)
    assert torch.allclose(AvgImText(1.0).embed(bb, queries, cs), I, atol=1e-6)
    assert torch.allclose(AvgImText(0.0).embed(bb, queries, cs), T, atol=1e-6)
    mean = lambda c: torch.nn.functional.normalize(cs.feats[c].mean(0), dim=-1)
    assert torch.allclose(ImageOnly().embed(bb, [multi], cs)[0], torch.nn.functional.normalize(mean(0) + mean(1), dim=-1), atol=1e-6)
    assert TextOnly('coarse').texts([multi], cs) == ['toy next to bottle']
    with pytest.raises(ValueError, match='alpha'): AvgImText(-0.1)

def _zero(u): return dataclasses.replace(u, B=torch.zeros_like(u.B))

def test_polar_zero_update_is_text_with_sks(bb, cs, queries):
    pol = Polar(iters=2).fit(bb, cs, cache=False)
    pol.updates = {c: _zero(u) for c,u in pol.updates.items()}
    ref = encode_text(bb, [fill(q.text, ['sks']*len(q.concepts)) for q in queries])
    assert torch.allclose(pol.embed(bb, queries, cs), ref, atol=1e-5)

def test_polar_multi_concept_sums_updates(bb, cs, multi, monkeypatch):
    pol = Polar(iters=20, lr=5e-2, lam=0.0).fit(bb, cs, cache=False)
    E = pol.embed(bb, [multi], cs)[0]
    both = encode_text(bb, 'sks next to sks', [pol.updates[0], pol.updates[1]])[0]
    assert torch.allclose(E, both, atol=1e-6)
    assert not torch.allclose(E, encode_text(bb, 'sks next to sks', [pol.updates[0]])[0], atol=1e-4)
    seen = []  # the updates handed to the text encoder for that query
    monkeypatch.setattr(B, 'encode_text', lambda bb, texts, ups=None, **kw: seen.append(list(ups)) or encode_text(bb, texts, ups))
    pol.embed(bb, [multi], cs)
    assert seen == [[pol.updates[0], pol.updates[1]]]

def test_polar_mean_combination(bb, cs, multi, queries, tmp_path):
    "combine='mean' halves each of two concepts' ΔW, leaves single-concept queries alone, shares the trained updates' cache."
    pol = Polar(iters=20, lr=5e-2, lam=0.0).fit(bb, cs, cache=False)
    avg = Polar(iters=20, lr=5e-2, lam=0.0, combine='mean'); avg.updates, avg.words = pol.updates, pol.words
    halves = [dataclasses.replace(u, B=u.B / 2) for u in (pol.updates[0], pol.updates[1])]
    assert torch.allclose(avg.embed(bb, [multi], cs)[0], encode_text(bb, 'sks next to sks', halves)[0], atol=1e-6)
    assert not torch.allclose(avg.embed(bb, [multi], cs), pol.embed(bb, [multi], cs), atol=1e-4)
    single = [q for q in queries if len(set(q.concepts)) == 1]
    assert single and torch.allclose(avg.embed(bb, single, cs), pol.embed(bb, single, cs), atol=1e-6)
    assert avg.name != pol.name and torch.equal(pol.updates[0].B, halves[0].B * 2)  # the trained updates are not touched
    with pytest.raises(ValueError, match="'sum' or 'mean'"): Polar(combine='product')
    Polar(iters=3).fit(bb, cs, cache=tmp_path)
    assert Polar(iters=3, combine='mean').fit(bb, cs, cache=tmp_path).counts == dict(trained=0, loaded=len(cs.ids))

def _counting(monkeypatch, name, runs=lambda a: 1):
    "Count the runs trained through `B.<name>` (`runs(args)`: how many runs one call trains)."
    calls, real = [], getattr(B, name)
    monkeypatch.setattr(B, name, lambda *a, **k: calls.extend([1] * runs(a)) or real(*a, **k))
    return calls

def test_cache_is_used_on_rerun(bb, cs, queries, tmp_path, monkeypatch):
    calls = _counting(monkeypatch, 'personalize_many', runs=lambda a: len(a[1]))  # one batched call trains every concept not cached
    first = Polar(iters=3).fit(bb, cs, cache=tmp_path)
    assert len(calls) == 3 and first.counts == dict(trained=3, loaded=0)
    second = Polar(iters=3).fit(bb, cs, cache=tmp_path)
    assert len(calls) == 3 and second.counts == dict(trained=0, loaded=3)  # no training the second time
    assert torch.equal(first.embed(bb, queries, cs), second.embed(bb, queries, cs))
    Polar(iters=3, lam=0.5).fit(bb, cs, cache=tmp_path)
    assert len(calls) == 6  # another hyper-parameter is another key
    Polar(iters=3).fit(bb, cs, cache=False)
    assert len(calls) == 9  # no cache: always trains
    ti_calls = _counting(monkeypatch, 'invert_tokens', runs=lambda a: len(a[1]))
    TextualInversion(iters=2).fit(bb, cs, cache=tmp_path); TextualInversion(iters=2).fit(bb, cs, cache=tmp_path)
    assert len(ti_calls) == 3
    assert len(list((tmp_path/'personal').rglob('*.safetensors'))) == 9 and not list(tmp_path.rglob('*.tmp'))

def test_cache_keyed_by_backbone_weights(cc, tmp_path, monkeypatch):
    calls = _counting(monkeypatch, 'personalize_many', runs=lambda a: len(a[1]))
    for seed in (0, 1):  # same name, other weights
        bb = tiny_backbone(seed)
        Polar(iters=2).fit(bb, concept_set(cc, bb, cache=False), cache=tmp_path)
    assert len(calls) == 6

def test_interrupted_run_resumes(bb, cs, tmp_path, monkeypatch):
    real, calls = B.personalize_many, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(B, 'personalize_many', flaky)
    with pytest.raises(KeyboardInterrupt): Polar(iters=2, batch=1).fit(bb, cs, cache=tmp_path)  # batches of one concept: the first is kept
    p = Polar(iters=2, batch=1).fit(bb, cs, cache=tmp_path)
    assert p.counts == dict(trained=2, loaded=1) and len(calls) == 4

def test_textual_inversion(bb, cs, multi):
    tid = token_id(bb, 'sks')
    ti = TextualInversion(iters=10, lr=5e-2).fit(bb, cs, cache=False)
    assert ti.words == {0: 'sks', 1: 'sks', 2: 'sks'}
    assert all(not torch.equal(ti.vectors[c], B.initial_vector(bb, 'coarse', cs.descriptions[c]['coarse'])) for c in cs.ids)
    E = ti.embed(bb, [multi], cs)
    with torch.no_grad():
        ref = encode_with_vectors(bb, tokenize(bb, 'sks next to sks'), tid, torch.stack([ti.vectors[0], ti.vectors[1]]))
    assert torch.allclose(E, torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    plain = TextualInversion(); plain.words = ti.words
    plain.vectors = {c: bb.model.token_embedding.weight[tid].detach() for c in cs.ids}
    assert torch.allclose(plain.embed(bb, [multi], cs), encode_text(bb, 'sks next to sks'), atol=1e-5)
    with pytest.raises(KeyError, match='fit it'): TextualInversion().embed(bb, [multi], cs)

def test_textual_inversion_leaves_backbone(bb, cs):
    before = {k: v.clone() for k,v in bb.model.state_dict().items()}
    TextualInversion(iters=3).fit(bb, cs, cache=False); Polar(iters=3).fit(bb, cs, cache=False)
    for k,v in bb.model.state_dict().items(): assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in bb.model.parameters())

def test_evaluate_tables(bb, cc, tmp_path):
    methods = [TextOnly(), ImageOnly(), AvgImText(), Polar(iters=3), TextualInversion(iters=2)]
    pq = evaluate_queries(methods, cc, bb, cache=tmp_path)
    assert len(pq) == len(methods) * (5 + 3)
    assert {'method', 'kind', 'query', 'text', 'concepts', 'n_concepts', 'candidates', 'positives', 'best_rank',
            'mrr', 'map', 'r@1', 'r@5', 'r@10'} <= set(pq.columns)
    assert pq[pq.kind == 'context'].n_concepts.tolist()[:5] == [1, 2, 1, 2, 1]
    sm = summarize(pq)
    assert sm.columns.tolist() == ['method', 'split', 'n_queries', 'mrr', 'map', 'r@1', 'r@5', 'r@10', 'settings']
    assert json.loads(sm[sm.method == 'POLAR'].settings.iloc[0])['iters'] == 3  # each method's settings stay with its rows
    assert sm.method.tolist() == [m.name for m in methods for _ in SPLITS] and sm.split.tolist() == list(SPLITS) * len(methods)
    assert sm.n_queries.tolist() == [5, 3, 2, 3] * len(methods)
    vals = sm[['mrr', 'map', 'r@1', 'r@5', 'r@10']].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    one = pq[(pq.method == 'image') & (pq.kind == 'context')]
    assert np.isclose(sm[(sm.method == 'image') & (sm.split == 'context-all')].mrr.item(), one.mrr.mean())
    again = evaluate(methods[3], cc, bb, cache=tmp_path)
    assert methods[3].counts == dict(trained=0, loaded=3)
    pd.testing.assert_frame_equal(again, sm[sm.method == 'POLAR'].reset_index(drop=True))

def test_pervl_writes_sks_class(bb, df2):
    pol = Polar(iters=2)
    sm = evaluate([pol, TextOnly()], df2, bb, cache=False)
    assert pol.words == {3430: 'sks long sleeve dress', 996: 'sks short sleeve top'}
    assert 'context-multi' not in set(sm.split) and sm.n_queries.tolist() == [4, 4, 2] * 2
    with pytest.raises(KeyError, match="no 'rich' description"): TextOnly('rich').embed(bb, df2.queries('context'), concept_set(df2, bb, False))

def test_general_knowledge(bb, cc, tmp_path):
    caps = ['a toy on a couch', 'a toy', 'a mug', 'a toy and a bottle', 'a bottle in a sink', 'a toy', 'nothing', 'a mug and a bottle',
            'nothing at all', 'a mug on a desk']
    pool = image_features(bb, cc.pool, cache=False)
    assert caption_recall(bb, caps, pool, k=len(caps)) == 1.0
    base = caption_recall(bb, caps, pool, k=3)
    gk = general_knowledge(TextOnly(), cc, bb, captions=caps, k=3, cache=False)
    assert gk.original.item() == base and gk.worst_drop.item() == 0 and gk.mean_drop.item() == 0
    pol = Polar(iters=30, lr=5e-2, lam=0.0)
    per = general_knowledge(pol, cc, bb, captions=caps, k=3, cache=tmp_path, per_concept=True)
    assert per.concept.tolist() == [0, 1, 2]
    want = [caption_recall(bb, caps, pool, [pol.updates[c]], k=3) for c in (0, 1, 2)]
    assert np.allclose(per.recall, want) and np.allclose(per['drop'], base - np.array(want))
    s = general_knowledge(pol, cc, bb, captions=caps, k=3, cache=tmp_path)
    assert np.isclose(s.worst_drop.item(), max(base - w for w in want)) and np.isclose(s['mean'].item(), np.mean(want))
    cc_caps = tmp_path/'caps.json'
    cc_caps.write_text(json.dumps({str(p.relative_to(cc.root)): c for p, c in zip(cc.pool, caps)}))
    assert general_knowledge(TextOnly(), cc, bb, captions=cc_caps, k=3, cache=False).original.item() == base
