"""Per-pair statistics of an accumulation run in torch, keyed by the engine's one int64 pair key
(`fra_core.fra.aggregate.PairCodec`) and reduced by its one kernel (`reduce_by_key`).

An aggregate table is a dict of 1-D tensors: key, n, sum, abs_sum, max, min, diag_n, diag_sum,
diag_abs_sum (sums in float64: millions of float32 terms, merged shard by shard). Merging two tables
is the same reduction as aggregating raw entries, so "one job" and "two resumed halves" agree to
float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from fra_core.contracts import EXAMPLES_SCHEMA, PAIRS_SCHEMA
from fra_core.fra.aggregate import PairCodec, reduce_by_key

ADD = ("n", "sum", "abs_sum", "diag_n", "diag_sum", "diag_abs_sum")
STAT_COLUMNS = ADD + ("max", "min")


def entry_stats(value: torch.Tensor, diag: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-entry statistics (each entry is a table of its own with n = 1)."""
    v64 = value.double()
    a64 = v64.abs()
    d = diag.to(torch.float64)
    return {"n": torch.ones_like(value, dtype=torch.long), "sum": v64, "abs_sum": a64,
            "diag_n": diag.long(), "diag_sum": v64 * d, "diag_abs_sum": a64 * d,
            "max": value.float(), "min": value.float()}


def merge(tables: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    tables = [t for t in tables if t is not None]
    if len(tables) == 1:
        return tables[0]
    key = torch.cat([t["key"] for t in tables])
    return reduce_by_key(key, {c: torch.cat([t[c] for t in tables]) for c in STAT_COLUMNS})


def top_per_group(inv: torch.Tensor, n_groups: int, score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (unordered) of the (up to) k rows with the largest score in each group (`inv` = group of
    each row; ties: the earlier row).

    Groups with ≤ k rows keep them all (no work). For the other rows and small k (the examples per pair:
    3), k rounds of "each group's max, then its first row attaining it" (two scatter reductions over the
    rows, O(rows) each) pick the same rows as sorting; larger k sorts: two stable sorts — by score, then by
    group — list each group's rows best first, and a row is kept when its rank is below k."""
    if k <= 0 or len(inv) == 0:
        return torch.zeros(0, dtype=torch.long)
    counts = torch.bincount(inv, minlength=n_groups)
    full = counts[inv] <= k
    if bool(full.all()):
        return torch.arange(len(inv))
    keep = [full.nonzero().squeeze(1)]
    rows = (~full).nonzero().squeeze(1)  # rows of the groups with more than k rows
    g, sc = inv[rows], score[rows].to(torch.float64)
    if k <= 8:
        left = torch.ones(len(rows), dtype=torch.bool)
        pos = torch.arange(len(rows))
        for _ in range(k):
            s = torch.where(left, sc, -torch.inf)
            best = torch.full((n_groups,), -torch.inf, dtype=torch.float64).scatter_reduce_(0, g, s, "amax")
            hit = left & (s == best[g])
            first = torch.full((n_groups,), len(rows), dtype=torch.long).scatter_reduce_(0, g[hit], pos[hit], "amin")
            take = first[first < len(rows)]
            keep.append(rows[take])
            left[take] = False
        return torch.cat(keep)
    by_score = torch.argsort(sc, descending=True, stable=True)  # equal scores keep row order
    order = by_score[torch.argsort(g[by_score], stable=True)]  # group-major, best first inside a group
    c = torch.bincount(g, minlength=n_groups)
    first = torch.cumsum(c, 0) - c  # position of each group's first row in `order`
    rank = torch.arange(len(order)) - first[g[order]]
    return torch.cat(keep + [rows[order[rank < k]]])


def top_per_key(key: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the (up to) k rows with the largest score (>= 0) within each key."""
    if k <= 0 or len(key) == 0:
        return torch.zeros(0, dtype=torch.long)
    uniq, inv = torch.unique(key, return_inverse=True)
    return top_per_group(inv, len(uniq), score, k)


@dataclass
class Examples:
    """Candidate example contexts: key, sample, q_pos, k_pos, value (1-D tensors)."""

    key: torch.Tensor
    sample: torch.Tensor
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    value: torch.Tensor

    def top(self, k: int, inverse: tuple[torch.Tensor, torch.Tensor] | None = None) -> "Examples":
        """The k largest-|value| examples per key (`inverse`: precomputed unique of self.key)."""
        if inverse is None:
            idx = top_per_key(self.key, self.value.abs(), k)
        else:
            idx = top_per_group(inverse[1], len(inverse[0]), self.value.abs(), k)
        return Examples(*(t[idx] for t in (self.key, self.sample, self.q_pos, self.k_pos, self.value)))

    @staticmethod
    def cat(items: list["Examples"]) -> "Examples":
        fields = ("key", "sample", "q_pos", "k_pos", "value")
        return Examples(*(torch.cat([getattr(e, f) for e in items]) for f in fields))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def pairs_table(table: dict[str, torch.Tensor], codec: PairCodec, layer: int) -> pa.Table:
    parts = {**codec.decode(table["key"]), **{c: table[c] for c in STAT_COLUMNS}}
    parts["layer"] = torch.full_like(table["key"], layer)
    return pa.table({f.name: pa.array(_np(parts[f.name]).astype(f.type.to_pandas_dtype()), f.type)
                     for f in PAIRS_SCHEMA})


def examples_table(ex: Examples | None, codec: PairCodec, layer: int) -> pa.Table:
    if ex is None:
        return EXAMPLES_SCHEMA.empty_table()
    parts = {**codec.decode(ex.key), "sample": ex.sample, "q_pos": ex.q_pos, "k_pos": ex.k_pos, "value": ex.value,
             "layer": torch.full_like(ex.key, layer)}
    return pa.table({f.name: pa.array(_np(parts[f.name]).astype(f.type.to_pandas_dtype()), f.type)
                     for f in EXAMPLES_SCHEMA})
