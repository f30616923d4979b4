"The sweep engine: batched runs equal runs alone, a sweep killed with SIGKILL resumes to the same table, Ray gives the local table."
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pandas as pd
import pytest
import torch
from polar_nb.clip import load_backbone
from polar_nb.data import ConConChi
from polar_nb.polar import personalize
from polar_nb.sweep import Grid, personalize_many, run_sweep, VALIDATION_CONCEPTS
from polar_nb.world import make_benchmark

GRID = dict(param=['v', 'o', ('v', 'o')], lam=[0, 0.01, 0.1, 0.35, 1], iters=25)
SMALL = dict(param=['v', ('v', 'o')], lam=[0, 0.1, 1], iters=25)  # for the kill-and-resume and Ray tests: several batches, fewer runs

@pytest.fixture(scope='module')
def bb(): return load_backbone('world-tiny', device='cpu')

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp('world')/'cc', 'conconchi', seed=3, profile='small')

@pytest.fixture(scope='module')
def reference(bb, world, tmp_path_factory):
    "The uninterrupted local sweep."
    return run_sweep(Grid(**GRID), ConConChi(world), bb, 'validation', cache=tmp_path_factory.mktemp('ref'), batch_size=4)

@pytest.fixture(scope='module')
def small_reference(bb, world, tmp_path_factory):
    "The uninterrupted local sweep of `SMALL`."
    return run_sweep(Grid(**SMALL), ConConChi(world), bb, 'validation', cache=tmp_path_factory.mktemp('small'), batch_size=4)

def metrics(t): return t.drop(columns=['seconds'])

def test_batched_equals_alone(bb):
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(n, bb.embed_dim, generator=g) for n in (3, 5, 8, 4)]
    lams, seeds, lrs = [0, 0.1, 0.35, 1], [0, 1, 2, 3], [1e-2, 1e-2, 3e-3, 1e-2]
    negs = [None, torch.randn(5, bb.embed_dim, generator=g), None, torch.randn(2, bb.embed_dim, generator=g)]
    for kw in [{}, dict(param=('v', 'o'), rank=2), dict(negatives=negs), dict(optimizer=['adam', 'adamw', 'adamw', 'adam'], weight_decay=[0, 0.1, 0, 0.01])]:
        many = personalize_many(bb, feats, lam=lams, seed=seeds, lr=lrs, iters=30, **kw)
        for i, u in enumerate(many):
            one = {k: (v[i] if isinstance(v, list) else v) for k, v in kw.items()}
            a = personalize(bb, feats[i], lam=lams[i], seed=seeds[i], lr=lrs[i], iters=30, **one)
            assert a.B.norm() > 1e-3
            torch.testing.assert_close(u.B, a.B, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(u.A, a.A, atol=1e-5, rtol=1e-4)
            assert max(abs(x - y) for x, y in zip(u.history, a.history)) < 1e-6
            assert u.meta == a.meta and u.param == a.param

def test_sweep_table_and_cache(bb, world, reference, tmp_path):
    assert len(reference) == 15 * VALIDATION_CONCEPTS
    assert reference[['setting', 'concept', 'seed']].drop_duplicates().shape[0] == len(reference)
    assert {'context_mrr', 'context_map', 'concept_mrr', 'concept_map', 'caption_r@10', 'seconds'} <= set(reference.columns)
    assert reference['context_mrr'].between(0, 1).all() and reference['caption_r@10'].between(0, 1).all()
    assert reference.groupby('lam').context_mrr.mean().nunique() > 1  # λ changes the result: the runs are not all the same
    with pytest.raises(ValueError, match="executor must be 'local' or 'ray'"):
        run_sweep(Grid(**GRID), ConConChi(world), bb, executor='slurm', cache=tmp_path)

SCRIPT = '''
import sys
from pathlib import Path
from polar_nb.clip import load_backbone
from polar_nb.data import ConConChi
from polar_nb.sweep import Grid, run_sweep
bb = load_backbone('world-tiny', device='cpu')
print('started', flush=True)
run_sweep(Grid(**{grid!r}), ConConChi({world!r}), bb, 'validation', cache={cache!r}, batch_size=1)
print('finished', flush=True)
'''

def test_sigkill_resumes_to_the_same_table(bb, world, small_reference, tmp_path):
    cache = tmp_path/'cache'
    code = textwrap.dedent(SCRIPT.format(grid=SMALL, world=str(world), cache=str(cache)))
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    runs = cache/'sweep'
    t0 = time.time()
    while time.time() - t0 < 240 and p.poll() is None and len(list(runs.glob('*.json')) if runs.is_dir() else []) < 3: time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    n_before = len(list(runs.glob('*.json')))
    assert p.returncode == -signal.SIGKILL and 3 <= n_before < len(small_reference), (p.returncode, n_before)  # killed mid-way
    resumed = run_sweep(Grid(**SMALL), ConConChi(world), bb, 'validation', cache=cache, batch_size=1)
    pd.testing.assert_frame_equal(metrics(resumed), metrics(small_reference), check_exact=False, rtol=1e-5, atol=1e-6)
    assert len(list(runs.glob('*.json'))) == len(small_reference)
    assert not list(runs.glob('.*.tmp'))  # no half-written file is left
    t0 = time.perf_counter()
    again = run_sweep(Grid(**SMALL), ConConChi(world), bb, 'validation', cache=cache, batch_size=1)
    pd.testing.assert_frame_equal(again, resumed)  # finished: read back, not recomputed (the stored seconds too)

RAY = dict(param=['v'], lam=[0, 1], iters=25)  # two settings, two batches: Ray's own start-up dominates, not the runs

def test_ray_equals_local(bb, world, tmp_path):
    ray = pytest.importorskip('ray')
    reference = run_sweep(Grid(**RAY), ConConChi(world), bb, 'validation', cache=tmp_path/'local', batch_size=3)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        on_ray = run_sweep(Grid(**RAY), ConConChi(world), bb, 'validation', executor='ray', cache=tmp_path/'ray', batch_size=3)
    finally: ray.shutdown()
    assert len(reference) == 2 * VALIDATION_CONCEPTS
    pd.testing.assert_frame_equal(metrics(on_ray), metrics(reference), check_exact=False, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path/'ray'/'sweep').glob('*.json'))) == len(reference)  # written to the same kind of cache
    local = run_sweep(Grid(**RAY), ConConChi(world), bb, 'validation', cache=tmp_path/'ray', batch_size=3)
    pd.testing.assert_frame_equal(local, on_ray)  # a local sweep reads what Ray computed

def test_a_diverging_run_is_recorded_not_fatal(bb, world, tmp_path):
    # lr 50: Adam's first steps throw B far off, which `personalize` refuses as divergence
    g = Grid(param=['v'], lam=[0.1], iters=10, lr=[1e-2, 50.0])
    t = run_sweep(g, ConConChi(world), bb, 'validation', cache=tmp_path, batch_size=8)
    assert t.diverged.tolist() == [v == 50 for v in t.lr]
    assert t[t.diverged].context_mrr.isna().all() and t[~t.diverged].context_mrr.notna().all()
    assert t[t.diverged].error.str.contains('diverged').all()
    t2 = run_sweep(g, ConConChi(world), bb, 'validation', cache=tmp_path, batch_size=8)  # read back, not retrained
    pd.testing.assert_frame_equal(t.drop(columns='seconds'), t2.drop(columns='seconds'))
