"""Data-independent pair strengths and DFA by source position.

Pair strength of (query feature f, key feature g) for head h: S_fg = U_f · V_g / attn_scale with
U = D_q M_Q[h], V = D_k M_K[h] (the same maps as the engine: ln1.w folded, mean-centring for
residual-space dictionaries, W_O for hook_z dictionaries), per unit activation and σ = 1. For RoPE
models (R_i q)·(R_j k) = (R_{i−j} q)·k, so a strength depends on the offset i − j; `offset` rotates U by
it (None = no rotation). Top partners of a feature use blocks of U[f] @ Vᵀ — never d_sae × d_sae.

DFA (OV side) for an SAE on blocks.L.attn.hook_z: z_i[h] = Σ_j A_ij v_j[h], so feature f's encoder
pre-activation (z_i − b_dec)·W_enc[:, f] + b_enc[f] splits exactly into per-(head, key j) terms
A_ij · v_j[h] · W_enc[h-block, f] plus the constant b_enc[f] − b_dec·W_enc[:, f].
"""

from __future__ import annotations

import torch

from fra_core.fra.guard import check_model_supported
from fra_core.fra.options import FRAInputError, check_layer_heads, check_tokens
from fra_core.fra.sides import parse_dictionary, sae_decoder, side_maps


def _projected(model, layer, head, dictionary, which, features=None, offset=None):
    """(rows [n, d_head], offsets): projected decoder rows of the requested global feature ids."""
    check_model_supported(model, layer)
    dic = parse_dictionary(model, layer, dictionary)
    maps = side_maps(model, layer, dic, which, [head])[0]
    offsets = [0]
    for sae in dic.saes:
        offsets.append(offsets[-1] + sae.cfg.d_sae)
    ids = torch.arange(offsets[-1]) if features is None else torch.as_tensor(features).long()
    if ids.numel() and (ids.min() < 0 or ids.max() >= offsets[-1]):
        raise FRAInputError(f"feature ids must lie in [0, {offsets[-1]}), got {ids.min()}..{ids.max()}")
    rows = torch.zeros(len(ids), maps[0].shape[-1], dtype=maps[0].dtype)
    for s, (sae, M) in enumerate(zip(dic.saes, maps)):
        sel = (ids >= offsets[s]) & (ids < offsets[s + 1])
        if sel.any():
            rows[sel] = torch.einsum("nd,de->ne", sae_decoder(sae)[ids[sel] - offsets[s]].to(M.dtype), M[:, 0])
    if offset is not None and model.cfg.positional_embedding_type == "rotary":
        rows = model.blocks[layer].attn.apply_rotary(rows[None, None], past_kv_pos_offset=int(offset))[0, 0]
    return rows, offsets


def pair_strengths(model, layer: int, head: int, q_dict, k_dict=None, q_features=None, k_features=None,
                   offset: int | None = None) -> torch.Tensor:
    """S [n_q_features, n_k_features] = U_f · V_g / attn_scale for the given global feature ids."""
    check_layer_heads(model, layer, head)
    k_dict = q_dict if k_dict is None else k_dict
    with torch.no_grad():
        U, _ = _projected(model, layer, head, q_dict, "Q", q_features, offset)
        V, _ = _projected(model, layer, head, k_dict, "K", k_features)
        return U @ V.T / model.blocks[layer].attn.attn_scale


def top_partners(model, layer: int, head: int, feature: int, q_dict, k_dict=None, side: str = "q",
                 top: int = 20, block: int = 8192, offset: int | None = None):
    """Strongest partners of one feature: (values [top], partner global ids [top]), by |S|.

    side='q': `feature` is a query-side feature, partners are key features; side='k' the reverse.
    Scans the partner dictionary in blocks of `block` rows (memory ∝ block · d_head).
    """
    check_layer_heads(model, layer, head)
    k_dict = q_dict if k_dict is None else k_dict
    own, other = (q_dict, k_dict) if side == "q" else (k_dict, q_dict)
    w_own, w_other = ("Q", "K") if side == "q" else ("K", "Q")
    with torch.no_grad():
        f_row, _ = _projected(model, layer, head, own, w_own, [feature], offset if side == "q" else None)
        _, offs = _projected(model, layer, head, other, w_other, [])
        best_v, best_i = torch.empty(0), torch.empty(0, dtype=torch.long)
        for start in range(0, offs[-1], block):
            ids = torch.arange(start, min(offs[-1], start + block))
            rows, _ = _projected(model, layer, head, other, w_other, ids, offset if side == "k" else None)
            s = (rows @ f_row[0]) / model.blocks[layer].attn.attn_scale
            best_v, best_i = torch.cat([best_v, s]), torch.cat([best_i, ids])
            keep = best_v.abs().topk(min(top, len(best_v))).indices
            best_v, best_i = best_v[keep], best_i[keep]
        return best_v, best_i


def dfa_by_source(model, tokens, layer: int, sae, features, heads=None) -> dict[str, torch.Tensor]:
    """DFA of hook_z SAE features by source position.

    Returns by_source [batch, head_index, query_pos, key_pos, n_features] (A_ij · v_j[h] · W_enc block),
    constant [n_features] (b_enc − b_dec·W_enc if the SAE subtracts b_dec) and hidden_pre
    [batch, query_pos, n_features] = (z − b_dec)·W_enc + b_enc = Σ_{head, key_pos} by_source + constant
    (the encoder pre-activation of standard / TopK / JumpReLU SAEs, before any decoder-norm rescaling).
    """
    hook = f"blocks.{layer}.attn.hook_z"
    if getattr(sae.cfg.metadata, "hook_name", None) != hook:
        raise FRAInputError(f"DFA needs an SAE on {hook}, got {sae.cfg.metadata.hook_name!r}")
    tokens, heads = check_tokens(tokens), check_layer_heads(model, layer, heads)
    check_model_supported(model, layer)
    cfg = model.cfg
    if sae.cfg.d_in != cfg.n_heads * cfg.d_head:
        raise FRAInputError(f"SAE on {hook} has d_in={sae.cfg.d_in}, hook_z has {cfg.n_heads * cfg.d_head} dims")
    feats = torch.as_tensor(features).long().reshape(-1)
    names = {hook, f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_pattern"}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        v = cache[f"blocks.{layer}.attn.hook_v"]  # [batch, key_pos, head_index or kv_head, d_head]
        if v.shape[2] != cfg.n_heads:  # GQA: query head h reads KV group h // (n_heads / n_kv_heads)
            v = v.repeat_interleave(cfg.n_heads // v.shape[2], dim=2)
        A = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head_index, query_pos, key_pos]
        W = sae.W_enc.detach()[:, feats].view(cfg.n_heads, cfg.d_head, -1)  # [head, d_head, n_features]
        vW = torch.einsum("bjhe,hef->bhjf", v, W)
        by_source = A[..., None] * vW[:, :, None]  # [batch, head, query_pos, key_pos, n_features]
        b_dec = sae.b_dec.detach() * float(getattr(sae.cfg, "apply_b_dec_to_input", True))
        constant = sae.b_enc.detach()[feats] - b_dec @ sae.W_enc.detach()[:, feats]
        z = cache[hook].flatten(-2)
        hidden_pre = (z - b_dec) @ sae.W_enc.detach()[:, feats] + sae.b_enc.detach()[feats]
    return {"by_source": by_source[:, heads], "constant": constant, "hidden_pre": hidden_pre}
