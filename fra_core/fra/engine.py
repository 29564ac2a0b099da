"""The exact FRA engine: `compute_fra` decomposes `blocks.L.attn.hook_attn_scores` into feature pairs.

For head h, s_ij = q_i · k_j / attn_scale with q_i = Σ_a q_i^a and k_j = Σ_b k_j^b over the nodes of
each side (features, SAE error, b_dec, truncation, ln1.b, bias, … see `sides.py`), so

    s_ij = Σ_{a,b} q_i^a · k_j^b / attn_scale                     (exact, bilinear)

The feature×feature block is computed sparsely: with the K active features per position scaled by
activation/σ and projected (U = D W_Q, V = D W_K, rank d_head, cached across calls by `rowcache`), one
batched GEMM per block of (sample, head) items × query rows gives v[g, i, k, j, l] = U_{f_ik} · V_{g_jl} /
attn_scale at cost T²K²·d_head (`blocks.py`: the GEMM, the value transforms, the top-m selection).
Small problems (the demo model) run every sample and head in one block; long sequences split the
query rows so that a block stays cache-sized. Without rotary, top-m per cell has an exact cheaper path when
the batch's features repeat across positions (`gram.py`: G = U Vᵀ over a sample's distinct features gives
each cell's row and column maxima, and the top m lie in the m best rows × the m best columns: m² values per
cell instead of K·L); `gram_plan` picks it by operation count (GPT-2 Small with every active feature kept:
≈ 10× fewer operations). Everything else is dense and small: node vectors
[pos, n_nodes, d_head] give node terms [query_pos, key_pos, n_q, n_k] on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fra_core.fra import arch, gram
from fra_core.fra.blocks import block_values, merge_top_n, top_m_cells, top_n_block
from fra_core.fra.guard import check_model_supported
from fra_core.fra.options import FRAInputError, FRAOptions, check_layer_heads, check_tokens
from fra_core.fra.precision import float32_model, is_half
from fra_core.fra.result import FRAResult, transform
from fra_core.fra.sides import _encoded as encoded_source  # the one per-kind encoder dispatch
from fra_core.fra.sides import build_side, cache_hooks, parse_dictionary

ENTRY_FIELDS = ("batch", "head", "query_pos", "key_pos", "q_source", "q_feature", "k_source", "k_feature", "value")
# int32 columns (half the memory of int64: 12.5 M entries at T = 512): cast with .long() before
# building int64 pair keys from them (int32 products overflow)
ENTRY_INT = torch.int32


def run_sides(model, tokens, layer: int, heads, q_dict, k_dict, k_active: int | None):
    """Forward pass + both sides: (model, tokens, heads, q_side, k_side, scores, pattern, dicts).

    k_active None: every active feature is kept (K per side = `all_active_k`), so no truncation.

    Half-precision models are decomposed on a float32 copy (the returned model; see `precision.py`).
    """
    tokens = check_tokens(tokens)
    heads = check_layer_heads(model, layer, heads)
    check_model_supported(model, layer)
    model = float32_model(model)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise FRAInputError(f"sequence length {tokens.shape[1]} exceeds the model's n_ctx={model.cfg.n_ctx}")
    k_dict = q_dict if k_dict is None else k_dict
    qd, kd = parse_dictionary(model, layer, q_dict), parse_dictionary(model, layer, k_dict)
    names = cache_hooks(model, layer, [qd, kd])
    with torch.no_grad():
        # layers above L never influence layer L's scores: stop there (no unembedding either)
        try:
            _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names,
                                            stop_at_layer=layer + 1)
        except (RuntimeError, AttributeError) as exc:  # TL itself cannot run this config
            raise FRAInputError(f"the model's own forward pass failed (TransformerLens): {exc}") from exc
        arch.check_clip(model, cache, layer)
        enc_cache: dict = {}
        kq, kk = ((k_active, k_active) if k_active is not None
                  else (all_active_k(model, cache, d, enc_cache) for d in (qd, kd)))
        q_side = build_side(model, cache, layer, qd, "Q", heads, kq, enc_cache)
        k_side = build_side(model, cache, layer, kd, "K", heads, kk, enc_cache)
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, heads]
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, heads]
    return model, tokens, heads, q_side, k_side, scores, pattern, [qd, kd]


def all_active_k(model, cache, dic, enc_cache: dict) -> int:
    """K that keeps every active feature of a side: max over [batch, pos] of Σ_sources L0.

    Encodes each source once into `enc_cache`, the cache that `build_side` reads, keeping all its active
    features (k = None: each source keeps its batch's largest L0, `sides.encode` / `upstream.encode_source`),
    so the side's top-K over the sources' candidates keeps them all.
    """
    l0 = 0
    for s in range(len(dic.saes)):
        l0 = l0 + encoded_source(model, cache, dic, s, None, enc_cache).l0
    return max(1, int(l0.max()))


def attention_mask(model, T: int, device=None, *, layer: int) -> torch.Tensor:
    """[query_pos, key_pos] bool: the keys each query's softmax sees at `layer` (causal, sliding window
    of local layers, or none for bidirectional models: TL's own mask)."""
    return arch.layer_mask(model, layer, T, device)


def total_vectors(side, B: int, H: int) -> torch.Tensor:
    """[batch, head_index, pos, d_head] Σ of every feature and node of a side (= the model's q or k)."""
    g = torch.arange(B * H, device=side.ids.device)
    feats = side.feature_block(g // H, g % H).sum(2).view(B, H, -1, side.nodes.shape[-1])
    return feats + side.nodes.sum(3).permute(0, 2, 1, 3)


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
    upcast = model.cfg.dtype if is_half(model) else None
    model, tokens, heads, q_side, k_side, scores, pattern, dicts = run_sides(
        model, tokens, layer, heads, q_dict, k_dict, opts.k_active)
    B, T = tokens.shape
    causal = model.cfg.attention_dir != "bidirectional"
    amask = attention_mask(model, T, scores.device, layer=layer)
    arch.check_mask(scores, amask, layer)
    sel = selection_mask(amask, opts)
    scale = float(model.blocks[layer].attn.attn_scale)
    cells = {}
    if arch.softcap_enabled(model) or model.cfg.positional_embedding_type == "alibi":
        with torch.no_grad():
            pre = total_vectors(q_side, B, len(heads)) @ total_vectors(k_side, B, len(heads)).transpose(-1, -2)
            cells = arch.cell_terms(model, pre / scale, heads)
    kept_sum = torch.zeros(B, len(heads), T, T, dtype=scores.dtype, device=scores.device)
    with torch.no_grad():
        table = pair_table(q_side, k_side, heads, amask, sel, pattern, scale, opts, causal, kept_sum)
    return FRAResult(layer=layer, heads=heads, options=opts, attn_scale=scale, scores=scores, pattern=pattern,
                     attn_mask=amask, select_mask=sel, entries=table, kept_sum=kept_sum, q_side=q_side,
                     k_side=k_side, causal=causal, cell_terms=cells, frozen=arch.frozen_scales(model, layer, dicts),
                     upcast_from=None if upcast is None else str(upcast).replace("torch.", ""))


def plan_blocks(opts: FRAOptions, n_items: int, T: int, K: int, L: int, causal: bool):
    """(items per block, [(i0, i1)] query-row ranges) so that a block holds ≤ chunk_elements values.

    A causal block of rows [i0, i1) only needs keys [0, i1): r rows starting at i0 hold r·(i0 + r)·K·L
    values, so r = ⌊(√(i0² + 4c) − i0) / 2⌋ with c = chunk_elements / (K·L) rows·keys. When K·L is
    large (every active feature kept: K of several hundred) one row can exceed the budget: `key_ranges`
    then splits its keys too.
    """
    c = max(1, opts.chunk_elements // (K * L))
    if opts.chunk_rows is not None or T * T <= c:
        rows = opts.chunk_rows or T
        return max(1, c // (min(rows, T) * T)), [(i, min(T, i + rows)) for i in range(0, T, rows)]
    ranges, i0 = [], 0
    while i0 < T:
        r = int(((i0 * i0 + 4 * c) ** 0.5 - i0) / 2) if causal else c // T
        ranges.append((i0, min(T, i0 + max(1, r))))
        i0 = ranges[-1][1]
    return 1, ranges


def key_ranges(opts: FRAOptions, rows: int, J: int, K: int, L: int) -> list[tuple[int, int]]:
    """[(j0, j1)] key ranges of a block of `rows` query rows and keys [0, J): each holds ≤ chunk_elements
    values (rows · keys · K · L), at least one key. Row-centred values need every key of a row at once
    (the mean over the row's keys), so they are never split."""
    per = max(1, opts.chunk_elements // max(1, rows * K * L))
    if opts.row_centre or opts.chunk_rows is not None or per >= J:
        return [(0, J)]
    return [(j, min(J, j + per)) for j in range(0, J, per)]


def pair_table(q_side, k_side, heads, amask, sel, pattern, scale, opts, causal, kept_sum) -> dict:
    """The sparse pair table (columns ENTRY_FIELDS) of every (sample, head); fills kept_sum in place."""
    B, T, K = q_side.ids.shape
    L, H, dev = k_side.ids.shape[2], len(heads), q_side.ids.device
    distinct = gram_plan(q_side, k_side, opts, int(sel.sum()))
    if distinct is not None:
        return _gram_table(q_side, k_side, heads, sel, pattern, scale, opts, distinct, kept_sum)
    per_block, ranges = plan_blocks(opts, B * H, T, K, L, causal)
    blocks = []  # (i0, i1, j0, j1, selected cells (block row, block key)), found once: no device syncs later
    for i0, i1 in ranges:
        for j0, j1 in key_ranges(opts, i1 - i0, i1 if causal else T, K, L):
            ic, jc = sel[i0:i1, j0:j1].cpu().nonzero(as_tuple=True)
            blocks.append((i0, i1, j0, j1, ic.to(dev), jc.to(dev)))
    split = len(blocks) > len(ranges)  # some row's keys span several blocks: restore (row, key) order
    buckets = torch.unique(k_side.ids, return_inverse=True) if opts.row_centre else None
    # one reusable GEMM buffer for the largest block: fresh allocations per block cost page faults
    n_buf = max(min(per_block, B * H) * (i1 - i0) * K * (j1 - j0) * L for i0, i1, j0, j1, _, _ in blocks)
    buf = q_side.coef.new_empty(n_buf)
    n_cells = sum(len(b[4]) for b in blocks)
    if opts.top_n is not None:
        capacity = B * H * min(opts.top_n, n_cells * K * L)
    else:  # a loose bound when every pair is kept (then many products are zero): grow piece by piece
        capacity = B * H * n_cells * opts.top_m if opts.top_m is not None and opts.top_m < K * L else None
    sink = _TableSink(capacity, dev)
    for g0 in range(0, B * H, per_block):
        g = torch.arange(g0, min(B * H, g0 + per_block), device=dev)
        b_idx, h_idx = g // H, g % H  # item g = (sample b, head index hi), the layout of kept_sum
        qf = q_side.feature_block(b_idx, h_idx) / scale  # fold 1/attn_scale into the queries once
        kf = k_side.feature_block(b_idx, h_idx)
        pat = pattern[b_idx, h_idx]
        kb = buckets[1][b_idx] if buckets is not None else None
        parts = []
        for i0, i1, j0, j1, ic, jc in blocks:
            v = block_values(qf[:, i0:i1], kf[:, j0:j1], amask[i0:i1, j0:j1], pat[:, i0:i1, j0:j1],
                             kb[:, j0:j1] if kb is not None else None, len(buckets[0]) if buckets is not None else 0,
                             opts, buf)
            if opts.top_n is not None:
                parts = [merge_top_n(parts + [_shift(top_n_block(v, sel[i0:i1, j0:j1], opts.top_n), i0, j0)],
                                     opts.top_n)]
            elif len(ic):
                parts.append(_cells(v, ic, jc, i0, j0, T, opts.top_m or K * L, g, kept_sum.view(B * H, T * T)))
        block = _top_n_entries(parts[0], g, T, kept_sum) if opts.top_n is not None else _cat_by_item(parts, T, split)
        if block is not None:
            sink.add(_columns(block, q_side, k_side, heads, H))
    return sink.table()


def gram_plan(q_side, k_side, opts: FRAOptions, n_cells: int) -> list | None:
    """Each sample's distinct (query, key) features when the Gram path (`gram.py`) applies — top-m < K per
    cell, no rotary, no row centring — and costs less than the block path for every sample; else None."""
    B, T, K = q_side.ids.shape
    L, m = k_side.ids.shape[2], opts.top_m
    if (m is None or m >= K or opts.top_n is not None or opts.row_centre or not n_cells
            or q_side.rotate is not None or k_side.rotate is not None):
        return None
    plan = [(gram.distinct(q_side, b), gram.distinct(k_side, b)) for b in range(B)]
    d = q_side.rows.shape[-1]
    if all(gram.cheaper(len(q[0]), len(k[0]), T, K, L, n_cells, m, d) for q, k in plan):
        return plan
    return None


def _gram_table(q_side, k_side, heads, sel, pattern, scale, opts, distinct: list, kept_sum) -> dict:
    """`pair_table` by the Gram path: item by item, the same entries in the same (item, row, key) order."""
    B, T = q_side.ids.shape[:2]
    H, dev = len(heads), q_side.ids.device
    ic, jc = sel.nonzero(as_tuple=True)
    sink = _TableSink(B * H * len(ic) * opts.top_m, dev)
    for g in range(B * H):
        b, hi = divmod(g, H)
        if hi == 0:  # the sample's head-independent part, once
            plan = gram.plan_sample(*distinct[b], ic, jc, opts.chunk_elements)
        top = gram.top_m_item(q_side, k_side, b, hi, plan, ic, jc, opts.top_m, scale,
                              pattern[b, hi] if opts.attention_weighted else None)
        e = _cell_entries(*(t[None] for t in top), ic, jc, 0, 0, T, torch.tensor([g], device=dev),
                          kept_sum.view(B * H, T * T))
        sink.add(_columns(e, q_side, k_side, heads, H))
    return sink.table()


class _TableSink:
    """Collects the entry columns of successive item groups into one table.

    With a bound on the number of entries (top-m < K·L per cell, or top-N per item: never exceeded)
    the columns are allocated once and filled in place: concatenating per-group pieces at the end holds
    the pieces and the table at once, and the allocator keeps the freed pieces' memory (T = 512: +0.4 GB).
    Without one (every non-zero pair kept: the bound K·L per cell is loose) the pieces are concatenated.
    """

    def __init__(self, capacity: int | None, device):
        self.n, self.pieces = 0, []
        self.cols = {f: _empty_column(f, capacity or 0, device) for f in ENTRY_FIELDS}
        self.preallocated = capacity is not None

    def add(self, cols: dict[str, torch.Tensor]) -> None:
        k = len(cols["value"])
        if self.preallocated:
            for f in ENTRY_FIELDS:
                self.cols[f][self.n:self.n + k] = cols[f]
        else:
            self.pieces.append(cols)
        self.n += k

    def table(self) -> dict[str, torch.Tensor]:
        if self.preallocated:
            if self.n == len(self.cols["value"]):
                return self.cols
            return {f: self.cols.pop(f)[:self.n].clone() for f in ENTRY_FIELDS}  # one column at a time
        # column by column, freeing each column's pieces at once: peak = table + one column, not 2 × table
        return {f: torch.cat([self.cols.pop(f)] + [p.pop(f) for p in self.pieces]) for f in ENTRY_FIELDS}


def _empty_column(field: str, n: int, device) -> torch.Tensor:
    return torch.empty(n, dtype=torch.float32 if field == "value" else ENTRY_INT, device=device)


def _cells(v, ic, jc, i0: int, j0: int, T: int, m: int, g, kept_flat) -> dict[str, torch.Tensor]:
    """Top-m pairs of the selected cells (ic + i0, jc + j0) of a block → entries (g, i, j, k, l, value)."""
    return _cell_entries(*top_m_cells(v, ic, jc, m), ic, jc, i0, j0, T, g, kept_flat)


def _cell_entries(value, k, l, keep, ic, jc, i0: int, j0: int, T: int, g, kept_flat) -> dict[str, torch.Tensor]:
    """value, k, l, keep [G, C, m'] of the cells (ic + i0, jc + j0) → entries; Σ kept pairs into kept_flat."""
    kept_flat[g[:, None], ((ic + i0) * T + jc + j0)[None, :]] = (value * keep).sum(-1)  # Σ kept pairs per cell
    gi, ci, si = keep.nonzero(as_tuple=True)
    return {"g": g[gi], "i": ic[ci] + i0, "j": jc[ci] + j0, "k": k[gi, ci, si], "l": l[gi, ci, si],
            "value": value[gi, ci, si]}


def _cat_by_item(parts: list[dict], T: int, split: bool) -> dict | None:
    """Concatenate the blocks of a group of items in (item, query row, key) order; `split`: a row's keys
    came in several blocks, so the order is restored by cell (stable: a cell's pairs keep their order)."""
    if not parts:
        return None
    cat = {c: torch.cat([p[c] for p in parts]) for c in parts[0]}
    if split:
        order = torch.argsort((cat["g"] * T + cat["i"]) * T + cat["j"], stable=True)
        cat = {c: t[order] for c, t in cat.items()}
    elif len(parts) > 1 and bool((cat["g"][1:] < cat["g"][:-1]).any()):
        order = torch.argsort(cat["g"], stable=True)  # blocks are g-major inside: interleave them per g
        cat = {c: t[order] for c, t in cat.items()}
    return cat


def _shift(top: tuple, i0: int, j0: int) -> tuple:
    value, i, k, j, l = top
    return value, i + i0, k, j + j0, l


def _top_n_entries(top: tuple, g, T: int, kept_sum) -> dict[str, torch.Tensor]:
    """Entries of the merged per-item top-N candidates [G, n] (zeros dropped); fills kept_sum."""
    value, i, k, j, l = top
    gi, si = (value != 0).nonzero(as_tuple=True)
    out = {"g": g[gi], "i": i[gi, si], "j": j[gi, si], "k": k[gi, si], "l": l[gi, si], "value": value[gi, si]}
    kept_sum.view(-1).index_put_((out["g"] * (T * T) + out["i"] * T + out["j"],), out["value"], accumulate=True)
    return out


def _columns(e: dict, q_side, k_side, heads: list[int], H: int) -> dict[str, torch.Tensor]:
    """(g, i, j, k, l, value) → ENTRY_FIELDS columns: sample, model head, positions, (source, feature)."""
    b = e["g"] // H
    out = {"batch": b.to(ENTRY_INT), "head": torch.tensor(heads, device=b.device, dtype=ENTRY_INT)[e["g"] % H],
           "query_pos": e["i"].to(ENTRY_INT), "key_pos": e["j"].to(ENTRY_INT), "value": e["value"]}
    for p, side, pos, slot in (("q", q_side, "i", "k"), ("k", k_side, "j", "l")):
        gid = side.ids[b, e[pos], e[slot]]
        if len(side.offsets) == 2:  # one source: the global id is the feature id
            src, feat = torch.zeros_like(gid), gid
        else:
            offs = torch.tensor(side.offsets, device=gid.device)
            src = torch.searchsorted(offs, gid, right=True) - 1
            feat = gid - offs[src]
        out[f"{p}_source"], out[f"{p}_feature"] = src.to(ENTRY_INT), feat.to(ENTRY_INT)
    return out


__all__ = ["compute_fra", "attention_mask", "selection_mask", "block_values", "transform", "run_sides", "plan_blocks",
           "key_ranges", "all_active_k"]
