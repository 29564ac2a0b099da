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
- a list of `blocks.l.attn.hook_z` SAEs (l < L): resid_pre = embed + pos_embed + Σ_l attn_out_l
  + Σ_l mlp_out_l, and attn_out_l = (Σ_f a_f W_dec[f] + b_dec + err) · W_O[l] + b_O[l] for a layer
  with a dictionary; feature f of layer l writes W_dec[f].view(n_heads, d_head) · W_O[l].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from fra_core.fra import arch
from fra_core.fra.options import FRAInputError
from fra_core.fra.rowcache import projected_rows

NORMALIZED, RESID, HOOK_Z = "normalized", "resid_pre", "hook_z"


@dataclasses.dataclass
class Dictionary:
    """A parsed dictionary side: kind, the SAEs, their source layers and hook names."""

    kind: str
    saes: list
    layers: list[int]
    hook_names: list[str]


def sae_decoder(sae) -> torch.Tensor:
    """Effective decoder rows [d_sae, d_in] (TopK SAEs with rescale_acts_by_decoder_norm divide by ‖W_dec‖)."""
    W = sae.W_dec.detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        W = W / W.norm(dim=-1, keepdim=True)
    return W


def _check_sae(sae, hook: str, d_expected: int) -> None:
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm != "none":
        raise FRAInputError(
            f"SAE on {hook} uses normalize_activations={norm!r}; fold the normalisation first "
            "(sae.fold_activation_norm_scaling_factor) so that x = acts @ W_dec + b_dec + error")
    if sae.cfg.d_in != d_expected:
        raise FRAInputError(f"SAE on {hook} has d_in={sae.cfg.d_in} but the hook has {d_expected} dims")


def parse_dictionary(model, layer: int, dictionary) -> Dictionary:
    """Classify an SAE (or a list of upstream hook_z SAEs) as a side of layer `layer`."""
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
    layers = []
    for sae, hook in zip(saes, hooks):
        parts = (hook or "").split(".")
        if len(parts) != 4 or parts[0] != "blocks" or parts[2:] != ["attn", "hook_z"] or not parts[1].isdigit():
            raise FRAInputError(
                f"SAE hook {hook!r} cannot sit on layer {layer}'s head input: use blocks.{layer}.ln1.hook_normalized, "
                f"blocks.{layer}.hook_resid_pre (= blocks.{layer - 1}.hook_resid_post), or a list of "
                f"blocks.l.attn.hook_z SAEs with l < {layer}")
        if int(parts[1]) >= layer:
            raise FRAInputError(f"hook_z SAE {hook} is not upstream of layer {layer} (needs l < {layer})")
        _check_sae(sae, hook, cfg.n_heads * cfg.d_head)
        if getattr(sae, "hook_z_reshaping_mode", False) and getattr(sae, "d_head", None) is None:
            sae.d_head = cfg.d_head  # SAELens only learns d_head from its first 4-D input
        layers.append(int(parts[1]))
    if len(set(layers)) != len(layers):
        raise FRAInputError(f"two hook_z SAEs for the same layer: {hooks}")
    return Dictionary(HOOK_Z, saes, layers, hooks)


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
        names.update(d.hook_names)
        if d.kind == HOOK_Z:
            names.update(arch.post_norm_hooks(model, d.layers))
            names.add("hook_embed")
            if model.cfg.positional_embedding_type == "standard":
                names.add("hook_pos_embed")
            for l in range(layer):
                names.add(f"blocks.{l}.hook_attn_out")
                if not model.cfg.attn_only:
                    names.add(f"blocks.{l}.hook_mlp_out")
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
    if dic.kind == HOOK_Z:
        W_O = model.W_O.detach()  # [layer, head_index, d_head, d_model]: z (head-major) → residual
        # a post-attention RMS norm of layer l multiplies the raw output by its gain (σ applied per position)
        posts = [arch.post_norm_weight(model, l) for l in dic.layers]
        maps = [torch.einsum("hem,mkf->hekf", W_O[l] * (1 if w is None else w), M_res).flatten(0, 1)
                for l, w in zip(dic.layers, posts)]
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
    encs = []
    for sae, hook in zip(dic.saes, dic.hook_names):
        key = (id(sae), hook)
        if key not in enc_cache:
            x = cache[hook].flatten(-2) if dic.kind == HOOK_Z else cache[hook]
            enc_cache[key] = encode(sae, x, k)
        encs.append(enc_cache[key])
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
    if dic.kind != HOOK_Z:
        enc, M = encs[0], maps[0]
        b_dec = dic.saes[0].b_dec.detach().to(M.dtype)
        return ["sae_error", "b_dec", "truncation"], [
            _project(enc.error, M), _project(b_dec, M).expand_as(trunc), trunc]
    names, vecs = ["embed"], [_project(cache["hook_embed"], M_res)]
    if model.cfg.positional_embedding_type == "standard":
        names.append("pos_embed")
        vecs.append(_project(cache["hook_pos_embed"], M_res).expand_as(vecs[0]))
    by_layer = dict(zip(dic.layers, range(len(dic.layers))))
    for l in range(layer):
        if l in by_layer:
            s = by_layer[l]
            b_dec = dic.saes[s].b_dec.detach().to(M_res.dtype)
            w = arch.post_norm_weight(model, l)
            b_O = model.blocks[l].attn.b_O.detach() * (1 if w is None else w)
            inv = 1.0 if post is None else post[s][..., None]  # [batch, pos, 1, 1]
            names += [f"sae_error.l{l}", f"b_dec.l{l}", f"b_O.l{l}"]
            vecs += [_project(encs[s].error, maps[s]) * inv, (_project(b_dec, maps[s]) * inv).expand_as(vecs[0]),
                     (_project(b_O, M_res) * inv).expand_as(vecs[0])]
        else:
            names.append(f"attn_out.l{l}")
            vecs.append(_project(cache[f"blocks.{l}.hook_attn_out"], M_res))
        if not model.cfg.attn_only:
            names.append(f"mlp_out.l{l}")
            vecs.append(_project(cache[f"blocks.{l}.hook_mlp_out"], M_res))
    return names + ["truncation"], vecs + [trunc]


def _rotator(model, layer: int):
    """x [batch, pos, n, d_head] → rotated at each pos with the head's own rotary (TL apply_rotary)."""
    attn = model.blocks[layer].attn

    def rotate(x: torch.Tensor) -> torch.Tensor:
        return attn.apply_rotary(x)

    return rotate
