"""Exact all-pair statistics of a batch: engine sides → co-activation tables → per-head statistics.

    stats = allpairs_batch(model, tokens, layer, heads, q_dict, k_dict, options, projector)

Everything downstream of the engine's sides is float64: ã = the engine's float32 coef (activation/σ),
U_f, V_g = decoder rows through the engine's own side maps (`sides.side_maps`, cast to float64). The
projected rows are filled lazily in fixed-size chunks (`Projector`), so a row's value does not depend
on which batch first needed it: a resumed run computes the same numbers as an uninterrupted one.

Standard positions: one co-activation table per batch for all heads (per head when attention-weighted),
G_h[f, g] = U_f[h]·V_g[h]/attn_scale applied per head. Rotary: every per-cell term (`percell_rows`).
"""

from __future__ import annotations

import dataclasses

import torch

from fra_core.fra.aggregate import compact_ids
from fra_core.fra.allpairs import F64, head_stats, percell_rows, sample_groups, sample_table, split_key
from fra_core.fra.allpairs_merge import reduce_tables
from fra_core.fra.engine import attention_mask, run_sides, selection_mask
from fra_core.fra.options import FRAInputError, FRAOptions
from fra_core.fra.sides import parse_dictionary, sae_decoder, side_maps

CHUNK = 256  # rows projected per call: fixed shapes keep each row's float64 value batch-independent


class Projector:
    """Float64 projected decoder rows [n_features + 1, head_index, d_head] of one side of a layer."""

    def __init__(self, model, layer: int, dictionary, which: str, heads: list[int]):
        dic = parse_dictionary(model, layer, dictionary)
        maps, _, _, _ = side_maps(model, layer, dic, which, heads)
        self.maps = [M.detach().to(F64) for M in maps]
        self.decoders = [sae_decoder(s).detach() for s in dic.saes]
        self.offsets = [0]
        for s in dic.saes:
            self.offsets.append(self.offsets[-1] + int(s.cfg.d_sae))
        H, d = self.maps[0].shape[1:]
        dev = self.maps[0].device
        self.rows = torch.zeros(self.offsets[-1] + 1, H, d, dtype=F64, device=dev)  # last = padding (0)
        self.filled = torch.zeros(self.offsets[-1] + 1, dtype=torch.bool, device=dev)
        self.filled[-1] = True

    def get(self, gids: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Rows [..., head_index, d_head] (or [..., d_head] of one head index) of global ids, projected
        on first use."""
        need = torch.unique(gids[~self.filled[gids]])
        for s, (D, M) in enumerate(zip(self.decoders, self.maps)):
            mine = need[(need >= self.offsets[s]) & (need < self.offsets[s + 1])]
            for c0 in range(0, len(mine), CHUNK):
                ids = mine[c0:c0 + CHUNK]
                block = torch.zeros(CHUNK, D.shape[1], dtype=F64, device=D.device)
                block[:len(ids)] = D[ids - self.offsets[s]].to(F64)
                self.rows[ids] = torch.einsum("nd,dhe->nhe", block, M)[:len(ids)]
        self.filled[need] = True
        return self.rows[gids] if head is None else self.rows[gids, head]


@dataclasses.dataclass
class BatchStats:
    """A batch's co-activation table `co` (head-independent unless per head: attention-weighted or
    rotary) and, once `with_heads` ran, the per-head statistics `stats[hi]` = `head_stats` columns +
    q_gid, k_gid."""

    heads: list[int]
    stats: list[dict[str, torch.Tensor] | None] | None
    q_offsets: list[int]
    k_offsets: list[int]
    sides: tuple  # (q_side, k_side, scores, pattern, sel, amask): for marginals and checks
    co: dict | None = None
    spans: tuple[int, int] = (0, 0)
    scale: float = 1.0
    rotary: bool = False
    per_head: bool = False


def check_supported(model) -> None:
    """All-pair statistics need what the engine needs, plus scores that are exactly Σ ã_if ã_jg G_h[f, g] +
    node terms: a head-independent key side, no per-position q/k scales, no extra score terms. Everything
    else the engine models (`fra_core.fra.arch`) is refused here by name; the per-cell completeness check
    of every batch (`batch_marginals`) is the backstop."""
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None)
    refused = [("n_key_value_heads", n_kv, n_kv not in (None, cfg.n_heads), "grouped-query attention"),
               ("use_qk_norm", cfg.use_qk_norm, bool(cfg.use_qk_norm), "QK-norm (a per-position q/k scale)"),
               ("use_logn_attn", getattr(cfg, "use_logn_attn", False), bool(getattr(cfg, "use_logn_attn", False)),
                "log-n query scaling"),
               ("attn_scores_soft_cap", cfg.attn_scores_soft_cap, (cfg.attn_scores_soft_cap or -1) > 0,
                "attention soft-capping"),
               ("positional_embedding_type", cfg.positional_embedding_type,
                cfg.positional_embedding_type not in ("standard", "rotary"), "positions outside the residual stream"),
               ("use_normalization_before_and_after", cfg.use_normalization_before_and_after,
                bool(cfg.use_normalization_before_and_after), "post-attention norms")]
    for field, value, bad, what in refused:
        if bad:
            raise FRAInputError(f"all-pair statistics do not support {what} ({field}={value!r}); "
                                f"use statistics='top_m', which the engine decomposes exactly")


def _rotate(model, layer: int, x: torch.Tensor) -> torch.Tensor:
    """x [pos, ..., d_head] float64 rotated at each position with the head's rotary (as TL does)."""
    attn, rd = model.blocks[layer].attn, model.cfg.rotary_dim
    T = x.shape[0]
    shape = (T,) + (1,) * (x.ndim - 2) + (rd,)
    cos, sin = attn.rotary_cos[:T].to(F64).view(shape), attn.rotary_sin[:T].to(F64).view(shape)
    xr = x[..., :rd]
    return torch.cat([xr * cos + attn.rotate_every_two(xr) * sin, x[..., rd:]], dim=-1)


def allpairs_batch(model, tokens, layer: int, heads, q_dict, k_dict, options: FRAOptions,
                   projectors: tuple[Projector, Projector]) -> BatchStats:
    """Exact statistics of every (q feature, k feature) pair of every head over the selected cells of
    tokens [batch, pos] (options: exclude_diagonal = diagonal out of every statistic; k_active; the
    BOS exclusions; row_centre; attention_weighted; top_m is NOT used: nothing is truncated)."""
    bs = batch_cotable(model, tokens, layer, heads, q_dict, k_dict, options, projectors)
    return with_heads(bs, bs.co, projectors)


def batch_cotable(model, tokens, layer: int, heads, q_dict, k_dict, options: FRAOptions,
                  projectors: tuple[Projector, Projector]) -> BatchStats:
    """The batch's co-activation table only (`BatchStats.co`, stats None): what an accumulation job
    reduces over a whole shard before it applies each head's G once (`with_heads`)."""
    bs = batch_sides(model, tokens, layer, heads, q_dict, k_dict, options)
    return dataclasses.replace(bs, co=cotable(model, layer, bs, options, projectors))


def batch_cotable_and_marginals(model, tokens, layer: int, heads, q_dict, k_dict, options: FRAOptions,
                                projectors: tuple[Projector, Projector]) -> tuple[BatchStats, dict]:
    """(`batch_cotable`, `batch_marginals`) of a batch, the two computed at the same time: they only read
    the batch's sides, so the table runs in a worker thread while this one sums the marginals (torch
    releases the GIL; measured on the GPT-2-shaped case: see benchmarks/bench_allpairs_compute.py). The
    projected rows they read are filled first, so neither thread writes shared state. Same numbers as
    calling the two one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    bs = batch_sides(model, tokens, layer, heads, q_dict, k_dict, options)
    q_side, k_side = bs.sides[:2]
    projectors[0].get(q_side.ids.reshape(-1)), projectors[1].get(k_side.ids.reshape(-1))
    with ThreadPoolExecutor(1, thread_name_prefix="cotable") as pool:
        table = pool.submit(cotable, model, layer, bs, options, projectors)
        marginals = batch_marginals(model, layer, bs, projectors, options)
        return dataclasses.replace(bs, co=table.result()), marginals


def batch_sides(model, tokens, layer: int, heads, q_dict, k_dict, options: FRAOptions) -> BatchStats:
    """The engine's sides of a batch, checked for what all-pair statistics need (`BatchStats`, co None)."""
    check_supported(model)
    model, tokens, heads, q_side, k_side, scores, pattern, _ = run_sides(model, tokens, layer, heads, q_dict,
                                                                         k_dict, options.k_active)
    if q_side.head_scale is not None or k_side.head_scale is not None:
        raise FRAInputError("all-pair statistics do not support per-position q/k scales (QK-norm, log-n scaling) "
                            "of this model; use statistics='top_m'")
    T = tokens.shape[1]
    amask = attention_mask(model, T, scores.device, layer=layer)
    sel = selection_mask(amask, options)
    for name, a in (("query", q_side.coef), ("key", k_side.coef)):
        if bool((a < 0).any()):
            raise FRAInputError(f"all-pair statistics need SAE activations >= 0; the {name} side has "
                                f"min activation/σ {float(a.min()):.4g}")
    spans = (q_side.offsets[-1] + 1, k_side.offsets[-1] + 1)
    rotary = model.cfg.positional_embedding_type == "rotary"
    return BatchStats(list(heads), None, q_side.offsets, k_side.offsets, (q_side, k_side, scores, pattern, sel, amask),
                      None, spans, float(model.blocks[layer].attn.attn_scale), rotary,
                      options.attention_weighted or rotary)


def cotable(model, layer: int, bs: BatchStats, options: FRAOptions, projectors: tuple[Projector, Projector]
            ) -> dict | None:
    """The co-activation table of a batch's sides (`batch_sides`): per sample group, or per (sample, head)
    of every per-cell term when rotary."""
    q_side, k_side, _, pattern, sel, amask = bs.sides
    B = q_side.ids.shape[0]
    qa, ka = q_side.coef.to(F64), k_side.coef.to(F64)
    spans, scale = bs.spans, bs.scale
    pq, pk = projectors
    pat = pattern.to(F64)
    tables = []
    rotary = bs.rotary
    if rotary:
        for b in range(B):
            qv = _rotate(model, layer, qa[b, :, :, None, None] * pq.get(q_side.ids[b])) / scale  # [T, K, H, d]
            kv = _rotate(model, layer, ka[b, :, :, None, None] * pk.get(k_side.ids[b]))
            for hi in range(len(bs.heads)):
                tables.append(percell_rows(qv[:, :, hi], qa[b] != 0, q_side.ids[b], kv[:, :, hi], ka[b] != 0,
                                           k_side.ids[b], sel, amask, options.row_centre,
                                           pat[b, hi] if options.attention_weighted else None, spans, hi, b))
    else:
        slots = range(len(bs.heads)) if options.attention_weighted else [0]
        layout = _layout(model, options, sel, amask)
        for b0, b1 in sample_groups(qa, q_side.ids, ka, k_side.ids):
            for hi in slots:
                tables.append(sample_table(qa[b0:b1], q_side.ids[b0:b1], ka[b0:b1], k_side.ids[b0:b1], sel, amask,
                                           options.row_centre,
                                           pat[b0:b1, hi] if options.attention_weighted else None, spans, hi, b0,
                                           layout))
    return reduce_tables(tables, unique_keys=not rotary, n_col_ids=spans[1])


def with_heads(bs: BatchStats, co: dict | None, projectors: tuple[Projector, Projector]) -> BatchStats:
    """bs with `stats` = every head's exact statistics from the co-activation table co (bs.co, or a
    table reduced over many batches of the same layer and options)."""
    shared = None if co is None or bs.per_head else pair_ids(co, bs.spans)  # found once for all heads
    return dataclasses.replace(bs, stats=[head_of(bs, co, hi, projectors, shared) for hi in range(len(bs.heads))],
                               co=co)


def head_of(bs: BatchStats, co: dict | None, hi: int, projectors: tuple[Projector, Projector],
            shared: tuple | None = None) -> dict | None:
    """Head index hi's statistics from co (see `with_heads`); shared = `pair_ids(co, bs.spans)` when
    the table is head-independent (found once for all heads), else None."""
    if shared is None and co is not None and not bs.per_head:
        shared = pair_ids(co, bs.spans)
    return _head(co, hi, *projectors, bs.spans, bs.scale, bs.per_head, not bs.rotary, shared)


def _layout(model, options: FRAOptions, sel: torch.Tensor, amask: torch.Tensor) -> tuple | None:
    """(causal, diag, bos_key, bos_query) when sel is exactly the mask they describe (else None)."""
    layout = (model.cfg.attention_dir != "bidirectional", not options.exclude_diagonal, options.exclude_bos_key,
              options.exclude_bos_query)
    T = sel.shape[0]
    want = torch.ones(T, T, dtype=torch.bool, device=sel.device)
    want = want.tril() if layout[0] else want
    if not layout[1]:
        want.fill_diagonal_(False)
    if layout[2]:
        want[:, 0] = False
    if layout[3]:
        want[0, :] = False
    return layout if bool((want == sel).all()) else None


def pair_ids(co: dict, spans) -> tuple:
    """(slot, q_gid, k_gid, unique+inverse of q_gid, of k_gid) of a table's rows."""
    slot, qg, kg = split_key(co["key"], *spans)
    return slot, qg, kg, torch.unique(qg, return_inverse=True), torch.unique(kg, return_inverse=True)


def _head(co, hi: int, pq: Projector, pk: Projector, spans, scale: float, per_head: bool,
          factorised: bool, shared: tuple | None) -> dict | None:
    """Head index hi's statistics: its rows of a per-head table (attention-weighted or rotary) or every
    row of the shared table; times G_h[f, g] when factorised, as they are (G ≡ 1) for per-cell rows."""
    if co is None:
        return None
    if per_head:
        slot, _, _ = split_key(co["key"], *spans)
        rows = (slot == hi).nonzero().squeeze(1)
        co = {c: v[rows] for c, v in co.items()}
        shared = pair_ids(co, spans)
    _, qg, kg, uq, uk = shared
    G = strengths(uq, uk, hi, pq, pk, scale) if factorised else torch.ones(len(qg), dtype=F64, device=qg.device)
    out = head_stats(co, G)
    out["q_gid"], out["k_gid"] = qg, kg
    return out


def strengths(q_unique, k_unique, hi: int, pq: Projector, pk: Projector, scale: float,
              budget: int = 1 << 22) -> torch.Tensor:
    """G_h[f, g] = U_f[h]·V_g[h] / attn_scale (float64) for the pairs, [n_pairs]; q_unique / k_unique =
    `torch.unique(ids, return_inverse=True)` of the pairs' query / key global ids.

    One GEMM over the distinct query × key features of the pairs, a block of query features at a time
    (the pairs of a batch are dense among its active features, so this beats a gather per pair)."""
    (uq, qi), (uk, ki) = q_unique, k_unique
    Vt = pk.get(uk, hi).T / scale  # [d_head, n_k]
    rows = max(1, budget // max(1, len(uk)))
    if len(uq) <= rows:
        return (pq.get(uq, hi) @ Vt)[qi, ki]
    out = torch.empty(len(qi), dtype=F64, device=qi.device)
    ordered = bool((qi[1:] >= qi[:-1]).all())  # tables are sorted by key: a block's pairs are contiguous
    edges = torch.searchsorted(qi, torch.arange(0, len(uq) + rows, rows, device=qi.device)) if ordered else None
    for n, r0 in enumerate(range(0, len(uq), rows)):
        block = pq.get(uq[r0:r0 + rows], hi) @ Vt  # [rows, n_k]
        sel = slice(int(edges[n]), int(edges[n + 1])) if ordered else \
            ((qi >= r0) & (qi < r0 + rows)).nonzero().squeeze(1)
        out[sel] = block[qi[sel] - r0, ki[sel]]
    return out


def batch_marginals(model, layer: int, bs: BatchStats, projectors: tuple[Projector, Projector],
                    options: FRAOptions) -> dict:
    """Per-feature marginals and node totals of a batch (`marginals.sample_marginals`), summed.

    Returns {"features": {"q"/"k": (key = head index · G + gid, [n_rows, 3] n/sum/abs_sum)},
    "nodes": {"q"/"k": (node names, [head_index, n_nodes, 4] n/sum/abs_sum/sum_vs_features)},
    "completeness": [head_index, 2]: max |Σ of every term − hook_attn_scores| and max |score| over the
    attention mask (every term = the float64 features + the engine's float32 nodes),
    "share": {head: (Σ |F|, Σ |N|)}: `share.sides_share_sums` of the batch from the same float64 side sums}.
    """
    from fra_core.fra.marginals import sample_marginals
    from fra_core.fra.share import side_share_sums

    q_side, k_side, scores, pattern, sel, amask = bs.sides
    B, T = q_side.ids.shape[:2]
    H = len(bs.heads)
    scale = float(model.blocks[layer].attn.attn_scale)
    rotary = model.cfg.positional_embedding_type == "rotary"
    keys, vals = {"q": [], "k": []}, {"q": [], "k": []}
    nodes = {"q": 0.0, "k": 0.0}
    err = torch.zeros(H, 2, dtype=F64, device=scores.device)  # max |Σ all terms − score|, max |score|
    share = torch.zeros(H, 2, dtype=F64, device=scores.device)  # Σ |F|, Σ |N| (`share.side_share_sums`)
    heads_ar = torch.arange(H, device=scores.device)[:, None]
    for b in range(B):
        vecs = []
        for side, proj in ((q_side, projectors[0]), (k_side, projectors[1])):
            K, (n, d) = side.ids.shape[2], side.nodes.shape[3:]
            buf = torch.empty(H, T, K + n, d, dtype=F64, device=scores.device)  # features then nodes, no join copy
            c, rows = side.coef[b].to(F64)[:, :, None, None], proj.get(side.ids[b])  # [T, K, 1, 1], [T, K, H, d]
            feats = buf[:, :, :K].permute(1, 2, 0, 3)  # [T, K, H, d]: written in place
            if rotary:
                feats.copy_(_rotate(model, layer, c * rows))
            else:
                torch.mul(c, rows, out=feats)
            buf[:, :, K:] = side.nodes[b].permute(1, 0, 2, 3)
            vecs += [buf[:, :, :K], buf[:, :, K:]]  # [H, T, K, d], [H, T, n, d]
        (qf, qn), (kf, kn) = vecs[:2], vecs[2:]
        m = sample_marginals(qf, q_side.coef[b] != 0, kf, k_side.coef[b] != 0, k_side.ids[b], qn, kn,
                             sel, amask, options.row_centre, pattern[b] if options.attention_weighted else None,
                             scale)
        for s, side in (("q", q_side), ("k", k_side)):
            on = side.coef[b] != 0
            keys[s].append((heads_ar * (side.offsets[-1] + 1) + side.ids[b][on][None]).flatten())
            vals[s].append(m[f"{s}_val"][:, on].reshape(-1, 3))
        qt, kt = m["q_all"], m["k_all"]  # [H, T, d]: the whole query / key, as the marginals summed them
        d = torch.where(amask, torch.einsum("hid,hjd->hij", qt, kt) / scale - scores[b].to(F64), 0.0).abs()
        share = share + side_share_sums(m["q_feat"], m["k_feat"], scores[b], amask, options.row_centre,
                                        pattern[b] if options.attention_weighted else None, scale)
        top = torch.where(amask, scores[b], 0.0).abs().amax((1, 2)).to(F64)
        err = torch.maximum(err, torch.stack([d.amax((1, 2)), top], -1))
        nodes["q"] = nodes["q"] + m["q_nodes"]
        nodes["k"] = nodes["k"] + m["k_nodes"]
    feats = {}
    for s, side in (("q", q_side), ("k", k_side)):
        key = torch.cat(keys[s])
        uniq, inv = compact_ids(key, H * (side.offsets[-1] + 1))
        v = torch.cat(vals[s])
        feats[s] = (uniq, torch.zeros(len(uniq), 3, dtype=F64, device=v.device).index_add_(0, inv, v))
    return {"features": feats, "nodes": {"q": (q_side.node_names, nodes["q"]), "k": (k_side.node_names, nodes["k"])},
            "completeness": err, "share": {h: (float(f), float(n)) for h, (f, n) in zip(bs.heads, share.tolist())}}
