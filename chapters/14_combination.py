# %% [markdown]
# # Combining concepts
# > Several personal concepts in one query, and many in one encoder: the paper's addition of updates against averaging, norm-matched, orthogonal and token-local updates, with the interference measured.

# %% [markdown]
# Which rule should combine the updates of several learned concepts, for a query that names two of
# them ("* next to * on the beach") and for a user who has learned many? The paper's abstract says it
# "explores strategies for combining parameters of multiple learned personal concepts, finding that
# parameter addition is effective", and its official code encodes ConCon-Chi's multi-concept
# queries (part of the context queries of §4 and supplement Tab. 15) with the concepts' updates
# summed, every concept on the one token `sks`; the paper prints no table comparing rules. This chapter builds five rules behind one name (`combine=` of
# `Polar` and of `encode_text`), checks the new token-local update for exactness the way the
# [POLAR chapter](10_polar.ipynb) checks the plain one, and measures on the ConCon-Chi-format world:
# two-concept context queries (mRR, mAP, recall@1, several runs with standard errors, beside
# AvgIm+Text and text only), what the updates share, and what each concept keeps when 1, 5 or all
# 20 concepts' updates are present at once.

# %%
#| default_exp combine

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_eq, test_fail, test_close

# %%
#| export
import math
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
import numpy as np, pandas as pd, torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from polar_nb.clip import Backbone, tokenize, token_id, eot_positions, fingerprint
from polar_nb.polar import (LowRankUpdate, encode_text, finish_eot, eot_summaries, personalize, _memo_summaries, _fast_ok,
                            _prefix, _truncate, _lin, _project, _check_tower, _as_updates, _text_version)
from polar_nb.baselines import Polar, concept_set, concept_word, concept_prompts, concept_file, cache_root, fill, _cached
from polar_nb.clip import image_features
from polar_nb.metrics import metrics_table

# %% [markdown]
# ## The strategies
#
# With $k$ concepts' updates $\Delta W_i = B_i A_i$ of the same weight:
#
# | name | the weight used | note |
# |---|---|---|
# | `sum` | $W + \sum_i \Delta W_i$ | the paper's, every concept on `sks` |
# | `mean` | $W + \frac1k \sum_i \Delta W_i$ | two concepts move the encoder as far as one |
# | `norm` | $W + c \sum_i \Delta W_i$, $c = \operatorname{mean}_i \lVert\Delta W_i\rVert_F / \lVert\sum_i \Delta W_i\rVert_F$ | the sum scaled to the size of one update; $c = 1/k$ for identical updates, $1/\sqrt k$ for orthogonal ones |
# | `orthogonal` | $W + \sum_i B_i' A_i$, $B_i'$ = $B_i$ minus its projection on the columns of $B_1',\dots,B_{i-1}'$ | shared output directions counted once (Gram–Schmidt in the query's order) |
# | `token` | $W_V$ plus $\Delta W_i$ *only on the value vectors of the positions holding concept $i$'s own token* | each concept its own rare token; trained the way it is applied |
#
# `combine_updates` turns a list of updates into the list whose sum is the combination (for `token`
# the updates are unchanged: their application differs, see below).

# %%
#| export
STRATEGIES = dict(sum="the paper's: the concepts' ΔW added", mean='each of the k concepts\' ΔW times 1/k',
                  orthogonal="B's columns made orthogonal in the query's order (Gram–Schmidt), then added",
                  norm='the sum scaled to the mean Frobenius norm of its parts',
                  token='each concept its own token; its update acts only through the positions holding it')

def check_strategy(how:str)->str:
    "`how` if it names a combination strategy, else a ValueError listing them."
    if how not in STRATEGIES: raise ValueError(f"combine must be 'sum' or 'mean', or one of {list(STRATEGIES)[2:]}, not {how!r}")
    return how


# %%
check_strategy('norm'), list(STRATEGIES)

# %%
test_fail(lambda: check_strategy('max'), contains="'sum' or 'mean'")


# %%
#| export
def _same_site(ups:list, how:str):
    "ValueError unless all `ups` change the same weight(s) in the same layer(s)."
    if len({(str(u.param), str(u.layer)) for u in ups}) > 1: raise ValueError(
        f"combine={how!r} combines updates of one weight: these change {sorted({(str(u.param), str(u.layer)) for u in ups})}")

def _orthogonal(ups:list)->list:
    "The updates with B's columns made orthogonal to those of every update before them (each weight and layer on its own)."
    out, basis = [], []
    for u in ups:
        B = u.B if u.B.dim() == 3 else u.B[None]  # [sites, d_out, r]
        if basis: Q = torch.cat(basis, -1); B = B - Q @ (Q.transpose(1, 2) @ B)
        basis.append(torch.linalg.qr(B).Q)
        out.append(replace(u, B=B if u.B.dim() == 3 else B[0]))
    return out

def _norm_matched(ups:list)->list:
    "The updates scaled by one factor so that their summed ΔW has the mean Frobenius norm of theirs."
    n = len(ups[0].factors())
    total = sum(torch.stack([u.delta(i) for u in ups]).sum(0).norm()**2 for i in range(n)).sqrt()
    parts = torch.stack([sum(u.delta(i).norm()**2 for i in range(n)).sqrt() for u in ups]).mean()
    s = float(parts / total) if total > 0 else 1.
    return [replace(u, B=u.B * s) for u in ups]

def combine_updates(updates, how:str='sum')->list:
    "The updates, changed so that adding them combines them by strategy `how` (token: unchanged; applied by `encode_combined`)."
    ups, how = _as_updates(updates), check_strategy(how)
    if len(ups) < 2 or how in ('sum', 'token'): return ups
    if how == 'mean': return [replace(u, B=u.B / len(ups)) for u in ups]
    _same_site(ups, how)
    return _orthogonal(ups) if how == 'orthogonal' else _norm_matched(ups)


# %% [markdown]
# On the random-weight ViT-B-32 of the POLAR chapter: `mean` halves two updates, `norm` makes the summed
# $\Delta W$ as large as one of them on average, `orthogonal` leaves the first update alone and makes the
# second one's $B$ orthogonal to it, and a single update is never changed.

# %%
from polar_nb.clip import load_backbone
from polar_nb.polar import random_update, merge_updates
vit = load_backbone('ViT-B-32', pretrained=None, device='cpu')
u1, u2 = random_update(vit, 'v', scale=0.5, seed=1), random_update(vit, 'v', scale=0.5, seed=2)
u2 = replace(u2, B=u2.B + u1.B)  # the two share an output direction, as trained updates do
m = combine_updates([u1, u2], 'mean'); test_close(m[1].B, u2.B / 2, eps=1e-7)
n = combine_updates([u1, u2], 'norm'); test_close((n[0].delta() + n[1].delta()).norm(), (u1.delta().norm() + u2.delta().norm()) / 2, eps=1e-4)
o = combine_updates([u1, u2], 'orthogonal'); test_eq(o[0].B, u1.B); test_close((o[1].B.T @ u1.B).item(), 0., eps=1e-4)
for how in STRATEGIES: test_eq(combine_updates([u1], how)[0].B, u1.B)
test_fail(lambda: combine_updates([u1, random_update(vit, 'mlp1')], 'norm'), contains='combines updates of one weight')
dict(cos_B_before=F.cosine_similarity(u1.B.T, u2.B.T).item(), norm_factor=(n[0].B.norm() / u1.B.norm()).item())

# %% [markdown]
# ## Token-local updates
#
# For `token`, concept $i$ is written with its own token $\tau_i$, one BPE token each, drawn from a
# fixed list of rare three-consonant words (`sks` first) and checked against the backbone's
# tokenizer. Its update changes only the value vectors of the positions that hold $\tau_i$:
# $v_t = W_V x_t + b_V + [\text{token}_t = \tau_i]\, B_i A_i x_t$. A text without $\tau_i$ is encoded
# exactly as without the update, whatever other concepts a user has learned.

# %%
#| export
RARE_TOKENS = ('sks rcn hmv dbz rps pgs pbc tvc gsp rmb mds mgt nrg mss bpd kts mwf ccd rsc ddc fbs scd bdg hns stg dds bsf szn '
               'mgs nrf sqm bsp bgs bnp lpg gsc snf bgc sgh ndc clg pkk pcm wwx bln hsv npt csg tdp dwp hcs ttm cbp smx kgs csn '
               'dts cfd cmc tmw').split()

def concept_tokens(bb:Backbone, n:int, # how many
                   avoid:list[str]=(), # texts none of the tokens may occur in as a word (queries, captions)
                  )->list[str]:
    "`n` distinct rare tokens for `n` concepts (`sks` first), each checked to be one BPE token of `bb`'s tokenizer."
    words = {w for t in avoid for w in t.lower().replace('.', ' ').replace(',', ' ').split()}
    ok = []
    for t in RARE_TOKENS:
        try: token_id(bb, t)
        except ValueError: continue
        if t not in words: ok.append(t)
    if len(ok) < n: raise ValueError(f"{n} concept tokens asked for: {bb.name!r}'s tokenizer has only {len(ok)} of RARE_TOKENS as single BPE tokens unused by the texts")
    return ok[:n]


# %%
from polar_nb.clip import token_id
toks = concept_tokens(vit, 20)
test_eq(len(set(toks)), 20); test_eq(toks[0], 'sks'); test_eq(token_id(vit, 'sks'), 48136)
for t in toks: token_id(vit, t)  # each is one BPE token (else ValueError)
test_eq(concept_tokens(vit, 2, avoid=['A photo of sks next to a cup.']), ['rcn', 'hmv'])
test_fail(lambda: concept_tokens(vit, 1000), contains='has only')
' '.join(toks)


# %% [markdown]
# ### The exact fast path
#
# As for the plain update, queries and keys do not involve $W_V$, so the EOT row's attention
# probabilities $p_{j,t}$ are fixed, and the update's effect on the EOT row's output of head $j$ is
# $B_{i,j} A_i \bar x^{(i)}_j$ with $\bar x^{(i)}_j = \sum_{t:\,\text{token}_t=\tau_i} p_{j,t}\,x_t$: the
# attention-weighted input restricted to the positions of $\tau_i$. `token_summaries` computes those
# sums; `finish_local` adds each update to the EOT row's attention output and finishes the row with
# `finish_eot` (where other last-layer updates may apply as usual). `local_trainer` is the same
# function for training (`personalize(..., local=True)` calls it), and `encode_combined` is what
# `encode_text` calls for any strategy but `sum` and for token-local updates.

# %%
#| export
def token_summaries(bb:Backbone, # the backbone
                    tokens:torch.Tensor, # token ids [n, context_length]
                    ids:list[int], # the token ids whose positions are summed
                   )->torch.Tensor:
    "x̄ of each token [n, len(ids), H, d]: Σ over the positions holding it of the EOT row's attention p_{j,t} times LN₁(h_t), per head j."
    t, p, x = _eot_attention(bb, tokens)
    M = torch.stack([t == i for i in ids], 1).to(x)  # [n, m, T]
    return torch.einsum('nht,nmt,ntd->nmhd', p, M, x)

def _eot_attention(bb:Backbone, tokens:torch.Tensor)->tuple:
    "The truncated tokens, the EOT row's attention [n, H, T] and LN₁ of the last layer's input [n, T, d], memoised per backbone."
    c = bb.cache.setdefault('eot_attention', {})
    if c.get('version') != (ver := _text_version(bb)): c.clear(); c.update(version=ver, batches=OrderedDict())
    key = (tuple(tokens.shape), tokens.cpu().numpy().tobytes())
    if key not in c['batches']: c['batches'][key] = _attention_of_eot(bb, tokens)
    c['batches'].move_to_end(key)
    while len(c['batches']) > 8: c['batches'].popitem(last=False)
    return c['batches'][key]

@torch.no_grad()
def _attention_of_eot(bb:Backbone, tokens:torch.Tensor)->tuple:
    "`_eot_attention`, computed."
    m = bb.model; blk = m.transformer.resblocks[-1]; at = blk.attn
    tokens = _truncate(tokens); eot = eot_positions(tokens)
    x = blk.ln_1(_prefix(bb, tokens, bb.n_layers-1)); n, T, d = x.shape; H = at.num_heads; dh = d // H
    W, b, ar = at.in_proj_weight, at.in_proj_bias, torch.arange(n, device=x.device)
    q = _lin(x[ar, eot], W, b, slice(0, d)).view(n, H, dh)
    k = _lin(x, W, b, slice(d, 2*d)).view(n, T, H, dh)
    p = (torch.einsum('nhc,nthc->nht', q, k) / math.sqrt(dh) + m.attn_mask[eot, :T][:, None]).softmax(-1)
    return tokens, p, x

def finish_local(bb:Backbone, # the backbone
                 S:dict, # `eot_summaries` of the texts
                 Xt:torch.Tensor, # `token_summaries` of the texts [n, m, H, d]
                 local:list, # (A, B) of the m token-local V updates, the i-th reading `Xt[:, i]`
                 factors:list=(), # other (param, layer, A, B), applied as `finish_eot` applies them
                )->torch.Tensor:
    "Unnormalised text embeddings with token-local V updates (and other last-layer updates) applied."
    H = bb.model.transformer.resblocks[-1].attn.num_heads
    o = S['o0']
    for i, (A, B) in enumerate(local): o = o + torch.einsum('nhr,hcr->nhc', Xt[:, i] @ A.T, B.view(H, -1, B.shape[-1])).flatten(1)
    return finish_eot(bb, dict(S, o0=o), list(factors))

def _check_local(bb:Backbone, param, layers:list):
    "ValueError unless a token-local update of `param` in `layers` is one this module computes: V of the last layer."
    if param != 'v' or layers != [bb.n_layers-1]: raise ValueError(
        f"a token-local update changes V of the last layer (param 'v', layer {bb.n_layers-1}), not {param!r} in layers {layers}")

def local_trainer(bb:Backbone, tokens:torch.Tensor, token:str, param, layers:list, exact:bool=True):
    "f(A, B) -> unnormalised embeddings of the training `tokens` with a token-local update (the path `personalize(..., local=True)` trains)."
    _check_local(bb, param, layers)
    if not exact: raise ValueError("a token-local update trains on the exact function only (exact=True)")
    S, Xt = eot_summaries(bb, tokens), token_summaries(bb, tokens, [token_id(bb, token)])
    return lambda A, B: finish_local(bb, S, Xt, [(A[0], B[0])])

def encode_combined(bb:Backbone, texts:list[str], updates:list, how:str='sum', batch_size:int=256)->torch.Tensor:
    "`encode_text` with the updates combined by `how`; token-local ones (and all of them for 'token') act through their tokens' positions."
    ups = combine_updates(updates, how)
    is_local = lambda u: how == 'token' or u.meta.get('local', False)
    loc, rest = [u for u in ups if is_local(u)], [u for u in ups if not is_local(u)]
    if not loc: return encode_text(bb, texts, rest, batch_size)
    for u in loc: _check_local(bb, u.param, u.layers)
    ids, factors = [token_id(bb, u.token) for u in loc], [f for u in rest for f in u.factors(bb.device)]
    if not _fast_ok(bb, factors): raise ValueError("token-local updates combine with updates of the last layer's v, o, mlp1, mlp2 or proj only")
    AB, out = [(u.A.to(bb.device), u.B.to(bb.device)) for u in loc], [torch.zeros(0, bb.embed_dim)]
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            tok = tokenize(bb, texts[s:s+batch_size])
            out.append(F.normalize(finish_local(bb, _memo_summaries(bb, tok), token_summaries(bb, tok, ids), AB, factors), dim=-1).float().cpu())
    return torch.cat(out)


# %% [markdown]
# The reference is the explicit route: the whole last layer on every position, its value vectors
# computed from `in_proj_weight` with each update added at its token's positions, then attention,
# output projection, MLP, final norm, EOT pooling and projection. With the update added at *every*
# position it must be open_clip's own `encode_text` with the update merged into the weights, which
# checks the reference itself.

# %%
#| export
@torch.no_grad()
def local_reference(bb:Backbone, texts:list[str], updates:list, everywhere:bool=False)->torch.Tensor:
    "Embeddings by the explicit route: the whole last layer on every position, each update added to the value vectors of its token's positions (of all, if `everywhere`)."
    m = bb.model; blk = m.transformer.resblocks[-1]; at = blk.attn
    tok = _truncate(tokenize(bb, texts)); n, T = tok.shape; d, H = bb.width, at.num_heads
    h = _prefix(bb, tok, bb.n_layers-1); x = blk.ln_1(h)
    q, k, v = F.linear(x, at.in_proj_weight, at.in_proj_bias).chunk(3, -1)
    for u in updates:
        mask = torch.ones_like(tok) if everywhere else tok == token_id(bb, u.token)
        v = v + mask[..., None].to(x) * ((x @ u.A.T) @ u.B.T)
    heads = lambda t: t.view(n, T, H, d // H).transpose(1, 2)
    a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=m.attn_mask[:T, :T]).transpose(1, 2).reshape(n, T, d)
    y = h + blk.ls_1(at.out_proj(a))
    y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
    return F.normalize(_project(m, m.ln_final(y)[torch.arange(n), eot_positions(tok)]), dim=-1)


# %%
ta, tb = 'sks', 'rcn'
texts = [f'A photo of {ta}.', f'{ta} next to {tb} on the beach', 'a red cup on the grass', f'{tb} and {tb} at night', f'{tb} on the snow']
ua, ub = random_update(vit, 'v', scale=2.0, seed=1, token=ta), random_update(vit, 'v', scale=2.0, seed=2, token=tb)
with merge_updates(vit, [ua, ub]), torch.no_grad(): merged = vit.model.encode_text(tokenize(vit, texts), normalize=True)
base = encode_text(vit, texts)
rows = [dict(case='reference, update at every position, vs open_clip with merged weights', max_abs_err=(local_reference(vit, texts, [ua, ub], everywhere=True) - merged).abs().max().item(),
             max_abs_change=(merged - base).abs().max().item())]
mlp = random_update(vit, 'mlp1', scale=0.5, seed=3)
for name, ups, extra in [('one token-local update', [ua], []), ('two token-local updates', [ua, ub], []),
                         ('two token-local updates + a plain mlp1 update', [ua, ub], [mlp])]:
    fast = encode_combined(vit, texts, [replace(u, meta=dict(local=True)) for u in ups] + extra)
    with merge_updates(vit, extra): ref = local_reference(vit, texts, ups)  # the plain update by merging it
    rows.append(dict(case=name, max_abs_err=(fast - ref).abs().max().item(), max_abs_change=(fast - base).abs().max().item()))
exact = pd.DataFrame(rows)
exact

# %%
assert (exact.max_abs_err < 1e-5).all() and (exact.max_abs_change > 1e-2).all()
both = encode_text(vit, texts, [ua, ub], combine='token')
test_close(both[2], base[2], eps=1e-6)  # a text without either token is unchanged
test_close(encode_text(vit, texts[4:], [ua], combine='token'), base[4:], eps=1e-6)  # `sks`'s update does not touch a text with `rcn` only
test_eq(encode_text(vit, texts[4:], [ua, ub], combine='token'), encode_text(vit, texts[4:], [ub], combine='token'))  # bit for bit

# %% [markdown]
# Training goes through the same path (`personalize(..., local=True)`), and learns what a naive loop
# through the explicit reference learns:

# %%
from types import SimpleNamespace
from polar_nb.polar import _init_factors, _frozen, training_prompts
feats = F.normalize(torch.randn(5, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
def naive_local(iters=20, lr=1e-3, lam=0.35, token='rcn'):
    "Token-local POLAR through `local_reference` (a reference, slow)."
    A, B = (torch.nn.Parameter(t[0]) for t in _init_factors(512, 512, 1, 1, torch.Generator().manual_seed(0)))
    opt, prompts = torch.optim.Adam([A, B], lr=lr), training_prompts(5, token)
    with _frozen(vit.model):
        for _ in range(iters):
            E = local_reference.__wrapped__(vit, prompts, [SimpleNamespace(A=F.normalize(A, dim=-1), B=B, token=token)])
            loss = ((E - feats)**2).mean() + lam * (B**2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
    return F.normalize(A.detach(), dim=-1), B.detach()
nA, nB = naive_local()
lu = personalize(vit, feats, token='rcn', local=True, iters=20, lr=1e-3, lam=0.35)
test_close(lu.B, nB, eps=1e-5); test_close(lu.A, nA, eps=1e-5); test_eq(lu.meta['local'], True)
test_fail(lambda: personalize(vit, feats, token='rcn', local=True, iters=1, param='mlp1'), contains='V of the last layer')
test_fail(lambda: personalize(vit, feats, token='rcn', local=True, iters=1, exact=False), contains='exact function')
(lu.B - nB).abs().max().item()

# %% [markdown]
# A token-local update records it (`meta['local']`), and `encode_text` applies it token-locally
# under any strategy: it is never silently applied as a plain update. Its file keeps the flag.

# %%
import tempfile
test_eq(encode_text(vit, texts, lu), encode_text(vit, texts, lu, combine='token'))
with tempfile.TemporaryDirectory() as d: test_eq(LowRankUpdate.load(lu.save(Path(d)/'u.safetensors'), vit).meta['local'], True)
test_fail(lambda: encode_text(vit, texts, [lu, random_update(vit, 'q')]), contains='last layer')
del vit


# %% [markdown]
# ## `Polar(combine=...)`
#
# Every strategy is a `Polar` setting. `sum`, `mean`, `norm` and `orthogonal` share the same trained
# updates (cached once, every concept on `sks`) and differ only in how a query's concepts' updates are
# combined. `token` fits its own: concept $i$ gets the $i$-th token of `concept_tokens`, is trained with
# prompts holding it, token-locally.

# %%
#| export
def fit_token(m:Polar, bb:Backbone, cs, cache=True, progress:bool=False)->Polar:
    "`Polar(combine='token').fit`: each concept its own rare token, its update trained token-locally (cached as POLAR's are)."
    root, hp = cache_root(cache), dict(m.resolved(bb, cs.benchmark), local=True)
    weights = fingerprint(bb.model) if root else None
    m.updates, m.counts = {}, dict(trained=0, loaded=0)
    for c, t in tqdm(list(zip(cs.ids, concept_tokens(bb, len(cs.ids)))), desc=f'{m.name} ({bb.name})', disable=not progress):
        m.words[c] = w = concept_word(m.word, cs, c, t)
        prompts = concept_prompts(w, m.templates)
        f = root and concept_file(root, 'polar', bb, weights, c, cs.hashes[c], dict(hp, token=t, prompts=prompts))
        if f and f.is_file() and (u := _cached(lambda: LowRankUpdate.load(f, bb), f, 'update')) is not None:
            m.updates[c] = u; m.counts['loaded'] += 1; continue
        m.updates[c] = u = personalize(bb, cs.feats[c], prompts, token=t, **hp)
        if f: u.save(f)
        m.counts['trained'] += 1
    return m


# %% [markdown]
# ## The world
#
# The small ConCon-Chi-format world with forty two-concept queries instead of eight
# (`profile=dict(multi=40)`: 20 concepts, 440 pool images, 80 single- and 40 two-concept context
# queries, 20 concept-only ones), the shipped `world-tiny` and its defaults.

# %%
import time
import matplotlib.pyplot as plt
from polar_nb.world import make_benchmark, shared_world
from polar_nb.data import ConConChi
from polar_nb.baselines import TextOnly, AvgImText, support_mean
from polar_nb.experiments import main_results
tmp = Path(tempfile.mkdtemp()); cache = tmp/'cache'
bb = load_backbone('world-tiny', device='cpu')
bench = ConConChi(shared_world('conconchi', seed=0, profile=dict(multi=40)))
bench.summary()

# %%
cs = concept_set(bench, bb, cache)
tok = Polar(combine='token').fit(bb, cs, cache)
test_eq(tok.counts, dict(trained=20, loaded=0)); test_eq(len(set(tok.words.values())), 20)
assert all(u.meta['local'] and u.token == tok.words[c] for c, u in tok.updates.items())
q2 = next(q for q in bench.queries('context') if len(set(q.concepts)) == 2)
test_close(tok.embed(bb, [q2], cs)[0], encode_text(bb, fill(q2.text, [tok.words[c] for c in q2.concepts]), [tok.updates[c] for c in q2.concepts], combine='token')[0], eps=1e-6)
test_eq(Polar(combine='token').fit(bb, cs, cache).counts, dict(trained=0, loaded=20))
pols = {how: Polar(combine=how) for how in ('sum', 'mean', 'norm', 'orthogonal')}
for p in pols.values(): p.fit(bb, cs, cache)
pols['token'] = tok
test_close(pols['norm'].embed(bb, [q2], cs)[0], encode_text(bb, fill(q2.text, ['sks', 'sks']), [pols['sum'].updates[c] for c in q2.concepts], combine='norm')[0], eps=1e-6)
q2.text, [tok.words[c] for c in q2.concepts], {h: p.name for h, p in pols.items()}

# %% [markdown]
# ## Two-concept queries
#
# Three runs (POLAR's initialisation seeds 0–2; ConCon-Chi uses all five support images, so only the
# initialisation differs), mean ± standard error over runs, every split; AvgIm+Text and text only
# (class name) beside the five rules.

# %%
methods = [TextOnly('coarse'), AvgImText()] + [Polar(combine=h) for h in ('sum', 'mean', 'norm', 'orthogonal', 'token')]
t0 = time.perf_counter()
res = main_results(bench, bb, methods, seeds=(0, 1, 2), cache=cache)
print(f'{time.perf_counter() - t0:.0f} s')
def table(res, splits=('context-multi', 'context-single', 'concept'), metrics=('mrr', 'map', 'r@1')):
    "mean ± s.e. per method (rows) and split/metric (columns)."
    r = res[res.split.isin(splits) & res.metric.isin(metrics)].assign(v=lambda d: d['mean'].map('{:.3f}'.format) + ' ± ' + d['se'].map('{:.3f}'.format))
    return r.pivot(index='method', columns=['split', 'metric'], values='v').reindex(columns=pd.MultiIndex.from_product([splits, metrics])).reindex([m.name for m in methods])
table(res)

# %%
mrr = res.query("metric == 'mrr'").pivot(index='method', columns='split', values='mean')
test_eq(set(mrr.index), {m.name for m in methods}); assert mrr.notna().all().all()
two = mrr['context-multi']
best_new = two[[f'POLAR ({h})' for h in ('norm', 'orthogonal', 'token')] + ['POLAR (mean of updates)']].idxmax()
print(f"two-concept context mRR: sum {two['POLAR']:.3f}, AvgIm+Text {two['AvgIm+Text']:.3f}, best other rule {best_new} {two[best_new]:.3f}")

# %% [markdown]
# ## What the updates share
#
# The prompt "A photo of sks." before any update, each concept's update's shift of it, and where
# two-concept prompts ("A photo of sks next to sks.", with the 40 pairs of the queries) land under each
# rule: cosine to each of the pair's support means, and the length of the shift against one update's.

# %%
e0 = encode_text(bb, ['A photo of sks.'])[0]
ups = pols['sum'].updates
E1 = torch.stack([encode_text(bb, ['A photo of sks.'], ups[c])[0] for c in cs.ids])
means = torch.stack([support_mean(cs, [c]) for c in cs.ids]); mean_of = dict(zip(cs.ids, means))
shifts, off = E1 - e0, ~torch.eye(len(cs.ids), dtype=torch.bool)
pairs = sorted({tuple(q.concepts) for q in bench.queries('context') if len(set(q.concepts)) == 2})
Bs = F.normalize(torch.stack([ups[c].B[:, 0] for c in cs.ids]), dim=-1)
rows = [dict(measure='prompt before any update: cosine to the support means', value=(means @ e0).mean().item()),
        dict(measure="one update's shift of the prompt: length (mean)", value=shifts.norm(dim=-1).mean().item()),
        dict(measure='shifts: mean pairwise cosine', value=(F.normalize(shifts, dim=-1) @ F.normalize(shifts, dim=-1).T)[off].mean().item()),
        dict(measure="updates' B (output directions): mean pairwise |cosine|", value=(Bs @ Bs.T).abs()[off].mean().item()),
        dict(measure='one update: cosine to its own support mean', value=(E1 * means).sum(-1).mean().item())]
for how in ('sum', 'mean', 'norm', 'orthogonal', 'token'):
    p = pols[how]
    E2 = torch.stack([encode_text(bb, [fill('A photo of * next to *.', [p.words[a], p.words[b]])], p.query_updates((a, b)))[0] for a, b in pairs])
    e00 = encode_text(bb, [fill('A photo of * next to *.', [p.words[a], p.words[b]]) for a, b in pairs])
    rows += [dict(measure=f'two concepts, {how}: cosine to each support mean', value=torch.stack([E2[i] @ mean_of[c] for i, pr in enumerate(pairs) for c in pr]).mean().item()),
             dict(measure=f'two concepts, {how}: shift length / one update\'s', value=((E2 - e00).norm(dim=-1).mean() / shifts.norm(dim=-1).mean()).item())]
rows.append(dict(measure="AvgIm+Text's image side (mean of both support means): cosine to each", value=torch.stack([support_mean(cs, p) @ mean_of[c] for p in pairs for c in p]).mean().item()))
share = pd.DataFrame(rows)
assert share.value.abs().le(3).all()
share.round(3)


# %% [markdown]
# One update lands close to its own concept's photos (cosine 0.92 to its support mean) from a prompt
# far from all of them (0.24). The twenty shifts share a large part of their direction (mean
# pairwise cosine 0.57; the updates' output directions $B$ 0.48 in absolute value), so two summed
# updates move a two-concept prompt 1.21 times as far as one update moves "A photo of sks.": the
# shared part is counted twice. Averaging moves it 0.83 times as far and the norm-matched sum 0.93
# times. Orthogonalising $B$ removes little (1.09): the shared part of the shifts is not only in $B$,
# it is also in what $A$ reads. The cosines to each concept's support mean hardly tell the rules
# apart (0.65–0.67, against 0.83 for AvgIm+Text's image side), although their rankings differ a lot;
# where the difference lies within the ranking (the place, or the look-alikes) is not measured here.
# Token-local updates move a two-concept prompt least (0.76) and land farthest from the concepts
# (0.51): their effect passes through the EOT row's attention to the token's position alone.

# %% [markdown]
# ## Interference: many concepts present at once
#
# A user with many learned concepts: each concept's own single-concept queries (its context queries
# and its concept-only query) are scored with its update and those of $n-1$ other concepts present
# at once (drawn at random per concept; $n = 20$ is all of them), combined by each rule, and so is
# VLM-caption recall@10 over the pool. With `sum`, `mean`, `norm` and `orthogonal` every concept is
# `sks`, so the query cannot say which concept it means; with `token` it names its own token and the
# others' updates act only where their tokens are.

# %%
#| export
def interference(m:Polar, # a Polar, fitted on `cs`
                 bench, bb:Backbone, cs, # the benchmark, the backbone and its concept set
                 ns=(1, 5, 20), # how many concepts' updates are present (each concept's own among them)
                 seed:int=0, # seed of the draw of the others
                 k:int=10, # the cut-off of caption recall
                 cache=True)->pd.DataFrame:
    "Per concept and n: its single-concept queries' mean metrics and VLM-caption recall@k with n concepts' updates present at once."
    pool = image_features(bb, bench.pool, cache=cache, progress=False)
    caps, rows, memo = bench.vlm_captions(bench.root/'vlm_captions.json'), [], {}
    qs = {c: [q for kind in ('context', 'concept') for q in bench.queries(kind) if set(q.concepts) == {c}] for c in cs.ids}
    for n in ns:
        for i, c in enumerate(cs.ids):
            rest = [x for x in cs.ids if x != c]
            present = [c] + [rest[j] for j in np.random.default_rng([seed, n, i]).permutation(len(rest))[:n-1]]
            ups = [u for x in present for u in m.text_updates(x)]
            S = encode_text(bb, [fill(q.text, [m.words[c]]) for q in qs[c]], ups, combine=m.combine) @ pool.T
            if (key := frozenset(present)) not in memo: memo[key] = _caption_recall(bb, caps, pool, ups, m.combine, k)
            t = metrics_table(S, qs[c])
            rows.append(dict(method=m.name, n_present=len(present), concept=c, map=t['map'].mean(), mrr=t['mrr'].mean(), caption_recall=memo[key]))
    return pd.DataFrame(rows)

def _caption_recall(bb, caps, pool, ups, how, k)->float:
    "VLM-caption recall@k with `ups` combined by `how` (tied scores count against)."
    S = encode_text(bb, caps, ups, combine=how) @ pool.T
    return float(((S >= S.diagonal()[:, None]).sum(1) <= k).float().mean())


# %%
t0 = time.perf_counter()
inter = pd.concat([interference(pols[h], bench, bb, cs, cache=cache) for h in tqdm(pols, desc='interference')], ignore_index=True)
print(f'{time.perf_counter() - t0:.0f} s')
alone = inter[inter.n_present == 1].set_index(['method', 'concept'])['map']
inter['map_drop'] = alone.loc[list(zip(inter.method, inter.concept))].values - inter['map']
summ = inter.groupby(['method', 'n_present'], sort=False).agg(map=('map', 'mean'), mrr=('mrr', 'mean'), worst_map_drop=('map_drop', 'max'),
                                                              caption_recall=('caption_recall', 'mean')).reset_index()
summ.pivot(index='method', columns='n_present').round(3)

# %%
test_eq(len(inter), 5 * 3 * 20)
tk = inter[inter.method == 'POLAR (token)']
test_close(tk.groupby('concept')['map'].agg(np.ptp).max(), 0., eps=1e-9)  # token-local: other concepts' updates change nothing
test_close(tk.caption_recall.max() - tk.caption_recall.min(), 0., eps=1e-9)
fig, axs = plt.subplots(1, 2, figsize=(10, 3.5))
for (name, g), mk in zip(summ.groupby('method', sort=False), 'osD^v'):
    axs[0].plot(g.n_present, g['map'], marker=mk, label=name); axs[1].plot(g.n_present, g.caption_recall, marker=mk, label=name)
axs[0].set(xlabel='concepts whose updates are present', ylabel="a concept's single-concept mAP", xscale='log', xticks=[1, 5, 20], xticklabels=[1, 5, 20])
axs[1].set(xlabel='concepts whose updates are present', ylabel='VLM-caption recall@10', xscale='log', xticks=[1, 5, 20], xticklabels=[1, 5, 20])
axs[0].legend(fontsize=8); fig.suptitle('Interference on the small ConCon-Chi-format world (seed 0)'); fig.tight_layout()

# %% [markdown]
# With the concepts sharing `sks`, a user's many updates present at once are ruinous: under `sum`
# a concept's single-concept mAP falls from 0.546 alone to 0.074 with five concepts present and
# 0.038 with all twenty, and caption recall@10 from 0.794 to 0.289; `mean` and `norm` keep caption
# recall (about 0.80) but not the concept (0.24 and 0.22 with twenty): a query holding `sks` can no
# longer say which concept it means. Token-local updates keep every concept's results and every
# caption bit for bit, whatever else is present (the worst drop is exactly 0), but at a lower
# level: 0.410 mAP alone against 0.546 for the plain update, because their single-concept context
# queries are weaker (context mRR 0.606 against 0.844 in the table above; concept-only ones are on
# par, 0.397 against 0.400 mAP).

# %% [markdown]
# ## Other worlds
#
# The same comparison on five more worlds (seeds 1–5 of the photos, places and queries, each with 40
# two-concept queries), three runs each, and the interference of the three rules that keep most with
# all 20 concepts present. Slow (`slow`, about five minutes on two CPU cores): the stored output is
# from the run that built this book.

# %%
#| slow
# NBVAL_SKIP
rows, worst = [], []
for ws in tqdm(range(1, 6), desc='worlds'):
    b = ConConChi(make_benchmark(tmp/f'cc-{ws}', 'conconchi', seed=ws, profile=dict(multi=40)))
    r = main_results(b, bb, methods, seeds=(0, 1, 2), cache=cache)
    rows.append(r.query("metric == 'mrr'").assign(world=ws))
    c = concept_set(b, bb, cache)
    for h in ('mean', 'norm', 'token'):
        t = interference(Polar(combine=h).fit(bb, c, cache), b, bb, c, ns=(1, 20), cache=cache)
        d = t.pivot(index='concept', columns='n_present', values='map')
        worst.append(dict(world=ws, method=t.method.iloc[0], map_alone=d[1].mean(), map_with_20=d[20].mean(), worst_drop=(d[1] - d[20]).max()))
worlds = pd.concat(rows, ignore_index=True)
per_world = worlds.pivot_table(index='world', columns=['split', 'method'], values='mean')['context-multi'][[m.name for m in methods]]
overall = per_world.agg(['mean', 'sem']).T.rename(columns={'sem': 'se over worlds'})
print('two-concept context mRR per world (mean of three runs):'); display(per_world.round(3))
overall.round(3)

# %%
#| slow
# NBVAL_SKIP
beats = per_world.drop(columns=['text (coarse)', 'AvgIm+Text', 'POLAR']).apply(lambda col: (col > per_world['POLAR']) & (col > per_world['AvgIm+Text']))
print('worlds (of 5) where a rule beats both sum and AvgIm+Text on two-concept mRR:', beats.sum().to_dict())
pd.DataFrame(worst).pivot(index='world', columns='method').round(3)

# %% [markdown]
# ## The paper's statement beside ours
#
# The paper prints no comparison of rules; its statement and what the world measures:
#
# | | the paper (ViT-L/14, real ConCon-Chi; its words) | ours (world-tiny, ConCon-Chi-format worlds; measured above) |
# |---|---|---|
# | rule | "parameter addition is effective" (abstract); multi-concept queries with the summed updates, all on `sks` | summed updates lose to AvgIm+Text on two-concept mRR on four of the six worlds (0.576 ± 0.027 against 0.627 ± 0.037 on worlds 1–5; 0.663 against 0.604 on world 0) |
# | a better rule | — | the norm-matched sum: 0.717 ± 0.025 on worlds 1–5, ahead of sum and AvgIm+Text on all five, and 0.807 on world 0; the mean of updates 0.701 ± 0.019 (ahead on all five) |
# | many concepts at once | not measured | with shared `sks` no rule keeps a concept (mAP 0.55 → 0.03–0.24 with 20 present); token-local updates keep each exactly, at a lower level (0.41) |
#
# ## What we found
#
# - **Which rule for a query naming several concepts:** scale the sum. Adding the updates, the
#   paper's rule, counts twice the long move every update makes from the prompt towards the photos
#   (their shifts share most of their direction), and two-concept queries then lose to the plain
#   AvgIm+Text baseline. Scaling the summed $\Delta W$ to the size of one update (`norm`) or averaging
#   (`mean`) wins on every world measured here: on worlds 1–5 `norm` reaches 0.717 ± 0.025 context mRR
#   on two-concept queries against 0.576 ± 0.027 for `sum` and 0.627 ± 0.037 for AvgIm+Text (s.e. over
#   worlds, three runs each), `mean` 0.701 ± 0.019. Single-concept queries are unchanged by every rule
#   but `token`. Orthogonalising the output directions helps less (0.638): the shared move is
#   presumably not only in $B$.
# - **Which rule for a user with many concepts:** token-local updates, each concept on its own rare
#   token. Every rule that shares `sks` collapses once several concepts are present (a query can no
#   longer name its concept; summing twenty updates also costs caption recall@10 0.794 → 0.289);
#   token-local updates leave every other text exactly as it was, so with all twenty present every
#   concept's mAP is what it is alone (worst drop 0.000 on all six worlds) and caption recall is
#   untouched. Their price is the context queries: an update that acts only through its token's
#   position reaches the EOT row through the attention to that position, and moves a context query
#   less than the training prompt; single-concept context mRR falls from 0.844 to 0.606 and
#   two-concept mRR is the lowest of all rules (0.434 ± 0.041 on worlds 1–5).
# - Where the world disagrees with the paper: addition is not effective here, and whether the
#   paper's ViT-L/14 shares the overshoot we cannot measure without its weights. The world's
#   updates are trained with λ = 0 (world-tiny's shipped defaults), so nothing keeps them small; with
#   the paper's λ = 0.35 the shared move may be shorter. No rule here both names its concept among
#   many and composes as well as a scaled sum; a token-local update trained on context prompts, or
#   the scaled sum applied over token-local updates, are the next things to measure.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
