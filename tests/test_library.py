"The photo library end to end through the command line (index, learn, search, changes to the folder, a corrupt photo), and its API's bad input."
import json, shutil, sqlite3, warnings
from pathlib import Path
import numpy as np
import pytest
import polar_nb.library as L
from polar_nb.cli import main
from polar_nb.clip import load_backbone
from polar_nb.data import ConConChi
from polar_nb.library import PhotoLibrary, photo_files, recall_at, build_index, search_index
from polar_nb.polar import random_update
from polar_nb.world import make_benchmark

BB = ['--backbone', 'world-tiny', '--device', 'cpu']

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return ConConChi(make_benchmark(tmp_path_factory.mktemp('world')/'cc', 'conconchi', seed=3))

@pytest.fixture(scope='module')
def bb(): return load_backbone('world-tiny', device='cpu')

def photos_folder(world, root:Path, n:int=40)->Path:
    "A folder with spaces and non-ASCII names holding `n` of the world's photos, in two sub-folders."
    d = root/'My Photos – Zürich'
    for i, p in enumerate(world.pool[:n]):
        sub = d/('été 2025' if i % 2 else 'winter'); sub.mkdir(parents=True, exist_ok=True); shutil.copy(p, sub/f'photo {i}.jpeg')
    return d

def run(capsys, argv):
    "Exit status, stdout and stderr of `polar-nb argv`."
    try: code = main(argv)
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err

def test_cli_end_to_end(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lib = photos_folder(world, tmp_path)
    code, out, err = run(capsys, ['index', str(lib), *BB])
    assert (code, out) == (0, '') and '40 added' in err and '40 photos indexed with world-tiny' in err
    mine = tmp_path/'dotty'; mine.mkdir()
    for p in world.support(0): shutil.copy(p, mine/p.name)
    code, out, err = run(capsys, ['learn', 'dotty', *map(str, sorted(mine.iterdir())), '--library', str(lib), '--iters', '30'])
    assert code == 0 and "learned 'dotty' from 5 photo(s)" in err
    code, out, err = run(capsys, ['search', 'dotty on the beach', '--k', '5', '--library', str(lib)])
    lines = out.splitlines()
    assert code == 0 and len(lines) == 5 and all(Path(l.split('\t')[0]).is_file() for l in lines)
    scores = [float(l.split('\t')[1]) for l in lines]; assert scores == sorted(scores, reverse=True)
    code, out, err = run(capsys, ['search', 'dotty on the beach', '--k', '5', '--json', '--html', 'sheet.html', '--library', str(lib)])
    hits = json.loads(out)
    assert code == 0 and [h['path'] for h in hits] == [l.split('\t')[0] for l in lines] and set(hits[0]) == {'path', 'score'}
    assert (tmp_path/'sheet.html').is_file() and (tmp_path/'sheet.png').is_file() and 'contact sheet' in err
    # the folder changes: one photo added, one deleted, one corrupt
    files = photo_files(lib, lib/'.polar-nb')
    shutil.copy(world.pool[50], lib/'winter'/'nouvelle.jpeg'); files[0].unlink(); files[1].write_bytes(b'GIF89a broken')
    code, out, err = run(capsys, ['index', str(lib), *BB, '--quiet'])
    assert code == 1 and str(files[1]) in err and '1 added, 0 changed, 1 removed, 38 unchanged, 1 could not be read' in err
    code, out, _ = run(capsys, ['search', 'a photo', '--k', '100', '--library', str(lib)])
    paths = {l.split('\t')[0] for l in out.splitlines()}
    assert len(paths) == 39 and str(lib/'winter'/'nouvelle.jpeg') in paths and str(files[0]) not in paths and str(files[1]) not in paths
    files[1].unlink()
    assert run(capsys, ['index', str(lib), *BB, '--quiet'])[0] == 0  # nothing unreadable left
    code, out, _ = run(capsys, ['concepts', '--library', str(lib)])
    assert code == 0 and out.startswith('dotty\t5 photos\tworld-tiny')
    assert run(capsys, ['concepts', 'remove', 'dotty', '--library', str(lib)])[0] == 0
    assert run(capsys, ['concepts', '--library', str(lib)])[1] == ''
    code, _, err = run(capsys, ['concepts', 'remove', 'dotty', '--library', str(lib)])
    assert code == 2 and "no concept 'dotty'" in err and err.count('\n') == 1
    monkeypatch.chdir(lib)  # --library defaults to the current folder
    assert len(run(capsys, ['search', 'a photo', '--k', '3'])[1].splitlines()) == 3

def test_cli_errors(world, tmp_path, capsys):
    lib = photos_folder(world, tmp_path, n=4)
    code, _, err = run(capsys, ['learn', 'dotty', 'missing.jpg', '--library', str(lib), *BB])
    assert code == 2 and 'no photo missing.jpg' in err
    code, _, err = run(capsys, ['search', 'a cup', '--library', str(lib), *BB])
    assert code == 2 and 'holds no indexed photo' in err
    assert run(capsys, ['index', str(lib), *BB, '--quiet'])[0] == 0
    code, _, err = run(capsys, ['search', 'a cup', '--library', str(lib), '--backbone', 'ViT-B-32', '--device', 'cpu'])
    assert code == 2 and "was indexed with backbone 'world-tiny'" in err
    code, _, err = run(capsys, ['learn', '2dogs', str(world.support(0)[0]), '--library', str(lib)])
    assert code == 2 and 'concept name' in err

def test_update_resumes(world, bb, tmp_path, monkeypatch):
    lib = PhotoLibrary.open(photos_folder(world, tmp_path, n=20), backbone=bb)
    calls, encode = [], L._encode_images
    def flaky(b, ims):
        calls.append(len(ims))
        if len(calls) == 2: raise KeyboardInterrupt
        return encode(b, ims)
    monkeypatch.setattr(L, '_encode_images', flaky)
    with pytest.raises(KeyboardInterrupt): lib.update(chunk=8)
    assert len(lib) == 8
    monkeypatch.setattr(L, '_encode_images', encode)
    again = PhotoLibrary.open(lib.folder)  # the recorded backbone
    r = again.update(chunk=8)
    assert (r.added, r.unchanged, again.bb.name) == (12, 8, 'world-tiny')
    paths, X, _ = again.features()
    assert X.dtype == np.float16 and X.shape == (20, bb.embed_dim) and np.allclose(np.linalg.norm(X.astype(np.float32), axis=1), 1, atol=1e-2)

def test_manifest_and_two_connections(world, bb, tmp_path):
    lib = PhotoLibrary.open(photos_folder(world, tmp_path, n=6), backbone=bb); lib.update()
    other = sqlite3.connect(lib.index_dir/'library.sqlite')
    rows = other.execute('SELECT path, size, mtime_ns, hash, row FROM photos ORDER BY row').fetchall()
    assert len(rows) == 6 and all((lib.folder/p).stat().st_size == s for p,s,*_ in rows)
    assert dict(other.execute('SELECT key, value FROM meta'))['backbone'] == 'world-tiny'
    (lib.folder/'winter'/'photo 0.jpeg').touch()  # a new mtime, the same content: no re-encoding
    r = lib.update(); assert (r.changed, r.unchanged) == (1, 5)

def test_concepts_bad_input(world, bb, tmp_path):
    lib = PhotoLibrary.open(photos_folder(world, tmp_path, n=10), backbone=bb); lib.update()
    with pytest.raises(ValueError, match="no photo to learn it from"): lib.learn('rex', [])
    bad = tmp_path/'bad.jpg'; bad.write_bytes(b'not an image')
    with pytest.raises(ValueError, match='bad.jpg'): lib.learn('rex', [bad])
    vit = load_backbone('ViT-B-32', pretrained=None, device='cpu')
    random_update(vit, 'v').save(lib.concepts_dir/'stranger.safetensors')
    with pytest.raises(ValueError, match="trained on backbone 'ViT-B-32', not 'world-tiny'"): lib.search('stranger on the beach')
    u = lib.learn('Rex', world.support(1), iters=20)
    text, ups = lib.parse('REX and rex-like rexes on the beach')
    assert text == 'sks and rex-like rexes on the beach' and [x.meta['concept'] for x in ups] == ['Rex'] and u.meta['concept'] == 'Rex'

def test_approximate_index_is_kept_and_checked(world, bb, tmp_path):
    lib = PhotoLibrary.open(photos_folder(world, tmp_path, n=40), backbone=bb); lib.update()
    exact = [h.path for h in lib.search('a red ball', k=10)]
    approx = [h.path for h in lib.search('a red ball', k=10, kind='ivf')]
    assert len(set(exact) & set(approx)) >= 8
    f, = lib.index_dir.glob('ivf-*.faiss')
    nprobe = lib.index('ivf')[0].nprobe; lib._index.clear()
    def no_build(*a, **kw): raise AssertionError('the saved index should have been loaded')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L, 'build_index', no_build)
        assert lib.index('ivf')[0].nprobe == nprobe  # the saved index keeps its calibrated breadth and passes its checksum
    lib._index.clear(); b = bytearray(f.read_bytes()); b[-1] ^= 1; f.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match='does not match its checksum'): lib.search('a red ball', k=10, kind='ivf')

def test_recall_and_index_kinds():
    g = np.random.default_rng(1); X = g.standard_normal((3000, 32)).astype(np.float32); X /= np.linalg.norm(X, axis=1, keepdims=True)
    ex = search_index(build_index(X, 'flat'), X[:10], 5)[1]
    assert (ex[:, 0] == np.arange(10)).all() and recall_at(ex, ex) == 1.0 and recall_at(ex[:, ::-1], ex) == 1.0
    assert recall_at(np.full_like(ex, -1), ex) == 0.0
    with pytest.raises(ValueError, match="index kind 'lsh'"): build_index(X, 'lsh')

def test_calibration_reaches_its_target():
    import faiss
    g = np.random.default_rng(2); X = g.standard_normal((3000, 32)).astype(np.float32); X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = L.sample_queries(X, 100, seed=5); ex = L.exact_topk(X, Q, 10)
    assert (ex == search_index(build_index(X, 'flat'), Q, 10)[1]).all()
    raw = build_index(X, 'ivf', target_recall=None); low = recall_at(search_index(raw, Q, 10)[1], ex)
    for kind, param in (('ivf', lambda i: i.nprobe), ('hnsw', lambda i: i.hnsw.efSearch)):
        for target in (0.9, 0.99):
            index = build_index(X, kind, target_recall=target, queries=Q)
            assert recall_at(search_index(index, Q, 10)[1], ex) >= target
            assert param(faiss.deserialize_index(faiss.serialize_index(index))) == param(index)
    assert low < 0.99 and build_index(X, 'ivf', target_recall=0.99, queries=Q).nprobe > raw.nprobe
    rep = L.calibrate(build_index(X, 'ivf', target_recall=None), X, 0.97)
    assert rep['param'] == 'nprobe' and rep['sample_recall'] >= 0.97 and rep['queries'] == 200
    assert build_index(X, 'ivf').nprobe == rep['value']  # the default build calibrates on the same sample

def test_old_names_warn():
    import polar_nb.bench as B
    with pytest.warns(DeprecationWarning, match='moved to polar_nb.library.feature_file'): assert B.feature_file is L.feature_file

def test_vit_b_32_end_to_end(world, tmp_path):
    "The real ViT-B-32 architecture (random weights) through indexing, training a concept, saving, loading and search."
    import torch
    from polar_nb.polar import LowRankUpdate, encode_text
    vit = load_backbone('ViT-B-32', pretrained=None, device='cpu')
    folder = photos_folder(world, tmp_path, n=8)
    lib = PhotoLibrary.open(folder, backbone=vit); lib.update()
    u = lib.learn('Dotty', sorted(folder.rglob('*.jpeg'))[:3], iters=15)
    assert u.backbone == 'ViT-B-32' and u.history[-1] < u.history[0]  # trained
    again = PhotoLibrary.open(folder, backbone=vit)  # a new process would see this: the update read from its file
    back = again.concept('Dotty')
    assert isinstance(back, LowRankUpdate) and torch.equal(back.A, u.A) and torch.equal(back.B, u.B)
    hits = again.search('Dotty on the beach', k=8)
    paths, X, _ = again.features()
    want = (encode_text(vit, 'sks on the beach', [back]) @ torch.from_numpy(X.astype(np.float32)).T)[0]
    assert [h.path for h in hits] == [paths[i] for i in want.argsort(descending=True, stable=True).tolist()]
    assert np.allclose([h.score for h in hits], want.sort(descending=True).values.numpy(), atol=2e-3)
