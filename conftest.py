"""pytest configuration shared by tests/ and the chapters in nbs/ (run with nbval).

nbdev-clean keeps each notebook's outputs but blanks its execution counts; nbval 0.11 then refuses
every cell that has outputs ("Unrun reference cell has outputs"), even with --nbval-lax, where
outputs are not compared unless a cell asks for it with `# NBVAL_CHECK_OUTPUT`. Mark such cells as
run when nbval collects them; the files are not touched. The export cell that ends a chapter
is skipped (see `pytest_collection_modifyitems`).
"""
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
