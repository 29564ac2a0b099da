"""A shard's memory, projected before it runs out: all-pair shards grow with distinct pairs.

An all-pair shard holds, per layer, one co-activation table over its samples and, when it is written,
for a head-independent layer (no attention weighting, no rotary) one coact row per distinct pair
(COACT_BYTES_PER_PAIR, `fra_core.contracts.COACT_SCHEMA`; the heads' projected rows are per feature, not
per pair, and small beside it), for a per-head layer one pairs row (72 B) and up to two example rows
(32 B each) per (pair, head) — see `fra_core.contracts.PAIRS_SCHEMA` / `EXAMPLES_SCHEMA`. At GPT-2 Small
scale that is ≈ 1.5 M new pairs per sample per layer, so a large shard needs far more memory than a laptop
has. Instead of an out-of-memory kill minutes later (a "died" job), the job projects the shard's peak
after every batch — linearly in samples, an upper bound since later samples repeat pairs — and fails at
once, naming the fields to change, when the projection exceeds the memory this machine has free.
"""

from __future__ import annotations

import os

from fra_core.accumulate.config import AccumulateError

OUTPUT_BYTES_PER_PAIR_HEAD = 72 + 2 * 32  # a pairs row + at most two example rows, as written
# a coact row: 5 key columns (14 B), 2 counts, 8 float64 sums/extremes, 2 cells of (uint64, 2 × uint16)
COACT_BYTES_PER_PAIR = 14 + 2 * 8 + 8 * 8 + 2 * 12
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
    """Bytes held by the tensors of co-activation tables (dicts of column → tensor); a tensor two columns
    share (a raw table's abs is its s) counts once."""
    seen = {id(v): v for t in tables for v in t.values() if hasattr(v, "element_size")}
    return sum(v.element_size() * v.numel() for v in seen.values())


def projected_shard_bytes(held_bytes: int, output_rows: int, samples_done: int, shard_samples: int,
                          coact_rows: int = 0) -> float:
    """The shard's projected peak: (tables held + per-head rows × bytes per (pair, head) + coact rows × bytes
    per pair) × shard / samples so far."""
    grow = shard_samples / max(samples_done, 1)
    return (held_bytes + output_rows * OUTPUT_BYTES_PER_PAIR_HEAD + coact_rows * COACT_BYTES_PER_PAIR) * grow


def check_shard_memory(held_bytes: int, output_rows: int, samples_done: int, shard_samples: int,
                       shard_size: int, free_bytes: int | None, coact_rows: int = 0) -> None:
    """Raise AccumulateError when the projected shard does not fit into HEADROOM × (free + held) memory.
    output_rows: (pair, head) rows of per-head layers; coact_rows: pair rows of head-independent layers."""
    if free_bytes is None or samples_done <= 0:
        return
    need = projected_shard_bytes(held_bytes, output_rows, samples_done, shard_samples, coact_rows)
    budget = HEADROOM * (free_bytes + held_bytes)  # what is held now was free when the shard began
    if need <= budget:
        return
    per_sample = need / max(shard_samples, 1)
    fits = max(int(budget // per_sample), 0)
    advice = (f"set shard_size to {fits} or fewer" if fits >= 1 else
              "one sample alone does not fit: use fewer heads or layers")
    raise AccumulateError(
        f"all-pair statistics: this shard ({shard_samples} samples, shard_size = {shard_size}) is projected to need "
        f"≈ {need / 2**30:.1f} GiB ({output_rows:,} (pair, head) rows and {coact_rows:,} co-activation rows after "
        f"{samples_done} samples), more than the {budget / 2**30:.1f} GiB this machine can give it; {advice}, or use "
        "statistics: top_m (its memory is bounded by m pairs per cell)")
