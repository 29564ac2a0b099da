"""Store helpers for the database pages: the cached `Store`, ingest-on-view of accumulation jobs, and
cached query results. Never imports torch (the pair-table pages must stay light).

* One `Store` per database file and process (`st.cache_resource`), in short sessions: its connection
  lingers `LINGER_S` after the last use (DuckDB's buffer cache stays warm while a user changes filters)
  and is closed after at most `MAX_HOLD_S` of continuous use, so notebooks, the CLI's `--ingest` and a
  second app can open the file. Every use takes its own cursor (`Store.read()` / `Store.write()`); every
  query runs under a time limit (`store.watchdog`, `FRA_QUERY_TIMEOUT_S`) and the connection under a
  memory limit (`FRA_DB_MEMORY_LIMIT`); the SQL box runs in a process of its own (`store.sql_worker`).
* `sync_jobs()` ingests new shards of every accumulation job folder (idempotent, throttled to one
  pass per `SYNC_EVERY_S`), so runs appear and grow while their jobs run, whether or not the tab that
  launched them is still open.
* `query(name, version, ...)` runs one of the store's read queries through `st.cache_data`; `version`
  (the run's row in `runs`) changes whenever an ingest changes the run, which invalidates its entries.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import streamlit as st

from store import (
    Store,
    StoreBusy,
    StoreError,
    compare_pairs,
    export_pairs_bytes,
    feature_partners,
    get_run,
    html_report,
    ingest_all_jobs,
    ingest_job_shards,
    list_runs,
    pair_examples,
    results_package_bytes,
    self_fraction_by_head,
    set_feature_labels,
    summary_stats,
    top_pairs,
    value_histogram,
)
from store.feature_queries import (
    feature_contexts,
    feature_histogram,
    feature_marginal,
    feature_overview,
    partners_by_head,
    token_pairs,
)
from store.marginals import feature_marginals, node_totals, run_statistics, score_shares
from store.page_queries import (
    feature_labels,
    head_summary,
    human_labels,
    run_heads,
    sample_tokens,
    top_source_feature,
)
from store.sql_worker import run_sql_bounded
from store.watchdog import memory_limit, query_timeout_s, time_limit
from ui import common as ui
from ui.export_columns import with_neuronpedia, with_sources  # noqa: F401 - with_neuronpedia: part of this module's API
from ui.help_texts import PAIR_TABLES as HELP

SYNC_EVERY_S = 2.0
# what each metric is, over the cells (query i, key j) where both features of the pair are active (all-pair
# runs: every such cell; top-m runs: only the cells where the pair was among the m kept)
METRIC_LABELS = {"sum": "Σ FRA over its cells", "mean": "mean FRA per cell", "abs_sum": "Σ |FRA| over its cells",
                 "mean_abs": "mean |FRA| per cell", "max_abs": "max |FRA| in one cell", "count": "cells (n)"}
LINGER_S, MAX_HOLD_S = 0.5, 5.0
SYNC_LOCK_WAIT_S = 1.0  # ingest-on-view waits this long for another process's lock, then tries next time

_QUERIES: dict[str, Callable[..., Any]] = {
    "top_pairs": top_pairs, "feature_partners": feature_partners, "summary_stats": summary_stats,
    "self_fraction_by_head": self_fraction_by_head, "value_histogram": value_histogram,
    "compare_pairs": compare_pairs, "pair_examples": pair_examples, "get_run": get_run,
    "head_summary": head_summary, "run_heads": run_heads, "feature_labels": feature_labels,
    "sample_tokens": sample_tokens, "feature_marginals": feature_marginals, "node_totals": node_totals,
    "score_shares": score_shares, "run_statistics": run_statistics, "feature_overview": feature_overview,
    "feature_histogram": feature_histogram, "feature_contexts": feature_contexts, "partners_by_head": partners_by_head,
    "token_pairs": token_pairs, "feature_marginal": feature_marginal, "top_source_feature": top_source_feature,
}


@dataclasses.dataclass
class StoreHandle:
    store: Store
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    last_sync: float = 0.0
    sql_running: int = 0  # SQL-box processes of this app running now
    # what the last complete ingest pass saw: (database change stamp, each job's (state, complete shards));
    # while both are unchanged a pass would find nothing to do, so none is made (no write session)
    synced: tuple | None = None


@st.cache_resource(show_spinner=False, max_entries=8, on_release=lambda h: h.store.close())
def _handle(db_path: str) -> StoreHandle:
    return StoreHandle(Store(db_path, timeout_s=10, linger_s=LINGER_S, max_hold_s=MAX_HOLD_S,
                             settings={"memory_limit": memory_limit()}))


def db_path() -> str:
    return str(ui.workspace().db_path)


def get_store() -> Store:
    return _handle(db_path()).store


# ----------------------------------------------------------------------------- ingest on view
def _ingest_each(con, jobs_root: Path) -> tuple[list[dict], list[str]]:
    """Job by job, so one unreadable job folder does not hold the others back."""
    from fra_core.jobs import list_jobs

    deleted = {r[0] for r in con.execute("SELECT name FROM deleted_runs").fetchall()}
    done, errors = [], []
    for job in list_jobs(jobs_root, "accumulate"):
        if job.job_id in deleted:
            continue
        try:
            done.append({"name": job.job_id, **ingest_job_shards(con, job.path)})
        except (StoreError, OSError, ValueError) as exc:
            errors.append(f"job {job.job_id}: {exc}")
    return done, errors


def sync_jobs(force: bool = False) -> tuple[list[dict], list[str]]:
    """Ingest what accumulation jobs wrote since the last pass; returns (changes, error messages)."""
    handle = _handle(db_path())
    with handle.lock:
        if not force and time.monotonic() - handle.last_sync < SYNC_EVERY_S:
            return [], []
        if handle.sql_running:  # its process holds a read lock: a write would only wait (ingest after it)
            return [], []
        handle.last_sync = time.monotonic()
        jobs_root = ui.workspace().jobs
        seen = (handle.store.change_stamp(), _job_folders(jobs_root))
        if not force and seen == handle.synced:
            return [], []
        try:
            with handle.store.write(timeout_s=SYNC_LOCK_WAIT_S) as con:
                try:
                    done, errors = ingest_all_jobs(con, jobs_root), []
                except (StoreError, OSError, ValueError):
                    done, errors = _ingest_each(con, jobs_root)
        except StoreBusy as exc:
            return [], [f"database busy, runs not refreshed: {exc}"]
        # the stamp after this pass's own writes; a job that wrote meanwhile differs from it next time
        handle.synced = None if errors else (handle.store.change_stamp(), seen[1])
        return done, errors


def _job_folders(jobs_root: Path) -> tuple:
    """Each accumulation job folder's (name, state, complete shards): what `ingest_all_jobs` compares with
    the database to find work, read from the folders alone (the state includes "died", from the pid)."""
    from fra_core import contracts
    from fra_core.jobs import list_jobs

    return tuple((job.job_id, job.status.get("state"), len(contracts.complete_shards(job.path)))
                 for job in list_jobs(jobs_root, "accumulate"))


# ----------------------------------------------------------------------------- queries
def runs() -> pd.DataFrame:
    """The `runs` table: how the pages notice a deleted or grown run, so cached only until the database
    may have changed (`Store.change_stamp`: any write session of this process, any commit of another)."""
    return _runs(db_path(), get_store().change_stamp())


@st.cache_data(show_spinner=False, max_entries=8)
def _runs(db: str, stamp: tuple) -> pd.DataFrame:
    with _handle(db).store.read() as cur, time_limit(cur, query_timeout_s(), "the list of runs"):
        return list_runs(cur)


def run_version(runs_df: pd.DataFrame, run_id: int) -> tuple:
    row = runs_df.loc[runs_df["id"] == run_id].iloc[0]
    return (int(run_id), str(row["status"]), int(row["n_samples"]), int(row["n_pairs"]), str(row["finished"]))


@st.cache_data(show_spinner=False, max_entries=512)
def _query(name: str, db: str, version: tuple, *args: Any, **kwargs: Any) -> Any:
    with _handle(db).store.read() as cur, time_limit(cur, query_timeout_s()):
        return _QUERIES[name](cur, *args, **kwargs)


def query(name: str, version: tuple, *args: Any, **kwargs: Any) -> Any:
    """`store.<name>(cursor, *args, **kwargs)`, cached until `version` changes."""
    return _query(name, db_path(), version, *args, **kwargs)


def run_sql(sql: str) -> pd.DataFrame:
    """The SQL box: one SELECT in a sandboxed child process, under its own time and memory limits
    (ingest-on-view pauses meanwhile: the child's read lock would make every write wait)."""
    handle = _handle(db_path())
    with handle.lock:
        handle.sql_running += 1
    try:
        # after an ingest this process may hold the file read-write, which keeps the child out until its limit:
        # reopen read-only (shared with the child); ingest stays paused until the child is done
        handle.store.drop_write_lock()
        return run_sql_bounded(db_path(), sql)
    finally:
        with handle.lock:
            handle.sql_running -= 1


def feature_share_text(info: dict) -> str:
    """The run's feature×feature share of |score| per (layer, head), from its run.json (`fra_core.fra.share`)."""
    from fra_core import contracts

    share = contracts.read_run_info(info["job_dir"]).get("feature_share") if info.get("job_dir") else None
    if not share:
        return "feature share: not recorded (run from before it was measured)"
    parts = [f"L{layer}H{head} {v:.1%}" for layer, heads in sorted(share.items(), key=lambda kv: int(kv[0]))
             for head, v in sorted(heads.items(), key=lambda kv: int(kv[0]))]
    return "feature share of |score| (feature×feature pairs vs. errors, biases, opaque nodes): " + ", ".join(parts)


def run_label(row) -> str:
    return (f"#{row['id']} {row['name']} · {row['status']} · {int(row['n_samples']):,} samples · "
            f"{int(row['n_pairs']):,} pairs")


def feature_label_editor(version: tuple, run_id: int, feature: int, src: int) -> None:
    """The feature's automatic label (its most frequent tokens in this run) and an editable human label,
    saved for the SAE (every run of it shows it) when the user presses Save."""
    info = query("feature_labels", version, run_id, feature, src=src)
    if info["sae_id"] is None:
        return
    st.caption(f"Feature {feature} of `{info['sae_id']}` fires on: {info['auto_label'] or '— (no token counts in this run)'}")
    key = f"pt_label_{run_id}_{src}_{feature}"
    from ui import auth as ui_auth

    if not ui_auth.can("label"):
        if info["label"]:
            st.text(f"Label: {info['label']}")  # plain text: a label is user input
        return
    c = st.columns([4, 1], vertical_alignment="bottom")
    c[0].text_input("Your label for this feature (shown in every table of this SAE)", value=info["label"] or "",
                    key=key, placeholder=info["auto_label"] or "", help=HELP["label"])
    c[1].button("Save label", key=f"{key}_save", help=HELP["label_save"], on_click=_save_label, args=(info["sae_id"], feature, key))
    if "pt_label_error" in st.session_state:
        st.error(st.session_state.pop("pt_label_error"))


@st.cache_data(show_spinner=False, max_entries=64)
def _human_labels(db: str, sae_ids: tuple[str, ...]) -> dict[tuple[str, int], str]:
    with _handle(db).store.read() as cur, time_limit(cur, query_timeout_s(), "feature labels"):
        return human_labels(cur, list(sae_ids))


def saved_labels(sae_ids: tuple[str, ...]) -> dict[tuple[str, int], str]:
    """Labels users saved for features of these SAEs ({(sae_id, feature): label}); {} when the database
    cannot be read (the explorer pages work without it)."""
    try:
        return _human_labels(db_path(), tuple(sae_ids))
    except (StoreError, StoreBusy):
        return {}


def _save_label(sae_id: str, feature: int, key: str) -> None:
    from ui import auth as ui_auth

    text = (st.session_state.get(key) or "").strip()
    if not ui_auth.can("label"):  # checked here too: a crafted request reaches the callback
        st.session_state["pt_label_error"] = f"Label not saved: your role ({ui_auth.current_role()}) cannot label"
        return
    try:
        with get_store().write() as con:  # researchers change only labels they set; admins any
            set_feature_labels(con, sae_id, {feature: text or None}, user=ui_auth.current_user(),
                               only_own=ui_auth.current_role() != "admin")
    except (StoreError, StoreBusy) as exc:
        st.session_state["pt_label_error"] = f"Label not saved: {exc}"
        return
    _query.clear()  # cached tables hold the old label
    _human_labels.clear()


def open_example_controls(version: tuple, run_id: int, info: dict, examples: pd.DataFrame) -> None:
    """Pick one of the shown example contexts and open it in Single text FRA (its cell selected)."""
    from ui import auth as ui_auth
    from ui import goto as ui_goto

    if not ui_auth.can("run"):  # Single text FRA is not among a viewer's pages
        return
    c = st.columns([4, 1], vertical_alignment="bottom")
    i = c[0].selectbox("Example to open", range(len(examples)), key="pt_open_example", help=HELP["pt_open_example"],
                       format_func=lambda j: f"{examples['value'].iloc[j]:+.3g} · L{examples['layer'].iloc[j]}"
                                             f"H{examples['head'].iloc[j]} · {examples['context'].iloc[j]}")
    if c[1].button("Open in Single text FRA", key="pt_open", help=HELP["pt_open"]):
        row = examples.iloc[int(i)]
        tokens = query("sample_tokens", version, run_id, int(row["sample"]))
        if tokens is None:
            st.error(f"Sample {int(row['sample'])} has no stored tokens in this run.", icon=":material/error:")
            return
        ui_goto.request(info, row, tokens)


# ----------------------------------------------------------------------------- downloads (deferred)
def export_callables(run_id: int, filters: dict[str, Any]) -> dict[str, Callable[..., bytes]]:
    """Byte producers of the Export view, each in its own read session: `make(progress=None)`, where
    progress(fraction, text) follows the export (`store.export`); nothing is built until asked for."""
    store = get_store()
    limit_s = 4 * query_timeout_s()  # a whole-run export streams every row: a longer limit

    def pairs(fmt: str) -> Callable[..., bytes]:
        def make(progress=None) -> bytes:
            with store.read() as cur, time_limit(cur, limit_s, "export"):
                data = export_pairs_bytes(cur, run_id, fmt, progress=progress, **filters)
                run = get_run(cur, run_id)
            data = with_sources(data, fmt, run["sources"], run.get("model_id"))
            return with_neuronpedia(data, fmt, {int(s["src"]): s["sae_id"] for s in run["sources"]})
        return make

    def report(progress=None) -> bytes:
        with store.read() as cur, time_limit(cur, limit_s, "report"):
            if progress:
                progress(0.1, "summarising the run")
            return html_report(cur, run_id, metric=filters.get("metric", "sum")).encode("utf-8")

    def package(progress=None) -> bytes:
        with store.read() as cur, time_limit(cur, limit_s, "results package"):
            return results_package_bytes(cur, run_id, progress)

    return {"parquet": pairs("parquet"), "csv": pairs("csv"), "html": report, "package": package}


# ----------------------------------------------------------------------------- SQL box, failed runs
def sql_box(run_id: int, help_texts: dict[str, str]) -> None:
    """The read-only SQL box of the Pair tables page."""
    st.caption("One SELECT, on a read-only connection, stopped at its time limit; at most 10 000 rows come back. "
               "Tables: runs, sources, "
               "features, pair_rows (every pair of every head), pair_summary, pair_example_rows, samples_done, "
               "ingested_shards, feature_counts, feature_acts, feature_hist (filter with `run = "
               f"{run_id}`); pair_rows / pair_example_rows also hold all-pair runs' co-activation rows with "
               "each head's G applied (pair_stats / pair_examples hold only the rows stored per head).")
    sql = st.text_area("SQL", f"SELECT layer, head, count(*) AS pairs, sum(n) AS occurrences, sum(abs_sum) AS abs_sum\n"
                              f"FROM pair_rows WHERE run = {run_id}\nGROUP BY ALL ORDER BY layer, head",
                       height=120, key="pt_sql", help=help_texts["pt_sql"])
    if st.button("Run query", key="pt_sql_run", help=help_texts["pt_sql_run"]):
        st.dataframe(run_sql(sql), hide_index=True, width="stretch")


def failed_run_banner(row) -> None:
    """Above a failed run: what failed (once), and a confirmed Delete that removes it from the database."""
    if row["status"] != "failed":
        return
    from store import delete_run

    run_id = int(row["id"])
    st.warning(f"Run #{run_id} failed: {row['message'] or 'no message'}. Its pairs are partial.",
               icon=":material/warning:")
    c = st.columns([1, 3])
    sure = c[1].checkbox(f"Yes, delete run #{run_id}", key=f"pt_delete_sure_{run_id}",
                         help="Its rows leave the database; its job folder stays and is not ingested again.")
    from ui import auth as ui_auth

    if c[0].button("Delete this run", key=f"pt_delete_{run_id}", disabled=not sure,
                   help="Remove the failed run from the database.") \
            and ui_auth.allowed(row.get("owner"), "delete", f"run #{run_id}"):
        try:
            with get_store().write() as con:
                delete_run(con, run_id)
        except (StoreError, StoreBusy) as exc:
            ui.show_error(exc)
            return
        _query.clear()
        st.session_state.pop("pt_last_run", None)  # deleted on purpose: no "deleted meanwhile" notice
        st.toast(f"Deleted run #{run_id} (its job folder stays; it is not ingested again).")
        st.rerun()
