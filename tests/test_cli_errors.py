"The polar-nb command's errors: usage errors and the library's errors, each one line with exit status 2."
import pytest
import polar_nb.bench
from polar_nb.cli import main

def fails(capsys, argv):
    "The exit status and stderr of `main(argv)`, which must exit."
    with pytest.raises(SystemExit) as e: main(argv)
    return e.value.code, capsys.readouterr().err

@pytest.mark.parametrize('argv, msg', [
    (['bench', '--threads', '-3'], 'polar-nb bench: error: argument --threads: -3 is not a positive number'),
    (['bench', '--threads', '0'], 'argument --threads: 0 is not a positive number'),
    (['bench', '--threads', '1.5'], "argument --threads: '1.5' is not a whole number"),
    (['bench', '--device', 'banana'], "polar-nb bench: error: argument --device: device 'banana' is not one of: auto, cpu, cuda, cuda:N, mps"),
    (['bench', '--parts', 'warp'], "argument --parts: unknown part(s) ['warp']"),
    (['book', '--timeout', '-1'], 'polar-nb book: error: argument --timeout: -1 is not a positive number')])
def test_usage_errors(capsys, argv, msg):
    code, err = fails(capsys, argv)
    assert code == 2 and msg in err and 'Traceback' not in err

def test_bad_settings_stop_the_command(capsys, monkeypatch, root):
    monkeypatch.chdir(root)
    monkeypatch.setenv('POLAR_CACHE_DIR', '')
    monkeypatch.setattr(polar_nb.bench, 'run_bench', lambda **kw: pytest.fail('the bench ran with bad settings'))
    code, err = fails(capsys, ['bench', '--quick'])
    assert (code, err) == (2, 'polar-nb: error: cache_dir is empty in POLAR_CACHE_DIR; it must be a folder\n')

@pytest.mark.parametrize('exc', [ValueError("unknown backbone 'ViT-Q-99'"), FileNotFoundError('conconchi data root /x does not exist'),
                                 KeyError('no such concept')])
def test_library_errors_are_one_line(capsys, monkeypatch, root, exc):
    monkeypatch.chdir(root)
    def raise_(**kw): raise exc
    monkeypatch.setattr(polar_nb.bench, 'run_bench', raise_)
    code, err = fails(capsys, ['bench', '--device', 'cpu'])
    assert (code, err) == (2, f'polar-nb: error: {exc.args[0]}\n')

def test_traceback_flag_reraises(monkeypatch, root):
    monkeypatch.chdir(root)
    monkeypatch.setenv('POLAR_SETTINGS', str(root/'nope.ini'))
    with pytest.raises(FileNotFoundError, match='nope.ini'): main(['--traceback', 'bench', '--quick'])

def test_other_errors_are_not_hidden(monkeypatch, root):
    monkeypatch.chdir(root)
    def raise_(**kw): raise RuntimeError('a bug')
    monkeypatch.setattr(polar_nb.bench, 'run_bench', raise_)
    with pytest.raises(RuntimeError, match='a bug'): main(['bench'])
