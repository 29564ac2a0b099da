"""Dataset-scale FRA accumulation (a job: `fra_core.jobs` kind "accumulate").

The job streams a dataset in batches, computes exact FRA with the engine, aggregates per pair and writes
atomic Parquet shards into its job folder (formats: `fra_core.contracts`); the app ingests them into
DuckDB (`store.ingest_job_shards`). A killed job resumes where it stopped.

Modules: `config` (the job config, torch-free: importing this package stays light), `job` (the entry point:
picks the executor), `run` (the local loop and the one shard body), `ray_executor` (shards on Ray workers),
`stats` (per-pair statistics in torch), `tokens` (per-feature token counts), `cli`.
"""

from fra_core.accumulate.config import KIND, AccumulateError, AccumulateFRAConfig, ShardWriteError

__all__ = ["KIND", "AccumulateError", "AccumulateFRAConfig", "ShardWriteError"]
