"The paper's published numbers: the file's shape, one table, one number, malformed files, and the supplement's text when it is at hand."
import math
import numpy as np
import pytest
from polar_nb.clip import data_dir
from polar_nb.paper import (PAPER_FILE, COLUMNS, KEY, paper_numbers, paper_table, paper_value, supplement_file,
                            supplement_block, supplement_rows, supplement_lambdas)

# rows × columns of each table as the paper prints it, and how many numbers it has (a '-' is none)
SHAPES = {'9': (2, 5, 10), '10': (9, 4, 22), '11': (5, 6, 30), '12': (5, 6, 30), '13': (9, 6, 54), '14': (3, 4, 12),
          '15': (11, 5, 39), '16': (4, 1, 4), '17': (2, 4, 8), '18': (2, 3, 6), '19': (2, 3, 6), '20': (3, 6, 18), '21': (5, 4, 20)}

@pytest.fixture(scope='module')
def numbers(): return paper_numbers()

def test_file_is_in_data():
    assert PAPER_FILE == data_dir()/'paper_numbers.csv' and PAPER_FILE.is_file()
    assert PAPER_FILE.read_text(encoding='utf-8').splitlines()[0] == ','.join(COLUMNS)

def test_numbers_are_tidy(numbers):
    assert list(numbers.columns) == COLUMNS and len(numbers) == sum(n for *_, n in SHAPES.values())
    assert numbers.value.dtype == float and np.isfinite(numbers.value).all()
    assert not numbers.duplicated(KEY).any()
    assert set(numbers.spread_kind) == {'', 'se', 'std'}
    assert (numbers.spread.notna() == (numbers.spread_kind != '')).all()
    assert set(numbers.metric) == {'mrr', 'map', 'r@1', 'r@5', 'r@10', 'r@50', 'ms'}
    assert set(numbers.dataset) == {'deepfashion2', 'conconchi', 'flickr30k', ''}
    assert set(numbers.backbone) == {'ViT-B/32', 'ViT-L/14'}
    pct = numbers[numbers.metric != 'ms'].value
    assert pct.between(0, 100).all()

def test_spreads(numbers):
    kinds = numbers.groupby('table').spread_kind.agg(lambda s: set(s) - {''}).to_dict()
    assert kinds['10'] == kinds['14'] == {'se'} and kinds['15'] == {'std'}
    assert all(not v for k, v in kinds.items() if k not in ('10', '14', '15'))
    assert set(numbers[numbers.spread_kind == 'std'].setting) == {'train_images=1'}

@pytest.mark.parametrize('table', list(SHAPES))
def test_table_shapes(table):
    rows, cols, n = SHAPES[table]
    w = paper_table(table, wide=True)
    assert w.shape == (rows, cols) and int(w.notna().sum().sum()) == n == len(paper_table(table))
    assert not w.index.duplicated().any()
    s = paper_table(table, wide=True, spread=True)
    assert s.shape == w.shape and (s == '-').sum().sum() == rows*cols - n

def test_wide_layout():
    w = paper_table('10', wide=True)
    assert w.index.names == ['backbone', 'method']
    assert w.columns.tolist() == [('context', 'mrr'), ('context', 'r@5'), ('concept-only', 'mrr'), ('concept-only', 'map')]
    assert w.index.tolist()[:2] == [('ViT-B/32', 'Adapter'), ('ViT-B/32', 'COLLIE')]  # the paper's order, not sorted
    assert w.loc[('ViT-L/14', 'Ours'), ('concept-only', 'map')] == 35.07
    assert paper_table('9', wide=True).index.tolist() == ['SEARLE', 'Ours']
    s = paper_table('15', wide=True, spread=True)
    assert s.loc[('Pic2Word', 'train_images=1'), ('context', 'map')] == '25.23 ± 1.20'
    assert s.loc[('Ours', 'train_images=5'), ('concept-only', 'mrr')] == '100.00'

def test_aliases_and_types():
    assert paper_table('1').equals(paper_table('10'))
    assert paper_table(10).equals(paper_table('10'))
    assert paper_value(1, 'Text Only', 'mrr') == 17.6

@pytest.mark.parametrize('bad', ['7', '22', '', 'ten', 'Tab. 10'])
def test_unknown_table(bad):
    with pytest.raises(ValueError, match=r"known tables: 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, and 1 \(= 10\)"):
        paper_table(bad)
    with pytest.raises(ValueError, match='known tables'): paper_value(bad, 'Ours', 'mrr')

@pytest.mark.parametrize('args,kw,want', [
    (('9', 'Ours', 'mrr', 'context'), {}, 46.17),
    (('10', 'Ours', 'r@5'), dict(backbone='ViT-B/32'), 44.88),
    (('10', 'SEARLE', 'mrr', 'concept-only'), dict(backbone='ViT-L/14'), 32.07),
    (('11', 'Ours', 'map', 'concept-only'), dict(setting='rank=8; lambda=24'), 57.54),
    (('11', 'Ours', 'map', 'concept-only'), dict(setting='rank=8'), 57.54),
    (('12', 'Ours', 'r@1'), dict(setting='layers=10,11,12'), 41.45),
    (('12', 'Ours', 'r@10'), dict(setting='lambda=1'), 52.21),
    (('13', 'Ours', 'mrr', 'context-single'), dict(setting='params=O'), 51.22),
    (('13', 'Ours', 'map', 'concept-only'), dict(setting='params=Q'), 8.77),
    (('14', 'Yeh et al.', 'r@5'), {}, 45.2),
    (('15', 'Rich†', 'map'), {}, 27.65),
    (('15', 'PALAVRA', 'r@1'), dict(setting='train_images=5'), 26.75),
    (('16', 'Text. Inv. (1 tok)', 'ms'), dict(setting='iters=500'), 15961.97),
    (('17', 'Original CLIP', 'r@10'), {}, 52.69),
    (('18', 'Original CLIP', 'r@1'), {}, 67.76),
    (('19', 'Ours', 'r@10'), {}, 66.00),
    (('20', 'Adam + wd', 'map', 'concept-only'), {}, 65.59),
    (('21', 'Ours', 'mrr', 'concept-only'), dict(setting='params=Q,K,V,O'), 60.09),
])
def test_paper_value(args, kw, want):
    assert paper_value(*args, **kw) == want

def test_setting_parts_are_whole():
    "A setting part matches whole parts only: 'params=Q' is not 'params=Q,V', 'rank=1' is not 'rank=16'."
    assert paper_value('13', 'Ours', 'r@10', setting='params=Q') == 52.15
    assert paper_value('11', 'Ours', 'r@10', setting='rank=1') == 52.47
    with pytest.raises(ValueError, match='no number'): paper_value('11', 'Ours', 'r@10', setting='rank=3')
    with pytest.raises(ValueError, match='no number'): paper_value('11', 'Ours', 'r@10', setting='rank')

def test_paper_value_errors():
    with pytest.raises(ValueError, match=r"4 numbers in Tab. 10 match method='Ours', metric='mrr'"): paper_value('10', 'Ours', 'mrr')
    with pytest.raises(ValueError, match=r"backbone='ViT-B/32'; backbone='ViT-L/14'"): paper_value('10', 'Ours', 'mrr', 'context')
    with pytest.raises(ValueError, match=r"2 numbers in Tab. 15 .*setting='train_images=1'; setting='train_images=5'"):
        paper_value('15', 'Ours', 'mrr', 'context')
    with pytest.raises(ValueError, match=r"no number in Tab. 9 for method='ours'.*methods \['Ours', 'SEARLE'\]"): paper_value('9', 'ours', 'mrr')
    with pytest.raises(ValueError, match=r"no number in Tab. 9 .*metric='r@5'.*metrics \['map', 'mrr', 'r@1'\]"): paper_value('9', 'Ours', 'r@5')
    with pytest.raises(ValueError, match=r"queries \['concept-only', 'context'\]"): paper_value('9', 'Ours', 'mrr', 'context-single')
    with pytest.raises(ValueError, match='no number in Tab. 10'): paper_value('10', 'Ours', 'mrr', 'context', backbone='ViT-B/16')

def _write(tmp_path, edit):
    p = tmp_path/'numbers.csv'
    p.write_text(edit(PAPER_FILE.read_text(encoding='utf-8')), encoding='utf-8')
    return p

@pytest.mark.parametrize('edit,msg', [
    (lambda s: s.replace(',spread_kind,', ',kind,', 1), r"lacks the columns \['spread_kind'\]"),
    (lambda s: s.replace(',43.88,', ',n/a,', 1), 'a value that is not a number on line 2'),
    (lambda s: s.replace(',43.88,', ',,', 1), 'a value that is not a number on line 2'),
    (lambda s: s.replace(',43.88,', ',inf,', 1), 'a value that is not a number on line 2'),
    (lambda s: s.replace(',0.7,se,', ',±0.7,se,', 1), 'a spread that is not a number'),
    (lambda s: s.replace(',0.7,se,', ',0.7,,', 1), 'a spread without its kind'),
    (lambda s: s.replace(',0.7,se,', ',0.7,sd,', 1), 'a spread without its kind'),
    (lambda s: s.replace(',43.88,,,', ',43.88,,se,', 1), 'or a kind without a spread on line 2'),
    (lambda s: s.replace(',SEARLE,', ',,', 1), 'an empty table, method or metric on line 2'),
    (lambda s: s + s.splitlines(keepends=True)[3], 'the same table/dataset/split/backbone/method/setting/query/metric twice on line 4, 261'),
])
def test_malformed_files(tmp_path, edit, msg):
    with pytest.raises(ValueError, match=msg): paper_numbers(_write(tmp_path, edit))

def test_wellformed_copy_reads_the_same(tmp_path):
    assert paper_numbers(_write(tmp_path, lambda s: s)).equals(paper_numbers())

TOY = ('Table 7. Old.\n\nMethod\tmRR\tmAP\nA\t$\\lambda = 2$\t10.50\t20.25\nB\t1.0 ± 0.2\t$ 3.5 \\pm 0.1$\n'
       'C D\tλ=1 λ=0.35\t1.00 2.00\t3.00 4.00\nE\t-\t00.08\n\nTable 8. A toy table.\n')

def test_supplement_readers():
    assert supplement_block(TOY, '8')[0] == 'Method\tmRR\tmAP' and len(supplement_block(TOY, '8')) == 5
    assert supplement_rows(TOY, '8') == [[(10.5, None), (20.25, None)], [(1.0, 0.2), (3.5, 0.1)],
                                         [(1.0, None), (3.0, None)], [(2.0, None), (4.0, None)], [(0.08, None)]]
    assert supplement_lambdas(TOY, '8') == [2, 1, 0.35]
    with pytest.raises(ValueError, match="no caption 'Table 9.'"): supplement_block(TOY, '9')

def _stored(table):
    t = paper_table(table)
    keys = t[KEY[1:6]].apply(tuple, axis=1)
    return [[(v, None if math.isnan(s) else s) for v, s in zip(g.value, g.spread)] for _, g in t.groupby(keys, sort=False)]

@pytest.fixture(scope='module')
def text():
    f = supplement_file()
    if f is None: pytest.skip('the supplement text (../shared/seeds/polar_supplementary.txt) is absent')
    return f.read_text(encoding='utf-8')

@pytest.mark.parametrize('table', [t for t in SHAPES if t != '12'])
def test_every_number_is_printed_in_the_supplement(text, table):
    assert supplement_rows(text, table) == _stored(table)

def test_table_12_against_the_supplement(text):
    "Tab. 12's final-model line prints a stray mAP 32.08 (and λ = 1) that is only a note here."
    stored, printed = _stored('12'), supplement_rows(text, '12')
    assert printed[:4] == stored[:4]
    assert printed[4] == stored[4][:1] + [(32.08, None)] + stored[4][1:]
    assert supplement_lambdas(text, '12') == [2, 4, 40, 1, 1, 0.35]
    assert paper_table('12').note.str.contains('32.08').sum() == 2 and 32.08 not in paper_table('12').value.tolist()

@pytest.mark.parametrize('table', ['11', '13'])
def test_lambdas_against_the_supplement(text, table):
    settings = paper_table(table, wide=True).index.get_level_values('setting')
    assert supplement_lambdas(text, table) == [float(s.split('lambda=')[1]) for s in settings]


# The paper map reads our numbers from the stored outputs of marked cells: a small notebook written here.
import re
import nbformat
import pandas as pd
from polar_nb.papermap import (html_frame, number, plain_series, cell_markers, marked_cells, stored_frame, stored_text, flat_frame,
                               Ours, read_ours, measured_on, holds, number_verdict, NOT_HERE, map_numbers, Item, Pair)

def _table():
    "A result table as the chapters display it: two levels of columns, a two-level index with one unnamed level, 'mean ± se' cells."
    idx = pd.MultiIndex.from_tuples([('ours (1 image)', 'POLAR'), ('ours (1 image)', 'text (coarse)'), ('ours (5 images)', 'POLAR')], names=[None, 'method'])
    cols = pd.MultiIndex.from_tuples([('context', 'mrr'), ('context', 'r@1'), ('concept-only', 'map')])
    return pd.DataFrame([['49.14 ± 3.46', '36.00 ± 3.66', '19.21 ± 1.28'], ['30.94 ± 0.00', '17.92 ± 0.00', '11.08 ± 0.00'],
                         ['71.21 ± 0.20', '57.67 ± 0.37', 'NaN']], index=idx, columns=cols)

@pytest.fixture
def nbs(tmp_path):
    "A folder with one chapter: a setup cell that printed its backbone, a slow marked result cell, a printed number, an unmarked cell."
    out = lambda df: nbformat.v4.new_output('execute_result', {'text/html': df._repr_html_(), 'text/plain': repr(df)})
    cells = [nbformat.v4.new_markdown_cell('# A chapter\n\n> Its subtitle.'),
             nbformat.v4.new_code_cell('# paper-map: setup\nbb = load_backbone()', outputs=[nbformat.v4.new_output('stream', name='stdout',
                 text="Backbone('ViT-L-14', pretrained='openai', device='cuda', width=768, layers=12, embed_dim=768)\n")]),
             nbformat.v4.new_code_cell('#| slow\n# NBVAL_SKIP\n# paper-map: tab15\nboth(one, five)', outputs=[
                 nbformat.v4.new_output('stream', name='stdout', text='3 s\n'), out(_table())]),
             nbformat.v4.new_code_cell('# paper-map: pair\nprint(x)', outputs=[nbformat.v4.new_output('stream', name='stdout', text='closest pair: cosine 0.899\n')]),
             nbformat.v4.new_code_cell('ev = evaluate(x)', outputs=[out(pd.DataFrame({'method': ['CAP', 'zero-shot'], 'r@1': [0.083, 0.208]}))])]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path/'24_toy.ipynb')
    return tmp_path

def test_html_frame_round_trip():
    t = _table()
    back = html_frame(t._repr_html_())
    assert back.equals(t) and back.index.names == [None, 'method']
    flat = pd.DataFrame({'name': ['rank 1', 'a < b & c'], 'λ': ['0.0', '']})
    assert html_frame(flat.to_html()).reset_index(drop=True).equals(flat)
    with pytest.raises(ValueError, match='no table number 1'): html_frame(flat.to_html(), 1)

def test_numbers_in_cells():
    assert number('49.14 ± 3.46') == (49.14, 3.46) and number('-3.5')[0] == -3.5
    assert all(math.isnan(x) for s in ('NaN', '-', '', 'None') for x in number(s))
    with pytest.raises(ValueError, match='not a number'): number('POLAR')
    assert plain_series('device   cuda\ngpu      NVIDIA V100\ndtype: object') == {'device': 'cuda', 'gpu': 'NVIDIA V100'}

def test_markers(nbs):
    nb = nbformat.read(nbs/'24_toy.ipynb', as_version=4)
    assert list(marked_cells(nb)) == ['setup', 'tab15', 'pair']
    assert cell_markers(nbformat.v4.new_code_cell('x = 1\n# paper-map: late')) == []  # only among the opening comment lines
    assert stored_text(nb.cells[2]).startswith('3 s\n') and stored_frame(nb.cells[2]).equals(_table())
    assert list(flat_frame(stored_frame(nb.cells[2])).columns) == ['level_0', 'method', 'context / mrr', 'context / r@1', 'concept-only / map']
    twice = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('# paper-map: a'), nbformat.v4.new_code_cell('# paper-map: a')])
    with pytest.raises(ValueError, match="two cells are marked"): marked_cells(twice)

def test_read_ours(nbs):
    one = Ours('24_toy', 'tab15', {'level_0': 'ours (1 image)', 'method': 'POLAR'}, 'context / mrr')
    assert read_ours(one, nbs) == (49.14, 3.46)
    assert read_ours(Ours('24_toy', 'tab15', {'level_0': r'ours \(\d images?\)', 'method': 'POLAR'}, 'context / r@1', mean=True), nbs)[0] == pytest.approx((36.0 + 57.67) / 2)
    assert math.isnan(read_ours(Ours('24_toy', 'tab15', {'level_0': 'ours (5 images)', 'method': 'POLAR'}, 'concept-only / map'), nbs)[0])
    assert read_ours(Ours('24_toy', 'pair', text=r'cosine ([\d.]+)', scale=100), nbs)[0] == pytest.approx(89.9)
    assert read_ours(Ours('24_toy', 'cap', {'method': 'CAP'}, 'r@1', 100, source=r'=\s*evaluate\('), nbs)[0] == pytest.approx(8.3)  # no marker: found by its call
    for o, msg in [(Ours('24_toy', 'tab15', {'method': 'POLAR'}, 'context / mrr'), '2 rows with'),
                   (Ours('24_toy', 'tab15', {'method': 'SEARLE'}, 'context / mrr'), 'no row with'),
                   (Ours('24_toy', 'tab15', {'model': 'POLAR'}, 'context / mrr'), "no column 'model'"),
                   (Ours('24_toy', 'tab15', {}, 'mrr'), '0 columns match'),
                   (Ours('24_toy', 'setup', {}, 'x'), 'no stored table'),
                   (Ours('24_toy', 'pair', text=r'recall ([\d.]+)'), 'printed nothing matching'),
                   (Ours('24_toy', 'tab99'), "no cell marked '# paper-map: tab99'"), (Ours('25_none', 'tab15'), 'no chapter')]:
        with pytest.raises(LookupError, match=re.escape(msg)): read_ours(o, nbs)

def test_verdicts(nbs):
    assert measured_on('24_toy', nbs)['backbone'] == 'ViT-L-14' and measured_on('24_toy', nbs)['pretrained'] == 'openai'
    assert [holds(2, 1, '>'), holds(1, 1.9, '≥'), holds(1, 2.1, '≥'), holds(math.nan, 1, '≈')] == [True, True, False, None]
    assert number_verdict(44.0, 3.46, 44.68, 0.61, comparable=False) == NOT_HERE
    assert number_verdict(44.0, 3.46, 44.68, 0.61, comparable=True) == 'agrees'
    assert number_verdict(40.0, 0.1, 44.68, 0.61, comparable=True) == 'differs'
    # a chapter measured with the paper's backbone is compared number by number, the others are not
    item = Item('Tab. 15', 'supplement', 'one image', '24_toy', 'polar_nb.experiments.single_image',
                [Pair(Ours('24_toy', 'tab15', {'level_0': 'ours (1 image)', 'method': 'POLAR'}, f'context / {m}'),
                      dict(table='15', method='Ours', metric=m, query='context', setting='train_images=1')) for m in ('mrr', 'r@1')])
    n = map_numbers([item], nbs)
    assert n.verdict.tolist() == ['agrees', 'agrees'] and n.paper.tolist() == [44.68, 34.45] and n.ours.tolist() == [49.14, 36.0]
