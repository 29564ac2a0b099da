"""A shard's memory, projected before it runs out: all-pair shards grow with heads × distinct pairs.

An all-pair shard holds, per layer, one co-activation table over its samples and, when it is written,
one pairs row (72 B) and up to two example rows (32 B each) per (pair, head) — see
`fra_core.contracts.PAIRS_SCHEMA` / `EXAMPLES_SCHEMA`. At GPT-2 Small scale that is ≈ 1.5 M new pairs per
sample per layer, so a 64-sample shard of 12 heads needs far more memory than a laptop has. Instead of an
out-of-memory kill minutes later (a "died" job), the job projects the shard's peak after every batch —
linearly in samples, an upper bound since later samples repeat pairs — and fails at once, naming the
fields to change, when the projection exceeds the memory this machine has free.
"""

from __future__ import annotations

import os

from fra_core.accumulate.config import AccumulateError

OUTPUT_BYTES_PER_PAIR_HEAD = 72 + 2 * 32  # a pairs row + at most two example rows, as written
HEADROOM = 0.85  # of the free memory a shard may plan to use (the model, SAEs and Arrow buffers need the rest)


def free_memory_bytes() -> int | None:
    """MemAvailable (Linux), else the physical memory (macOS and others); None if neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def tables_bytes(tables: list[dict]) -> int:
    """Bytes held by the tensors of co-activation tables (dicts of column → tensor)."""
    return sum(v.element_size() * v.numel() for t in tables for v in t.values() if hasattr(v, "element_size"))


def projected_shard_bytes(held_bytes: int, output_rows: int, samples_done: int, shard_samples: int) -> float:
    """The shard's projected peak: (tables held + rows to write × bytes per row) × shard / samples so far."""
    grow = shard_samples / max(samples_done, 1)
    return (held_bytes + output_rows * OUTPUT_BYTES_PER_PAIR_HEAD) * grow


def check_shard_memory(held_bytes: int, output_rows: int, samples_done: int, shard_samples: int,
                       shard_size: int, free_bytes: int | None) -> None:
    """Raise AccumulateError when the projected shard does not fit into HEADROOM × (free + held) memory."""
    if free_bytes is None or samples_done <= 0:
        return
    need = projected_shard_bytes(held_bytes, output_rows, samples_done, shard_samples)
    budget = HEADROOM * (free_bytes + held_bytes)  # what is held now was free when the shard began
    if need <= budget:
        return
    per_sample = need / max(shard_samples, 1)
    fits = max(int(budget // per_sample), 0)
    advice = (f"set shard_size to {fits} or fewer" if fits >= 1 else
              "one sample alone does not fit: use fewer heads or layers")
    raise AccumulateError(
        f"all-pair statistics: this shard ({shard_samples} samples, shard_size = {shard_size}) is projected to need "
        f"≈ {need / 2**30:.1f} GiB ({output_rows:,} (pair, head) rows after {samples_done} samples), more than the "
        f"{budget / 2**30:.1f} GiB this machine can give it; {advice}, or use statistics: top_m "
        "(its memory is bounded by m pairs per cell)")
