# %% [markdown]
# # Settings
#
# > Where the data lives, which backbone runs, and which profile every chapter uses.

# %% [markdown]
# Where does an experiment find its data, which backbone does it run, and at what size? The paper
# has no section for this: its experiments (§4, with the settings of supplement §12) run on the real
# benchmarks with ViT-L/14, and this chapter is how the book chooses between that setting and its
# own embedded one. Every experiment in this book reads one small file, `settings.ini` at the root
# of the repository. It names a *profile*: `small` runs everything on the package's own embedded world
# and backbone (no download, a CPU is enough), `paper` runs the same code on ConCon-Chi,
# PerVL DeepFashion2 and ViT-L-14, as in the paper. Environment variables override the file,
# so a single run can switch profile without editing anything: `POLAR_PROFILE=paper`.
#
# Nothing falls back silently: a settings file that does not exist or cannot be read, an unknown
# key, an unknown `POLAR_` variable, an empty value and a device torch does not know are refused
# when the settings are read, with a message naming the key and where its value came from.

# %%
#| default_exp config

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_fail

# %%
#| export
import configparser, difflib, os, re
from dataclasses import dataclass, fields
from pathlib import Path

# %% [markdown]
# ## The keys
#
# Each key has a one-line meaning; `settings.ini` repeats them as comments. Unknown keys are
# refused, so a typo never silently falls back to a default.

# %%
#| export
SETTINGS_FILE = 'settings.ini'
ENV_PREFIX = 'POLAR_'
KEYS = dict(
    profile='which profile section of settings.ini the chapters run with (small, paper, ...)',
    backbone='open_clip architecture name (ViT-L-14, ...) or world-tiny, the embedded backbone',
    pretrained='open_clip pretrained tag, path to a local checkpoint, or empty',
    conconchi_root='folder in the ConCon-Chi layout',
    deepfashion2_root='folder in the PerVL DeepFashion2 layout',
    device='auto, cpu, cuda, cuda:N or mps',
    cache_dir='folder for cached features, updates and executed chapters')
DEFAULTS = dict(profile='small', backbone='world-tiny', pretrained='', conconchi_root='data/world/conconchi',
                deepfashion2_root='data/world/deepfashion2', device='auto', cache_dir='.cache/polar_nb')
DEFAULTS_PROFILES = ('small',)  # with no settings file at all, the built-in defaults are this profile
PATH_KEYS = tuple(k for k in KEYS if k == 'cache_dir' or k.endswith('_root'))  # folders
OPTIONAL_KEYS = ('pretrained',)  # may be empty: the backbone's own weights (world-tiny) or random weights
ENV_NAMES = (ENV_PREFIX+'SETTINGS', *(ENV_PREFIX+k.upper() for k in KEYS))  # every POLAR_ variable read
DEVICES = 'auto, cpu, cuda, cuda:N, mps, xpu, xpu:N'

# %%
test_eq(set(KEYS), set(DEFAULTS))
test_eq(PATH_KEYS, ('conconchi_root', 'deepfashion2_root', 'cache_dir'))
test_eq(ENV_NAMES[:3], ('POLAR_SETTINGS', 'POLAR_PROFILE', 'POLAR_BACKBONE'))

# %% [markdown]
# ## Checking a value
#
# A device is one of the names torch runs on; `auto` picks one when the models load.

# %%
#| export
_DEVICE = re.compile(r'auto|cpu|mps|(cuda|xpu)(:[0-9]+)?')

def check_device(device:str, # the device, as written
                 source:str|None=None, # where it was written, for the message
                )->str:
    "`device` when it is auto, cpu, cuda, cuda:N, mps, xpu or xpu:N; else a ValueError."
    if isinstance(device, str) and _DEVICE.fullmatch(device): return device
    raise ValueError(f"device {device!r}{f' from {source}' if source else ''} is not one of: {DEVICES}")


# %%
for d in ['auto', 'cpu', 'cuda', 'cuda:1', 'mps', 'xpu:0']: test_eq(check_device(d), d)
test_fail(lambda: check_device('banana', 'POLAR_DEVICE'), contains="device 'banana' from POLAR_DEVICE is not one of: auto, cpu")
test_fail(lambda: check_device('cuda:'), contains='cuda:N')
test_fail(lambda: check_device(' cpu'), contains="' cpu'")


# %% [markdown]
# Every value, from the file, the environment or an argument, is checked the same way: surrounding
# spaces are dropped, only `pretrained` may be empty (the backbone's own or random weights), and the
# device must be a device. An empty folder would otherwise mean the current folder.

# %%
#| export
def check_value(key:str, # one of `KEYS`
                value, # its value, as written
                source:str, # where it was written, for the message
               )->str:
    "The text of `value` without surrounding spaces; refused when empty (but `pretrained`) or not a device."
    value = str(value).strip()
    if not value and key not in OPTIONAL_KEYS: raise ValueError(
        f"{key} is empty in {source}; it must be {'a folder' if key in PATH_KEYS else KEYS[key]}")
    if key == 'device': check_device(value, source)
    return value


# %%
test_eq(check_value('backbone', ' ViT-B-32 ', 'here'), 'ViT-B-32')
test_eq(check_value('pretrained', '', 'here'), '')
test_fail(lambda: check_value('cache_dir', '', 'POLAR_CACHE_DIR'), contains='cache_dir is empty in POLAR_CACHE_DIR; it must be a folder')
test_fail(lambda: check_value('profile', ' ', 'settings.ini [settings]'), contains='profile is empty in settings.ini [settings]')
test_fail(lambda: check_value('device', 'gpu', 'settings.ini [small]'), contains="device 'gpu' from settings.ini [small]")


# %% [markdown]
# ## The environment
#
# `POLAR_<KEY>` overrides a key and `POLAR_SETTINGS` names the file; any other `POLAR_` variable is
# a typo and is refused, with the closest name polar-nb reads.

# %%
#| export
def env_settings(env:dict|None=None, # environment (default: `os.environ`)
                )->dict:
    "The checked values of the `POLAR_<KEY>` variables of `env`, by key; an unknown `POLAR_` variable is refused."
    env = os.environ if env is None else env
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in ENV_NAMES:
            near = difflib.get_close_matches(name, ENV_NAMES, n=1)
            raise ValueError(f"unknown environment variable {name}" + (f" (did you mean {near[0]}?)" if near else '')
                             + f"; polar-nb reads {', '.join(ENV_NAMES)}")
    return {k: check_value(k, env[n], n) for k in KEYS if (n := ENV_PREFIX+k.upper()) in env}


# %%
test_eq(env_settings({'POLAR_DEVICE': ' cpu', 'HOME': '/root', 'POLAR_SETTINGS': 'x.ini'}), {'device': 'cpu'})
test_fail(lambda: env_settings({'POLAR_PROFLE': 'paper'}), contains='unknown environment variable POLAR_PROFLE (did you mean POLAR_PROFILE?); polar-nb reads')
test_fail(lambda: env_settings({'POLAR_PROFLE': 'paper'}), contains='polar-nb reads POLAR_SETTINGS, POLAR_PROFILE, POLAR_BACKBONE')
test_fail(lambda: env_settings({'POLAR_XYZZY': '1'}), contains='unknown environment variable POLAR_XYZZY; polar-nb reads')
test_fail(lambda: env_settings({'POLAR_CACHE_DIR': ''}), contains='cache_dir is empty in POLAR_CACHE_DIR')
test_fail(lambda: env_settings({'POLAR_DEVICE': 'banana'}), contains="device 'banana' from POLAR_DEVICE")

# %% [markdown]
# The expected on-disk layout of each benchmark, shown whenever a data root is missing:

# %%
#| export
LAYOUTS = dict(
    conconchi="""<root>/                          (ConCon-Chi, as distributed)
  data/
    images/                        the photos (sub-folders allowed)
    annotations/
      train.json                   support images of each concept
      test.json                    retrieval pool and queries""",
    deepfashion2="""<root>/                          (PerVL annotation files + DeepFashion2 train.zip)
  train/image/*.jpg                DeepFashion2 training images
  test_fsl_train.txt               support images per pair id (also validation_fsl_train.txt)
  test_captions.csv                pool and captions (also validation_captions.csv)
  shortened_deepfashion2_captions.csv
  detailed_deepfashion2_captions.csv
  train_coarse_grained_names.csv""")


# %% [markdown]
# ## Finding and reading the file

# %%
#| export
def find_settings(start:str|Path|None=None, # folder to search from (default: the current folder)
                  env:dict|None=None, # environment (default: `os.environ`)
                 )->Path|None:
    "`$POLAR_SETTINGS`, else the nearest `settings.ini` in `start` or a parent folder, else None."
    env = os.environ if env is None else env
    if ENV_PREFIX+'SETTINGS' in env:
        if not env[ENV_PREFIX+'SETTINGS'].strip(): raise ValueError(f"{ENV_PREFIX}SETTINGS is empty; name a settings file or unset it")
        p = Path(env[ENV_PREFIX+'SETTINGS'].strip()).expanduser()
        if not p.is_file(): raise FileNotFoundError(f"{ENV_PREFIX}SETTINGS points to {p}, which is not a file")
        return p.resolve()
    start = Path(start or Path.cwd()).resolve()
    return next((d/SETTINGS_FILE for d in [start, *start.parents] if (d/SETTINGS_FILE).is_file()), None)


# %% [markdown]
# Chapters run from `nbs/`, so the search walks up to the repository's file:

# %%
repo_ini = find_settings()
test_eq(repo_ini.name, 'settings.ini')
test_eq(repo_ini, Path('..').resolve()/'settings.ini')
test_fail(lambda: find_settings(env={'POLAR_SETTINGS': ''}), contains='POLAR_SETTINGS is empty')
repo_ini.relative_to(Path('..').resolve())  # shown relative to the repository


# %%
#| export
def _read_ini(path:Path)->configparser.ConfigParser:
    "Parse the UTF-8 INI file `path`; an unreadable file is a ValueError naming it."
    cp = configparser.ConfigParser(default_section='settings', interpolation=None)
    try: cp.read_string(path.read_text(encoding='utf-8'), source=str(path))
    except UnicodeDecodeError as e: raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except configparser.Error as e: raise ValueError(f"{path} is not a valid settings file: {' '.join(str(e).split())}") from e
    return cp

def _parse_ini(path:Path)->configparser.ConfigParser:
    "Parse `path`, refusing keys that polar-nb does not know and values that `check_value` refuses."
    cp = _read_ini(path)
    for sec in ['settings', *cp.sections()]:
        vals = cp.defaults() if sec=='settings' else cp._sections[sec]
        bad = [k for k in vals if k not in KEYS]
        if bad: raise ValueError(f"{path}: unknown key(s) {bad} in [{sec}]; known keys: {list(KEYS)}")
        if sec != 'settings' and 'profile' in vals: raise ValueError(f"{path}: profile is chosen in [settings], not in [{sec}]")
        for k,v in vals.items(): check_value(k, v, f'{path} [{sec}]')
    return cp


# %% [markdown]
# `Settings` is what every chapter receives: plain values, paths made absolute.

# %%
#| export
@dataclass(frozen=True)
class Settings:
    "The resolved experiment settings (one profile, environment applied, paths absolute)."
    profile:str
    backbone:str
    pretrained:str
    conconchi_root:Path
    deepfashion2_root:Path
    device:str
    cache_dir:Path
    source:Path|None=None  # the settings file read, if any

    def data_root(self, name:str)->Path:
        "The root of benchmark `name` (conconchi or deepfashion2), checked to exist."
        if name not in LAYOUTS: raise ValueError(f"unknown dataset {name!r}; known: {list(LAYOUTS)}")
        root = getattr(self, f'{name}_root')
        if not root.is_dir(): raise FileNotFoundError(
            f"{name} data root {root} does not exist (profile {self.profile!r}, set {name}_root in "
            f"{self.source or SETTINGS_FILE} or ${ENV_PREFIX}{name.upper()}_ROOT). Expected layout:\n{LAYOUTS[name]}")
        return root


# %%
#| export
def _resolve(key:str, value:str, base:Path):
    "Turn the text of `key` into its value: paths absolute (relative to `base`), a pretrained path too."
    value = value.strip()
    if key.endswith('_root') or key=='cache_dir': return (base/Path(value).expanduser()).resolve()
    if key=='pretrained' and value and (os.sep in value or Path(value).suffix):
        return str((base/Path(value).expanduser()).resolve())
    return value


# %%
#| export
def get_settings(path:str|Path|None=None, # settings file (default: `find_settings()`)
                 env:dict|None=None, # environment (default: `os.environ`); POLAR_<KEY> overrides
                 **overrides, # explicit values, e.g. `profile='paper'`, override everything
                )->Settings:
    "Read the settings: built-in defaults < [settings] < the profile's section < environment < `overrides`."
    env = os.environ if env is None else env
    envs = env_settings(env)
    bad = [k for k in overrides if k not in KEYS]
    if bad: raise ValueError(f"unknown setting(s) {bad}; known: {list(KEYS)}")
    overrides = {k: check_value(k, v, f'the argument {k}=') for k,v in overrides.items()}
    if path and not Path(path).is_file(): raise FileNotFoundError(f"settings file {path} does not exist")
    path = Path(path) if path else find_settings(env=env)
    cp = _parse_ini(path) if path else None
    vals = {**DEFAULTS, **(dict(cp.defaults()) if cp else {})}
    profile = {**vals, **envs, **overrides}['profile']
    known = [*DEFAULTS_PROFILES, *(cp.sections() if cp else [])]
    if profile not in known: raise ValueError(
        f"unknown profile {profile!r}; known profiles: {sorted(set(known))} (sections of {path or SETTINGS_FILE})")
    if cp and cp.has_section(profile): vals.update(cp._sections[profile])
    vals.update(envs); vals.update(overrides)
    base = path.parent.resolve() if path else Path.cwd()
    return Settings(**{k: _resolve(k, str(v), base) for k,v in vals.items()}, source=path)


# %%
s = get_settings()
here = Path('..').resolve()  # the repository: paths are shown relative to it
{k: (v.relative_to(here) if isinstance(v, Path) and v.is_relative_to(here) else v) for k, v in vars(s).items()}

# %%
test_eq(s.profile, 'small')
test_eq(s.backbone, 'world-tiny')
test_eq(s.source, repo_ini)
assert s.cache_dir.is_absolute() and s.conconchi_root.is_absolute()

# %% [markdown]
# Environment variables override the file, and the `paper` profile brings its own backbone and data
# roots:

# %%
p = get_settings(env={'POLAR_PROFILE': 'paper', 'POLAR_DEVICE': 'cpu'})
test_eq((p.profile, p.backbone, p.pretrained, p.device), ('paper', 'ViT-L-14', 'openai', 'cpu'))
test_eq(p.conconchi_root, repo_ini.parent/'data/conconchi')
test_eq(get_settings(env={}, profile='paper', backbone='ViT-B-32').backbone, 'ViT-B-32')

# %% [markdown]
# A profile that does not exist, a typo in a key, and a missing data root are all clear errors.
# The data root error names the path and shows the layout expected:

# %%
test_fail(lambda: get_settings(env={'POLAR_PROFILE': 'papr'}), contains="unknown profile 'papr'")
test_fail(lambda: get_settings(env={}, devise='cpu'), contains='unknown setting')
test_fail(lambda: get_settings('missing.ini', env={}), contains='settings file missing.ini does not exist')
test_fail(lambda: get_settings(env={'POLAR_PROFLE': 'paper'}), contains='(did you mean POLAR_PROFILE?)')
test_fail(lambda: get_settings(env={'POLAR_CACHE_DIR': ''}), contains='cache_dir is empty in POLAR_CACHE_DIR')
test_fail(lambda: get_settings(env={'POLAR_PROFILE': ''}), contains='profile is empty in POLAR_PROFILE')
test_fail(lambda: get_settings(env={}, conconchi_root=''), contains='conconchi_root is empty in the argument conconchi_root=')
test_fail(lambda: get_settings(env={'POLAR_DEVICE': 'banana'}), contains="device 'banana' from POLAR_DEVICE")
test_eq(get_settings(env={'POLAR_PRETRAINED': ''}).pretrained, '')
missing = get_settings(env={'POLAR_PROFILE': 'paper', 'POLAR_CONCONCHI_ROOT': '/nonexistent/conconchi'})
test_fail(lambda: missing.data_root('conconchi'), contains='/nonexistent/conconchi')
try: missing.data_root('conconchi')
except FileNotFoundError as e: print(str(e).replace(f'{here}/', ''))  # the repository's path left out

# %%
import tempfile
with tempfile.TemporaryDirectory() as d:
    ini = Path(d)/'settings.ini'
    ini.write_text('[settings]\nprofile = mine\n[mine]\nbackbone = ViT-B-32\nconconchi_root = cc\n')
    (Path(d)/'cc').mkdir()
    m = get_settings(ini, env={})
    test_eq((m.profile, m.backbone, m.data_root('conconchi')), ('mine', 'ViT-B-32', (Path(d)/'cc').resolve()))
    ini.write_text('[settings]\nprofil = small\n')
    test_fail(lambda: get_settings(ini, env={}), contains="unknown key(s) ['profil']")
    for text, msg in [('[settings]\ncache_dir =\n', f'cache_dir is empty in {ini} [settings]'),
                      ('[settings]\nprofile = mine\n[mine]\ndevice = gpu\n', f"device 'gpu' from {ini} [mine]"),
                      ('[settings]\n[mine]\nprofile = small\n', f'{ini}: profile is chosen in [settings], not in [mine]'),
                      ('profile = small\n', f'{ini} is not a valid settings file: File contains no section headers.'),
                      ('[settings]\nprofile small\n', f'{ini} is not a valid settings file: Source contains parsing errors')]:
        ini.write_text(text)
        test_fail(lambda: get_settings(ini, env={}), contains=msg)
    ini.write_bytes('[settings]\nbackbone = caf\xe9\n'.encode('latin-1'))
    test_fail(lambda: get_settings(ini, env={}), contains=f'{ini} is not UTF-8 text (byte 25)')


# %% [markdown]
# ## The device
#
# `auto` picks a GPU when there is one; any other device is passed to torch as written, and a
# name that is not a device is refused before torch sees it.

# %%
#| export
def resolve_device(device:str='auto', # auto, cpu, cuda, cuda:N, mps, xpu or xpu:N
                 )->str:
    "The torch device for `device`: auto means cuda when available, else mps when available, else cpu."
    if check_device(str(device)) != 'auto': return str(device)
    import torch
    if torch.cuda.is_available(): return 'cuda'
    if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available(): return 'mps'
    return 'cpu'


# %%
import torch
test_eq(resolve_device('cpu'), 'cpu')
test_fail(lambda: resolve_device('banana'), contains="device 'banana' is not one of")
test_eq(resolve_device(), 'cuda' if torch.cuda.is_available() else resolve_device('auto'))
resolve_device()

# %% [markdown]
# ## In short
#
# - One file, `settings.ini`, names a profile: `small` (the embedded world and `world-tiny`, on a
#   CPU) or `paper` (ConCon-Chi, PerVL DeepFashion2 and `ViT-L-14` with OpenAI's weights). The
#   repository's own file resolves to profile `small`, backbone `world-tiny` and device `auto`, which
#   is `cpu` on the machine that ran this chapter.
# - `POLAR_<KEY>` overrides one key for one run, and `POLAR_SETTINGS` names another file.
# - Every value is checked when it is read: an unknown key or `POLAR_` variable, an empty folder, a
#   device torch does not name and a missing data root are refused with the key, where its value came
#   from, and, for a data root, the layout expected.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
