"Every chapter is paired with a percent-format script in chapters/, and the two are in sync."
from pathlib import Path
import jupytext, pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT/'nbs').glob('*.ipynb'))

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_chapter_script_in_sync(nb):
    script = ROOT/'chapters'/(nb.stem + '.py')
    assert script.is_file(), f'{script} is missing: run jupytext --sync nbs/*.ipynb'
    cfg = jupytext.config.load_jupytext_config(str(ROOT/'jupytext.toml'))
    want = jupytext.writes(jupytext.read(nb), fmt='py:percent', config=cfg)  # what `jupytext --to py:percent` writes
    assert script.read_text() == want, f'{script.name} and {nb.name} drifted apart: run jupytext --sync nbs/*.ipynb'

def test_no_orphan_scripts():
    assert sorted(p.stem for p in (ROOT/'chapters').glob('*.py')) == [p.stem for p in NBS]
