# %% [markdown]
# # Importing open_clip on a CPU-only torch
#
# > A two-line workaround, active only on one exact error, so that open_clip imports with the CPU build of torch.

# %% [markdown]
# Why does open_clip not import with the CPU build of torch, and what is the smallest fix? This is
# infrastructure, with no section of the paper behind it. `open_clip` needs torchvision, and the one
# torchvision release that accepts torch 2.13.0 on PyPI is a CUDA build. With the CPU build of torch its import stops at
# `RuntimeError: operator torchvision::nms does not exist`: torchvision registers fake (meta)
# kernels for its C++ operators, whose schemas the CPU torch never loaded. `polar_nb.compat`
# defines exactly those two schemas (`nms`, `qnms`) on that error, and only on it, then imports
# again. No operator gets an implementation: calling `torchvision.ops.nms` would still fail, and
# polar-nb never calls it (open_clip uses torchvision only for its image transforms).

# %%
#| default_exp compat

# %%
#| hide
from fastcore.test import test_eq, test_fail

# %%
#| export
import sys
import torch

_MISSING_OPS = {  # the schemas torchvision's C++ extension would have registered
    'nms': 'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms': 'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'}
_lib = None  # the torch.library that holds the schemas, kept alive once created

def import_torchvision():
    "Import torchvision, defining its missing op schemas only on the CPU-torch/CUDA-torchvision error."
    global _lib
    for _ in range(len(_MISSING_OPS)+1):
        try:
            import torchvision
            return torchvision
        except RuntimeError as e:
            op = next((o for o in _MISSING_OPS if f'operator torchvision::{o} does not exist' in str(e)), None)
            if op is None: raise
            if _lib is None: _lib = torch.library.Library('torchvision', 'DEF')
            _lib.define(_MISSING_OPS[op])
            for m in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]: del sys.modules[m]
    raise ImportError('torchvision could not be imported')

def import_open_clip():
    "Import open_clip (through `import_torchvision`)."
    import_torchvision()
    import open_clip
    return open_clip


# %%
from polar_nb.compat import import_open_clip, import_torchvision
tv = import_torchvision()
open_clip = import_open_clip()
tok = open_clip.get_tokenizer('ViT-B-32')
test_eq(tok(['a photo of sks'])[0, 4].item(), 48136)  # `sks` is one BPE token
tv.__version__, open_clip.__version__

# %% [markdown]
# Any other import error is left alone: the workaround never hides a different problem.

# %% [markdown]
# ## In short
#
# `import_open_clip` imports open_clip with the CPU build of torch by defining two of torchvision's
# operator schemas (`nms`, `qnms`) on exactly the error their absence raises, and on no other. No
# operator gets an implementation, and any other import error is raised as it is.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
