# %% [markdown]
# # polar-nb
#
# > Personalized text-to-image search: teach CLIP "my dog Fido" from a few photos, then search "Fido on the beach".

# %% [markdown]
# ## What the book finds
#
# Each claim the paper makes about a direction (one method or setting ahead of another on a
# metric) is tested on the embedded world, over several world seeds: the paired difference on
# every world, its 95 % Student-t interval across worlds, and a verdict — *agrees* when the
# interval excludes 0 on the paper's side, *reversed* on the other side, *unresolved* otherwise.
# The numbers come from the [results store](15_results.ipynb); each claim links to the chapter
# that tests it.

# %%
#| echo: false
from IPython.display import HTML
from polar_nb.results import verdicts, verdict_counts, verdict_html
_v = verdicts()
_n = verdict_counts(_v)
_w = f"{_v.n_worlds.min()}" if _v.n_worlds.min() == _v.n_worlds.max() else f"{_v.n_worlds.min()}–{_v.n_worlds.max()}"
print(f"{len(_v)} claims, each over {_w} worlds: "
      f"{_n['agrees']} agree with the paper, {_n['reversed']} are reversed, {_n['unresolved']} are unresolved.")
HTML(verdict_html(_v))

# %% [markdown]
# polar-nb is a literate research package. Its chapters are notebooks that export the library
# `polar_nb`, run end to end on an embedded default, and are tested cell by cell. It implements,
# reproduces and extends two systems.
#
# **POLAR** (Ryan et al., *Improving Personalized Search with Regularized Low-Rank Parameter
# Updates*, CVPR 2025) turns a personal concept into a rank-1 update $\Delta W = B A$ of the value
# projection in the last layer of CLIP's text encoder. A token (`sks`) stands for the concept in
# queries ("sks on the beach"); the update is trained so that "A photo of sks" lands on the
# concept's photos, with a penalty on $B$ that keeps the rest of the text encoder's knowledge intact.
# Concepts combine by adding their updates, and nothing on the image side changes, so a photo
# library is embedded once.
#
# **CAP** (collection-aware personalization) needs no labelled concept at all: a transformer reads
# the embeddings of a user's whole photo collection and predicts a warping of their query
# embedding, so "my family" retrieves *this* user's family. It is trained on episodes made of a
# collection, a query, challenge images and the correct one.
#
# The [paper map](28_paper_map.ipynb) lists every table and figure of POLAR's supplement and every
# element of the CAP poster with the chapter that reproduces it, our number beside the paper's, and a verdict.

# %%
#| default_exp __init__

# %%
#| hide
#| export
from polar_nb.config import get_settings, Settings

# %%
#| hide
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, FancyArrowPatch


# %%
#| hide
def box(ax, x, y, w, h, text, color='#e8eef7', **kw):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.02', fc=color, ec='#334', lw=1))
    ax.text(x+w/2, y+h/2, text, ha='center', va='center', fontsize=9, **kw)

def arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle='-|>', mutation_scale=12, color='#334', lw=1))

def overview():
    fig, (l, r) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax in (l, r): ax.set_xlim(0, 10); ax.set_ylim(0, 6); ax.axis('off')
    l.set_title('POLAR: a concept is a rank-1 update of the text encoder', fontsize=10)
    box(l, 0.2, 4.6, 2.6, 0.8, '"sks on the beach"')
    for i, y in enumerate([3.6, 2.7]): box(l, 0.2, y, 2.6, 0.7, f'text layer {i+1} … {"L-1" if i else ""}'.strip(' …'))
    box(l, 0.2, 1.4, 2.6, 1.0, 'last layer\n$W_V + B A$', color='#fde2c8')
    box(l, 0.2, 0.2, 2.6, 0.8, 'query embedding')
    for y0, y1 in [(4.6, 4.3), (3.6, 3.4), (2.7, 2.4), (1.4, 1.0)]: arrow(l, (1.5, y0), (1.5, y1))
    box(l, 3.8, 1.4, 2.9, 1.0, 'B: d×1 (starts at 0)\nA: 1×d, ‖A‖=1', color='#fde2c8')
    arrow(l, (3.8, 1.9), (2.8, 1.9))
    box(l, 7.2, 3.7, 2.6, 1.6, '3–5 photos of\nthe concept\n(image tower, frozen)', color='#e4f2e1')
    arrow(l, (7.2, 3.9), (6.0, 2.4))
    l.text(6.9, 3.0, 'MSE + λ·mean(B²)', fontsize=8, rotation=0, color='#a33')
    r.set_title('CAP: the collection warps the query', fontsize=10)
    box(r, 0.2, 4.3, 3.2, 1.2, "a user's photo collection\n(image embeddings)", color='#e4f2e1')
    box(r, 0.2, 2.4, 3.2, 1.2, 'transformer encoder\nover the collection')
    arrow(r, (1.8, 4.3), (1.8, 3.6))
    box(r, 4.8, 4.3, 3.6, 1.2, '"my family at the beach"\n(text embedding)')
    box(r, 4.8, 2.4, 3.6, 1.2, 'warp (modulation)', color='#fde2c8')
    arrow(r, (6.5, 4.3), (6.5, 3.6)); arrow(r, (3.4, 3.0), (4.8, 3.0))
    box(r, 4.8, 0.4, 3.6, 1.2, "personal query →\nthis user's family")
    arrow(r, (6.5, 2.4), (6.5, 1.6))
    fig.tight_layout()
    return fig


# %%
#| echo: false
fig = overview()

# %%
#| hide
from fastcore.test import test_eq
test_eq(len(fig.axes), 2)

# %% [markdown]
# ## Two commands
#
# On any machine with Python 3.10+ and the package registries (no GPU needed):
#
# ```bash
# bash scripts/book.sh    # set up .venv/, execute every chapter on the embedded default, render the book to _site/
# bash scripts/test.sh    # the whole test suite: pytest over tests/ and every chapter with nbval
# ```
#
# The first prints the page to open, `_site/index.html`.
#
# ## Where real data goes
#
# The default profile (`small`) runs on the package's own procedural world and its own small CLIP,
# made offline. To run the paper's setting, put the benchmarks under `data/` in their published
# layouts and switch the profile (`profile = paper` in `settings.ini`, or `POLAR_PROFILE=paper`):
#
# ```
# data/conconchi/data/images/…                  ConCon-Chi, as distributed
# data/conconchi/data/annotations/{train,test}.json
# data/deepfashion2/train/image/*.jpg           DeepFashion2's train.zip
# data/deepfashion2/{test,validation}_fsl_train.txt, *_captions.csv, …   PerVL's annotation files
# ```
#
# The `paper` profile uses open_clip's `ViT-L-14` with OpenAI's weights, which must already be in
# open_clip's cache (or set `pretrained` to a checkpoint file): nothing is downloaded at run time,
# and weights that are not there are an immediate error saying where to put them
# (`load_backbone(..., download=True)` fetches them when asked). On DeepFashion2 it trains as the
# paper did (λ 0.1, 50 or 200 iterations, 5 support images drawn per concept), on ConCon-Chi with
# λ 0.35 and 500 iterations. The chapter [Settings](01_config.ipynb) documents every key.
