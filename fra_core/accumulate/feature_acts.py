"""What the Feature page shows of a feature's activations, collected per shard by an accumulation job.

Per (run source, feature) and shard:

* `feature_acts` rows: the PER_KIND largest activations ('top') and PER_KIND activations drawn uniformly at
  random among all its active positions ('sample': the quantile groups of the Feature page, as SAEDashboard
  shows them), each with the feature's activation on the WINDOW tokens either side (per-token highlighting;
  null outside the sample; rows in a canonical order, so every executor writes the same file).
* `feature_hist` rows: counts of its activations in log2-spaced bins (HIST_STEPS bins per octave, from
  2^(HIST_LO / HIST_STEPS)): bins add up across shards, so the store merges them by summing.

The activation is the engine side's coefficient (the SAE activation, × 1/σ where the side folds a norm):
what the FRA terms are built from.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from fra_core import contracts
from fra_core.accumulate.stats import top_per_group

PER_KIND, WINDOW = 5, 6  # rows per feature and kind ('top', 'sample') and shard; tokens either side
HIST_STEPS, HIST_LO, HIST_HI = 2, -40, 40  # bin b covers [2^(b/2), 2^((b+1)/2)); clipped to [-40, 40]


def hist_bin(value: torch.Tensor) -> torch.Tensor:
    """The log2 bin of |value| (> 0)."""
    b = torch.floor(torch.log2(value.abs().clamp_min(1e-30)) * HIST_STEPS)
    return b.clamp(HIST_LO, HIST_HI).long()


class FeatureActCollector:
    """Collects one shard's feature_acts and feature_hist rows (see the module docstring)."""

    def __init__(self, d_max: int, seed: int = 0):
        self.d_max = d_max
        self.rows: list[dict[str, torch.Tensor]] = []
        self.hist: dict[int, int] = {}
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, side, src_map: list[int], samples: torch.Tensor, only: set[int] | None = None) -> None:
        """One engine side of a batch (ids/coef [batch, pos, K], offsets); `samples`: each row's sample id;
        `only`: collect these run sources only (the others were collected from another side)."""
        ids, coef = side.ids.cpu(), side.coef.detach().float().cpu()
        active = coef != 0
        b, p, k = active.nonzero(as_tuple=True)
        if len(b) == 0:
            return
        gid = ids[b, p, k]
        offs = torch.tensor(side.offsets)
        s = torch.searchsorted(offs, gid, right=True) - 1
        src, feat = torch.tensor(src_map)[s], gid - offs[s]
        value = coef[b, p, k]
        if only is not None:
            keep = torch.isin(src, torch.tensor(sorted(only)))
            b, p, gid, src, feat, value = b[keep], p[keep], gid[keep], src[keep], feat[keep], value[keep]
            if len(b) == 0:
                return
        group = src * self.d_max + feat
        self._add_hist(group, value)
        uniq, inv = torch.unique(group, return_inverse=True)
        for kind, score in (("top", value.abs()), ("sample", torch.rand(len(value), generator=self.gen))):
            idx = top_per_group(inv, len(uniq), score, PER_KIND)
            window = self._windows(ids, coef, offs, b[idx], p[idx], gid[idx])
            self.rows.append({"kind": torch.full((len(idx),), 0 if kind == "top" else 1), "group": group[idx],
                              "sample": samples[b[idx]], "pos": p[idx], "value": value[idx], "score": score[idx],
                              "window": window})
        if len(self.rows) >= 16:
            self._fold()

    def _add_hist(self, group: torch.Tensor, value: torch.Tensor) -> None:
        key = group * (HIST_HI - HIST_LO + 1) + (hist_bin(value) - HIST_LO)
        uniq, counts = torch.unique(key, return_counts=True)
        for k, n in zip(uniq.tolist(), counts.tolist()):
            self.hist[k] = self.hist.get(k, 0) + n

    @staticmethod
    def _windows(ids, coef, offs, b, p, gid) -> torch.Tensor:
        """[n, 2·WINDOW+1]: the activation of feature `gid` at positions p−WINDOW … p+WINDOW of row b (NaN
        outside the sample; 0 where the feature is not active there).

        A lookup, not a comparison of every window slot with every one of the K features there ([n, 2W+1, K]:
        ≈ 0.4 s per batch at K = 200): the active (row, position, feature) triples of the batch are keyed
        key = (b·n_pos + p)·n_ids + gid, sorted once, and each window slot's key is found by binary search.
        A position lists a feature at most once, so the value found is that slot's coefficient itself.
        """
        n_rows, n_pos, _ = ids.shape
        n_ids = int(offs[-1]) + 1
        pos = p[:, None] + torch.arange(-WINDOW, WINDOW + 1)[None]
        inside = (pos >= 0) & (pos < n_pos)
        posc = pos.clamp(0, n_pos - 1)
        ab, ap, ak = (coef != 0).nonzero(as_tuple=True)
        keys = (ab * n_pos + ap) * n_ids + ids[ab, ap, ak]
        keys, order = keys.sort()
        vals = coef[ab, ap, ak][order]
        want = (b[:, None] * n_pos + posc) * n_ids + gid[:, None]  # [n, 2W+1]
        out = torch.zeros(want.shape, dtype=coef.dtype)
        if len(keys):
            at = torch.searchsorted(keys, want).clamp(max=len(keys) - 1)
            out = torch.where(keys[at] == want, vals[at], out)
        return torch.where(inside, out, torch.full_like(out, float("nan")))

    def _fold(self) -> None:
        """Keep the best PER_KIND rows per (kind, feature) of everything added so far."""
        if not self.rows:
            return
        cat = {c: torch.cat([r[c] for r in self.rows]) for c in self.rows[0]}
        key = cat["kind"] * (1 << 40) + cat["group"]
        uniq, inv = torch.unique(key, return_inverse=True)
        keep = top_per_group(inv, len(uniq), cat["score"], PER_KIND)
        self.rows = [{c: t[keep] for c, t in cat.items()}]

    def tables(self) -> dict[str, pa.Table]:
        self._fold()
        out = {"feature_acts": contracts.FEATURE_ACTS_SCHEMA.empty_table(),
               "feature_hist": contracts.FEATURE_HIST_SCHEMA.empty_table()}
        if self.rows:
            r = self.rows[0]
            # a canonical row order (whoever computes the shard writes the same file)
            order = np.lexsort((r["pos"].numpy(), r["sample"].numpy(), r["kind"].numpy(), r["group"].numpy()))
            r = {c: t[torch.from_numpy(order)] for c, t in r.items()}
            group = r["group"].numpy()
            out["feature_acts"] = pa.table({
                "src": pa.array((group // self.d_max).astype(np.uint16)),
                "feature": pa.array((group % self.d_max).astype(np.uint32)),
                "kind": pa.array(np.where(r["kind"].numpy() == 0, "top", "sample")),
                "sample": pa.array(r["sample"].numpy().astype(np.uint64)),
                "pos": pa.array(r["pos"].numpy().astype(np.uint16)),
                "value": pa.array(r["value"].numpy().astype(np.float32)),
                # outside the sample: null (not NaN, which never equals itself)
                "ctx_acts": _ctx_lists(r["window"].numpy().astype(np.float32))},
                schema=contracts.FEATURE_ACTS_SCHEMA)
        if self.hist:
            keys = np.array(sorted(self.hist), dtype=np.int64)
            nb = HIST_HI - HIST_LO + 1
            group = keys // nb
            out["feature_hist"] = pa.table({
                "src": pa.array((group // self.d_max).astype(np.uint16)),
                "feature": pa.array((group % self.d_max).astype(np.uint32)),
                "bin": pa.array((keys % nb + HIST_LO).astype(np.int16)),
                "n": pa.array(np.array([self.hist[int(k)] for k in keys], dtype=np.uint64))},
                schema=contracts.FEATURE_HIST_SCHEMA)
        return out


def _ctx_lists(window: np.ndarray) -> pa.ListArray:
    """[n, 2·WINDOW+1] float32 → one list per row, null where NaN (outside the sample: null, not NaN,
    which never equals itself); built from the flat values and a null mask, no Python loop per value."""
    n, w = window.shape
    flat = pa.array(window.reshape(-1), type=pa.float32(), mask=np.isnan(window.reshape(-1)))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * w + 1, w, dtype=np.int32)), flat)
