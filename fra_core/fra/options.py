"""FRA options, the error type for bad input, and the input checks shared by engine and reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from fra_core.errors import FRAStudioError


class FRAInputError(FRAStudioError):
    """Input that the FRA engine cannot decompose (shapes, ranges, unsupported model configs)."""


@dataclasses.dataclass(frozen=True)
class FRAOptions:
    """What the engine keeps and how values are transformed.

    k_active: None (default) keeps every active feature: K per side = the largest L0 of the batch (all
        the side's sources together), so nothing is truncated. An int caps K at that many features per
        position and side (largest |activation|); the dropped features form the named node "truncation"
        (its share is reported), so the sum of all terms stays exact. 0 means None (as in job configs).
    top_m: keep the m largest |value| feature pairs per (query_pos, key_pos) cell; None keeps all.
    top_n: instead of top_m, keep the N largest |value| pairs per (sample, head) over all cells.
    exclude_diagonal / exclude_bos_key / exclude_bos_query: cells left out of the sparse pair table
        (i = j; key_pos 0; query_pos 0). Their feature×feature value stays in the dense "rest" term.
    row_centre: report s_ij − mean_j' s_ij' (mean over the keys the softmax sees). Softmax is
        invariant to adding a per-row constant, so b_K, ln1.b on the key side and every term that does
        not depend on the key cancel. A pair's centred value is v(i,j,f,g) − (1/n_i) Σ_j' v(i,j',f,g)
        (absent pairs count 0); what the absent pairs carry stays in the dense "rest" term.
    attention_weighted: multiply every (centred or raw) value by the pattern A_ij.
    chunk_rows: query rows per block; None picks rows so that a block holds ≤ chunk_elements values
        (4 M float32 = 16 MB by default: near cache-sized on CPUs; GPUs want more, e.g. 1 << 26). Small
        problems put several (sample, head) items into one block. Results do not depend on it.
    """

    k_active: int | None = None
    top_m: int | None = 8
    top_n: int | None = None
    exclude_diagonal: bool = True
    exclude_bos_key: bool = False
    exclude_bos_query: bool = False
    row_centre: bool = False
    attention_weighted: bool = False
    chunk_rows: int | None = None
    chunk_elements: int = 1 << 22

    def __post_init__(self):
        if self.k_active == 0 and not isinstance(self.k_active, bool):  # the job configs' "0 = all active"
            object.__setattr__(self, "k_active", None)
        if self.k_active is not None and (isinstance(self.k_active, bool) or self.k_active < 1):
            raise FRAInputError(f"k_active must be ≥ 1 or None (every active feature), got {self.k_active!r}")
        if self.top_m is not None and self.top_m < 1:
            raise FRAInputError(f"top_m must be ≥ 1 or None, got {self.top_m}")
        if self.top_n is not None and self.top_n < 1:
            raise FRAInputError(f"top_n must be ≥ 1 or None, got {self.top_n}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise FRAInputError(f"chunk_rows must be ≥ 1 or None, got {self.chunk_rows}")


def check_tokens(tokens) -> torch.Tensor:
    """tokens: [batch, pos] integer tensor (a 1-D tensor is one sample)."""
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise FRAInputError(f"tokens must be a non-empty [batch, pos] tensor, got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point:
        raise FRAInputError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    return tokens.long()


def check_layer_heads(model, layer: int, heads: int | Sequence[int] | None) -> list[int]:
    """Validate layer and heads; returns the head list (None → all heads)."""
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise FRAInputError(f"layer {layer} out of range: model has {cfg.n_layers} layers (0..{cfg.n_layers - 1})")
    if heads is None:
        return list(range(cfg.n_heads))
    heads = [int(heads)] if isinstance(heads, int) else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < cfg.n_heads]
    if bad or not heads:
        raise FRAInputError(f"heads {heads} invalid: layer {layer} has {cfg.n_heads} heads (0..{cfg.n_heads - 1})")
    if len(set(heads)) != len(heads):
        raise FRAInputError(f"heads {heads} lists a head twice: every entry would be duplicated")
    return heads

