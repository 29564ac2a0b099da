"""The DuckDB store: connection handling, schema + ordered migrations, shard ingest, queries, exports.

Never imports torch / transformer_lens / sae_lens (pages that only read the database stay light).

Typical use in the app::

    db = Store(workspace.db_path)                        # st.cache_resource; holds no lock between uses
    with db.write() as con:                              # short write session (ingest, delete)
        ingest_all_jobs(con, workspace.jobs)             # idempotent; cheap when nothing is new
    with db.read() as cur:                               # short read session, a cursor of its own
        df = top_pairs(cur, run, metric="mean", head=3, self_pairs="exclude", min_count=5)

Every read function takes a connection or cursor and returns a small DataFrame / dict; a run is an id
or a name (the job folder name); a deleted run raises StoreError("... does not exist (deleted meanwhile?)").
Filters shared by the pair queries (`pair_filter`): layer, head, feature (+ side 'either'|'query'|'key',
src), self_pairs None|'only'|'exclude', min_count, diagonal (False removes query = key occurrences).
Pair rows are read through the views `pair_rows` / `pair_example_rows` (rows stored per head, and all-pair
runs' co-activation rows with each head's G applied), so every query serves both kinds of run.
Metrics: sum, mean, abs_sum, mean_abs, max_abs, count. Top-N queries are answered from each run's
pre-ranked top-K lists where those provably hold the answer (`store.topk`, rebuilt by compaction), else
by a scan. `run_sql_readonly` runs user SQL on a sandboxed connection (no file or extension access).
"""

from store.compact import compact_run, refresh_summary
from store.connection import Store, connect
from store.errors import StoreBusy, StoreError
from store.export import export_pairs, export_pairs_bytes, html_report, results_package, results_package_bytes
from store.ingest import delete_run, ingest_all_jobs, ingest_job_shards, register_run
from store.labels import set_feature_labels
from store.queries import (
                          compare_pairs,
                          compare_summary,
                          feature_partners,
                          get_run,
                          list_runs,
                          pair_examples,
                          pair_filter,
                          self_fraction_by_head,
                          summary_stats,
                          top_pairs,
                          value_histogram,
)
from store.schema import MIGRATIONS, applied_migrations, migrate
from store.sql import check_select, run_sql_readonly
from store.sqlparts import METRICS, resolve_run

__all__ = [
    "Store", "StoreBusy", "StoreError", "connect", "MIGRATIONS", "applied_migrations", "migrate",
    "ingest_job_shards", "ingest_all_jobs", "compact_run", "refresh_summary", "delete_run", "register_run",
    "resolve_run", "set_feature_labels", "METRICS", "pair_filter", "top_pairs", "feature_partners",
    "summary_stats", "self_fraction_by_head", "value_histogram", "compare_pairs", "compare_summary",
    "list_runs", "get_run", "pair_examples", "check_select", "run_sql_readonly", "export_pairs",
    "export_pairs_bytes", "html_report", "results_package", "results_package_bytes",
]
