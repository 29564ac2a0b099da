"""Per-pair aggregation of FRA entries in torch, keyed by one int64 per pair (no Python dicts).

key = (((head · S + q_src) · D + q_feat) · S + k_src) · D + k_feat, with S the run's number of
dictionary sources and D the largest d_sae among them. For GPT-2 Small with 11 upstream 49 152-feature
SAEs: 12 · (11 · 49 152)² ≈ 3.5e12 ≪ 2⁶³.

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

from fra_core.accumulate_shards import EXAMPLES_SCHEMA, PAIRS_SCHEMA

ADD = ("n", "sum", "abs_sum", "diag_n", "diag_sum", "diag_abs_sum")
STAT_COLUMNS = ADD + ("max", "min")


@dataclass(frozen=True)
class PairCodec:
    n_heads: int
    n_sources: int
    d_max: int

    def __post_init__(self):
        span = float(self.n_heads) * (self.n_sources * self.d_max) ** 2
        if span >= 2 ** 62:
            raise ValueError(f"pair keys overflow int64: {self.n_heads} heads x ({self.n_sources} sources x "
                             f"{self.d_max} features)^2 = {span:.3g}")

    def encode(self, head, q_src, q_feat, k_src, k_feat) -> torch.Tensor:
        S, D = self.n_sources, self.d_max
        return (((head.long() * S + q_src.long()) * D + q_feat.long()) * S + k_src.long()) * D + k_feat.long()

    def decode(self, key: torch.Tensor) -> dict[str, torch.Tensor]:
        S, D = self.n_sources, self.d_max
        k_feat, rest = key % D, key // D
        k_src, rest = rest % S, rest // S
        q_feat, rest = rest % D, rest // D
        q_src, head = rest % S, rest // S
        return {"head": head, "q_src": q_src, "q_feat": q_feat, "k_src": k_src, "k_feat": k_feat}


def entry_stats(value: torch.Tensor, diag: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-entry statistics (each entry is a table of its own with n = 1)."""
    v64 = value.double()
    a64 = v64.abs()
    d = diag.to(torch.float64)
    return {"n": torch.ones_like(value, dtype=torch.long), "sum": v64, "abs_sum": a64,
            "diag_n": diag.long(), "diag_sum": v64 * d, "diag_abs_sum": a64 * d,
            "max": value.float(), "min": value.float()}


def reduce_by_key(key: torch.Tensor, cols: dict[str, torch.Tensor],
                  inverse: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Group rows by key (sorted output): additive columns add, max/min reduce.
    `inverse`: a precomputed `torch.unique(key, return_inverse=True)`."""
    uniq, inv = inverse if inverse is not None else torch.unique(key, return_inverse=True)
    U = len(uniq)
    out = {"key": uniq}
    for c in ADD:
        out[c] = torch.zeros(U, dtype=cols[c].dtype).scatter_add_(0, inv, cols[c])
    for c, how in (("max", "amax"), ("min", "amin")):
        out[c] = torch.empty(U, dtype=cols[c].dtype).scatter_reduce_(0, inv, cols[c], how, include_self=False)
    return out


def merge(tables: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    tables = [t for t in tables if t is not None]
    if len(tables) == 1:
        return tables[0]
    key = torch.cat([t["key"] for t in tables])
    return reduce_by_key(key, {c: torch.cat([t[c] for t in tables]) for c in STAT_COLUMNS})


def top_per_group(inv: torch.Tensor, n_groups: int, score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (unordered) of the (up to) k rows with the largest score in each group (`inv` = group of
    each row; ties: the earlier row). Two stable sorts — by score, then by group — list each group's rows
    best first; a row is kept when its rank (position − its group's first position) is below k."""
    if k <= 0 or len(inv) == 0:
        return torch.zeros(0, dtype=torch.long)
    by_score = torch.argsort(score, descending=True, stable=True)  # equal scores keep row order
    rows = by_score[torch.argsort(inv[by_score], stable=True)]  # group-major, best first inside a group
    counts = torch.bincount(inv, minlength=n_groups)
    first = torch.cumsum(counts, 0) - counts  # position of each group's first row in `rows`
    rank = torch.arange(len(rows)) - first[inv[rows]]
    return rows[rank < k]


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
