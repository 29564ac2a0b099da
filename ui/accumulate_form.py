"""The accumulation form's work settings (features kept, threads, minimum pair count) and the job's
notes on what it measured (truncation is impossible by default; dropped pairs when pruning)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from fra_core import contracts
from ui.help_texts import ACCUMULATE as H


def work_fields() -> dict:
    """One row of three inputs → k_active, threads, min_pair_count (AccumulateFRAConfig fields)."""
    c = st.columns(3)
    return {"k_active": int(c[0].number_input("Active features per position (0 = all)", min_value=0, value=0,
                                              key="acc_k_active", help=H["acc_k_active"])),
            "threads": int(c[1].number_input("CPU threads (0 = auto)", min_value=0, max_value=256, value=0,
                                             key="acc_threads", help=H["acc_threads"])),
            "min_pair_count": int(c[2].number_input("Minimum pair count per shard", min_value=1, value=1,
                                                    key="acc_min_pair_count", help=H["acc_min_pair_count"]))}


def run_notes(job_dir: Path) -> None:
    """Caption of the job's feature cap and pruned pairs (run.json / config), when there is one."""
    info = contracts.read_run_info(job_dir)
    for layer, share in (info.get("truncation_share") or {}).items():
        st.caption(f"k_active capped at {info.get('k_active')}: on layer {layer} the truncation node carries "
                   f"{share:.1%} of mean |score| (first batch; 0 = all active keeps every feature).")
    dropped = info.get("dropped_pairs") or {}
    if dropped:
        rows = [(layer, head, d) for layer, hs in dropped.items() for head, d in hs.items()]
        n = sum(d["n_pairs"] for _, _, d in rows)
        s, a = sum(d["sum"] for _, _, d in rows), sum(d["abs_sum"] for _, _, d in rows)
        st.caption(f"min_pair_count {info.get('min_pair_count')}: {n:,} pairs not stored (Σ FRA {s:.4g}, "
                   f"Σ |FRA| {a:.4g} over {len(rows)} heads; per head in run.json \"dropped_pairs\").")
