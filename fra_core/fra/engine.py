"""The exact FRA engine: `compute_fra` decomposes `blocks.L.attn.hook_attn_scores` into feature pairs.

For head h, s_ij = q_i · k_j / attn_scale with q_i = Σ_a q_i^a and k_j = Σ_b k_j^b over the nodes of
each side (features, SAE error, b_dec, truncation, ln1.b, bias, … see `sides.py`), so

    s_ij = Σ_{a,b} q_i^a · k_j^b / attn_scale                     (exact, bilinear)

The feature×feature block is computed sparsely: with the K active features per position scaled by
activation/σ and projected (U = D W_Q, V = D W_K, rank d_head), one einsum per block of query rows
gives vals[i, j, l, k] = U_{f_ik} · V_{g_jl} / attn_scale at cost T²K²·d_head. Everything else is dense
and small: node vectors [pos, n_nodes, d_head] give node terms [query_pos, key_pos, n_q, n_k] on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fra_core.fra.options import FRAInputError, FRAOptions, check_layer_heads, check_model_supported, check_tokens
from fra_core.fra.result import FRAResult, transform
from fra_core.fra.sides import build_side, cache_hooks, parse_dictionary

ENTRY_FIELDS = ("batch", "head", "query_pos", "key_pos", "q_source", "q_feature", "k_source", "k_feature", "value")


def run_sides(model, tokens, layer: int, heads, q_dict, k_dict, k_active: int):
    """Forward pass + both sides: (tokens, heads, q_side, k_side, scores, pattern)."""
    check_model_supported(model)
    tokens = check_tokens(tokens)
    heads = check_layer_heads(model, layer, heads)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise FRAInputError(f"sequence length {tokens.shape[1]} exceeds the model's n_ctx={model.cfg.n_ctx}")
    k_dict = q_dict if k_dict is None else k_dict
    qd, kd = parse_dictionary(model, layer, q_dict), parse_dictionary(model, layer, k_dict)
    names = cache_hooks(model, layer, [qd, kd])
    with torch.no_grad():
        # layers above L never influence layer L's scores: stop there (no unembedding either)
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names,
                                        stop_at_layer=layer + 1)
        enc_cache: dict = {}
        q_side = build_side(model, cache, layer, qd, "Q", heads, k_active, enc_cache)
        k_side = build_side(model, cache, layer, kd, "K", heads, k_active, enc_cache)
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, heads]
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, heads]
    return tokens, heads, q_side, k_side, scores, pattern


def attention_mask(model, T: int, device=None) -> torch.Tensor:
    """[query_pos, key_pos] bool: the keys each query's softmax sees (read from cfg.attention_dir)."""
    full = torch.ones(T, T, dtype=torch.bool, device=device)
    return full if model.cfg.attention_dir == "bidirectional" else full.tril()


def selection_mask(amask: torch.Tensor, opts: FRAOptions) -> torch.Tensor:
    """[query_pos, key_pos] bool: cells whose feature pairs go into the sparse table."""
    sel = amask.clone()
    if opts.exclude_diagonal:
        sel.fill_diagonal_(False)
    if opts.exclude_bos_key:
        sel[:, 0] = False
    if opts.exclude_bos_query:
        sel[0, :] = False
    return sel


def compute_fra(model, tokens, layer: int, heads: int | Sequence[int] | None = None, q_dict=None,
                k_dict=None, options: FRAOptions | None = None) -> FRAResult:
    """Exact FRA of `blocks.{layer}.attn.hook_attn_scores` for the given heads and token batch.

    tokens: [batch, pos]; q_dict / k_dict: a `sae_lens.SAE` on blocks.L.ln1.hook_normalized or
    blocks.L.hook_resid_pre, or a list of upstream blocks.l.attn.hook_z SAEs (k_dict None → q_dict).
    """
    if q_dict is None:
        raise FRAInputError("q_dict is required (an SAE or a list of upstream hook_z SAEs)")
    opts = options or FRAOptions()
    tokens, heads, q_side, k_side, scores, pattern = run_sides(
        model, tokens, layer, heads, q_dict, k_dict, opts.k_active)
    B, T = tokens.shape
    amask = attention_mask(model, T, scores.device)
    sel = selection_mask(amask, opts)
    scale = float(model.blocks[layer].attn.attn_scale)
    entries, kept_sum = [], torch.zeros(B, len(heads), T, T, dtype=scores.dtype, device=scores.device)
    for b in range(B):
        for hi in range(len(heads)):
            ent = _sample_head(q_side, k_side, b, hi, amask, sel, pattern[b, hi], scale, opts)
            kept_sum[b, hi].index_put_((ent["query_pos"], ent["key_pos"]), ent["value"], accumulate=True)
            ent.update(_feature_columns(q_side, k_side, b, ent))
            ent["batch"] = torch.full_like(ent["query_pos"], b)
            ent["head"] = torch.full_like(ent["query_pos"], heads[hi])
            entries.append(ent)
    # column by column, freeing each column's pieces at once: peak = table + one column, not 2 × table
    table = {f: torch.cat([e.pop(f) for e in entries]) for f in ENTRY_FIELDS}
    return FRAResult(layer=layer, heads=heads, options=opts, attn_scale=scale, scores=scores, pattern=pattern,
                     attn_mask=amask, select_mask=sel, entries=table, kept_sum=kept_sum, q_side=q_side,
                     k_side=k_side, causal=model.cfg.attention_dir != "bidirectional")


def _feature_columns(q_side, k_side, b: int, ent) -> dict[str, torch.Tensor]:
    """Map the (pos, slot) of sample b's entries to (source index, local feature id) on both sides."""
    out = {}
    for p, side, slot, pos in (("q", q_side, "qk", "query_pos"), ("k", k_side, "kk", "key_pos")):
        gid = side.ids[b][ent[pos], ent.pop(slot)]
        offs = torch.tensor(side.offsets, device=gid.device)
        src = torch.searchsorted(offs, gid, right=True) - 1
        out[f"{p}_source"], out[f"{p}_feature"] = src, gid - offs[src]
    return out


def chunk_rows(opts: FRAOptions, T: int, K: int, L: int) -> int:
    if opts.chunk_rows is not None:
        return opts.chunk_rows
    return max(1, min(T, opts.chunk_elements // max(1, T * K * L)))


def _sample_head(q_side, k_side, b, hi, amask, sel, pattern, scale, opts) -> dict[str, torch.Tensor]:
    """Sparse kept entries for one (sample, head): query_pos, key_pos, qk, kk (slots), value."""
    # fold 1/attn_scale into the query vectors once instead of dividing every [i, j, l, k] value
    qf, kf = q_side.feature_vectors(b, hi) / scale, k_side.feature_vectors(b, hi)  # [pos, K, d_head]
    T, K, L = qf.shape[0], qf.shape[1], kf.shape[1]
    # bucket of each key slot's feature id, for the per-row, per-pair means of row centring
    _, k_bucket = torch.unique(k_side.ids[b], return_inverse=True)
    n_buckets = int(k_bucket.max()) + 1
    rows, found = chunk_rows(opts, T, K, L), []
    # one reusable GEMM buffer: fresh 30 MB allocations per block cost page faults on every block
    buf = torch.empty(rows * T * L * K, dtype=qf.dtype, device=qf.device)
    plain = not (opts.row_centre or opts.attention_weighted)
    for i0 in range(0, T, rows):
        i1 = min(T, i0 + rows)
        J = int(amask[i0:i1].any(0).nonzero().max()) + 1  # keys beyond J are masked for every row
        v = block_values(qf[i0:i1], kf[:J], amask[i0:i1, :J], pattern[i0:i1, :J], k_bucket[:J], n_buckets, opts,
                         buf)
        # plain values are cheap to recompute for the few kept entries, so |v| may overwrite v in place
        exact = (lambda i, j, l, k, i0=i0: (qf[i + i0, k] * kf[j, l]).sum(-1)) if plain else None
        found.append(_select(v, sel[i0:i1, :J], i0, opts, exact))
        if opts.top_n is not None and len(found) > 1:
            found = [_merge_top_n(found, opts.top_n)]
    if opts.top_n is not None:
        return _merge_top_n(found, opts.top_n)
    return {k: torch.cat([f[k] for f in found]) for k in found[0]}


def block_values(qf, kf, amask, pattern, k_bucket, n_buckets: int, opts: FRAOptions, buf=None):
    """vals [i, j, l, k] = U_{f_ik} · V_{g_jl} (qf already ÷ attn_scale), optionally centred and weighted.

    qf [rows, K, d_head], kf [keys, L, d_head], amask/pattern [rows, keys], k_bucket [keys, L].
    Layout (i, j, l, k) keeps each cell's L·K values contiguous for the per-cell top-m; one GEMM per
    query row (keys·L × d_head @ d_head × K) writes it directly, with no permute copy.
    """
    ci, J, L, K = qf.shape[0], kf.shape[0], kf.shape[1], qf.shape[1]
    kflat = kf.reshape(J * L, -1)
    v = (buf[:ci * J * L * K] if buf is not None else qf.new_empty(ci * J * L * K)).view(ci, J * L, K)
    if qf.is_cuda:  # one batched GEMM (the shared key matrix is a stride-0 batch)
        torch.matmul(kflat, qf.transpose(1, 2), out=v)
    else:  # on CPU, per-row GEMMs into the buffer beat the broadcast batched matmul
        for i in range(ci):
            torch.mm(kflat, qf[i].T, out=v[i])
    v = v.view(ci, J, L, K)
    if opts.row_centre:
        # mean_i(f, g) = (1/n_i) Σ_{j' allowed} v(i, j', f, g): sum each row's values per key feature
        v = v * amask[:, :, None, None].to(v.dtype)
        idx = k_bucket.reshape(1, J * L, 1).expand(ci, J * L, K)
        sums = v.new_zeros(ci, n_buckets, K).scatter_add_(1, idx, v.view(ci, J * L, K))
        means = sums / amask.sum(1).clamp(min=1)[:, None, None].to(v.dtype)
        v = (v - means.gather(1, idx).view(ci, J, L, K)) * amask[:, :, None, None].to(v.dtype)
    if opts.attention_weighted:
        v = v * pattern[:, :, None, None]
    return v


def _select(v: torch.Tensor, sel: torch.Tensor, i0: int, opts: FRAOptions, exact=None) -> dict[str, torch.Tensor]:
    """Keep top-m |value| per selected cell (or all / the top-N) of a block v [i, j, l, k].

    Padding slots and masked cells hold exact zeros; entries with value 0 are never kept. With
    `exact(i, j, l, k) -> values`, v is overwritten by |v| and the kept values are recomputed.
    """
    ci, J, L, K = v.shape
    score = v.abs_() if exact is not None else v.abs()
    if opts.top_n is None and opts.top_m is not None and opts.top_m < K * L:
        # top-m is per cell, so unselected cells need no masking pass: drop them afterwards
        top = score.view(ci * J, L * K).topk(opts.top_m, dim=-1, sorted=False)
        cell = torch.arange(ci * J, device=v.device)[:, None].expand_as(top.indices)
        keep = (top.values > 0) & sel.reshape(-1)[:, None]
        cell, flat = cell[keep], top.indices[keep]
        i, j, l, k = cell // J, cell % J, flat // K, flat % K
    else:
        score.masked_fill_(~sel[:, :, None, None], 0.0)
        flat = score.view(-1)
        if opts.top_n is not None:
            top = flat.topk(min(opts.top_n, flat.numel()), sorted=False)
            idx = top.indices[top.values > 0]
        else:
            idx = flat.nonzero().squeeze(1)
        i, j, l, k = torch.unravel_index(idx, (ci, J, L, K))
    value = exact(i, j, l, k) if exact is not None else v[i, j, l, k]
    return {"query_pos": i + i0, "key_pos": j, "qk": k, "kk": l, "value": value}


def _merge_top_n(found: list[dict], n: int) -> dict[str, torch.Tensor]:
    cat = {k: torch.cat([f[k] for f in found]) for k in found[0]}
    if len(cat["value"]) > n:
        idx = cat["value"].abs().topk(n).indices
        cat = {k: t[idx] for k, t in cat.items()}
    return cat


__all__ = ["compute_fra", "attention_mask", "selection_mask", "block_values", "transform", "run_sides"]
