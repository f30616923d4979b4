"The timing chapter's machinery: correctness only (no timing is asserted): methods, step clock, multi-tenant encoding, disk search, CLI."
import json, mmap, os, time
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from polar_nb.bench import (Run, timed_run, text_tower, embed_with_token, textual_inversion, naive_polar, fast_polar,
                            personalize_graphed, encode_text_multi, bench_multi, write_features, feature_file, feature_path,
                            topk_scan, topk_brute, topk_agreement, PeakRSS, speedups, paper_table, scaling_fits, scaling_summary,
                            PAPER_TAB16, FAST, run_bench, PARTS, machine_info, open_features, _random_feats)
from polar_nb.clip import tokenize, token_id
from polar_nb.cli import main
from polar_nb.polar import personalize, random_update, merge_updates, encode_text

@pytest.fixture(scope='module')
def bb():
    "A small open_clip text tower (ViT-B-32's, narrowed and shortened) that keeps the tests fast."
    return text_tower('ViT-B-32', width=128, layers=3)

@pytest.fixture(scope='module')
def feats(bb): return _random_feats(5, bb.embed_dim, seed=0)

def merged_reference(bb, texts, per):
    "Each text by open_clip's own encode_text with its updates merged into the weights (restored afterwards)."
    out = []
    for t, us in zip(texts, per):
        with merge_updates(bb, us), torch.no_grad(): out.append(bb.model.encode_text(tokenize(bb, [t]), normalize=True))
    return torch.cat(out)

def test_text_tower(bb):
    test = text_tower('ViT-L-14', width=128, layers=2)
    assert (test.width, test.n_layers, test.embed_dim, test.model.context_length) == (128, 2, 128, 77)
    assert test.model.transformer.resblocks[0].attn.num_heads == 2
    assert bb.name == 'ViT-B-32-text-w128-l3'
    with pytest.raises(ValueError, match='not an open_clip architecture'): text_tower('ViT-Q-99')
    a, b = text_tower('ViT-B-32', width=64, layers=1, seed=3), text_tower('ViT-B-32', width=64, layers=1, seed=3)
    assert torch.equal(a.model.token_embedding.weight, b.model.token_embedding.weight)  # seeded

def test_run_clock():
    r = Run(0.0, 1.35, [0.4 + 0.1 * i for i in range(10)])
    assert r.step_s == pytest.approx(0.1) and r.setup_s == pytest.approx(0.3)
    assert r.seconds(3) == (pytest.approx(0.6 + 0.05), False)
    assert r.seconds(100) == (pytest.approx(1.3 + 90 * 0.1 + 0.05), True)
    with pytest.raises(ValueError, match='cannot be extrapolated'): Run(0.0, 1.0, [0.5]).seconds(2)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    run = timed_run(lambda: [opt.step() for _ in range(5)])
    assert len(run.steps) == 5 and run.start <= run.steps[0] and run.steps[-1] <= run.end
    assert len(timed_run(lambda: None).steps) == 0  # the hook is gone after the block
    opt.step()

def test_embed_with_token_is_open_clip(bb):
    tid, tok = token_id(bb, 'sks'), tokenize(bb, ['A photo of sks.', 'sks and sks on the sand'])
    with torch.no_grad():
        mine = F.normalize(embed_with_token(bb, tok, tid, bb.model.token_embedding.weight[tid]), dim=-1)
        assert (mine - bb.model.encode_text(tok, normalize=True)).abs().max() < 1e-5

def test_naive_learns_the_fast_update(bb, feats):
    up = fast_polar(bb, feats, iters=8, lr=1e-2)
    A, B = naive_polar(bb, feats, iters=8, lr=1e-2)
    assert (up.A - A).abs().max() < 1e-5 and (up.B - B).abs().max() < 1e-5
    assert up.B.abs().max() > 1e-3  # it did move
    up2 = fast_polar(bb, feats, iters=4, lr=1e-2, rank=3)
    A2, B2 = naive_polar(bb, feats, iters=4, lr=1e-2, rank=3)
    assert A2.shape == (3, bb.width) and (up2.B - B2).abs().max() < 1e-5

def test_textual_inversion_learns_and_stops(bb, feats):
    tid = token_id(bb, 'sks')
    tok = tokenize(bb, ['A photo of sks.', 'sks is shown in this image.', 'A picture of sks.', 'An image of sks.', 'A close-up photo of sks.'])
    loss = lambda v: ((F.normalize(embed_with_token(bb, tok, tid, v), dim=-1) - feats)**2).mean().item()
    v0 = bb.model.token_embedding.weight[tid].detach()
    with torch.no_grad():
        assert loss(textual_inversion(bb, feats, iters=20, lr=1e-2)) < loss(v0)
        assert loss(textual_inversion(bb, feats, iters=20, lr=1e-2, truncate=True)) < loss(v0)
    assert len(timed_run(lambda: textual_inversion(bb, feats, iters=100, max_seconds=0.0)).steps) == 3
    assert len(timed_run(lambda: naive_polar(bb, feats, iters=100, max_seconds=0.0)).steps) == 3

def test_graphed_loop_on_cpu_is_personalize(bb, feats):
    g = personalize_graphed(bb, feats, iters=12, lr=1e-2, lam=0.35, graph=False)
    p = personalize(bb, feats, iters=12, lr=1e-2, lam=0.35)
    assert (g.A - p.A).abs().max() < 1e-6 and (g.B - p.B).abs().max() < 1e-6
    assert np.allclose(g.history, p.history, atol=1e-6) and g.meta['graph'] is False
    with pytest.raises(ValueError, match='needs a CUDA device'): personalize_graphed(bb, feats, iters=2, graph=True)

def test_encode_text_multi_exact(bb):
    ups = [random_update(bb, 'v', scale=0.5, seed=1), random_update(bb, 'v', rank=3, scale=0.5, seed=2),
           random_update(bb, 'mlp1', scale=0.5, seed=3), random_update(bb, 'proj', rank=2, scale=0.5, seed=4),
           random_update(bb, 'o', scale=0.5, seed=5), random_update(bb, 'mlp2', scale=0.5, seed=6),
           random_update(bb, 'q', layer=1, scale=5.0, seed=7)]  # not of the EOT-row kind: the general path
    texts = ['sks on the beach', 'a photo of a dog', 'sks and sks in the park', 'A photo of sks.', 'sks at night', 'a red car',
             'sks in the snow with a long caption that makes this query the longest of the batch by far', 'sks', 'two sks']
    per = [[ups[0]], [], [ups[0], ups[1]], [ups[2], ups[3]], [ups[6]], None, [ups[1], ups[0], ups[2], ups[4], ups[5]], ups[3], [ups[6], ups[0]]]
    ref = merged_reference(bb, texts, [[] if p is None else p if isinstance(p, list) else [p] for p in per])
    for bs in (256, 3):
        mine = encode_text_multi(bb, texts, per, batch_size=bs)
        assert (mine - ref).abs().max() < 1e-5
    assert (mine - encode_text(bb, texts)).abs().max(dim=-1).values[[0, 2, 3, 4, 6, 7, 8]].min() > 1e-3  # each update moved its query
    assert (encode_text_multi(bb, texts, [[]] * len(texts)) - encode_text(bb, texts)).abs().max() < 1e-5
    assert encode_text_multi(bb, [], []).shape == (0, bb.embed_dim)

def test_encode_text_multi_bad_input(bb):
    with pytest.raises(ValueError, match='2 texts but 1'): encode_text_multi(bb, ['a', 'b'], [[]])
    other = text_tower('ViT-B-32', width=64, layers=3)
    with pytest.raises(ValueError, match='trained on backbone'): encode_text_multi(bb, ['sks'], [[random_update(other, 'v')]])

def test_bench_multi_small(bb):
    r = bench_multi(bb, n=12, n_users=3, repeats=1).iloc[0]
    assert r.max_abs_err <= 1e-5 and r.max_abs_change > 1e-3
    assert r.updates > 0 and all(r[c] > 0 for c in ('open_clip_qps', 'multi_qps', 'multi_no_update_qps', 'one_call_per_query_qps'))

def test_features_on_disk_and_scan(tmp_path):
    p = write_features(tmp_path/'f.npy', 5000, 32, chunk=777, seed=1)
    X = np.load(p, mmap_mode='r')
    assert X.shape == (5000, 32) and X.dtype == np.float16 and not list(tmp_path.glob('*.tmp'))
    assert np.allclose(np.linalg.norm(X.astype(np.float32), axis=1), 1, atol=2e-3)
    Q = torch.randn(9, 32)
    ref = topk_brute(p, Q, k=7)
    for chunk in (1, 100, 4999, 5000, 10**6):
        got = topk_scan(p, Q, k=7, chunk=chunk)
        assert got[0].shape == (9, 7) and topk_agreement(got, ref) == dict(same_topk=1.0, max_score_diff=pytest.approx(0.0, abs=1e-5))
    s, i = topk_scan(write_features(tmp_path/'g.npy', 4, 32), Q, k=10)  # fewer rows than k
    assert s.shape == (9, 4) and sorted(i[0].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match='dimension 16'): topk_scan(p, torch.randn(2, 16))

def test_feature_file_is_reused(tmp_path):
    p = feature_file(300, 16, root=tmp_path)
    assert p == feature_path(300, 16, root=tmp_path) and p.parent.name == 'bench'
    m = p.stat().st_mtime_ns; time.sleep(0.01)
    assert feature_file(300, 16, root=tmp_path).stat().st_mtime_ns == m
    np.save(p, np.zeros((3, 16), np.float16))  # a wrong file under that name is replaced
    assert np.load(feature_file(300, 16, root=tmp_path)).shape == (300, 16)

def test_topk_agreement_ties():
    sb, ib = torch.tensor([[0.9, 0.5, 0.5]]), torch.tensor([[3, 1, 2]])
    assert topk_agreement((sb, ib), (sb, ib)) == dict(same_topk=1.0, max_score_diff=0.0)
    tied = (torch.tensor([[0.9, 0.5, 0.5]]), torch.tensor([[3, 1, 5]]))  # 5 instead of 2: both at the k-th score, a tie
    assert topk_agreement(tied, (sb, ib))['same_topk'] == 1.0
    missed = (torch.tensor([[0.9, 0.5, 0.4]]), torch.tensor([[3, 1, 9]]))  # 9 scores below the k-th: 2 was missed
    assert topk_agreement(missed, (sb, ib))['same_topk'] == 0.0

def test_peak_rss():
    with PeakRSS() as pk:
        buf = mmap.mmap(-1, 40 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for _ in range(40): buf.write(b'x' * 2**20)
        time.sleep(0.05); buf.close()
    assert 35 < pk.anon_mb < 70 and pk.source.startswith('/proc')

def test_tables_from_timings():
    df = pd.DataFrame([dict(backbone='ViT-L-14', images=5, iters=50, method=m, ms=ms, extrapolated=m != FAST)
                       for m, ms in [('textual inversion', 2000.0), ('POLAR naive', 400.0), (FAST, 20.0)]])
    sp = speedups(df)
    assert sp.loc[('ViT-L-14', 5, 50), 'textual inversion / fast'] == 100.0 and sp.loc[('ViT-L-14', 5, 50), 'POLAR naive / fast'] == 20.0
    pt = paper_table(df)
    assert pt.loc[FAST, 'paper_ms'] == PAPER_TAB16['POLAR'] and np.isnan(pt.loc['POLAR naive', 'paper_ms'])
    assert pt.loc['textual inversion', 'ours_vs_fast'] == 100.0

def test_scaling_fits_recover_slopes():
    rows = [dict(axis='images', value=n, width=512, embed_dim=512, images=n, rank=1, iters=50, setup_ms=10.0*n, step_ms=5.0, ms=10.0*n + 250) for n in (1, 2, 4, 8)]
    rows += [dict(axis='width', value=w, width=w, embed_dim=w, images=5, rank=1, iters=50, setup_ms=50.0, step_ms=5e-5*w*w, ms=1.0) for w in (256, 512, 1024)]
    rows += [dict(axis='rank', value=r, width=512, embed_dim=512, images=5, rank=r, iters=50, setup_ms=50.0, step_ms=5.0, ms=300.0) for r in (1, 4)]
    rows += [dict(axis='iters', value=k, width=512, embed_dim=512, images=5, rank=1, iters=k, setup_ms=50.0, step_ms=5.0, ms=50.0 + 5*k) for k in (0, 10, 50)]
    f = scaling_fits(pd.DataFrame(rows)).set_index('axis')
    assert f.loc['images', 'setup_slope'] == pytest.approx(1.0) and f.loc['images', 'step_slope'] == pytest.approx(0.0, abs=1e-9)
    assert f.loc['width', 'step_slope'] == pytest.approx(2.0)
    assert f.loc['iters', 'intercept_ms'] == pytest.approx(50.0) and f.loc['iters', 'ms_per_iter'] == pytest.approx(5.0)
    text = scaling_summary(pd.DataFrame(rows), iters=(5, 50))
    assert 'equal at about 10 iterations' in text and 'the setup dominates' in text and 'the iterations dominate' in text

def test_run_bench_and_cli(tmp_path, monkeypatch):
    monkeypatch.setenv('POLAR_CACHE_DIR', str(tmp_path/'cache'))
    with pytest.raises(ValueError, match='unknown part'): run_bench(quick=True, parts=('warp',))
    with pytest.raises(SystemExit): main(['bench', '--parts', 'warp'])
    out = tmp_path/'r.json'
    assert main(['bench', '--quick', '--parts', 'exactness,search', '--out', str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r) == {'profile', 'machine', 'settings', 'seconds', 'exactness', 'search', 'elapsed_s', 'out'} and r['profile'] == 'quick'
    assert all(e['max_abs_err'] <= 1e-5 for e in r['exactness'])
    s = r['search'][0]
    assert s['rows'] == 50_000 and s['same_topk'] == 1.0 and s['ms_per_query'] > 0
    assert (tmp_path/'cache'/'bench').is_dir()  # the feature file went to the settings' cache dir
    assert set(machine_info()) >= {'device', 'cpu', 'cpu_count', 'torch', 'threads'} and set(PARTS) >= set(r['settings'])

def test_scan_releases_pages(tmp_path):
    p = write_features(tmp_path/'f.npy', 20_000, 64)
    X, release = open_features(p)
    before = X[:5].copy(); release(0, 20_000)
    assert np.array_equal(X[:5], before)  # released pages are read again from the file when touched
    with PeakRSS() as pk: topk_scan(p, torch.randn(3, 64), chunk=1000)
    assert pk.file_mb < 0.5 * 20_000 * 64 * 2 / 2**20 + 0.5  # never the whole file mapped in at once
