"""The result chapters' path on real formats: the paper profile's settings, a random-weight ViT-B-32 (the numbers are
meaningless), tiny ConCon-Chi and PerVL DeepFashion2 fixtures with images, and every runner function the chapters call."""
import json
import numpy as np
import pandas as pd
import pytest
import torch
from polar_nb.baselines import ImageOnly, Polar, TextOnly, concept_set, polar_defaults
from polar_nb.clip import load_backbone
from polar_nb.config import get_settings
from polar_nb.data import ConConChi, PerVLDeepFashion2
from polar_nb.experiments import default_methods, gallery, main_results, single_image, top_k
from polar_nb.paper import paper_table
from fixtures_formats import make_conconchi, make_pervl, TRAIN_ROWS, TEST_ROWS, PERVL_SUPPORT, PERVL_POOL
from test_baselines import _images

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def paper_setup(tmp_path_factory):
    "A settings file of the paper profile whose data roots are the fixtures and whose backbone is a random ViT-B-32."
    d = tmp_path_factory.mktemp('paper')
    cc = make_conconchi(d/'conconchi')
    _images([cc/'data'/'images'/g for r in TRAIN_ROWS + TEST_ROWS for g in r['GTS']], 0)
    df = make_pervl(d/'deepfashion2')
    _images([df/'train'/'image'/n for ns in PERVL_SUPPORT.values() for n in ns] + [df/n for n,_,_ in PERVL_POOL], 1)
    ini = d/'settings.ini'
    ini.write_text(f"[settings]\nprofile = paper\ndevice = cpu\ncache_dir = {d/'cache'}\n\n[paper]\nbackbone = ViT-B-32\n"
                   f"pretrained =\nconconchi_root = {cc}\ndeepfashion2_root = {df}\n")
    return get_settings(ini, env={})

def test_paper_profile_end_to_end(paper_setup):
    s = paper_setup
    assert s.profile == 'paper' and s.backbone == 'ViT-B-32'
    bb = load_backbone(s.backbone, s.pretrained or None, device=s.device)
    df2, cc = PerVLDeepFashion2(s.data_root('deepfashion2')), ConConChi(s.data_root('conconchi'))
    assert polar_defaults(bb, 'deepfashion2') == dict(lam=0.1, iters=50, lr=1e-3)  # the paper's DeepFashion2 protocol for ViT-B/32
    methods = [TextOnly('coarse'), ImageOnly(), Polar(iters=5)]
    for bench in (df2, cc):
        t, pq = main_results(bench, bb, methods, seeds=(0, 1), cache=s.cache_dir, per_query=True)
        assert set(t.method) == {m.name for m in methods} and (t.n_runs == 2).all()
        assert {'context-all', 'concept'} <= set(t.split) and t['mean'].between(0, 1).all()
        assert len(pq) == 2 * len(methods) * (len(bench.queries('context')) + len(bench.queries('concept')))
        again = main_results(bench, bb, methods, seeds=(0, 1), cache=s.cache_dir)  # read back from the cache
        pd.testing.assert_frame_equal(again, t)
        one = single_image(bench, bb, methods, cache=s.cache_dir)
        assert 'std' in one and (one.n_runs == min(5, max(len(bench.support(c)) for c in bench.concepts))).all()
        cs = concept_set(bench, bb, s.cache_dir)
        pol = Polar(iters=5).fit(bb, cs, s.cache_dir)
        rows = top_k(bench, bb, pol, bench.queries('concept'), cs, k=3, cache=s.cache_dir)
        assert all(len(r) == min(3, len(q.candidates or bench.pool)) for r, q in zip(rows, bench.queries('concept')))
        gallery(bench, [(str(q.concepts), r) for q, r in zip(bench.queries('concept'), rows)])
    assert len(paper_table('10')) and len(paper_table('15'))

def test_default_methods_on_real_formats(paper_setup):
    "Every default method, with the paper's hyper-parameters for the benchmark, on the PerVL fixture."
    s = paper_setup
    bb = load_backbone(s.backbone, None, device='cpu')
    df2 = PerVLDeepFashion2(s.data_root('deepfashion2'))
    t = main_results(df2, bb, seeds=(0,), cache=s.cache_dir)
    assert set(t.method) == {m.name for m in default_methods()}
    assert t.support.iloc[0].startswith('all') or 'drawn' in t.support.iloc[0]
