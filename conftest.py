"""pytest configuration shared by tests/ and the chapters in nbs/ (run with nbval).

nbdev-clean keeps each notebook's outputs but blanks its execution counts; nbval 0.11 then refuses
every cell that has outputs ("Unrun reference cell has outputs"), even with --nbval-lax, where
outputs are not compared unless a cell asks for it with `# NBVAL_CHECK_OUTPUT`. Mark such cells as
run when nbval collects them; the files are not touched. The export cell that ends a chapter
is skipped (see `pytest_collection_modifyitems`).

Files run longest first, so that two workers finish together: `tests/durations.json` holds the
seconds each test file and chapter took in a measured run (used for the order only; a file it does
not list runs after those it does). `TEST_DURATIONS=FILE bash scripts/test.sh` writes a
new one from the run.
"""
import json, os
from collections import defaultdict
from pathlib import Path

DURATIONS = Path(__file__).resolve().parent/'tests'/'durations.json'
_took = defaultdict(float)
try: from nbval.plugin import IPyNbFile
except ImportError: IPyNbFile = None

if IPyNbFile is not None and not getattr(IPyNbFile, '_polar_counts', False):
    _collect = IPyNbFile.collect
    def _collect_counted(self):
        for item in _collect(self):
            cell = getattr(item, 'cell', None)
            if cell is not None and cell.get('outputs') and cell.get('execution_count') is None: cell['execution_count'] = 0
            yield item
    IPyNbFile.collect, IPyNbFile._polar_counts = _collect_counted, True

def pytest_collection_modifyitems(config, items):
    """A chapter's export cell (`nbdev.nbdev_export()`) is skipped, as the book's executor skips it: it
    checks nothing and rewrites the package while other chapters import it; CI exports once, first."""
    import pytest
    try: from polar_nb.book import is_export_cell
    except ImportError: return
    for item in items:
        cell = getattr(item, 'cell', None)
        if cell is not None and is_export_cell(cell):
            item.add_marker(pytest.mark.skip(reason='the export cell: CI runs nbdev-export once, before the tests'))
    try: took = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    except ValueError: took = {}
    first = {}
    for i, item in enumerate(items): first.setdefault(_file(item), i)
    items.sort(key=lambda it: (-float(took.get(_file(it), 0)), first[_file(it)]))  # stable: a file's items keep their order

def _file(item): return item.nodeid.split('::')[0]

def pytest_runtest_logreport(report):
    if os.environ.get('TEST_DURATIONS'): _took[report.nodeid.split('::')[0]] += report.duration

def pytest_sessionfinish(session):
    out = os.environ.get('TEST_DURATIONS')
    if out and _took and not hasattr(session.config, 'workerinput'):  # the controller sees every report
        Path(out).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_took.items(), key=lambda kv: -kv[1])}, indent=1) + '\n')
