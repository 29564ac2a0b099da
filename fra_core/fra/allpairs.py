"""Exact statistics over EVERY feature pair of a head: co-activation tables, then one factor per head.

With σ frozen and SAE activations a ≥ 0, the (f, g) term of cell (i, j) of head h (no rotary) is

    v_h(i, j, f, g) = ã_if · ã_jg · G_h[f, g],     ã = coef (activation / σ),  G_h = U_f·V_g / attn_scale

ã does not depend on the head, G_h does not depend on the data. So the statistics of the data-dependent
product x(i, j, f, g) = ã_if · κ_ijg over the selected cells where both features are active (the
"co-activation table": n, Σx, Σ|x|, max x, min x and the cells of the extremes, diagonal sums apart) are
computed once for all heads, and each head's statistics follow exactly:

    sum = G·Σx,  abs_sum = |G|·Σ|x|,  max = G·max x (G ≥ 0) or G·min x (G < 0),  min likewise.

κ is the key factor of the cell: ã_jg raw, ã_jg − m_ig row-centred (m_ig = mean of ã_j'g over the keys
the softmax of row i sees, absent = 0: the engine's convention), times A_h(i, j) when attention-weighted
(then κ is per head: the table is built per head, keyed by its head slot). Key aggregates over the
selected keys of each row, K_stat[i, g] (count, Σκ, Σ|κ|, max/min κ and where), are dense [query_pos,
n_key_features] per sample; the query contraction is a GEMM for the additive statistics (ã ≥ 0, so
|ã κ| = ã |κ|) and a max-times product over the query entries for the extremes. Cost per sample
T²·n_k (key aggregates) + T·K·n_k (query contraction), never d_sae²: n_q, n_k are the features active
in the sample.

Rotary heads break the factorisation (G depends on i − j): `percell_table` enumerates every per-cell
term instead (T²·K² per sample and head) and yields the same table, keyed per head, with G ≡ 1.

A co-activation table (`CoTable`, dict of 1-D tensors): key (int64: (slot · Gq + q_gid) · Gk + k_gid,
slot = head index or 0 for "all heads"), n, s, abs, dn, ds, dabs (float64 sums: n, Σx, Σ|x|, and the same
over the diagonal cells i = j only), mx, mn (float64 extremes) and mx_c, mn_c: the cell that attains
them, coded (sample · T + query) · T + key.
"""

from __future__ import annotations

import torch

F64 = torch.float64
ADD_CO = ("n", "s", "abs", "dn", "ds", "dabs")
CELL_CO = ("mx_c", "mn_c")  # cell codes (b·T + i)·T + j of the extremes (`decode_cell`)
CO_COLUMNS = ("key",) + ADD_CO + ("mx", "mn") + CELL_CO
BUDGET = 1 << 21  # dense elements per temporary block (16 MB of float64)


def _dense(a: torch.Tensor, ids: torch.Tensor):
    """a, ids [pos, K] (a = 0: absent) → (features [n] sorted global ids, A [pos, n] float64)."""
    i, k = (a != 0).nonzero(as_tuple=True)
    feats, local = torch.unique(ids[i, k], return_inverse=True)
    A = torch.zeros(a.shape[0], len(feats), dtype=F64, device=a.device)
    A[i, local] = a[i, k].to(F64)
    return feats, A


def key_aggregates(Ak: torch.Tensor, sel: torch.Tensor, amask: torch.Tensor, centre: bool,
                   weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per query row i and key feature g, over the selected keys j where g is active:
    cnt, s = Σκ, abs = Σ|κ|, mx/mn = max/min κ and jmx/jmn (the first j attaining them), and the diagonal
    (j = i) terms dz (active and selected), dv = κ_iig. All [query_pos, n_k].

    Ak [key_pos, n_k] float64 (ã, 0 = inactive); sel, amask [query_pos, key_pos] bool; weight
    [query_pos, key_pos] (the head's attention pattern) or None.
    """
    T, nk = Ak.shape
    Z = Ak != 0
    m = (amask.to(F64) @ Ak) / amask.sum(1, keepdim=True).clamp(min=1).to(F64) if centre else None
    out = {c: [] for c in ("cnt", "s", "abs", "mx", "jmx", "mn", "jmn", "dz", "dv")}
    rows = max(1, BUDGET // max(1, T * nk))
    for r0 in range(0, T, rows):
        r1 = min(T, r0 + rows)
        kap = Ak[None] - m[r0:r1, None] if centre else Ak[None].expand(r1 - r0, T, nk)
        if weight is not None:
            kap = kap * weight[r0:r1, :, None].to(F64)
        valid = sel[r0:r1, :, None] & Z[None]
        kv = torch.where(valid, kap, 0.0)
        out["cnt"].append(valid.sum(1).to(F64))
        out["s"].append(kv.sum(1))
        out["abs"].append(kv.abs().sum(1))
        mx, jmx = torch.where(valid, kap, -torch.inf).max(1)  # first index of the max (documented)
        mn, jmn = torch.where(valid, kap, torch.inf).min(1)
        out["mx"].append(mx), out["jmx"].append(jmx), out["mn"].append(mn), out["jmn"].append(jmn)
        r = torch.arange(r1 - r0, device=Ak.device)
        out["dz"].append(valid[r, r + r0].to(F64))
        out["dv"].append(kv[r, r + r0])
    return {c: torch.cat(v) for c, v in out.items()}


def _scan(X: torch.Tensor, Z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exclusive prefix aggregates over key rows j < i of X [key_pos, n_k] where Z: cnt, s, mx/jmx, mn/jmn."""
    T, nk = X.shape
    mx, jmx = torch.cummax(torch.where(Z, X, -torch.inf), 0)
    mn, jmn = torch.cummin(torch.where(Z, X, torch.inf), 0)
    inc = {"cnt": torch.cumsum(Z.to(F64), 0), "s": torch.cumsum(X, 0), "mx": mx, "jmx": jmx, "mn": mn, "jmn": jmn}
    first = {"cnt": 0.0, "s": 0.0, "mx": -torch.inf, "mn": torch.inf, "jmx": 0, "jmn": 0}
    return {c: torch.cat([torch.full((1, nk), first[c], dtype=v.dtype, device=X.device), v[:-1]]) for c, v in inc.items()}


def key_aggregates_scan(Ak: torch.Tensor, causal: bool, diag: bool, bos_key: bool, bos_query: bool) -> dict:
    """`key_aggregates` for raw (uncentred, unweighted) values and the engine's selection masks, by
    scans over the key positions: T·n_k instead of T²·n_k. κ = ã ≥ 0, so Σ|κ| = Σκ.

    causal: keys j ≤ i (else all j); diag: cell i = j selected; bos_key / bos_query: key 0 / query 0 left out.
    """
    T, nk = Ak.shape
    X = Ak.clone()
    if bos_key:
        X[0] = 0.0
    Z = X != 0
    out = _scan(X, Z)  # keys j < i
    if not causal:  # and keys j > i: the same scan over the reversed positions
        suf = _scan(X.flip(0), Z.flip(0))
        suf = {c: v.flip(0) for c, v in suf.items()}
        suf["jmx"], suf["jmn"] = T - 1 - suf["jmx"], T - 1 - suf["jmn"]
        for c in ("cnt", "s"):
            out[c] = out[c] + suf[c]
        for c, better in (("mx", torch.gt), ("mn", torch.lt)):
            take = better(suf[c], out[c])
            out[c], out["j" + c] = torch.where(take, suf[c], out[c]), torch.where(take, suf["j" + c], out["j" + c])
    dz = Z & diag
    out["dz"], out["dv"] = dz.to(F64), torch.where(dz, X, 0.0)
    if diag:
        rows = torch.arange(T, device=X.device)[:, None].expand(T, nk)
        out["cnt"], out["s"] = out["cnt"] + out["dz"], out["s"] + out["dv"]
        for c, better in (("mx", torch.gt), ("mn", torch.lt)):
            take = dz & better(X, out[c])
            out[c], out["j" + c] = torch.where(take, X, out[c]), torch.where(take, rows, out["j" + c])
    if bos_query:
        for c, v in (("cnt", 0.0), ("s", 0.0), ("mx", -torch.inf), ("mn", torch.inf), ("dz", 0.0), ("dv", 0.0)):
            out[c][0] = v
    out["abs"] = out["s"]
    return out


def _extreme(a_e: torch.Tensor, i_e: torch.Tensor, f_e: torch.Tensor, nq: int, kx: torch.Tensor,
             jx: torch.Tensor, how: str):
    """max (how='amax') or min over the query entries e = (i_e, f_e, a_e > 0) of a_e · kx[i_e, g]:
    the max-times product, [n_q, n_k], with the (i, j) of the first entry that attains it (features
    without entries: ±inf, and an arbitrary cell: they have no co-activation row).

    Features are taken by their number of entries c: the entries of those with c entries form one
    [features, c, n_k] block of products, reduced along c by max/min, which return the first index of
    the extreme (documented; entries are in row order within a feature, so the first is the earliest
    row). One pass over the products: 0.17–0.38 → 0.12 s per GPT-2-shaped sample against a scatter
    reduction followed by a search for the first equal product."""
    nk, E, dev = kx.shape[1], len(a_e), kx.device
    best = torch.full((nq, nk), -torch.inf if how == "amax" else torch.inf, dtype=F64, device=dev)
    first = torch.zeros((nq, nk), dtype=torch.long, device=dev)  # the entry of each extreme
    if E == 0:
        return best, first, first.clone()
    counts = torch.bincount(f_e, minlength=nq)
    order = torch.sort(f_e, stable=True).indices  # entries by feature, in entry (row) order within one
    starts = torch.cumsum(counts, 0) - counts
    for c in torch.unique(counts[counts > 0]).tolist():
        feats = (counts == c).nonzero().squeeze(1)
        entries = order[starts[feats, None] + torch.arange(c, device=dev)]  # [features, c]
        rows = max(1, BUDGET // (c * nk))
        for r0 in range(0, len(feats), rows):
            f, e = feats[r0:r0 + rows], entries[r0:r0 + rows]
            P = a_e[e, None] * kx[i_e[e]]  # [features, c, n_k]; a > 0: ±inf (no selected active key) stays ±inf
            if c == 1:  # a feature's one entry: its products are its extremes
                best[f], first[f] = P[:, 0], e.expand(-1, nk)
            else:
                v, w = P.max(1) if how == "amax" else P.min(1)
                best[f], first[f] = v, e.gather(1, w)
    i = i_e[first]
    return best, i, jx.gather(0, i)


def _diagonal(r_e: torch.Tensor, f_e: torch.Tensor, a_e: torch.Tensor, dz: torch.Tensor, dv: torch.Tensor,
              nq: int, raw: bool) -> dict[str, torch.Tensor]:
    """The diagonal columns dn = Bqᵀ·dz, ds = Aqᵀ·dv, dabs = Aqᵀ·|dv| ([n_q, n_k]) without a GEMM.

    dz, dv [query_pos, n_k] are non-zero only where key feature g is active at j = i (dv ⊆ dz), so each
    row i contributes the outer product of its query entries (r_e = i, f_e, a_e) with its few diagonal
    key entries: T·K·L terms instead of T·n_q·n_k. raw: dv = ã ≥ 0, so dabs is ds."""
    R, nk = dz.shape
    dev = dz.device
    rk, gk = (dz != 0).nonzero(as_tuple=True)  # the diagonal key entries, by row
    per_row = torch.bincount(rk, minlength=R)
    rep = per_row[r_e]  # combinations of each query entry
    qe = torch.repeat_interleave(torch.arange(len(r_e), device=dev), rep)
    within = torch.arange(len(qe), device=dev) - torch.repeat_interleave(torch.cumsum(rep, 0) - rep, rep)
    ke = (torch.cumsum(per_row, 0) - per_row)[r_e[qe]] + within  # the combination's key entry
    idx = f_e[qe] * nk + gk[ke]
    zero = torch.zeros(nq * nk, dtype=F64, device=dev)
    v = dv[rk, gk][ke]
    out = {"dn": zero.clone().index_add_(0, idx, dz[rk, gk][ke]).view(nq, nk),
           "ds": zero.clone().index_add_(0, idx, a_e[qe] * v).view(nq, nk)}
    out["dabs"] = out["ds"] if raw else zero.index_add_(0, idx, a_e[qe] * v.abs()).view(nq, nk)
    return out


def pair_key(slot, q_gid: torch.Tensor, k_gid: torch.Tensor, Gq: int, Gk: int) -> torch.Tensor:
    """int64 key of (head slot, query global id, key global id); Gq, Gk = ids per side + 1."""
    return (slot * Gq + q_gid.long()) * Gk + k_gid.long()


def split_key(key: torch.Tensor, Gq: int, Gk: int):
    """pair_key⁻¹ → (slot, q_gid, k_gid)."""
    rest = key // Gk
    return rest // Gq, rest % Gq, key % Gk


def sample_table(qa, qid, ka, kid, sel, amask, centre: bool, weight, spans: tuple[int, int], slot,
                 b0: int, layout: tuple | None = None) -> dict | None:
    """The co-activation table of a group of samples (see the module docstring), None if nothing is
    active. The group's features are pooled: its query entries are the rows (b, i) of one dense
    [batch·query_pos, n_q] matrix, so the query contraction is one GEMM for the whole group.

    qa, qid [batch, query_pos, K] (ã ≥ 0 and global ids; ã = 0: absent); ka, kid [batch, key_pos, L];
    sel, amask [query_pos, key_pos] bool; weight [batch, query_pos, key_pos] or None; spans = (Gq, Gk)
    for the keys; slot: the head slot of the keys; b0: sample index of the group's first sample;
    layout: (causal, diag, bos_key, bos_query) describing sel when it is the engine's selection mask
    (then raw values use `key_aggregates_scan`).
    """
    B, T, K = qa.shape
    fq, Aq = _dense(qa.reshape(B * T, K), qid.reshape(B * T, K))  # [B·T, n_q]
    fk, Ak = _dense(ka.reshape(B * T, -1), kid.reshape(B * T, -1))  # [B·T, n_k]
    if len(fq) == 0 or len(fk) == 0:
        return None
    if layout is not None and not centre and weight is None:
        per = [key_aggregates_scan(Ak[b * T:(b + 1) * T], *layout) for b in range(B)]
    else:
        per = [key_aggregates(Ak[b * T:(b + 1) * T], sel, amask, centre, None if weight is None else weight[b])
               for b in range(B)]
    raw = all(p["abs"] is p["s"] for p in per)  # raw values (the scan): κ = ã ≥ 0, no -0.0 (`_dense`)
    agg = per[0] if B == 1 else {c: torch.cat([p[c] for p in per]) for c in per[0] if not (raw and c == "abs")}
    del per
    Bq = (Aq != 0).to(F64)
    r_e, f_e = (Aq != 0).nonzero(as_tuple=True)
    a_e = Aq[r_e, f_e]
    n = Bq.T @ agg["cnt"]  # counts < 2^53: exact in float64
    t = {"n": n, "s": Aq.T @ agg["s"], **_diagonal(r_e, f_e, a_e, agg["dz"], agg["dv"], len(fq), raw)}
    t["abs"] = t["s"] if raw else Aq.T @ agg["abs"]  # raw: |κ| is κ bit for bit, Σ|x| = Σx
    for c, how in (("mx", "amax"), ("mn", "amin")):
        t[c], row, j = _extreme(a_e, r_e, f_e, len(fq), agg[c], agg["j" + c], how)
        t[c + "_c"] = (row + b0 * T) * T + j  # row = b_local · T + i
    flat = (n > 0).view(-1).nonzero().squeeze(1)  # row-major, as 2-D nonzero
    fl, gl = flat // n.shape[1], flat % n.shape[1]
    out, done = {}, {}
    for c, v in t.items():  # one 1-D gather per distinct tensor (raw values share Σx and Σ|x|, and keep sharing)
        out[c] = done[id(v)] if id(v) in done else v.reshape(-1).index_select(0, flat)
        done.setdefault(id(v), out[c])
    out["n"] = out["n"].round().long()
    out["dn"] = out["dn"].round().long()
    out["key"] = pair_key(slot, fq[fl], fk[gl], *spans)
    return out


def sample_groups(qa: torch.Tensor, qid: torch.Tensor, ka: torch.Tensor, kid: torch.Tensor,
                  budget: int = 1 << 22) -> list[tuple[int, int]]:
    """Consecutive sample ranges [b0, b1) whose pooled n_q · n_k stays ≤ budget (one sample at least):
    small dictionaries pool a whole batch, GPT-2-sized ones go sample by sample."""
    B = qa.shape[0]
    groups, b0 = [], 0
    while b0 < B:
        b1 = b0 + 1
        while b1 < B:
            nq = torch.unique(qid[b0:b1 + 1][qa[b0:b1 + 1] != 0]).numel()
            nk = torch.unique(kid[b0:b1 + 1][ka[b0:b1 + 1] != 0]).numel()
            if nq * nk > budget:
                break
            b1 += 1
        groups.append((b0, b1))
        b0 = b1
    return groups


def head_stats(co: dict, G: torch.Tensor) -> dict[str, torch.Tensor]:
    """One head's exact pair statistics from a co-activation table and G [n_pairs] (float64, G_h[f, g]
    of each row; 1 for per-cell tables): n, sum, abs_sum, max, min (float32 of the float64 product),
    diag_n, diag_sum, diag_abs_sum, and the cells of the max and the min (max_c, min_c: `decode_cell`)."""
    pos = G >= 0
    # G ≥ 0: G·mx ≥ G·mn, G < 0: G·mn ≥ G·mx (rounding is monotone), so max/min of the two products is
    # the head's max/min exactly as the sign test would pick it
    a, b = G * co["mx"], G * co["mn"]
    hi, lo = torch.maximum(a, b), torch.minimum(a, b)
    out = {"n": co["n"], "sum": G * co["s"], "abs_sum": G.abs() * co["abs"], "max": hi.float(),
           "min": lo.float(), "diag_n": co["dn"], "diag_sum": G * co["ds"], "diag_abs_sum": G.abs() * co["dabs"]}
    # G < 0 swaps which co-activation extreme gives the head's max
    out["max_c"], out["min_c"] = torch.where(pos, co["mx_c"], co["mn_c"]), torch.where(pos, co["mn_c"], co["mx_c"])
    return out


def decode_cell(code: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell code (b · T + i) · T + j → (sample b, query i, key j)."""
    return code // (T * T), (code // T) % T, code % T


def percell_rows(qv, qon, qid, kv, kon, kid, sel, amask, centre: bool, weight, spans: tuple[int, int], slot: int,
                 b: int) -> dict | None:
    """Every per-cell term of one (sample, head) as co-activation rows (n = 1, G ≡ 1): the exact path
    for rotary heads. qv [query_pos, K, d_head] (ã·R_i U_f / attn_scale, 0 where absent), kv [key_pos,
    L, d_head] (ã·R_j V_g); qon/kon [pos, K] bool: the slot is active; qid/kid global ids; sel/amask [query_pos, key_pos]; weight or None.
    Centring subtracts, per (i, f, g), the mean of v(i, j', f, g) over the keys j' of amask row i
    (absent pairs count 0), as `blocks.block_values` does."""
    T, K, _ = qv.shape
    L = kv.shape[1]
    v = torch.einsum("ikd,jld->ikjl", qv, kv)
    if centre:
        buckets, bk = torch.unique(kid, return_inverse=True)  # bucket = key feature of each key slot
        vm = (v * amask[:, None, :, None]).reshape(T, K, -1)
        sums = v.new_zeros(T, K, len(buckets)).scatter_add_(2, bk.reshape(1, 1, -1).expand(T, K, -1), vm)
        mean = sums / amask.sum(1).clamp(min=1).to(v.dtype)[:, None, None]
        v = v - mean.gather(2, bk.reshape(1, 1, -1).expand(T, K, -1)).view(T, K, T, L)
    if weight is not None:
        v = v * weight[:, None, :, None].to(v.dtype)
    present = qon[:, :, None, None] & kon[None, None] & sel[:, None, :, None]
    i, k, j, l = present.nonzero(as_tuple=True)
    if len(i) == 0:
        return None
    x, d = v[i, k, j, l], (i == j)
    df = d.to(v.dtype)
    c = (b * T + i) * T + j
    return {"key": pair_key(slot, qid[i, k], kid[j, l], *spans), "n": torch.ones_like(i), "s": x, "abs": x.abs(),
            "dn": d.long(), "ds": x * df, "dabs": x.abs() * df, "mx": x, "mn": x, "mx_c": c, "mn_c": c}
