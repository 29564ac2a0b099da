"""Reducing co-activation tables: two sorted ones in order, many in one pass, any by sort and scatter.

A shard's co-activation tables (one per sample group, `allpairs.sample_table`) have distinct, ascending
keys, but they share only part of their pairs (a GPT-2-shaped shard of 32 samples: 55 M rows, 34 M
distinct). Merging them two at a time touches each row once per level of the merge tree, and folding
every few batches into a growing table touches that table again at every fold: the cost per sample grew
with the shard (GPT-2 shape: 0.15 s of merging per sample at 2 samples, ≈ 2 s per sample at 30).

`merge_many` reduces any number of them in one pass over their rows. A key is (row, col) = (slot · Gq +
q_gid, k_gid); rows and cols are first replaced by their ranks among the ids the tables use, so the
shard's pairs live in a dense [n_rows, n_cols] space, which is walked a block of rows at a time: in each
block the pairs present are marked, their ranks read off in order (the output stays sorted by key), and
every table's rows of the block land on their output row by direct addressing. No sort, and each input
row is read once.

The tables are combined in their order, as `reduce_tables` defines it: sums are the first
table's value plus each later one in turn, extremes keep the earliest table's cell on ties. Within one
table a block's rows have distinct output rows, so every step is a plain gather / scatter (deterministic
on every device).
"""

from __future__ import annotations

import torch

from fra_core.fra.allpairs import ADD_CO, CO_COLUMNS, F64

BLOCK = 1 << 23  # dense (row, col) cells per block: a column of its output rows stays in cache; few ops


def _ranks(ids: list[torch.Tensor], span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct ids of all tensors, ascending; a map id → its rank, [span] int64)."""
    seen = torch.zeros(span, dtype=torch.bool, device=ids[0].device)
    for x in ids:
        seen[x] = True
    distinct = seen.nonzero().squeeze(1)
    rank = torch.zeros(span, dtype=torch.long, device=seen.device)
    rank[distinct] = torch.arange(len(distinct), device=seen.device)
    return distinct, rank


def merge_many(tables: list[dict], n_col_ids: int, block: int = BLOCK) -> dict:
    """`reduce_tables(tables)` of tables whose keys are strictly ascending, in one pass.

    n_col_ids: the key's column span (key = row · n_col_ids + col; Gk of `allpairs.pair_key`). Returns a
    table with strictly ascending keys; columns aliased in every input stay aliased."""
    dev = tables[0]["key"].device
    rows = [t["key"] // n_col_ids for t in tables]
    cols = [t["key"] % n_col_ids for t in tables]
    row_ids, row_rank = _ranks(rows, max((int(r[-1]) + 1 for r in rows if len(r)), default=1))  # r ascends
    col_ids, col_rank = _ranks(cols, n_col_ids)
    nc = max(len(col_ids), 1)
    local = [row_rank[r] * nc + col_rank[c] for r, c in zip(rows, cols)]  # ascending in each table
    del rows, cols
    span = len(row_ids) * nc
    step = min(max(1, block // nc) * nc, max(span, 1))  # whole rows per block
    edges = list(range(0, span, step)) + [span]
    cuts = [torch.searchsorted(x, torch.tensor(edges, device=dev)).tolist() for x in local]
    found = []  # per block: the present local ids, ascending
    for b in range(len(edges) - 1):
        mark = torch.zeros(edges[b + 1] - edges[b], dtype=torch.bool, device=dev)
        for x, cut in zip(local, cuts):
            mark[x[cut[b]:cut[b + 1]] - edges[b]] = True
        found.append(mark.nonzero().squeeze(1) + edges[b])
    present = torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=dev)
    alias = _aliases(*tables)
    out = {"key": row_ids[present // nc] * n_col_ids + col_ids[present % nc]}
    for c in CO_COLUMNS[1:]:
        if c not in alias:
            out[c] = torch.empty(len(present), dtype=tables[0][c].dtype, device=dev)
    seen = torch.zeros(len(present), dtype=torch.bool, device=dev)
    start = 0
    for b, ids in enumerate(found):
        pos = torch.empty(edges[b + 1] - edges[b], dtype=torch.long, device=dev)  # read only where marked
        pos[ids - edges[b]] = torch.arange(start, start + len(ids), device=dev)
        steps = []  # (table, its rows lo:hi, their output rows, those an earlier table reached: in t, in out)
        for t, x, cut in zip(tables, local, cuts):
            lo, hi = cut[b], cut[b + 1]
            if lo < hi:
                at = pos.index_select(0, x[lo:hi] - edges[b])
                both = seen.index_select(0, at).nonzero().squeeze(1)
                steps.append((t, lo, hi, at, both + lo, at.index_select(0, both)))
                seen.index_fill_(0, at, True)
        _combine(out, steps, alias)  # column by column: one column's block of rows stays in cache
        start += len(ids)
    for c, same in alias.items():
        out[c] = out[same]
    return out


def _combine(out: dict, steps: list[tuple], alias: dict) -> None:
    """Fold each step's rows (t, lo, hi, at, mine, theirs) into output rows `at`, in table order: the first
    table to reach a row copies its values, a later one adds its sums and replaces an extreme only when
    strictly better. Each table's rows are copied, then the rows an earlier table reached (t's rows `mine`,
    output rows `theirs`) get their combination."""
    for c in ADD_CO:
        if c not in alias:
            o = out[c]
            for t, lo, hi, at, mine, theirs in steps:
                both = o.index_select(0, theirs) + t[c].index_select(0, mine)
                o.index_copy_(0, at, t[c][lo:hi])
                o.index_copy_(0, theirs, both)
    for c, better in (("mx", torch.gt), ("mn", torch.lt)):
        o, oc = out[c], out[c + "_c"]
        for t, lo, hi, at, mine, theirs in steps:
            v, cur = t[c].index_select(0, mine), o.index_select(0, theirs)
            take = better(v, cur)
            cell = torch.where(take, t[c + "_c"].index_select(0, mine), oc.index_select(0, theirs))
            o.index_copy_(0, at, t[c][lo:hi])
            oc.index_copy_(0, at, t[c + "_c"][lo:hi])
            o.index_copy_(0, theirs, torch.where(take, v, cur))
            oc.index_copy_(0, theirs, cell)


def reduce_tables(tables: list[dict | None], unique_keys: bool = False, n_col_ids: int | None = None
                  ) -> dict | None:
    """Merge co-activation tables (or rows with repeated keys): sums add, extremes reduce (their cell:
    the first row that attains them, i.e. the earliest table — tables are merged in sample order, the
    earlier always on the left, so the result is deterministic). unique_keys: each table's keys are
    distinct (a `sample_table`), so one table is returned as it is, two sorted ones are merged in order
    (`merge_sorted`) and more in one pass (`merge_many`, given n_col_ids = the key's Gk)."""
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    if unique_keys and len(tables) == 1:
        return tables[0]
    if unique_keys and all(_ascending(t["key"]) for t in tables):  # every table is sorted: merge in order
        if len(tables) > 2 and n_col_ids is not None:
            return merge_many(tables, n_col_ids)
        while len(tables) > 1:  # neighbours pairwise (a tree: each row is merged log2(n) times, not up to n)
            tables = [merge_sorted(*tables[i:i + 2]) if i + 1 < len(tables) else tables[i]
                      for i in range(0, len(tables), 2)]
        return tables[0]
    cat = {c: torch.cat([t[c] for t in tables]) for c in CO_COLUMNS}
    uniq, inv = torch.unique(cat["key"], return_inverse=True)
    U, dev = len(uniq), uniq.device
    out = {"key": uniq}
    for c in ADD_CO:
        out[c] = torch.zeros(U, dtype=cat[c].dtype, device=dev).scatter_add_(0, inv, cat[c])
    rows = torch.arange(len(inv), device=dev)
    for c, how in (("mx", "amax"), ("mn", "amin")):
        out[c] = torch.empty(U, dtype=F64, device=dev).scatter_reduce_(0, inv, cat[c], how, include_self=False)
        hit = cat[c] == out[c][inv]
        first = torch.full((U,), len(inv), device=dev).scatter_reduce_(0, inv[hit], rows[hit], "amin")
        out[c + "_c"] = cat[c + "_c"][first]
    return out


def _ascending(key: torch.Tensor) -> bool:
    return bool((key[1:] > key[:-1]).all())


def merge_sorted(a: dict, b: dict) -> dict:
    """`reduce_tables([a, b])` of two tables whose keys are strictly ascending (a `sample_table` or a
    reduction), in O(rows): b's keys are located in a by binary search, and each output row's source row in
    the concatenation a ∪ b is found once (`src`), so a column costs one concatenation and one ordered gather
    (0.64 → 0.30 s for two GPT-2-shaped sample tables of 1.7 M rows, against the scatters this replaced).
    The shared rows then combine as the reduction does: sums a + b (what scatter_add gives, 0 + a + b),
    extremes max/min with a's cell on ties (a is the earlier). A column that is another column of both
    tables (raw values: Σ|x| is Σx) stays that column."""
    ka, kb = a["key"], b["key"]
    dev = ka.device
    pos = torch.searchsorted(ka, kb)  # a's keys below each b key
    found = ka[pos.clamp(max=len(ka) - 1)] == kb if len(ka) else torch.zeros_like(kb, dtype=torch.bool)
    new = (~found).nonzero().squeeze(1)
    # final rows: a's row i after the new b keys below it; the r-th new b key after the a keys below it
    ia = torch.arange(len(ka), device=dev) + torch.searchsorted(kb[new], ka)
    ib = pos[new] + torch.arange(len(new), device=dev)
    src = torch.empty(len(ka) + len(new), dtype=torch.long, device=dev)
    src[ia], src[ib] = torch.arange(len(ka), device=dev), new + len(ka)
    out, alias = {}, _aliases(a, b)
    for c in CO_COLUMNS:
        if c not in alias:
            out[c] = torch.cat([a[c], b[c]]).index_select(0, src)
    fa, fb = pos[found], found.nonzero().squeeze(1)  # the shared keys' rows in a and in b
    at = ia[fa]
    for c in ADD_CO:
        if c not in alias:
            out[c].index_put_((at,), a[c][fa] + b[c][fb])
    for c, better in (("mx", torch.gt), ("mn", torch.lt)):
        va, vb = a[c][fa], b[c][fb]
        take = better(vb, va)  # strictly better: ties keep a's cell
        out[c].index_put_((at,), torch.where(take, vb, va))
        out[c + "_c"].index_put_((at,), torch.where(take, b[c + "_c"][fb], a[c + "_c"][fa]))
    for c, same in alias.items():
        out[c] = out[same]
    return out


def _aliases(*tables: dict) -> dict[str, str]:
    """{column: the earlier column it is, in every table} (a raw `sample_table`'s abs is its s)."""
    out = {}
    for i, c in enumerate(CO_COLUMNS):
        same = next((d for d in CO_COLUMNS[:i] if all(t[c] is t[d] for t in tables)), None)
        if same is not None:
            out[c] = same
    return out
