"""The Pair tables page's Export view: each file is built on a click, with a progress bar (the results
package reports each table it extracts and the bytes it compresses), then offered as a download.

A built file is kept in the session under the run and filters it was built from: changing either
drops it, so a download never holds stale rows.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from ui import common as ui
from ui import store as ui_store
from ui.tables import fmt_bytes, fmt_seconds

# key → (button label, file suffix, mime type)
KINDS = {"parquet": ("Pairs (Parquet)", "pairs.parquet", "application/octet-stream"),
         "csv": ("Pairs (CSV)", "pairs.csv", "text/csv"),
         "html": ("HTML report", "report.html", "text/html"),
         "package": ("Results package (.tar.gz)", "tar.gz", "application/gzip")}


def build(key: str, make, label: str) -> bytes | None:
    """Run one export inside an st.status with a progress bar fed by the export's callback."""
    from store import StoreBusy, StoreError

    t0 = time.monotonic()
    with st.status(f"Building {label}…", expanded=True) as box:
        bar = st.progress(0.0, text="starting")

        def progress(fraction: float, text: str) -> None:
            bar.progress(min(max(float(fraction), 0.0), 1.0),
                         text=f"{text} · {fmt_seconds(time.monotonic() - t0)}")
        try:
            data = make(progress=progress)
        except (StoreError, StoreBusy) as exc:
            box.update(label=f"{label}: not built", state="error")
            ui.show_error(exc)
            return None
        bar.progress(1.0, text=f"done: {fmt_bytes(len(data))}")
        box.update(label=f"{label} ready: {fmt_bytes(len(data))} in {fmt_seconds(time.monotonic() - t0)}",
                   state="complete", expanded=False)
    return data


def export_view(run_id: int, filters: dict[str, Any], metric_label: str, help_texts: dict[str, str]) -> None:
    H = help_texts
    limit = int(st.number_input("Rows in the Parquet / CSV export (0 = every matching pair)", 0, None, 100_000,
                                step=10_000, key="pt_export_limit", help=H["pt_export_limit"]))
    st.caption(f"Pairs matching the filters above, best first by {metric_label}. Each file is built when you "
               "click its button (with progress), then offered for download.")
    filters = dict(filters, limit=limit or None)
    make = ui_store.export_callables(run_id, filters)
    sig = (run_id, tuple(sorted((k, str(v)) for k, v in filters.items())))
    stem = f"fra-run-{run_id}"
    cols = st.columns(len(KINDS))
    for col, (key, (label, suffix, mime)) in zip(cols, KINDS.items()):
        held = st.session_state.get(f"pt_export_{key}")
        if held is not None and held[0] != sig:  # built for another run or other filters
            st.session_state.pop(f"pt_export_{key}")
        with col:
            if st.button(f"Build {label}", key=f"pt_build_{key}", help=H[f"pt_build_{key}"]):
                data = build(key, make[key], label)
                if data is not None:
                    st.session_state[f"pt_export_{key}"] = (sig, data)
            held = st.session_state.get(f"pt_export_{key}")
            if held is not None:
                st.download_button(f"Download {label} ({fmt_bytes(len(held[1]))})", held[1],
                                   file_name=f"{stem}-{suffix}" if key != "package" else f"{stem}.tar.gz",
                                   mime=mime, on_click="ignore", key=f"pt_dl_{key}", help=H[f"pt_dl_{key}"])
