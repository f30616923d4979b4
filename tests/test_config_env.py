"Settings from the real process environment, as a user sets them in a shell."
import os, re, subprocess, sys
import pytest
from polar_nb.config import ENV_NAMES, get_settings, find_settings, resolve_device

def test_env_overrides_profile(monkeypatch, root):
    monkeypatch.chdir(root/'nbs')
    monkeypatch.setenv('POLAR_PROFILE', 'paper')
    monkeypatch.setenv('POLAR_DEEPFASHION2_ROOT', '/elsewhere/df2')
    s = get_settings()
    assert (s.profile, s.backbone, str(s.deepfashion2_root)) == ('paper', 'ViT-L-14', '/elsewhere/df2')
    with pytest.raises(FileNotFoundError, match=r'(?s)/elsewhere/df2.*train/image/\*\.jpg'):
        s.data_root('deepfashion2')

def test_settings_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv('POLAR_SETTINGS', str(tmp_path/'nope.ini'))
    with pytest.raises(FileNotFoundError, match='nope.ini'): find_settings()
    (tmp_path/'my.ini').write_text('[settings]\nprofile = small\ndevice = cpu\n')
    monkeypatch.setenv('POLAR_SETTINGS', str(tmp_path/'my.ini'))
    assert get_settings().device == 'cpu' and get_settings().source == tmp_path/'my.ini'

def test_unknown_profile_from_shell(root):
    env = {**os.environ, 'POLAR_PROFILE': 'nope'}
    r = subprocess.run([sys.executable, '-c', 'import polar_nb; polar_nb.get_settings()'], cwd=root, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown profile 'nope'" in r.stderr

def test_unknown_env_var_from_shell(root):
    env = {**os.environ, 'POLAR_PROFLE': 'paper'}
    r = subprocess.run([sys.executable, '-c', 'import polar_nb; polar_nb.get_settings()'], cwd=root, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'unknown environment variable POLAR_PROFLE (did you mean POLAR_PROFILE?)' in r.stderr
    assert 'POLAR_SETTINGS' in r.stderr and 'POLAR_CACHE_DIR' in r.stderr

def test_every_polar_variable_of_the_project_is_read(root):
    "Every POLAR_ name the project itself writes is one that get_settings accepts (the typos made on purpose aside)."
    typos = {'POLAR_PROFLE', 'POLAR_XYZZY'}
    files = [p for d in ['polar_nb', 'nbs', 'scripts', '.ci', 'tests', 'chapters'] for p in (root/d).rglob('*') if p.is_file()]
    names = {m for p in [*files, root/'README.md', root/'settings.ini'] if p.suffix in ('', '.py', '.ipynb', '.sh', '.md', '.ini')
             for m in re.findall(r'\bPOLAR_[A-Z][A-Z0-9_]*', p.read_text(errors='replace'))}
    assert 'POLAR_PROFILE' in names and not (names - typos - set(ENV_NAMES)), names - typos - set(ENV_NAMES)

@pytest.mark.parametrize('var, value, msg', [('POLAR_CACHE_DIR', '', 'cache_dir is empty in POLAR_CACHE_DIR'),
                                             ('POLAR_CONCONCHI_ROOT', ' ', 'conconchi_root is empty in POLAR_CONCONCHI_ROOT'),
                                             ('POLAR_BACKBONE', '', 'backbone is empty in POLAR_BACKBONE'),
                                             ('POLAR_DEVICE', 'banana', "device 'banana' from POLAR_DEVICE is not one of: auto, cpu"),
                                             ('POLAR_SETTINGS', '', 'POLAR_SETTINGS is empty')])
def test_bad_env_values(monkeypatch, root, var, value, msg):
    monkeypatch.chdir(root)
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=re.escape(msg)): get_settings()

def test_empty_pretrained_is_allowed(monkeypatch, root):
    monkeypatch.chdir(root)
    monkeypatch.setenv('POLAR_PRETRAINED', '')
    assert get_settings().pretrained == ''

def test_missing_settings_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.ini'): get_settings(tmp_path/'missing.ini', env={})

@pytest.mark.parametrize('data, msg', [('[settings]\nbackbone = café\n'.encode('latin-1'), 'is not UTF-8 text'),
                                       (b'profile = small\n', 'is not a valid settings file: File contains no section headers'),
                                       (b'[settings]\nprofile = small\nprofile = paper\n', 'is not a valid settings file'),
                                       (b'[settings]\ncache_dir =\n', 'cache_dir is empty in'),
                                       (b'[settings]\ndevice = cuda:x\n', "device 'cuda:x' from")])
def test_bad_settings_file(tmp_path, data, msg):
    ini = tmp_path/'my.ini'; ini.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(msg)) as e: get_settings(ini, env={})
    assert str(ini) in str(e.value)

def test_resolve_device_refuses_a_bad_name():
    assert resolve_device('cpu') == 'cpu' and resolve_device('cuda:1') == 'cuda:1'
    with pytest.raises(ValueError, match="device 'banana' is not one of"): resolve_device('banana')
