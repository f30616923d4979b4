"CAP and the world's users: layout, determinism, masks, caching, resumable training, backbone refusal, the evaluation table."
import json, subprocess, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from polar_nb.clip import load_backbone, fingerprint
from polar_nb.collections import make_collections, Collections, collection_sizes
from polar_nb import cap as C

TINY = dict(train=4, validation=2, test=2, photos=(3, 8), episodes=2, generic=2, challenge=12, generic_pool=20)

@pytest.fixture(scope='module')
def bb(): return load_backbone('world-tiny', device='cpu')

@pytest.fixture(scope='module')
def root(tmp_path_factory): return make_collections(tmp_path_factory.mktemp('c')/'cols', seed=5, profile=TINY)

@pytest.fixture(scope='module')
def fs(bb, root, tmp_path_factory):
    cache = tmp_path_factory.mktemp('cache')
    return {sp: C.episode_features(bb, root, sp, cache=cache) for sp in ('train', 'validation', 'test')}

@pytest.mark.parametrize('first', ['world', 'collections'])
def test_import_orders(first):
    a, b = ('polar_nb.world', 'polar_nb.collections') if first == 'world' else ('polar_nb.collections', 'polar_nb.world')
    code = f"import {a}, {b}; from polar_nb.world import make_collections as m; import polar_nb.collections as c; assert m is c.make_collections"
    subprocess.run([sys.executable, '-c', code], check=True)

def test_layout_and_splits(root):
    cols = Collections(root)
    assert set(cols.splits) == {'train', 'validation', 'test'}
    ids = [u for v in cols.splits.values() for u in v]
    assert len(ids) == len(set(ids)) == 8
    for sp in cols.splits:
        for e in cols.episodes(sp):
            u = cols.user(e['user'])
            assert e['target'] in e['challenge'] and not set(e['challenge']) & set(u['photos'])
            if e['kind'] == 'personal':
                assert len(e['challenge']) == 12 and e['roles'].count('target') == 1
                word = u['truth']['things'][e['thing']]['word']
                assert word in e['query']

def test_bad_user_files(root, tmp_path):
    import shutil
    shutil.copytree(root, tmp_path/'c')
    cols = Collections(tmp_path/'c'); uid = cols.splits['test'][0]
    (tmp_path/'c'/'users'/uid/'collection'/'0000.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r'photo\(s\) missing'): Collections(tmp_path/'c').user(uid)
    with pytest.raises(ValueError, match="'photos' must be a range"): collection_sizes(dict(photos=(0, 3)))

def test_untrained_is_zero_shot_and_mask(fs):
    es = fs['test']; cap = C.CAP(es.I.shape[1])
    for e in es.eps[:3]:
        torch.testing.assert_close(C.with_cap(cap)(es, e), C.zero_shot(es, e), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='at least one photo'): C.user_summary(cap, torch.zeros(0, es.I.shape[1]))
    big = F.normalize(torch.randn(400, es.I.shape[1]), dim=-1)
    assert C.cap_scores(cap, big, es.eps[0]['q'], es.I[es.eps[0]['ch']]).shape == (12,)

def test_training_deterministic_resumes(fs, tmp_path):
    a = C.train_cap(fs['train'], steps=12, batch=4, progress=False)
    b = C.train_cap(fs['train'], steps=12, batch=4, progress=False)
    assert fingerprint(a) == fingerprint(b)
    calls = []
    real = C.episode_loss
    def cut(*x, **k):
        calls.append(1)
        if len(calls) == 9: raise RuntimeError('power cut')
        return real(*x, **k)
    C.episode_loss = cut
    try:
        with pytest.raises(RuntimeError, match='power cut'): C.train_cap(fs['train'], steps=12, batch=4, checkpoint=tmp_path/'ck.pt', every=4, progress=False)
    finally: C.episode_loss = real
    assert torch.load(tmp_path/'ck.pt', weights_only=True)['step'] == 8
    r = C.train_cap(fs['train'], steps=12, batch=4, checkpoint=tmp_path/'ck.pt', every=4, progress=False)
    assert fingerprint(r) == fingerprint(a)
    with pytest.raises(ValueError, match='another training run'): C.train_cap(fs['train'], steps=20, batch=4, checkpoint=tmp_path/'ck.pt', progress=False)

def test_cache_per_user(fs):
    es = fs['test']; cap = C.train_cap(fs['train'], 'film', steps=5, batch=4, progress=False)
    rows = es.users[es.eps[0]['user']]
    s = C.user_summary(cap, es.I[rows]); assert C.user_summary(cap, es.I[rows]) is s
    with torch.no_grad(): cap.inp.weight.add_(1e-3)  # other weights: another key
    assert C.user_summary(cap, es.I[rows]) is not s

def test_save_load_refuse(fs, bb, root, tmp_path):
    cap = C.train_cap(fs['train'], steps=5, batch=4, progress=False)
    f = C.save_cap(cap, tmp_path/'cap.safetensors', bb)
    back = C.load_cap(f, bb=bb)
    assert fingerprint(back) == fingerprint(cap) and back.backbone['name'] == 'world-tiny'
    other = load_backbone('ViT-B-32', device='cpu')
    with pytest.raises(ValueError, match='trained on backbone'): C.load_cap(f, bb=other)
    with pytest.raises(ValueError, match='trained on backbone'): C.evaluate_cap(back, root, other)
    raw = bytearray(f.read_bytes()); raw[-3] ^= 0xFF; (tmp_path/'bad.safetensors').write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='checksum'): C.load_cap(tmp_path/'bad.safetensors')
    t = C.evaluate_cap(back, root, bb, alpha=.2)
    assert list(t.columns[:7]) == ['method', 'kind', 'r@1', 'r@5', 'r@10', 'mrr', 'n_episodes']
    assert set(t.method) == {'zero-shot', 'collection-mean', 'CAP'} and set(t.kind) == {'personal', 'generic'}
    assert (t.n_episodes == 4).all()

def test_shipped_weights(bb):
    f = C.data_dir()/C.SHIPPED['residual']
    if not f.is_file(): pytest.skip('shipped CAP weights not built')
    cap = C.load_cap(bb=bb)
    assert cap.backbone['fingerprint'] == fingerprint(bb.model)

def test_generic_queries_left_alone(fs):
    es = fs['test']; cap = C.train_cap(fs['train'], steps=30, batch=8, progress=False)
    assert float(cap.amp) != 0.
    for e in es.eps:
        s = C.with_cap(cap)(es, e)
        if not e['personal']: torch.testing.assert_close(s, C.zero_shot(es, e), atol=1e-5, rtol=0)
    assert all(e['personal'] == (e['kind'] == 'personal') for sp in fs.values() for e in sp.eps)

def test_collection_episodes(fs):
    tr = fs['train']; assert tr.things and set(tr.words) == {t['word'] for t in tr.things}
    b = C.collection_batch(tr, 5, torch.Generator().manual_seed(1), size=12)
    Cc, M, q, personal, X, XM, t = b
    assert X.shape[:2] == (5, 12) and personal.all() and XM.all()
    for i in range(5): assert not (Cc[i][M[i]] == X[i, t[i]]).all(1).any()  # the answer is held out of the collection
    no_truth = C.EpisodeSet('train', tr.I, tr.users, tr.eps, tr.backbone)
    with pytest.raises(ValueError, match='no labelled things'): C.train_cap(no_truth, steps=2, batch=4, progress=False)
    C.train_cap(no_truth, steps=2, batch=4, synth=0., progress=False)
    with pytest.raises(ValueError, match='between 0 and 1'): C.train_cap(tr, steps=2, synth=2., progress=False)

def test_oracle_query():
    assert C.oracle_query('On the sand, my bag', 'bag') == 'On the sand, sks'
    assert C.oracle_query('our teddy bear on a lawn', 'teddy bear') == 'sks on a lawn'
    with pytest.raises(ValueError, match='does not name'): C.oracle_query('a red bag', 'bag')
