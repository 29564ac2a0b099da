"""Per-pair aggregates of an FRA pair table, with torch.unique / scatter (no Python dicts).

Pairs are keyed by one int64: key = (head · G_q + q_gid) · G_k + k_gid, where gid = offset[source] +
feature is the global feature id of a side (G = total features of a side, + 1). For GPT-2 Small with
one 24 576-feature SAE per layer, 12 · (11 · 24 577)² ≈ 8.8e11 ≪ 2⁶³.
"""

from __future__ import annotations

import torch

AGG_COLUMNS = ("head", "q_source", "q_feature", "k_source", "k_feature", "n", "sum", "abs_sum", "max", "min",
               "best_batch", "best_query_pos", "best_key_pos", "best_value")


def _gid(offsets: list[int], source: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Global feature id, int64 (the entry table's columns are int32: their key products would overflow)."""
    if len(offsets) == 2:  # one source: the feature id is the global id
        return feature.long()
    return torch.tensor(offsets, device=source.device)[source.long()] + feature.long()


def _ungid(offsets: list[int], gid: torch.Tensor):
    offs = torch.tensor(offsets, device=gid.device)
    src = torch.searchsorted(offs, gid, right=True) - 1
    return src, gid - offs[src]


CHUNK_ROWS = 1 << 21  # entries reduced at a time: bounds the sort's temporaries (~100 MB per int64 column)


def pair_aggregates(result, sample_offset: int = 0, chunk_rows: int = CHUNK_ROWS) -> dict[str, torch.Tensor]:
    """Aggregate `result.entries` per (head, q feature, k feature).

    Returns 1-D tensors with columns AGG_COLUMNS: n, sum, abs_sum, max, min of the kept values, and the
    entry with the largest |value| (best_batch = sample_offset + batch index, query/key pos, value).
    Entries are reduced `chunk_rows` at a time and the (far smaller) chunk tables merged: the same
    table, with sums added in another order (ties for the best entry still go to the first one).
    """
    e, oq, ok = result.entries, result.q_side.offsets, result.k_side.offsets
    n = int(e["value"].numel())
    if n <= chunk_rows:
        return _aggregate_rows(e, oq, ok, sample_offset)
    tables = [_aggregate_rows({c: t[r0:r0 + chunk_rows] for c, t in e.items()}, oq, ok, sample_offset)
              for r0 in range(0, n, chunk_rows)]
    return merge_pair_tables(tables, oq, ok)


def _aggregate_rows(e: dict, oq: list[int], ok: list[int], sample_offset: int) -> dict[str, torch.Tensor]:
    Gq, Gk = oq[-1] + 1, ok[-1] + 1
    key = (e["head"].long() * Gq + _gid(oq, e["q_source"], e["q_feature"])) * Gk + _gid(ok, e["k_source"], e["k_feature"])
    best = {"best_batch": e["batch"] + sample_offset if sample_offset else e["batch"], "best_query_pos": e["query_pos"], "best_key_pos": e["key_pos"]}
    v = e["value"]
    table = reduce_pairs(key, {"n": None, "sum": v, "abs_sum": v.abs(), "max": v, "min": v, "best_value": v, **best})
    return _with_pair_columns(table, oq, ok)


def _with_pair_columns(table: dict[str, torch.Tensor], oq: list[int], ok: list[int]) -> dict[str, torch.Tensor]:
    """reduce_pairs output (int64 "key") → AGG_COLUMNS (head, q/k source and feature decoded from the key)."""
    Gq, Gk = oq[-1] + 1, ok[-1] + 1
    k = table.pop("key")
    rest = k // Gk
    out = {"head": rest // Gq}
    out["q_source"], out["q_feature"] = _ungid(oq, rest % Gq)
    out["k_source"], out["k_feature"] = _ungid(ok, k % Gk)
    out.update(table)
    return {c: out[c] for c in AGG_COLUMNS}


def reduce_pairs(key: torch.Tensor, cols: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Group rows by int64 key: n/sum/abs_sum add, max/min reduce, best_* follow the largest |best_value|.

    cols["n"] may be None (each row counts 1); sum / max / min / best_value may be the same tensor.
    """
    uniq, inv = torch.unique(key, return_inverse=True)
    U, dev = len(uniq), key.device
    out = {"key": uniq}
    out["n"] = torch.bincount(inv, minlength=U) if cols["n"] is None else \
        torch.zeros(U, dtype=cols["n"].dtype, device=dev).scatter_add_(0, inv, cols["n"])
    for c in ("sum", "abs_sum"):
        out[c] = torch.zeros(U, dtype=cols[c].dtype, device=dev).scatter_add_(0, inv, cols[c])
    for c, how in (("max", "amax"), ("min", "amin")):
        out[c] = torch.empty(U, dtype=cols[c].dtype, device=dev).scatter_reduce_(0, inv, cols[c], how,
                                                                                  include_self=False)
    a = cols["best_value"].abs()
    amax = torch.zeros(U, dtype=a.dtype, device=dev).scatter_reduce_(0, inv, a, "amax", include_self=False)
    rows = (a == amax[inv]).nonzero().squeeze(1)  # rows holding their pair's largest |value|
    first = torch.full((U,), len(key), device=dev).scatter_reduce_(0, inv[rows], rows, "amin")
    for c in ("best_value", "best_batch", "best_query_pos", "best_key_pos"):
        out[c] = cols[c][first]
    return out


def merge_pair_tables(tables: list[dict[str, torch.Tensor]], q_offsets: list[int],
                      k_offsets: list[int]) -> dict[str, torch.Tensor]:
    """Merge aggregate tables of the same dictionaries (offsets = result.q_side.offsets / k_side.offsets)."""
    cat = {c: torch.cat([t[c] for t in tables]) for c in AGG_COLUMNS}
    Gq, Gk = q_offsets[-1] + 1, k_offsets[-1] + 1
    key = ((cat["head"].long() * Gq + _gid(q_offsets, cat["q_source"], cat["q_feature"])) * Gk
           + _gid(k_offsets, cat["k_source"], cat["k_feature"]))
    cols = {c: cat[c] for c in ("n", "sum", "abs_sum", "max", "min", "best_value", "best_batch",
                                "best_query_pos", "best_key_pos")}
    return _with_pair_columns(reduce_pairs(key, cols), q_offsets, k_offsets)
