"""FRAResult: the sparse pair table plus the factorised dense node terms of one `compute_fra` call."""

from __future__ import annotations

import dataclasses

import torch

from fra_core.fra.options import FRAInputError, FRAOptions
from fra_core.fra.sides import Side


def transform(x: torch.Tensor, amask: torch.Tensor, pattern: torch.Tensor, opts: FRAOptions) -> torch.Tensor:
    """Apply the value transform to a dense term x [query_pos, key_pos, ...].

    Zero outside the attention mask; row_centre subtracts the mean over the keys the softmax sees
    (x_ij − (1/n_i) Σ_j' x_ij'); attention_weighted multiplies by the pattern A_ij.
    """
    extra = (1,) * (x.ndim - 2)
    m = amask.view(*amask.shape, *extra).to(x.dtype)
    x = x * m
    if opts.row_centre:
        n = amask.sum(1).clamp(min=1).view(-1, 1, *extra).to(x.dtype)
        x = (x - x.sum(1, keepdim=True) / n) * m
    if opts.attention_weighted:
        x = x * pattern.view(*pattern.shape, *extra)
    return x


@dataclasses.dataclass
class FRAResult:
    """Output of `compute_fra` for a batch and the selected heads (index hi ↔ heads[hi]).

    entries: dict of 1-D tensors, one row per kept feature pair: batch, head (model head index),
        query_pos, key_pos, q_source, q_feature, k_source, k_feature (source = index into
        q_sources / k_sources, feature = that SAE's feature id), value (transformed as the options say).
    scores / pattern: [batch, head_index, query_pos, key_pos] actual hook_attn_scores / hook_pattern.
    kept_sum: [batch, head_index, query_pos, key_pos] Σ of the kept entries per cell.
    Dense node terms (incl. "features" = all K kept features of a side, node 0) come from
    `node_terms(b, hi)`; Σ over them equals `target(b, hi)` (the transformed actual scores).
    cell_terms: name → [batch, head_index, query_pos, key_pos] score terms that are not q·k products
        (ALiBi bias, soft-cap correction); each is the last node of both sides, its term on its own
        (q node, k node) slot (its node vectors are 0).
    frozen: the per-position scales frozen at their actual values (ln1 σ, QK-norm σ, post-norm σ).
    upcast_from: the model's dtype when it was half precision (decomposed on its float32 copy), else None.
    """

    layer: int
    heads: list[int]
    options: FRAOptions
    attn_scale: float
    scores: torch.Tensor
    pattern: torch.Tensor
    attn_mask: torch.Tensor
    select_mask: torch.Tensor
    entries: dict[str, torch.Tensor]
    kept_sum: torch.Tensor
    q_side: Side
    k_side: Side
    causal: bool
    cell_terms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    frozen: list[str] = dataclasses.field(default_factory=list)
    upcast_from: str | None = None

    @property
    def q_sources(self) -> list[str]:
        return list(self.q_side.source_names)

    @property
    def k_sources(self) -> list[str]:
        return list(self.k_side.source_names)

    @property
    def q_node_names(self) -> list[str]:
        return ["features"] + self.q_side.node_names + list(self.cell_terms)

    @property
    def k_node_names(self) -> list[str]:
        return ["features"] + self.k_side.node_names + list(self.cell_terms)

    @property
    def truncated(self) -> bool:
        """True when K < max L0 on a side; then the "truncation" nodes carry the dropped features."""
        return self.q_side.truncated or self.k_side.truncated

    @property
    def n_entries(self) -> int:
        return int(self.entries["value"].numel())

    def node_vectors(self, b: int, hi: int, side: str) -> torch.Tensor:
        """[pos, n_nodes, d_head]: the "features" node (Σ of the kept features) then the named nodes."""
        s = self.q_side if side == "q" else self.k_side
        feats = s.feature_vectors(b, hi).sum(1, keepdim=True)
        cells = feats.new_zeros(feats.shape[0], len(self.cell_terms), feats.shape[-1])
        return torch.cat([feats, s.nodes[b, :, hi], cells], dim=1)

    def node_terms(self, b: int, hi: int, raw: bool = False) -> torch.Tensor:
        """[query_pos, key_pos, n_q_nodes, n_k_nodes] node×node terms (raw: untransformed, unmasked)."""
        q, k = self.node_vectors(b, hi, "q"), self.node_vectors(b, hi, "k")
        t = torch.einsum("iad,jbd->ijab", q, k) / self.attn_scale
        n_q, n_k, C = t.shape[2], t.shape[3], len(self.cell_terms)
        for c, term in enumerate(self.cell_terms.values()):  # each cell term on its own diagonal slot
            t[:, :, n_q - C + c, n_k - C + c] = term[b, hi]
        return t if raw else transform(t, self.attn_mask, self.pattern[b, hi], self.options)

    def feature_terms(self, b: int, hi: int, pos: int, feature: int, source: int = 0, side: str = "q"):
        """Raw terms of one kept feature against every node of the other side.

        side='q': feature at query_pos `pos` × key nodes → [key_pos, n_k_nodes]; side='k': feature at
        key_pos `pos` × query nodes → [query_pos, n_q_nodes]. Unmasked, untransformed.
        """
        own = self.q_side if side == "q" else self.k_side
        gid = own.offsets[source] + feature
        slot = (own.ids[b, pos] == gid).nonzero()
        if len(slot) == 0:
            raise FRAInputError(f"feature {feature} of source {source} is not kept at pos {pos} (sample {b})")
        vec = own.feature_vectors(b, hi)[pos, int(slot[0, 0])]
        other = self.node_vectors(b, hi, "k" if side == "q" else "q")
        return torch.einsum("d,jnd->jn", vec, other) / self.attn_scale

    def target(self, b: int, hi: int) -> torch.Tensor:
        """[query_pos, key_pos] the actual scores, transformed like the terms (0 outside the mask)."""
        s = torch.where(self.attn_mask, self.scores[b, hi], torch.zeros_like(self.scores[b, hi]))
        return transform(s, self.attn_mask, self.pattern[b, hi], self.options)

    def ff_rest(self, b: int, hi: int) -> torch.Tensor:
        """[query_pos, key_pos] feature×feature value not in the sparse table (dropped by top-m/N,
        excluded cells, and under row centring the part carried by absent pairs)."""
        return self.node_terms(b, hi)[:, :, 0, 0] - self.kept_sum[b, hi]

    def completeness_error(self, per_head: bool = False):
        """max |Σ all terms − target| / max |target| over the batch and heads (per_head: {head: error}).

        Never NaN: a non-finite term or target on a masked-in cell gives inf. Σ over the node×node terms
        is computed as (Σ_a q^a)·(Σ_b k^b) + Σ cell terms (bilinearity): O(T²·d_head), not O(T²·n²·d_head).
        """
        out = {}
        for hi, h in enumerate(self.heads):
            err, ref = 0.0, 0.0
            for b in range(self.scores.shape[0]):
                tgt = self.target(b, hi)
                q, k = self.node_vectors(b, hi, "q").sum(1), self.node_vectors(b, hi, "k").sum(1)
                total = q @ k.T / self.attn_scale + sum(t[b, hi] for t in self.cell_terms.values())
                total = transform(total, self.attn_mask, self.pattern[b, hi], self.options)
                diff = (total - tgt)[self.attn_mask]
                if not bool(torch.isfinite(diff).all()):
                    err = float("inf")
                else:
                    err = max(err, float(diff.abs().max()) if diff.numel() else 0.0)
                ref = max(ref, float(tgt[self.attn_mask].abs().max()) if self.attn_mask.any() else 0.0)
            out[h] = err / max(ref, 1e-12)
        return out if per_head else max(out.values())

    def assumptions(self) -> str:
        """One line for the UI: what the exact decomposition froze, upcast or carries as cell terms."""
        parts = []
        if self.frozen:
            parts.append("frozen at their actual values: " + ", ".join(self.frozen))
        if self.cell_terms:
            parts.append("non-bilinear score terms: " + ", ".join(self.cell_terms))
        if self.upcast_from:
            parts.append(f"computed on a float32 copy of the {self.upcast_from} model")
        return "; ".join(parts)

    def entries_numpy(self) -> dict:
        """The pair table as numpy arrays (for Arrow/Parquet writers)."""
        return {k: v.detach().cpu().numpy() for k, v in self.entries.items()}
