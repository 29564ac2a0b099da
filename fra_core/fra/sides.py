"""One side (query or key) of a head's score, written as a sum of nodes in the head's d_head space.

For the query side of head h at layer L (the key side is the same with W_K, b_K):

    q_i = R_i( ln1(x_i) W_Q[h] + b_Q[h] ),   ln1(x) = (P x / σ_i) ⊙ w + b

P = mean-centring (LN, LNPre only), σ_i = `blocks.L.ln1.hook_scale` (frozen), w, b = ln1.w / ln1.b when
LN is not folded (absent for LNPre/RMSPre; RMS has no b), R_i = the head's rotary at position i (RoPE
models only; it is linear, so it distributes over the sum). Writing the dictionary input as
x_i = Σ_f a_if d_f + b_dec + err_i (+ more nodes for hook_z dictionaries) and pushing every piece through
the linear map v ↦ R_i((P v / σ_i) ⊙ w) W_Q[h] gives one d_head vector per feature and per named node;
the constant pieces b W_Q[h] ("ln1.b") and b_Q[h] ("bias") are nodes too. Their sum is q_i exactly.

Dictionary kinds (by `sae.cfg.metadata.hook_name`):
- `blocks.L.ln1.hook_normalized`: x = P x_resid / σ already (TL hooks it before ⊙ w + b): no 1/σ, no P.
- `blocks.L.hook_resid_pre`: P and 1/σ applied (σ frozen at its actual value).
- a list of upstream dictionaries of layers l < L (`upstream.py`): `blocks.l.attn.hook_z` SAEs (kind
  "hook_z" when all are), `blocks.l.hook_attn_out` / `blocks.l.hook_mlp_out` SAEs and transcoders writing
  `blocks.l.hook_mlp_out` (kind "upstream"): resid_pre = embed + pos_embed + Σ_l attn_out_l + Σ_l mlp_out_l
  with each output that has a dictionary opened into features and named nodes; feature f of a hook_z SAE of
  layer l writes W_dec[f].view(n_heads, d_head) · W_O[l], any other feature writes its W_dec[f] (d_model).
A single SAE whose input is normalised per token (`layer_norm`, `constant_norm_rescale`) has its frozen
scale c_i in its coefficients and b_dec node, and its mean as an "ln_mean" node (`upstream.token_scale`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from fra_core.fra import arch, upstream
from fra_core.fra.options import FRAInputError
from fra_core.fra.rowcache import projected_rows

NORMALIZED, RESID, HOOK_Z, UPSTREAM = "normalized", "resid_pre", "hook_z", "upstream"
LISTS = (HOOK_Z, UPSTREAM)  # kinds made of upstream dictionaries


@dataclasses.dataclass
class Dictionary:
    """A parsed dictionary side: kind, the SAEs, their source layers and (input) hook names; `kinds` the
    source kind of each SAE of an upstream list (`upstream.HOOK_Z`, ATTN_OUT, MLP_OUT, TRANSCODER)."""

    kind: str
    saes: list
    layers: list[int]
    hook_names: list[str]
    kinds: list[str] | None = None


def sae_decoder(sae) -> torch.Tensor:
    """Effective decoder rows [d_sae, d_in] (TopK SAEs with rescale_acts_by_decoder_norm divide by ‖W_dec‖)."""
    W = sae.W_dec.detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        W = W / W.norm(dim=-1, keepdim=True)
    return W


def _check_sae(sae, hook: str, d_expected: int) -> None:
    if upstream.is_transcoder(sae):
        raise FRAInputError(f"a transcoder (input {hook}) is an upstream dictionary of the layers after "
                            f"its MLP: pass it in a list of upstream dictionaries")
    upstream.check_norm(sae, hook, per_token_ok=True)
    if sae.cfg.d_in != d_expected:
        raise FRAInputError(f"SAE on {hook} has d_in={sae.cfg.d_in} but the hook has {d_expected} dims")


def parse_dictionary(model, layer: int, dictionary) -> Dictionary:
    """Classify an SAE (or a list of upstream dictionaries, `upstream.parse_sources`) as a side of layer `layer`."""
    cfg = model.cfg
    saes = list(dictionary) if isinstance(dictionary, (list, tuple)) else [dictionary]
    if not saes:
        raise FRAInputError("empty dictionary list")
    hooks = [getattr(s.cfg.metadata, "hook_name", None) for s in saes]
    # blocks.{L-1}.hook_resid_post is the same tensor as blocks.L.hook_resid_pre (Gemma Scope's residual SAEs)
    resid = (f"blocks.{layer}.hook_resid_pre",) + ((f"blocks.{layer - 1}.hook_resid_post",) if layer > 0 else ())
    if len(saes) == 1 and hooks[0] in (f"blocks.{layer}.ln1.hook_normalized",) + resid:
        kind = NORMALIZED if hooks[0].endswith("hook_normalized") else RESID
        if kind == NORMALIZED and arch.input_norm(model) is None:
            raise FRAInputError(
                f"model has no ln1 on the attention input (normalization_type={cfg.normalization_type!r}, "
                f"original_architecture={cfg.original_architecture!r}): use a hook_resid_pre SAE")
        _check_sae(saes[0], hooks[0], cfg.d_model)
        return Dictionary(kind, saes, [layer], hooks)
    kinds, layers, hooks = upstream.parse_sources(model, layer, saes)
    for sae, kind in zip(saes, kinds):
        if kind == upstream.HOOK_Z and getattr(sae, "hook_z_reshaping_mode", False) and getattr(sae, "d_head", None) is None:
            sae.d_head = cfg.d_head  # SAELens only learns d_head from its first 4-D input
    kind = HOOK_Z if all(k == upstream.HOOK_Z for k in kinds) else UPSTREAM
    return Dictionary(kind, saes, layers, hooks, kinds)


def cache_hooks(model, layer: int, dicts: list[Dictionary]) -> set[str]:
    """Hook names the sides need from a forward pass."""
    names = {f"blocks.{layer}.attn.hook_attn_scores", f"blocks.{layer}.attn.hook_pattern"}
    if arch.input_norm(model) is not None:
        names.add(f"blocks.{layer}.ln1.hook_scale")
    names.update(arch.qk_norm_hooks(model, layer))
    names.update(arch.clip_hooks(model, layer))
    if model.cfg.positional_embedding_type == "shortformer":
        names.add("hook_pos_embed")  # added to the q/k input only (not to the residual stream)
    for d in dicts:
        if d.kind in LISTS:
            names.update(arch.post_norm_hooks(model, d.layers) if d.kind == HOOK_Z else [])
            names.update(upstream.cache_names(model, layer, d.hook_names))
        else:
            names.update(d.hook_names)
    return names


@dataclasses.dataclass
class Encoded:
    """One SAE's activations kept for FRA; all [batch, pos, ...]."""

    ids: torch.Tensor  # [batch, pos, K] local feature ids (top-|act| candidates)
    acts: torch.Tensor  # [batch, pos, K] their activations (0 where fewer are active)
    recon: torch.Tensor  # [batch, pos, d_in] Σ_f a_f d_f over ALL active features (no b_dec)
    error: torch.Tensor  # [batch, pos, d_in] x − recon − b_dec
    l0: torch.Tensor  # [batch, pos] number of active features


def encode(sae, x: torch.Tensor, k: int | None) -> Encoded:
    """Encode x [batch, pos, d_in] with the SAE's own `encode` (any architecture) and keep top-k.

    k None keeps every active feature: K = the batch's largest L0 (≥ 1), so `acts` holds all of them.
    """
    with torch.no_grad():
        d_head = getattr(sae, "d_head", None) if getattr(sae, "hook_z_reshaping_mode", False) else None
        sae_in = x.unflatten(-1, (-1, d_head)) if d_head else x
        acts = sae.encode(sae_in.to(sae.W_dec.dtype)).to(x.dtype)
        flat = acts.reshape(-1, acts.shape[-1])
        nz = flat.to_sparse()  # the active features only: everything below costs ∝ nnz, not d_sae
        l0 = torch.bincount(nz.indices()[0], minlength=flat.shape[0]).view(acts.shape[:-1])
        if k is None:
            k = max(1, int(l0.max()) if l0.numel() else 1)
        top = acts.abs().topk(min(k, acts.shape[-1]), dim=-1)
        kept = acts.gather(-1, top.indices)
        # Σ_f a_f d_f with a sparse matmul: cost ∝ nnz · d_in, not d_sae · d_in
        D = sae_decoder(sae).to(x.dtype)
        recon = torch.sparse.mm(nz, D).reshape(*x.shape[:-1], D.shape[1])
        error = x - recon - sae.b_dec.detach().to(x.dtype)
    return Encoded(top.indices, kept, recon, error, l0)


@dataclasses.dataclass
class Side:
    """Query or key side of the selected heads, for a batch.

    ids:    [batch, pos, K] global feature ids (offsets[s] + local id); padding = offsets[-1]
    coef:   [batch, pos, K] activation × (1/σ_i where the side applies it, × 1/σ_post of the source
            layer's post-attention norms for hook_z sources); 0 on padding
    rows:   [n_rows, head_index, d_head] projected decoder rows (no σ, no rotation), shared with the
            cache of `rowcache` (read-only); the padding id's row is 0
    row_of: [batch, pos, K] index into rows
    nodes:  [batch, pos, head_index, n_nodes, d_head] named non-feature nodes, scaled and rotated
    head_scale: [batch, pos, head_index] per-position factor of q or k: 1/σ of the QK-norm (frozen) and
            Qwen-1's log-n factor on q; None when neither applies
    """

    kind: str
    source_names: list[str]
    offsets: list[int]
    ids: torch.Tensor
    coef: torch.Tensor
    rows: torch.Tensor
    row_of: torch.Tensor
    node_names: list[str]
    nodes: torch.Tensor
    max_l0: int
    k_active: int
    rotate: Callable[[torch.Tensor], torch.Tensor] | None
    head_scale: torch.Tensor | None = None

    @property
    def truncated(self) -> bool:
        """True when some position had more active features than K (the "truncation" node is non-zero)."""
        return self.max_l0 > self.k_active

    def feature_vectors(self, b: int, h: int) -> torch.Tensor:
        """[pos, K, d_head]: coef · (projected row), rotated at its position."""
        dev = self.ids.device
        return self.feature_block(torch.tensor([b], device=dev), torch.tensor([h], device=dev))[0]

    def feature_block(self, b_idx: torch.Tensor, h_idx: torch.Tensor) -> torch.Tensor:
        """[G, pos, K, d_head]: `feature_vectors(b_idx[g], h_idx[g])` for G (sample, head index) pairs."""
        v = self.coef[b_idx, :, :, None] * self.rows[self.row_of[b_idx], h_idx[:, None, None]]
        if self.head_scale is not None:  # QK-norm q̂ = q ⊙ w / σ_q (w folded into the rows), log-n
            v = v * self.head_scale[b_idx, :, h_idx][:, :, None, None]
        return self.rotate(v) if self.rotate is not None else v  # rotate takes [batch, pos, n, d_head]


def head_weights(model, layer: int, which: str, heads: list[int]):
    """W [d_model, head_index, d_head] with ln1.w folded in, ln1.b and the Q/K bias [head_index, d_head].

    With QK-norm the norm's gain w_qk [head_index, d_head] multiplies all three (q̂ = q ⊙ w_qk / σ_q).
    GQA: TL's W_K / b_K properties give each query head its group's _W_K / _b_K.
    """
    attn, ln1 = model.blocks[layer].attn, model.blocks[layer].ln1
    W = getattr(attn, f"W_{which}").detach()[heads].permute(1, 0, 2)
    bias = getattr(attn, f"b_{which}").detach()[heads]
    qkw = arch.qk_norm_weight(model, layer, which, heads)
    if qkw is not None:
        W, bias = W * qkw[None], bias * qkw
    pre_norm = arch.input_norm(model) is not None  # post-norm blocks feed resid_pre to the head: no ln1
    w = getattr(ln1, "w", None) if pre_norm else None
    b = getattr(ln1, "b", None) if pre_norm else None
    # ln1(x) W = ((P x / σ) ⊙ w) W + b W: fold w into W's rows; b W is a constant node (b comes after ⊙ w)
    b_term = torch.einsum("d,dhe->he", b.detach(), W) if isinstance(b, torch.Tensor) else None
    W = W * w.detach()[:, None, None] if isinstance(w, torch.Tensor) else W
    return W, b_term, bias


def _project(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """[..., d_in] × [d_in, head_index, d_head] → [..., head_index, d_head]."""
    return torch.einsum("...d,dhe->...he", v, M)


def side_maps(model, layer: int, dic: Dictionary, which: str, heads: list[int]):
    """Linear maps dictionary space → [head_index, d_head] (before 1/σ and rotation).

    Returns (maps per source [d_in, head_index, d_head], M_res for residual-stream vectors, the
    ln1.b node [head_index, d_head] or None, the b_Q/b_K bias [head_index, d_head]).
    """
    W, b_term, bias = head_weights(model, layer, which, heads)
    # P v · W = v · (P W): mean-centring the residual input = centring W over d_model.
    M_res = W - W.mean(0, keepdim=True) if arch.input_norm(model) in ("LN", "LNPre") else W
    if dic.kind in LISTS:
        W_O = model.W_O.detach()  # [layer, head_index, d_head, d_model]: z (head-major) → residual
        # a post-attention RMS norm of layer l multiplies the raw output by its gain (σ applied per position)
        posts = [arch.post_norm_weight(model, l) for l in dic.layers]
        # hook_z: W_O[l] then M_res; attn_out / mlp_out SAEs and transcoders write d_model rows: M_res
        kinds = dic.kinds or [upstream.HOOK_Z] * len(dic.saes)
        maps = [torch.einsum("hem,mkf->hekf", W_O[l] * (1 if w is None else w), M_res).flatten(0, 1)
                if kind == upstream.HOOK_Z else M_res for l, w, kind in zip(dic.layers, posts, kinds)]
    else:
        maps = [W if dic.kind == NORMALIZED else M_res]
    return maps, M_res, b_term, bias


def build_side(model, cache, layer: int, dic: Dictionary, which: str, heads: list[int], k: int,
               enc_cache: dict) -> Side:
    """Decompose the `which` ('Q' or 'K') input of the heads into features and named nodes."""
    cfg = model.cfg
    maps, M_res, b_term, bias = side_maps(model, layer, dic, which, heads)
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
    batch, pos = scores.shape[0], scores.shape[-1]
    if arch.input_norm(model) is not None and dic.kind != NORMALIZED:
        inv_sigma = 1.0 / cache[f"blocks.{layer}.ln1.hook_scale"]  # [batch, pos, 1]
    else:
        inv_sigma = torch.ones(batch, pos, 1, dtype=scores.dtype, device=scores.device)
    encs = [_encoded(model, cache, dic, s, k, enc_cache) for s in range(len(dic.saes))]
    offsets = [0]
    for sae in dic.saes:
        offsets.append(offsets[-1] + sae.cfg.d_sae)
    ids, acts = _select_global(encs, offsets, k)
    post = _post_scales(model, cache, dic, batch, pos, scores)
    if post is not None:  # features of source s at (b, p) carry 1/σ_post of their layer at p
        src = torch.searchsorted(torch.tensor(offsets, device=ids.device), ids, right=True).clamp(max=len(dic.saes)) - 1
        acts = acts * post[..., 0].permute(1, 2, 0).gather(-1, src.clamp(min=0))
    rows, row_of = projected_rows(model, layer, dic, which, heads, maps, ids, offsets, sae_decoder, enc_cache)
    names, vecs = _nodes(model, cache, layer, dic, encs, maps, M_res, ids, acts, offsets, post)
    nodes = torch.stack(vecs, dim=-2) * inv_sigma[..., None, None]  # [batch, pos, head, n, d_head]
    names += (["ln1.b"] if b_term is not None else []) + ["bias"]
    consts = ([b_term] if b_term is not None else []) + [bias]
    const = torch.stack(consts, dim=-2).expand(batch, pos, -1, -1, -1)  # not scaled by 1/σ
    nodes = torch.cat([nodes, const], dim=-2)
    if arch.shortformer_qk(model):  # q/k input = ln1(x) + pos_embed: pos_embed · W
        names.append("pos_embed.qk")
        nodes = torch.cat([nodes, _shortformer_node(model, cache, layer, which, heads, batch)], dim=-2)
    head_scale = arch.qk_inv_scale(model, cache, layer, which, heads, batch, pos)
    logn = arch.logn_scale(model, pos, scores.device) if which == "Q" else None
    if logn is not None:  # a per-position factor on q (after rotary in TL: it commutes with the rotation)
        one = torch.ones(batch, pos, len(heads), dtype=scores.dtype, device=scores.device)
        head_scale = (one if head_scale is None else head_scale) * logn.to(scores.dtype)[None, :, None]
    if head_scale is not None:
        nodes = nodes * head_scale[..., None, None]
    rotate = _rotator(model, layer) if cfg.positional_embedding_type == "rotary" else None
    if rotate is not None:
        nodes = rotate(nodes.flatten(2, 3)).unflatten(2, (len(heads), -1))
    max_l0 = int(sum(e.l0 for e in encs).max())  # active features per position, all sources together
    return Side(dic.kind, dic.hook_names, offsets, ids, acts * inv_sigma, rows, row_of, names, nodes,
                max_l0, k, rotate, head_scale)


def _encoded(model, cache, dic: Dictionary, s: int, k: int, enc_cache: dict):
    """Source s's activations (cached per engine call): `encode` for plain SAEs, `upstream.encode_source` for
    transcoders (input ≠ output hook) and SAEs with a per-token input normalisation."""
    sae, hook = dic.saes[s], dic.hook_names[s]
    key = (id(sae), hook)
    if key not in enc_cache:
        kind = dic.kinds[s] if dic.kinds else None
        if kind == upstream.HOOK_Z:
            enc_cache[key] = encode(sae, cache[hook].flatten(-2), k)
        elif kind == upstream.TRANSCODER:
            x_out = cache[upstream.transcoder_out_hook(sae)]
            enc_cache[key] = upstream.encode_source(sae, upstream.source_input(model, cache, hook), x_out, k,
                                                    sae_decoder)
        elif getattr(sae.cfg, "normalize_activations", "none") != "none":
            enc_cache[key] = upstream.encode_source(sae, cache[hook], cache[hook], k, sae_decoder)
        else:
            enc_cache[key] = encode(sae, cache[hook], k)
    return enc_cache[key]


def _post_scales(model, cache, dic, batch: int, pos: int, like) -> torch.Tensor | None:
    """[n_sources, batch, pos, 1] 1/σ of each hook_z source layer's post-attention norms (None: none)."""
    if dic.kind != HOOK_Z:
        return None
    invs = [arch.post_norm_inv_scale(model, cache, l) for l in dic.layers]
    if all(i is None for i in invs):
        return None
    one = torch.ones(batch, pos, 1, dtype=like.dtype, device=like.device)
    return torch.stack([one if i is None else i for i in invs])


def _shortformer_node(model, cache, layer: int, which: str, heads: list[int], batch: int) -> torch.Tensor:
    """[batch, pos, head_index, 1, d_head] pos_embed · W_Q[h] (raw W: the embedding is added after ln1)."""
    W = getattr(model.blocks[layer].attn, f"W_{which}").detach()[heads].permute(1, 0, 2)
    qkw = arch.qk_norm_weight(model, layer, which, heads)
    W = W if qkw is None else W * qkw[None]
    pe = cache["hook_pos_embed"]
    return _project(pe.expand(batch, *pe.shape[1:]), W)[..., None, :]


def _select_global(encs: list[Encoded], offsets: list[int], k: int):
    """Top-k by |activation| over all sources' candidates → global ids [batch, pos, K], activations."""
    ids = torch.cat([e.ids + o for e, o in zip(encs, offsets)], dim=-1)
    acts = torch.cat([e.acts for e in encs], dim=-1)
    if ids.shape[-1] > k:
        top = acts.abs().topk(k, dim=-1).indices
        ids, acts = ids.gather(-1, top), acts.gather(-1, top)
    ids = torch.where(acts != 0, ids, torch.full_like(ids, offsets[-1]))  # padding id
    return ids, acts


def _nodes(model, cache, layer, dic, encs, maps, M_res, ids, acts, offsets, post=None):
    """Named dense nodes (before 1/σ and rotation): lists of names and [batch, pos, head, d_head].

    acts already carry the post-norm scales (`post` [n_sources, batch, pos, 1], hook_z only); the
    per-source nodes (error, b_dec, b_O, truncation) get theirs here.
    """
    trunc = torch.zeros(*ids.shape[:2], *M_res.shape[1:], dtype=M_res.dtype, device=M_res.device)
    # every active feature is kept when no position has more than K: the truncation node is exactly 0
    truncated = int(sum(e.l0 for e in encs).max()) > ids.shape[-1]
    for s, (sae, enc, M) in enumerate(zip(dic.saes, encs, maps) if truncated else []):
        # truncation = (all active features) − (the K kept ones), per source, projected
        local = (ids - offsets[s]).clamp(0, sae.cfg.d_sae - 1)
        mine = ((ids >= offsets[s]) & (ids < offsets[s + 1])).to(acts.dtype)
        kept = torch.einsum("bpk,bpkd->bpd", acts * mine, sae_decoder(sae).to(acts.dtype)[local])
        scale = 1.0 if post is None else post[s]
        trunc = trunc + _project(enc.recon * scale - kept, M)  # acts (hence kept) already carry the scale
    if dic.kind not in LISTS:
        enc, M = encs[0], maps[0]
        b_dec = _project(dic.saes[0].b_dec.detach().to(M.dtype), M)
        scale, mean = getattr(enc, "b_dec_scale", None), getattr(enc, "mean", None)
        names = ["sae_error", "b_dec"] + (["ln_mean"] if mean is not None else []) + ["truncation"]
        vecs = [_project(enc.error, M), b_dec.expand_as(trunc) if scale is None else b_dec * scale[..., None]]
        return names, vecs + ([_project(mean, M)] if mean is not None else []) + [trunc]
    names, vecs = upstream.nodes(model, cache, layer, dic, encs, maps, M_res, _project, post)
    return names + ["truncation"], vecs + [trunc]


def _rotator(model, layer: int):
    """x [batch, pos, n, d_head] → rotated at each pos with the head's own rotary (TL apply_rotary)."""
    attn = model.blocks[layer].attn

    def rotate(x: torch.Tensor) -> torch.Tensor:
        return attn.apply_rotary(x)

    return rotate
