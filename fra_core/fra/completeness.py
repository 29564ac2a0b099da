"""The completeness check that every job runs on its first batch of each (layer, head).

Completeness = max |Σ all FRA terms − hook_attn_scores| / max |hook_attn_scores| over the masked-in
cells (`FRAResult.completeness_error`). Float32 engines reach ≈ 1e-7; anything above LIMIT means the
decomposition does not describe the model (an unmodelled architecture detail, a stale weight, …), and
a job must stop before it stores such pairs as exact. Jobs record the measured values in their run info
under "completeness": {"<layer>": {"<head>": max_relative_error}}.
"""

from __future__ import annotations

from fra_core.errors import FRAStudioError

LIMIT = 1e-4


class CompletenessError(FRAStudioError):
    """The FRA terms do not sum to the model's attention scores (above LIMIT)."""


def measure(result) -> dict[str, dict[str, float]]:
    """{"<layer>": {"<head>": max relative error}} of one FRA result."""
    return {str(result.layer): {str(h): float(e) for h, e in result.completeness_error(per_head=True).items()}}


def check(result, what: str = "job", limit: float = LIMIT) -> dict[str, dict[str, float]]:
    """Measure; raise CompletenessError naming the worst (layer, head) above `limit`; return the values."""
    values = measure(result)
    layer, per_head = next(iter(values.items()))
    head, worst = max(per_head.items(), key=lambda kv: kv[1])
    if not worst <= limit:  # also catches NaN
        raise CompletenessError(
            f"{what}: FRA terms do not sum to blocks.{layer}.attn.hook_attn_scores for head {head}: "
            f"max relative error {worst:.3g} > {limit:g} (first batch); the decomposition does not describe "
            f"this model, so no pairs are stored")
    return values


def merge(old: dict | None, new: dict) -> dict:
    """Combine two completeness records, keeping the worst value per (layer, head)."""
    out = {layer: dict(heads) for layer, heads in (old or {}).items()}
    for layer, heads in new.items():
        for head, err in heads.items():
            prev = out.setdefault(layer, {}).get(head)
            out[layer][head] = err if prev is None else max(prev, err)
    return out
