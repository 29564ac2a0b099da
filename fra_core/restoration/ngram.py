"""Character n-gram baseline for masked-character restoration, using context on BOTH sides of a gap.

A Witten–Bell interpolated character n-gram model (order n) is fitted on the training split. For a
masked position i the score of candidate character c is the log-probability of the window around it:

    score(c) = log P(c | x[i-n+1 .. i-1]) + Σ_{k=1}^{n-1} log P(x[i+k] | x[i+k-n+1 .. i+k-1])   (with x_i = c)

where the right-hand terms run over the known characters right of i (stopping at the next masked
one). Spans are filled left to right, each filled character becoming left context for the next, so a
span's last character sees the right context and its first the left context. This is what a
"both sides" n-gram restorer can do without search; it is the bar the transformer has to clear.

Sequences are handled as Python strings of chr(id) so contexts are cheap hashable slices.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from fra_core.atf import MASK_ID, SPECIALS

_FIRST_CHAR_ID = len(SPECIALS)


class NgramModel:
    def __init__(self, order: int = 4, vocab_size: int = 0):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order = order
        self.vocab_size = vocab_size
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.totals: dict[str, int] = {}
        self.types: dict[str, int] = {}
        self._prob = lru_cache(maxsize=2_000_000)(self._prob_uncached)

    def fit(self, sequences: Iterable[Sequence[int]]) -> "NgramModel":
        """Count n-grams of id sequences (<mask> positions are skipped as targets and break contexts)."""
        for seq in sequences:
            s = "".join(map(chr, seq))
            self.vocab_size = max(self.vocab_size, max(seq, default=0) + 1)
            for i in range(1, len(s)):  # position 0 is <bos>: context only
                if ord(s[i]) == MASK_ID:
                    continue
                for k in range(self.order):
                    if k > i:
                        break
                    ctx = s[i - k:i]
                    if chr(MASK_ID) in ctx:
                        break
                    self.counts[ctx][s[i]] += 1
        self.totals = {ctx: sum(c.values()) for ctx, c in self.counts.items()}
        self.types = {ctx: len(c) for ctx, c in self.counts.items()}
        self.counts = {ctx: dict(c) for ctx, c in self.counts.items()}
        self._prob.cache_clear()
        return self

    @property
    def candidates(self) -> list[str]:
        return [chr(i) for i in range(_FIRST_CHAR_ID, self.vocab_size)]

    def _prob_uncached(self, target: str, ctx: str) -> float:
        """Witten–Bell: P(c|h) = (C(h,c) + T(h)·P(c|h')) / (C(h) + T(h)), h' = h minus its first char."""
        p = 1.0 / max(self.vocab_size - _FIRST_CHAR_ID, 1)
        for k in range(0, len(ctx) + 1):
            h = ctx[len(ctx) - k:]
            total = self.totals.get(h)
            if not total:
                break  # a longer context containing an unseen one is unseen too
            types = self.types[h]
            p = (self.counts[h].get(target, 0) + types * p) / (total + types)
        return p

    def prob(self, target: int, context: Sequence[int]) -> float:
        ctx = "".join(map(chr, context))[-(self.order - 1):] if self.order > 1 else ""
        return self._prob(chr(target), ctx)

    def scores(self, row: str, i: int, known: Sequence[bool]) -> np.ndarray:
        """Log-scores of every candidate character at position i of `row` (a chr(id) string)."""
        n = self.order
        left = row[max(0, i - n + 1):i]
        out = np.empty(len(self.candidates))
        right_end = i + 1
        while right_end < len(row) and right_end < i + n and known[right_end]:
            right_end += 1
        for idx, c in enumerate(self.candidates):
            s = self._prob(c, left) if n > 1 else self._prob(c, "")
            window = left + c + row[i + 1:right_end]
            offset = len(left) + 1  # index of x[i+1] in window
            for j in range(offset, len(window)):
                s *= self._prob(window[j], window[max(0, j - n + 1):j])
            out[idx] = math.log(s) if s > 0 else -1e30
        return out

    def restore(self, masked_ids: Sequence[int], top_k: int = 5) -> dict[int, list[int]]:
        """Top-k candidate ids for every <mask> position of one example (greedy left-to-right fill)."""
        row = list(masked_ids)
        known = [t != MASK_ID for t in row]
        text = "".join(map(chr, row))
        out: dict[int, list[int]] = {}
        for i, is_known in enumerate(known):
            if is_known:
                continue
            scores = self.scores(text, i, known)
            best = np.argsort(-scores, kind="stable")[:top_k]
            ids = [int(b) + _FIRST_CHAR_ID for b in best]
            out[i] = ids
            text = text[:i] + chr(ids[0]) + text[i + 1:]  # filled: left context for the next position
        return out
