"The embedded world: its scenes (polar_nb.scenes) and benchmarks (polar_nb.world): determinism, the real formats (read back by the project's readers), counts, no concept in generic scenes, caption errors."
import csv, hashlib, json, re
from pathlib import Path
import numpy as np
import pytest
from polar_nb import scenes as S, world as W

REAL_PERVL = Path(__file__).resolve().parents[2]/'shared'/'fixtures'/'pervl_deepfashion2'
PERVL_CSVS = ['test_captions.csv', 'validation_captions.csv', 'shortened_deepfashion2_captions.csv',
              'detailed_deepfashion2_captions.csv', 'train_coarse_grained_names.csv']

def digest(root:Path)->str:
    return hashlib.sha256(b''.join(p.relative_to(root).as_posix().encode() + p.read_bytes()
                                   for p in sorted(root.rglob('*')) if p.is_file())).hexdigest()

@pytest.fixture(scope='module')
def cc(tmp_path_factory): return W.make_benchmark(tmp_path_factory.mktemp('w')/'cc', 'conconchi', seed=0)

@pytest.fixture(scope='module')
def pv(tmp_path_factory): return W.make_benchmark(tmp_path_factory.mktemp('w')/'pv', 'pervl', seed=0)

# determinism

@pytest.mark.parametrize('fmt', ['conconchi', 'pervl'])
def test_same_seed_same_bytes(fmt, cc, pv, tmp_path):
    again = W.make_benchmark(tmp_path/fmt, fmt, seed=0)
    assert digest(again) == digest(cc if fmt == 'conconchi' else pv)

def test_other_seed_other_photos_same_concepts(tmp_path):
    a, b = W.conconchi_plan(0), W.conconchi_plan(1)
    assert [r.label for r in a[1]] != [r.label for r in b[1]]
    assert W.garment_concepts() == W.garment_concepts()  # the wardrobe does not depend on a benchmark seed

def test_generic_scenes_deterministic_and_sliceable():
    a, ca = W.generic_scenes(6, seed=3)
    b, cb = W.generic_scenes(6, seed=3)
    assert (a == b).all() and ca == cb
    c, _ = W.generic_scenes(2, seed=3, start=4)
    assert (c == a[4:]).all()
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8 and all(len(x) == 5 for x in ca)
    r, rc = W.generic_retrieval(4, seed=3)
    assert not (r == a[:4]).all() and all(isinstance(x, str) for x in rc)

# ConCon-Chi format

def test_conconchi_layout(cc):
    ann = cc/'data'/'annotations'
    for split in ('train', 'test'):
        d = json.loads((ann/f'{split}.json').read_text())
        assert set(d) == {'concepts', 'max_gts', 'max_concepts', 'data'}
        assert len(d['concepts']) == 20 and all(set(c) == {'coarse', 'discriminative', 'rich'} for c in d['concepts'])
        for r in d['data']:
            assert list(r) == ['LABEL', 'GTS', 'ADDITIONAL GTS', 'CONCEPTS', 'KIND', 'ENV']
            assert all((cc/'data'/'images'/g).is_file() and re.fullmatch(r'IMG_\d{4}\.jpeg', g) for g in r['GTS'])
        assert d['max_gts'] == max(len(r['GTS']) + len(r['ADDITIONAL GTS']) for r in d['data'])
        assert d['max_concepts'] == max(len(r['CONCEPTS']) for r in d['data'])
    test = json.loads((ann/'test.json').read_text())['data']
    assert {r['KIND'] for r in test} == {'common', 'uncommon', 'negative'}
    assert {len(r['CONCEPTS']) for r in test if r['KIND'] != 'negative'} == {1, 2}
    assert any(r['CONCEPTS'] == [] for r in test) and any(r['CONCEPTS'] and r['KIND'] == 'negative' for r in test)
    assert all(r['LABEL'].count('*') == len(r['CONCEPTS']) for r in test if r['KIND'] != 'negative')
    pool = [g for r in test for g in r['GTS']]
    p = W.PROFILES['conconchi']['small']  # each concept in 4 places × 3 photos, 8 two-concept rows × 3, 2 negatives each, 40 distractors
    assert (p['contexts'], p['per_query'], p['multi'], p['per_multi'], p['neg_concept'], p['distractors']) == (4, 3, 8, 3, 2, 40)
    assert len(pool) == len(set(pool)) == 20*4*3 + 8*3 + 20*2 + 40
    assert all(set(r['ADDITIONAL GTS']) <= set(pool) - set(r['GTS']) for r in test)
    assert sum(map(len, (r['ADDITIONAL GTS'] for r in test))) > 0

def test_conconchi_reads_with_project_reader(cc):
    data = pytest.importorskip('polar_nb.data')
    b = data.ConConChi(cc)
    s = b.summary().iloc[0]
    assert (s.concepts, s.support, s.pool, s.single, s.multi, s.concept) == (20, 100, 344, 80, 8, 20)
    assert b.missing_images() == []
    assert all(q.positives for q in b.queries('context')) and all(q.positives for q in b.queries('concept'))
    assert b.descriptions(10)['coarse'] == 'bottle' and 'fish' in b.descriptions(10)['discriminative']

def test_additional_gts_answer_the_query():
    _, test = W.conconchi_plan(0)
    for r in test:
        if r.need: assert all(W.answers(r.need, s) for s in r.scenes), r.label

# PerVL format

def test_pervl_layout(pv):
    for split in ('test', 'validation'):
        text = (pv/f'{split}_fsl_train.txt').read_text()
        blocks = text[:-1].split('\n\n')
        assert text.endswith('\n') and not text.endswith('\n\n') and len(blocks) == 20
        heads = [b.split('\n')[0] for b in blocks]
        assert all(re.fullmatch(r'codes_infer/\d+:', h) for h in heads) and heads == sorted(heads)
        assert all(re.fullmatch(r'\d{6}\.jpg', n) for b in blocks for n in b.split('\n')[1:])
    names = {r[0] for f in ('test_captions.csv', 'validation_captions.csv') for r in list(csv.reader(open(pv/f)))[1:]}
    assert all((pv/n).is_file() for n in names) and len(names) == 2*20*4

def _line_shape(line:str)->str:
    "The layout class of one CSV line: which fields are quoted."
    return re.sub(r'"(?:[^"]|"")*"', 'Q', re.sub(r'[^,"]+', 'v', line))

@pytest.mark.parametrize('name', PERVL_CSVS)
def test_pervl_csv_like_real(pv, name):
    ours = (pv/name).read_bytes()
    assert b'\r' not in ours and ours.endswith(b'\n')
    lines = ours.decode().splitlines()
    assert all(len(r) == (2 if 'coarse' in name else 3) for r in csv.reader(lines))
    if not REAL_PERVL.is_dir(): pytest.skip('real PerVL annotation files not present')
    real = (REAL_PERVL/name).read_text().splitlines()
    assert lines[0] == real[0]  # the same header
    assert {_line_shape(l) for l in lines[1:]} <= {_line_shape(l) for l in real[1:]}  # same separators and quoting
    pat = re.compile(r'^train/image/\d{6}\.jpg,\d+,') if 'coarse' not in name else re.compile(r'^\d+,[a-z ]+$')
    assert all(pat.match(l) for l in real[1:]) and all(pat.match(l) for l in lines[1:])

def test_pervl_fsl_like_real(pv):
    if not REAL_PERVL.is_dir(): pytest.skip('real PerVL annotation files not present')
    shape = lambda t: re.sub(r'\d+', 'N', t)
    for split in ('test', 'validation'):
        real, ours = (REAL_PERVL/f'{split}_fsl_train.txt').read_text(), (pv/f'{split}_fsl_train.txt').read_text()
        assert set(shape(ours).splitlines()) == set(shape(real).splitlines()) == {'codes_infer/N:', 'N.jpg', ''}
        assert real.endswith('.jpg\n') and ours.endswith('.jpg\n')

def test_pervl_reads_with_project_reader(pv):
    data = pytest.importorskip('polar_nb.data')
    for split in ('test', 'validation'):
        b = data.PerVLDeepFashion2(pv, split)
        assert len(b.concepts) == 20 and len(b.pool) == 80 and b.missing_images() == []
        assert all('wearing *' in q.text for q in b.queries('context'))
        assert {b.descriptions(c)['coarse'] for c in b.concepts} <= set(S.GARMENTS)

# what the world contains

def test_no_concept_in_generic_scenes():
    _, _, scs = W.generic_scenes(400, seed=11, return_scenes=True)
    keys = W.concept_keys()
    looks = [g for s in scs for t in s.things for g in (t.look.garments if t.person else [t.look])]
    assert looks and not any(l.key in keys for l in looks)
    assert all(t.concept is None for s in scs for t in s.things)
    assert {l.cls for l in looks} >= set(S.CLASSES) | {'skirt'}
    _, test = W.conconchi_plan(0)
    for r in test:
        if r.concepts == []: assert all(t.concept is None and t.look.key not in keys for s in r.scenes for t in s.things)

def test_concepts():
    assert len(W.CONCEPTS) == 20 and len(S.CONTEXTS) >= 10 and len(S.CLASSES) >= 12 and len(S.COLOURS) == 10
    twins = [c for c in W.CONCEPTS if c.twin]
    assert len(twins) == 10
    for c in twins:
        t = next(d for d in W.CONCEPTS if d.name == c.twin)
        assert (c.look.cls, c.look.colour) == (t.look.cls, t.look.colour) and c.look != t.look
    mis = [c for c in W.CONCEPTS if c.look.body]
    assert len(mis) == 3 and all(S.SHAPES[c.look.body]['like'] != c.coarse for c in mis)
    assert len({c.look.key for _, c in W.garment_concepts()}) == 100

def test_vlm_caption_errors():
    scs = [S.sample_scene(np.random.default_rng(i)) for i in range(300)]
    caps, labs = W.vlm_captions(scs, seed=0)
    assert (labs.count('right'), labs.count('minor'), labs.count('wrong')) == (264, 30, 6)
    for s, c, l in zip(scs, caps, labs):
        right = S.vlm_caption(s, np.random.default_rng(s.seed))
        if l == 'right': assert c == right
        if l == 'minor': assert c != right and len(set(c.split()) ^ set(right.split())) <= 8

def test_vlm_files(cc, pv):
    for root, prefix in ((cc, 'data/images/'), (pv, 'train/image/')):
        caps, info = json.loads((root/'vlm_captions.json').read_text()), json.loads((root/'world.json').read_text())
        assert set(caps) == set(info['vlm_labels']) and all(k.startswith(prefix) and (root/k).is_file() for k in caps)
        frac = {k: list(info['vlm_labels'].values()).count(k)/len(caps) for k in ('right', 'minor', 'wrong')}
        assert abs(frac['right'] - .88) < .01 and abs(frac['minor'] - .10) < .01 and abs(frac['wrong'] - .02) < .01
        gen = json.loads((root/'generic'/'captions.json').read_text())
        assert len(gen) == 200 and all((root/k).is_file() for k in gen)

def test_bad_input(tmp_path):
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'mine.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='world.json'): W.make_benchmark(tmp_path/'x')
    assert (tmp_path/'x'/'mine.txt').read_text() == 'keep me'
    with pytest.raises(ValueError, match='fmt'): W.make_benchmark(tmp_path/'y', 'coco')
    with pytest.raises(ValueError, match='profile'): W.make_benchmark(tmp_path/'y', 'pervl', profile='huge')
    with pytest.raises(ValueError, match=r"unknown size\(s\) \['places'\]"): W.make_benchmark(tmp_path/'y', 'conconchi', profile=dict(places=2))
    assert not (tmp_path/'y').exists()

def test_profile_as_dict(tmp_path):
    "A dict of sizes changes `small`'s: a tiny ConCon-Chi world has exactly the photos it asks for, and world.json records them."
    sizes = dict(contexts=1, per_query=2, multi=1, per_multi=1, neg_concept=1, distractors=3, generic=5)
    root = W.make_benchmark(tmp_path/'tiny', 'conconchi', seed=3, profile=sizes)
    info = json.loads((root/'world.json').read_text())
    assert info['profile'] == sizes and info['counts'] == dict(support=100, pool=20*1*2 + 1*1 + 20*1 + 3, queries=20 + 1, generic=5)
    data = pytest.importorskip('polar_nb.data')
    b = data.ConConChi(root)
    assert len(b.pool) == 64 and b.missing_images() == [] and len(b.queries('context')) == 21

# replacing a world, failed and killed runs

CC_TINY = dict(contexts=1, per_query=1, multi=1, per_multi=1, neg_concept=1, distractors=2, support=1, generic=3)
PV_TINY = dict(concepts=2, support=(1, 3), pool=(1,), generic=2)
TINY = dict(conconchi=CC_TINY, pervl=PV_TINY)

def tiny(where:Path, fmt:str='conconchi', seed:int=0)->Path:
    "A tiny world of `fmt` (32-pixel photos)."
    return W.make_benchmark(where, fmt, seed=seed, profile=TINY[fmt], size=32)

def snapshot(where:Path)->dict:
    "{relative path: bytes} of every file under `where`."
    return {p.relative_to(where).as_posix(): p.read_bytes() for p in sorted(where.rglob('*')) if p.is_file()}

def world_part(where:Path, user=())->dict:
    "`snapshot(where)` without the files `user`."
    return {k: v for k, v in snapshot(where).items() if k not in user}

def leftovers(parent:Path)->list:
    "Folders a writer left beside its worlds in `parent`."
    return [p.name for p in parent.iterdir() if 'polar-nb' in p.name]

USER = {'mine.txt': 'keep me', 'notes/a.md': '# a', 'data/images/holiday.png': 'not a photo of the world', 'generic/mine.csv': 'x,y'}

def add_user_files(where:Path, files=USER):
    for k, v in files.items(): (where/k).parent.mkdir(parents=True, exist_ok=True); (where/k).write_text(v)

def test_world_json_lists_its_files(tmp_path):
    r = tiny(tmp_path/'cc')
    info = json.loads((r/'world.json').read_text())
    assert info['files'] == sorted(snapshot(r)) and 'world.json' in info['files']

@pytest.mark.parametrize('fmt', ['conconchi', 'pervl'])
def test_remake_keeps_user_files(tmp_path, fmt):
    r = tiny(tmp_path/'w', fmt, seed=0); add_user_files(r)
    tiny(r, fmt, seed=1)
    assert all((r/k).read_text() == v for k, v in USER.items())
    assert world_part(r, USER) == snapshot(tiny(tmp_path/'fresh', fmt, seed=1))
    assert leftovers(tmp_path) == []

def test_remake_other_format_and_size(tmp_path):
    "Replacing a world removes every file it wrote, also those the new world does not write."
    r = W.make_benchmark(tmp_path/'w', 'conconchi', seed=0, profile=CC_TINY | dict(distractors=9), size=32); add_user_files(r)
    tiny(r, 'pervl', seed=2)
    assert world_part(r, USER) == snapshot(tiny(tmp_path/'fresh', 'pervl', seed=2))
    assert all((r/k).read_text() == v for k, v in USER.items())

def test_remake_refuses_a_user_file_in_the_way(tmp_path):
    r = tiny(tmp_path/'w', 'pervl'); add_user_files(r, {'data/annotations/train.json': '{}'})
    before = snapshot(r)
    with pytest.raises(FileExistsError, match='data/annotations/train.json'): tiny(r, 'conconchi')
    assert snapshot(r) == before and leftovers(tmp_path) == []

def test_remake_world_without_file_list(tmp_path):
    "A world.json written before worlds listed their files: the files its format's writer produces go, the rest stay."
    for fmt, theirs, mine in (('conconchi', ['data/images/IMG_9999.jpeg', 'generic/images/old.jpg'], ['mine.txt', 'data/mine.txt', 'data/images/sub/x.jpeg']),
                              ('pervl', ['train/image/000001.jpg', 'old_fsl_train.txt', 'x_captions.csv'], ['mine.txt', 'train/mine.txt', 'fsl_train.txt'])):
        r = tiny(tmp_path/fmt, fmt)
        info = json.loads((r/'world.json').read_text()); del info['files']; (r/'world.json').write_text(json.dumps(info))
        add_user_files(r, {k: k for k in theirs + mine})
        tiny(r, fmt, seed=1)
        assert all((r/k).read_text() == k for k in mine) and not any((r/k).exists() for k in theirs)
        assert world_part(r, mine) == snapshot(tiny(tmp_path/f'fresh-{fmt}', fmt, seed=1))

def test_refuses_a_world_json_it_did_not_write(tmp_path):
    (tmp_path/'w').mkdir(); (tmp_path/'w'/'world.json').write_text('{"name": "my own world"}'); (tmp_path/'w'/'a.txt').write_text('a')
    with pytest.raises(FileExistsError, match='world.json'): tiny(tmp_path/'w')
    assert snapshot(tmp_path/'w') == {'world.json': b'{"name": "my own world"}', 'a.txt': b'a'}

class Boom(Exception): pass

def fail_after(monkeypatch, n:int, name:str='_save'):
    "Make `W.<name>` raise Boom from its (n+1)-th call on."
    real, calls = getattr(W, name), [0]
    def f(*a, **kw):
        calls[0] += 1
        if calls[0] > n: raise Boom(f'{name} call {calls[0]}')
        return real(*a, **kw)
    monkeypatch.setattr(W, name, f)

@pytest.mark.parametrize('fmt', ['conconchi', 'pervl'])
@pytest.mark.parametrize('n', [0, 8])  # a tiny PerVL world saves 12 photos or so
def test_failed_run_leaves_the_folder_as_it_was(tmp_path, monkeypatch, fmt, n):
    fresh, old = tmp_path/'fresh', tiny(tmp_path/'old', fmt); add_user_files(old)
    before = snapshot(old)
    for r in (fresh, old):
        with monkeypatch.context() as m, pytest.raises(Boom):
            fail_after(m, n); tiny(r, fmt, seed=1)
    assert not fresh.exists() and snapshot(old) == before and leftovers(tmp_path) == []
    tiny(fresh, fmt, seed=1); tiny(old, fmt, seed=1)
    assert snapshot(fresh) == world_part(old, USER)

def test_failed_write_of_world_json(tmp_path, monkeypatch):
    old = tiny(tmp_path/'old'); before = snapshot(old)
    with monkeypatch.context() as m:
        fail_after(m, 4, '_write_json')  # train.json, test.json, vlm_captions.json, generic/captions.json, then world.json
        with pytest.raises(Boom): tiny(old, seed=1)
    assert snapshot(old) == before and leftovers(tmp_path) == []

KILL = '''
import os, signal, sys
from polar_nb import world as W
where, fmt, seed, sizes, mod, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
obj = W if mod == 'W' else os
real, calls = getattr(obj, name), [0]
def f(*a, **kw):
    calls[0] += 1
    if calls[0] > n: os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **kw)
setattr(obj, name, f)
W.make_benchmark(where, fmt, seed=seed, profile=sizes, size=32)
'''

def killed(where:Path, fmt:str, seed:int, at:tuple)->int:
    "Run make_benchmark in a child process killed (SIGKILL) at call n+1 of the function `at` = (module, name, n); its exit status."
    import subprocess, sys
    args = [sys.executable, '-c', KILL, str(where), fmt, str(seed), repr(TINY[fmt]), *map(str, at)]
    return subprocess.run(args, cwd=Path(W.__file__).parents[1], capture_output=True).returncode

signal = pytest.importorskip('signal')

@pytest.mark.skipif(not hasattr(signal, 'SIGKILL'), reason='needs SIGKILL')
@pytest.mark.parametrize('at', [('W', '_save', 10), ('os', 'rename', 0), ('os', 'rename', 1), ('os', 'rename', 2), ('os', 'rename', 4),
                                ('os', 'rename', 6), ('os', 'unlink', 10)])
def test_killed_run(tmp_path, at):
    "A killed run leaves the folder as it was (or, killed while moving the new world in, finishes or undoes that); the next run succeeds."
    fresh, old = tmp_path/'fresh', tiny(tmp_path/'old'); add_user_files(old)
    before = snapshot(old)
    assert killed(fresh, 'conconchi', 1, at) in (0, -signal.SIGKILL)  # a fresh folder has fewer renames to kill at
    assert killed(old, 'conconchi', 1, at) == -signal.SIGKILL
    if at[1] == '_save':
        assert snapshot(old) == before and not fresh.exists()
    assert leftovers(tmp_path) or at[1] != '_save'  # a killed run leaves its folder
    tiny(fresh, seed=1); tiny(old, seed=1)
    assert snapshot(fresh) == world_part(old, USER) and all((old/k).read_text() == v for k, v in USER.items())
    assert leftovers(tmp_path) == []

def test_stale_folder_not_made_by_polar_nb_is_left_alone(tmp_path):
    r = tmp_path/'w'; tiny(r)
    (tmp_path/'.w.polar-nb').mkdir(); (tmp_path/'.w.polar-nb'/'thesis.tex').write_text('mine')
    with pytest.raises(FileExistsError, match='polar-nb'): tiny(r, seed=1)
    assert (tmp_path/'.w.polar-nb'/'thesis.tex').read_text() == 'mine'

# arguments refused before anything is written

@pytest.mark.parametrize('kw, msg', [
    (dict(seed=-1), 'seed must be a non-negative int'), (dict(seed=True), 'seed must be a non-negative int'),
    (dict(seed=1.5), 'seed must be a non-negative int'), (dict(seed='3'), 'seed must be a non-negative int'),
    (dict(size=0), 'size must be an int of at least 32'), (dict(size=16), 'size must be an int of at least 32'),
    (dict(size=64.0), 'size must be an int'), (dict(size=False), 'size must be an int'),
    (dict(fmt='coco'), 'fmt must be one of'), (dict(fmt=['pervl']), 'fmt must be one of'),
    (dict(profile='huge'), 'profile must be one of'), (dict(profile=['small']), 'profile must be one of'),
    (dict(profile=dict(contexts=0)), "'contexts' must be"), (dict(profile=dict(contexts=12)), "'contexts' must be"),
    (dict(profile=dict(per_query=0)), "'per_query' must be"), (dict(profile=dict(per_query=2.5)), "'per_query' must be"),
    (dict(profile=dict(per_multi=0)), "'per_multi' must be"), (dict(profile=dict(support=0)), "'support' must be"),
    (dict(profile=dict(distractors=-1)), "'distractors' must be"), (dict(profile=dict(generic=True)), "'generic' must be"),
    (dict(fmt='pervl', profile=dict(concepts=0)), "'concepts' must be"), (dict(fmt='pervl', profile=dict(concepts=51)), "'concepts' must be"),
    (dict(fmt='pervl', profile=dict(support=(5, 5))), "'support' must be"), (dict(fmt='pervl', profile=dict(support=(5,))), "'support' must be"),
    (dict(fmt='pervl', profile=dict(support=5)), "'support' must be"), (dict(fmt='pervl', profile=dict(support=(0, 3))), "'support' must be"),
    (dict(fmt='pervl', profile=dict(pool=())), "'pool' must be"), (dict(fmt='pervl', profile=dict(pool=(0, 4))), "'pool' must be"),
    (dict(fmt='pervl', profile=dict(pool=4)), "'pool' must be"),
    (dict(fmt='pervl', profile=dict(support=(40, 41), pool=(5,))), "more than the 32 image numbers")])
def test_bad_arguments_refused_before_writing(tmp_path, kw, msg):
    with pytest.raises((ValueError, TypeError), match=re.escape(msg)): W.make_benchmark(tmp_path/'w', **kw)
    assert list(tmp_path.iterdir()) == []

def test_root_must_be_a_folder(tmp_path, monkeypatch):
    (tmp_path/'f').write_text('a file')
    with pytest.raises(NotADirectoryError, match='root must be a folder'): W.make_benchmark(tmp_path/'f')
    assert (tmp_path/'f').read_text() == 'a file'
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match='root must not be the current folder'): W.make_benchmark('.')
    assert [p.name for p in tmp_path.iterdir()] == ['f']

def test_writers_check_their_arguments(tmp_path):
    for write in (W.write_conconchi, W.write_pervl):
        with pytest.raises(ValueError, match='seed'): write(tmp_path/'w', seed=-2)
        with pytest.raises(ValueError, match='size'): write(tmp_path/'w', size=8)
    assert list(tmp_path.iterdir()) == []

def test_numpy_ints_accepted(tmp_path):
    r = W.make_benchmark(tmp_path/'w', 'pervl', seed=np.int64(1), profile=PV_TINY | dict(concepts=np.int64(2)), size=np.int32(32))
    assert snapshot(r) == snapshot(tiny(tmp_path/'ref', 'pervl', seed=1))

def test_min_size_renders():
    s = S.sample_scene(np.random.default_rng(0))
    assert S.render(s, W.MIN_SIZE).shape == (W.MIN_SIZE, W.MIN_SIZE, 3)

def test_pervl_photos_fit_their_block():
    "With more photos per concept than its block of 32 numbers, two photos would share a file name (seed 1: 26 of 4500)."
    for fmt in ('pervl',):
        for name in W.PROFILES[fmt]:
            p = W.profile_sizes(fmt, name); assert p['support'][1] - 1 + max(p['pool']) <= 32
    plan = W.pervl_plan(0, dict(concepts=5, support=(20, 29), pool=(4,)))  # the most that fits: 28 + 4
    num = W._pervl_names(W._rng(0, 31, 0), plan)
    assert len(set(num.values())) == len(num) == sum(len(a) + len(b) for its in plan.values() for _, _, a, b in its)

# the drawing names moved to polar_nb.scenes

def test_moved_names_still_reached_from_world_with_a_warning():
    assert set(W.MOVED) == set(S.__all__) and not set(W.MOVED) & set(W.__all__)
    with pytest.warns(DeprecationWarning, match=r'polar_nb\.world\.render has moved to polar_nb\.scenes\.render'):
        from polar_nb.world import render
    assert render is S.render
    for name in W.MOVED:
        with pytest.warns(DeprecationWarning, match=f'polar_nb.scenes.{name}'): assert getattr(W, name) is getattr(S, name)
    with pytest.raises(AttributeError, match='no_such_name'): W.no_such_name

def test_make_collections_reached_from_world_without_a_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        from polar_nb.world import make_collections, Collections
    from polar_nb import collections
    assert make_collections is collections.make_collections and Collections is collections.Collections
