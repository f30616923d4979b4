"The benchmark readers on tiny fixtures in the real formats, on bad input, and on the real PerVL annotation files."
import json, warnings
from pathlib import Path
import pytest
from polar_nb.data import ConConChi, PerVLDeepFashion2, Query, person_wearing, queries_frame
from fixtures_formats import (make_conconchi, write_conconchi, make_pervl, write_pervl, cc_row, TRAIN_ROWS, TEST_ROWS,
                              PERVL_SUPPORT, PERVL_POOL)

REAL_PERVL = Path(__file__).resolve().parents[2]/'shared'/'fixtures'/'pervl_deepfashion2'

@pytest.fixture
def cc(tmp_path):
    with warnings.catch_warnings(): warnings.simplefilter('error'); return ConConChi(make_conconchi(tmp_path/'cc'))

@pytest.fixture
def df(tmp_path): return PerVLDeepFashion2(make_pervl(tmp_path/'df'))

def names(b, idxs): return [b.pool[i].relative_to(b.images).as_posix() for i in idxs]

# ---------------------------------------------------------------- ConCon-Chi

def test_conconchi_pool_is_every_gts_including_negatives(cc, tmp_path):
    assert cc.concepts == [0, 1, 2]
    assert names(cc, range(len(cc.pool))) == [g for r in TEST_ROWS for g in r['GTS']]
    assert cc.pool[0] == tmp_path/'cc'/'data'/'images'/'couch'/'toy_a.jpg'
    assert all(isinstance(p, Path) for p in cc.pool)

def test_conconchi_context_queries(cc):
    qs = cc.queries('context')
    assert all(isinstance(q, Query) for q in qs)
    assert [q.text for q in qs] == ['* on a couch', '* next to *', '* in a sink', '* and * on a shelf', '* on a desk']
    assert [q.info['row'] for q in qs] == [0, 2, 3, 5, 7]  # negative rows are never queries
    assert [q.concepts for q in qs] == [[0], [0, 1], [1], [2, 1], [2]]
    # GTS + ADDITIONAL GTS in the pool, in that order: a negative row's image counts, a training image does not
    assert [q.positives for q in qs] == [[0, 1, 5], [3, 0], [4], [7], [9]]
    assert all(q.candidates is None for q in qs)
    assert names(cc, qs[1].positives) == ['kitchen/toy_bottle.jpg', 'couch/toy_a.jpg']

def test_conconchi_concept_only_queries(cc):
    qs = cc.queries('concept')
    assert [q.text for q in qs] == ['An image of *']*3 and [q.concepts for q in qs] == [[0], [1], [2]]
    single = [0, 1, 2, 4, 5, 6, 9]  # rows with exactly one concept, negatives included
    assert all(q.candidates == single for q in qs)
    assert [q.positives for q in qs] == [[0, 1, 5, 6], [4], [2, 9]]
    assert all(set(q.positives) <= set(q.candidates) for q in qs)

def test_conconchi_support_and_descriptions(cc):
    assert [p.relative_to(cc.images).as_posix() for p in cc.support(0)] == ['train/toy_1.jpg', 'train/toy_2.jpg', 'train/toy_3.jpg']
    assert [p.name for p in cc.support(2)] == ['mug_1.jpg', 'mug_2.jpg']
    assert cc.descriptions(1) == dict(coarse='bottle', discriminative='blue bottle', rich='a blue bottle with a smiling face')
    with pytest.raises(KeyError, match='not a concept'): cc.support(3)
    with pytest.raises(ValueError, match="'context' or 'concept'"): cc.queries('contexts')

def test_conconchi_summary_and_no_images_needed(cc):
    s = cc.summary().iloc[0]
    assert (s.concepts, s.support, s.pool, s.context, s.single, s.multi, s.concept) == (3, 6, 10, 5, 3, 2, 3)
    assert len(cc.missing_images()) == 10 + 6  # nothing was written, nothing was opened

def test_conconchi_concept_without_single_image(tmp_path):
    rows = [cc_row('* with *', ['a.jpg'], [0, 1], additional=[]), cc_row('*', ['b.jpg'], [0], additional=[])]
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, rows)
    with pytest.warns(UserWarning, match=r'concept-only queries of \[1, 2\] have no positive'): qs = ConConChi(root).queries('concept')
    assert [q.positives for q in qs] == [[1], [], []]

def test_conconchi_vlm_captions(cc, tmp_path):
    caps = {f'data/images/{g}': g.upper() for r in TEST_ROWS[::-1] for g in r['GTS']}
    (tmp_path/'caps.json').write_text(json.dumps(caps))
    assert cc.vlm_captions(tmp_path/'caps.json')[:2] == ['COUCH/TOY_A.JPG', 'COUCH/TOY_B.JPG']
    del caps['data/images/desk/mug.jpg']; (tmp_path/'caps.json').write_text(json.dumps(caps))
    with pytest.raises(ValueError, match='desk/mug.jpg'): cc.vlm_captions(tmp_path/'caps.json')
    with pytest.raises(FileNotFoundError, match='nope.json'): cc.vlm_captions(tmp_path/'nope.json')

def test_conconchi_missing_paths_show_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing_root') as e: ConConChi(tmp_path/'missing_root')
    assert 'annotations/' in str(e.value) and 'test.json' in str(e.value)
    root = make_conconchi(tmp_path/'cc'); (root/'data/annotations/train.json').unlink()
    with pytest.raises(FileNotFoundError, match='train.json does not exist') as e: ConConChi(root)
    assert 'Expected layout' in str(e.value)

@pytest.mark.parametrize('bad, match', [
    (dict(GTS='a.jpg'), "data row 1: 'GTS' must be"),
    (dict(GTS=[]), "data row 1: 'GTS' must be a non-empty"),
    (dict(CONCEPTS=[3]), r"data row 1: 'CONCEPTS' must be a list of concept ids in 0..2"),
    (dict(CONCEPTS=['0']), "data row 1: 'CONCEPTS'"),
    (dict(**{'ADDITIONAL GTS': 'x.jpg'}), "data row 1: 'ADDITIONAL GTS' must be"),
    (dict(LABEL=None), "data row 1: 'LABEL' must be the query text"),
    (dict(GTS=['a.jpg']), "image 'a.jpg' is listed twice")])
def test_conconchi_malformed_rows_name_file_and_row(tmp_path, bad, match):
    rows = [cc_row('* here', ['a.jpg'], [0]), {**cc_row('* there', ['b.jpg'], [1]), **bad}]
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, rows)
    with pytest.raises(ValueError, match=match) as e: ConConChi(root).queries('context')
    assert 'test.json' in str(e.value)

def test_conconchi_malformed_files(tmp_path):
    root = make_conconchi(tmp_path/'cc')
    (root/'data/annotations/test.json').write_text('{"data": [')
    with pytest.raises(ValueError, match='test.json: not valid JSON'): ConConChi(root)
    (root/'data/annotations/test.json').write_text('[]')
    with pytest.raises(ValueError, match="test.json: expected an object with a 'data' list"): ConConChi(root)
    root = write_conconchi(tmp_path/'cc2', TRAIN_ROWS, TEST_ROWS, concepts='toy')
    with pytest.raises(ValueError, match="train.json: 'concepts' must be a list"): ConConChi(root)

def test_conconchi_label_star_mismatch_warns(tmp_path):
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, [cc_row('my * and me', ['a.jpg'], [0, 1])])
    with pytest.warns(UserWarning, match=r"data row 0: LABEL 'my \* and me' has 1 '\*' for 2 concept"):
        assert ConConChi(root).queries('context')[0].concepts == [0, 1]

# ---------------------------------------------------------------- PerVL DeepFashion2

def test_pervl_person_rule():
    assert person_wearing('the person stands.') == 'the person wearing * stands.'
    assert person_wearing('Person stands.') == 'Person wearing * stands.'
    assert person_wearing("the person's backdrop.") == "the person wearing *'s backdrop."
    assert person_wearing('a person and another person.') == 'a person wearing * and another person.'
    assert person_wearing('personal items near a person.') == 'personal items near a person wearing *.'
    assert person_wearing('persons near a person.') == 'persons near a person wearing *.'
    # POLAR's str.replace: every substring, case-sensitive
    assert person_wearing('a person and another person.', 'every') == 'a person wearing * and another person wearing *.'
    assert person_wearing('Person with personal items.', 'every') == 'Person with person wearing *al items.'
    with pytest.raises(ValueError, match="no 'person'"): person_wearing('a dog.')
    with pytest.raises(ValueError, match="'first' or 'every'"): person_wearing('a person.', 'all')

def test_pervl_reads_concepts_pool_support(df, tmp_path):
    root = tmp_path/'df'
    assert df.concepts == [3430, 996]
    assert df.pool == [root/n for n,_,_ in PERVL_POOL]
    assert df.support(3430) == [root/'train'/'image'/n for n in PERVL_SUPPORT[3430]]
    assert df.descriptions(996) == {'coarse': 'short sleeve top'}
    with pytest.raises(KeyError, match='not a concept'): df.support(1)

def test_pervl_context_queries_use_the_chosen_wording(df, tmp_path):
    qs = df.queries('context')
    assert [q.text for q in qs] == ['a person wearing * poses on a couch.', 'a person wearing * stands in front of another person.',
                                    "a curtain is the person wearing *'s backdrop.", 'Person wearing * stands by a deck.']
    assert [q.positives for q in qs] == [[0], [1], [2], [3]]
    assert [q.concepts for q in qs] == [[3430], [996], [3430], [996]]
    assert all(q.candidates is None for q in qs)
    detailed = PerVLDeepFashion2(tmp_path/'df', captions='detailed').queries('context')
    assert [q.text for q in detailed][1] == 'behind a person wearing *, another person is at a desk.'
    every = PerVLDeepFashion2(tmp_path/'df', captions='detailed', person='every').queries('context')
    assert every[1].text.count('*') == 2 and every[1].concepts == [996, 996]
    # POLAR's str.replace leaves "Person" alone: that caption would hold no "*"
    with pytest.raises(ValueError, match="line 2: no 'person' to dress in 'Person stands by a deck.'"):
        PerVLDeepFashion2(tmp_path/'df', person='every')

def test_pervl_concept_only_queries(df):
    qs = df.queries('concept')
    assert [(q.text, q.concepts, q.positives, q.candidates) for q in qs] == [
        ('An image of *', [3430], [0, 2], None), ('An image of *', [996], [1, 3], None)]

def test_pervl_errors(tmp_path):
    with pytest.raises(ValueError, match='captions must be one of'): PerVLDeepFashion2(make_pervl(tmp_path/'a'), captions='short')
    with pytest.raises(FileNotFoundError, match='validation_fsl_train.txt') as e: PerVLDeepFashion2(tmp_path/'a', split='validation')
    assert 'train/image/' in str(e.value)
    with pytest.raises(FileNotFoundError, match='nothere'): PerVLDeepFashion2(tmp_path/'nothere')
    root = make_pervl(tmp_path/'b'); (root/'train_coarse_grained_names.csv').unlink()
    with pytest.raises(FileNotFoundError, match='train_coarse_grained_names.csv'): PerVLDeepFashion2(root)

@pytest.mark.parametrize('kw, match', [
    (dict(pool=PERVL_POOL + [('train/image/5.jpg', 7, 'a person.')]), r'test_captions.csv, line 6: pair id 7 has no support'),
    (dict(pool=PERVL_POOL + [('train/image/5.jpg', 'x', 'a person.')], captions=dict(shortened=PERVL_POOL)), r"test_captions.csv, line 6: pair_id 'x' is not an integer"),
    (dict(pool=PERVL_POOL + [('train/image/5.jpg', 996, 'a person.')], captions=dict(shortened=PERVL_POOL)), r"line 6: 'train/image/5.jpg' has no caption"),
    (dict(pool=PERVL_POOL + [PERVL_POOL[0]], captions=dict(shortened=PERVL_POOL)), 'an image is listed twice'),
    (dict(pool=PERVL_POOL, captions=dict(shortened=PERVL_POOL[:3] + [('train/image/012351.jpg', 996, 'a dog.')])),
     "shortened_deepfashion2_captions.csv, line 5: no 'person'"),
    (dict(pool=PERVL_POOL, captions=dict(shortened=PERVL_POOL[:3] + [('train/image/012351.jpg', 3430, 'a person.')])),
     'line 5: pair id 3430 differs from 996'),
    (dict(pool=PERVL_POOL, classes={3430: 'skirt'}), r'no class for pair id\(s\) \[996\]')])
def test_pervl_malformed_rows_name_file_and_row(tmp_path, kw, match):
    root = write_pervl(tmp_path/'df', PERVL_SUPPORT, **kw)
    with pytest.raises(ValueError, match=match): PerVLDeepFashion2(root)

def test_pervl_malformed_support_file(tmp_path):
    root = make_pervl(tmp_path/'df')
    (root/'test_fsl_train.txt').write_text('043370.jpg\n\ncodes_infer/3430:\n043371.jpg\n')
    with pytest.raises(ValueError, match="test_fsl_train.txt, line 1: image '043370.jpg' comes before"): PerVLDeepFashion2(root)
    (root/'test_fsl_train.txt').write_text('codes_infer/3430:\n1.jpg\n\ncodes_infer/3430:\n2.jpg\n')
    with pytest.raises(ValueError, match='line 4'): PerVLDeepFashion2(root)
    (root/'test_fsl_train.txt').write_text('codes_infer/abc:\n1.jpg\n')
    with pytest.raises(ValueError, match='line 1'): PerVLDeepFashion2(root)

def test_queries_frame(cc):
    t = queries_frame(cc.queries('concept'))
    assert t.positives.tolist() == [4, 1, 2] and t.candidates.tolist() == [7, 7, 7]

# ---------------------------------------------------------------- the real PerVL annotation files

@pytest.fixture(scope='module')
def real():
    if not REAL_PERVL.is_dir(): pytest.skip(f'the real PerVL annotation files are not at {REAL_PERVL}')
    return REAL_PERVL

def test_real_pervl_test_split(real):
    b = PerVLDeepFashion2(real)
    s = b.summary().iloc[0]
    assert (s.concepts, s.support, s.pool, s.context, s.concept) == (50, 653, 221, 221, 50)
    ctx, con = b.queries('context'), b.queries('concept')
    assert all(q.text.count('*') == 1 and q.positives == [i] for i, q in enumerate(ctx))
    assert sorted(j for q in con for j in q.positives) == list(range(221))
    assert all(b.pool[j].parent == real/'train'/'image' for j in range(221))
    assert all(b.descriptions(c)['coarse'] for c in b.concepts)
    assert ctx[0].text == 'a person wearing * poses on a plush white couch.'

def test_real_pervl_validation_split_and_wordings(real):
    v = PerVLDeepFashion2(real, 'validation', captions='detailed')
    assert (len(v.concepts), len(v.pool)) == (50, 229)
    every = PerVLDeepFashion2(real, person='every').queries('context')
    assert sum(q.text.count('*') for q in every) == 222  # one caption of the test split has two persons

# ---------------------------------------------------------------- keys, encodings and arguments checked

def drop(row, *keys): return {k: v for k, v in row.items() if k not in keys}

def test_conconchi_negative_rows_without_kind_are_an_error(tmp_path):
    rows = [drop(r, 'KIND') if r['KIND'] == 'negative' else r for r in TEST_ROWS]
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, rows)
    with pytest.raises(ValueError, match=r"test.json, data row 1: missing key 'KIND'"): ConConChi(root)

@pytest.mark.parametrize('file, row, key', [
    ('test', 0, 'KIND'), ('test', 0, 'GTS'), ('test', 0, 'CONCEPTS'), ('test', 0, 'LABEL'),
    ('train', 1, 'GTS'), ('train', 1, 'CONCEPTS')])
def test_conconchi_missing_required_key(tmp_path, file, row, key):
    root = make_conconchi(tmp_path/'cc'); f = root/'data'/'annotations'/f'{file}.json'
    d = json.loads(f.read_text()); del d['data'][row][key]; f.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=rf"{file}.json, data row {row}: missing key '{key}'"): ConConChi(root)

def test_conconchi_optional_keys(tmp_path):
    # a negative row needs no LABEL; ENV and ADDITIONAL GTS may be left out; train.json needs no KIND or LABEL
    test = [drop(r, 'LABEL', 'ENV') if r['KIND'] == 'negative' else drop(r, 'ADDITIONAL GTS') for r in TEST_ROWS]
    root = write_conconchi(tmp_path/'cc', [drop(r, 'KIND', 'LABEL', 'ENV') for r in TRAIN_ROWS], test)
    with warnings.catch_warnings(): warnings.simplefilter('error'); cc = ConConChi(root); qs = cc.queries('context')
    assert [q.positives for q in qs] == [[0, 1], [3], [4], [7], [9]] and len(cc.support(0)) == 3

def test_conconchi_kind_must_be_a_string(tmp_path):
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, [cc_row('* here', ['a.jpg'], [0], kind=None)])
    with pytest.raises(ValueError, match=r"test.json, data row 0: 'KIND' must be a string"): ConConChi(root)

def test_conconchi_unknown_kind_warns(tmp_path):
    rows = [{**r, 'KIND': 'Negative'} if r['KIND'] == 'negative' else r for r in TEST_ROWS]
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, rows)
    with pytest.warns(UserWarning, match=r"test.json, data rows \[1, 4, 6\] \(3\): KIND 'Negative' is not one of"):
        assert len(ConConChi(root).queries('context')) == 8  # read as queries, as the benchmark's own loader does

def test_conconchi_additional_gts_outside_the_pool_warn(cc):
    with pytest.warns(UserWarning, match=r"test.json, data rows \[2\] \(1\): 2 ADDITIONAL GTS image\(s\) are not in the pool") as w:
        cc.queries('context')
    assert "'train/toy_1.jpg', 'nowhere/x.jpg'" in str(w[0].message)

def test_conconchi_repeated_concept_and_query_without_concept_warn(tmp_path):
    rows = [cc_row('* and *', ['a.jpg'], [0, 0]), cc_row('a shelf', ['b.jpg'], []), cc_row('*', ['c.jpg'], [1])]
    root = write_conconchi(tmp_path/'cc', TRAIN_ROWS, rows)
    with pytest.warns(UserWarning) as w: ConConChi(root)
    msgs = [str(x.message) for x in w]
    assert any('data rows [0] (1): CONCEPTS name a concept more than once' in m for m in msgs)
    assert any('data rows [1] (1): a query row with no concept' in m for m in msgs)

def write_bytes(path, data): path.write_bytes(data); return path

@pytest.mark.parametrize('make, name', [(make_conconchi, 'data/annotations/test.json'), (make_conconchi, 'data/annotations/train.json'),
    (make_pervl, 'test_fsl_train.txt'), (make_pervl, 'test_captions.csv'), (make_pervl, 'shortened_deepfashion2_captions.csv'),
    (make_pervl, 'train_coarse_grained_names.csv')])
def test_non_utf8_files_name_file_and_byte(tmp_path, make, name):
    root = make(tmp_path/'b'); f = root/name
    data = f.read_bytes(); write_bytes(f, data[:20] + 'é'.encode('latin-1') + data[20:])
    with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text: byte 20 \(line \d+\)"):
        (ConConChi if make is make_conconchi else PerVLDeepFashion2)(root)

def test_non_utf8_vlm_captions(cc, tmp_path):
    write_bytes(tmp_path/'caps.json', b'{"data/images/couch/toy_a.jpg": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"caps.json: not UTF-8 text: byte 36 \(line 1\)"): cc.vlm_captions(tmp_path/'caps.json')

@pytest.mark.parametrize('kw, match', [(dict(person='all'), r"^person must be one of \['first', 'every'\], not 'all'$"),
    (dict(split='train'), r"^split must be one of \['test', 'validation'\], not 'train'$"),
    (dict(captions='short'), r"^captions must be one of \['shortened', 'detailed'\], not 'short'$")])
def test_pervl_arguments_checked_before_reading(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match): PerVLDeepFashion2(tmp_path/'nothere', **kw)
    with pytest.raises(ValueError, match=match): PerVLDeepFashion2(make_pervl(tmp_path/'df'), **kw)

@pytest.mark.parametrize('text, match', [
    ('codes_infer/3430:\n\ncodes_infer/996:\n012337.jpg\n', "line 1: pair id 3430 lists no support image"),
    ('codes_infer/3430:\ncodes_infer/996:\n012337.jpg\n', "line 1: pair id 3430 lists no support image"),
    ('codes_infer/3430:\n043370.jpg\n043370.jpg\n\ncodes_infer/996:\n012337.jpg\n', r"line 3: image '043370.jpg' is listed twice \(first at line 2\)"),
    ('codes_infer/3430:\n043370.jpg\n\ncodes_infer/996:\n043370.jpg\n', r"line 5: image '043370.jpg' is listed twice \(first at line 2\)")])
def test_pervl_support_file_blocks(tmp_path, text, match):
    root = make_pervl(tmp_path/'df'); (root/'test_fsl_train.txt').write_text(text)
    with pytest.raises(ValueError, match=match): PerVLDeepFashion2(root)

def test_pervl_csv_row_with_more_fields_than_the_header(tmp_path):
    root = make_pervl(tmp_path/'df')
    f = root/'shortened_deepfashion2_captions.csv'; f.write_text(f.read_text().replace('a person poses on a couch.', 'a person poses, on a couch.'))
    with pytest.raises(ValueError, match=r"shortened_deepfashion2_captions.csv, line 6: 4 fields for the 3 columns"): PerVLDeepFashion2(root)

def test_pervl_class_listed_twice(tmp_path):
    root = make_pervl(tmp_path/'df')
    f = root/'train_coarse_grained_names.csv'; f.write_text(f.read_text() + '996,skirt\n')
    with pytest.raises(ValueError, match=r"train_coarse_grained_names.csv, line 5: pair id 996 is listed twice"): PerVLDeepFashion2(root)
    f.write_text(f.read_text().replace('996,skirt\n', '996,short sleeve top\n'))
    assert PerVLDeepFashion2(root).descriptions(996) == {'coarse': 'short sleeve top'}

def test_pervl_pool_image_listed_twice_names_lines(tmp_path):
    root = write_pervl(tmp_path/'df', PERVL_SUPPORT, PERVL_POOL + [PERVL_POOL[1]], captions=dict(shortened=PERVL_POOL))
    with pytest.raises(ValueError, match=r"test_captions.csv, line 6: an image is listed twice: 'train/image/012350.jpg' \(first at line 3\)"):
        PerVLDeepFashion2(root)

def test_vlm_captions_checked(cc, tmp_path):
    f = tmp_path/'caps.json'
    good = {f'data/images/{g}': g for r in TEST_ROWS for g in r['GTS']}
    f.write_text(json.dumps({**good, 'data/images/other/split.jpg': 'more'}))  # captions of images outside the pool are ignored
    assert cc.vlm_captions(f)[0] == 'couch/toy_a.jpg'
    f.write_text(json.dumps({**good, 'data/images/couch/toy_a.jpg': None}))
    with pytest.raises(ValueError, match=r"caps.json: the caption of 'data/images/couch/toy_a.jpg' must be a string, not None"): cc.vlm_captions(f)
    f.write_text(json.dumps(good)[:-1] + ', "data/images/couch/toy_a.jpg": "again"}')
    with pytest.raises(ValueError, match=r"caps.json: key 'data/images/couch/toy_a.jpg' appears twice"): cc.vlm_captions(f)
    f.write_text(json.dumps({**good, './data/images/couch/toy_a.jpg': 'again'}))
    with pytest.raises(ValueError, match=r"caps.json: two keys name the image .*couch/toy_a.jpg"): cc.vlm_captions(f)
    f.write_text(json.dumps(list(good)))
    with pytest.raises(ValueError, match=r"caps.json: expected an object"): cc.vlm_captions(f)
