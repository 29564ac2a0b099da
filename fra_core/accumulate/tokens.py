"""Which tokens each feature fires on: the raw material of the pair tables' automatic feature labels.

For every active (source, feature) at a position the job counts the token there ("tok") and the token
before it ("prev"; "∅" at position 0). Counts are folded as batches arrive (int64 keys + torch.unique)
and each shard keeps the `TOP_TOKENS` most frequent tokens per (source, feature, kind), with their
counts; the store sums them over shards and divides by the feature's active-token count (a token that
never makes any shard's top list is missed, so a share is a lower bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from fra_core import contracts

TOP_TOKENS = 3
KIND_NAMES = ("tok", "prev")
NO_TOKEN = "∅"


class FeatureTokenCounter:
    """Counts per (run source, feature, kind, token id) for one shard."""

    def __init__(self, d_max: int, d_vocab: int):
        self.d_max, self.n_tok = d_max, d_vocab + 1  # token id −1 (no previous token) is stored as 0
        self.keys, self.counts = [], []

    def add(self, run_src: torch.Tensor, feature: torch.Tensor, tokens: torch.Tensor, prev: torch.Tensor) -> None:
        """1-D, one entry per active (position, feature): its run source, feature id, token and previous
        token (−1 at position 0)."""
        base = (run_src.long() * self.d_max + feature.long()) * len(KIND_NAMES)
        keys = torch.cat([base * self.n_tok + tokens.long() + 1, (base + 1) * self.n_tok + prev.long() + 1])
        self.keys.append(keys)
        self.counts.append(torch.ones_like(keys))
        if len(self.keys) >= 8:  # keep memory bounded: fold as we go
            self._fold()

    def _fold(self) -> None:
        """One (unique key, count) pair of tensors from everything added so far."""
        if self.keys:  # even a single batch holds one key per activation, with repeats
            uniq, inv = torch.unique(torch.cat(self.keys), return_inverse=True)
            self.keys = [uniq]
            self.counts = [torch.zeros(len(uniq), dtype=torch.long).scatter_add_(0, inv, torch.cat(self.counts))]

    def table(self, token_str: Callable[[Sequence[int]], list[str]]) -> pa.Table:
        """The top tokens per (source, feature, kind) as a FEATURE_TOKENS_SCHEMA table; token_str maps
        token ids to their strings."""
        self._fold()
        if not self.keys:
            return contracts.FEATURE_TOKENS_SCHEMA.empty_table()
        keys, counts = self.keys[0].numpy(), self.counts[0].numpy()
        group, token = keys // self.n_tok, keys % self.n_tok - 1
        order = np.lexsort((token, -counts, group))  # per group: most frequent first, ties by token id
        group, token, counts = group[order], token[order], counts[order]
        starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
        rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
        keep = rank < TOP_TOKENS
        group, token, counts = group[keep], token[keep], counts[keep]
        ids = sorted({int(t) for t in token if t >= 0})
        names = dict(zip(ids, token_str(ids))) if ids else {}
        src_feat, kind = group // len(KIND_NAMES), group % len(KIND_NAMES)
        return pa.table({"src": pa.array((src_feat // self.d_max).astype(np.uint16)),
                         "feature": pa.array((src_feat % self.d_max).astype(np.uint32)),
                         "kind": pa.array([KIND_NAMES[k] for k in kind], pa.string()),
                         "token": pa.array([names[t] if t >= 0 else NO_TOKEN for t in token.tolist()], pa.string()),
                         "n": pa.array(counts.astype(np.uint64))}, schema=contracts.FEATURE_TOKENS_SCHEMA)
