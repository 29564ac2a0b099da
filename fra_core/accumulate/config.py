"""The accumulation job's config and error types (no torch: pages build the config form from it).

The job runs in its own process (`fra_core.jobs`), streams the dataset in batches, computes exact FRA
with the engine, aggregates per pair in torch and writes atomic Parquet shards into its job folder
(`fra_core.contracts`). It never opens the DuckDB file: the app ingests shards
(`store.ingest_job_shards`). A killed job resumes where it stopped: samples covered by a complete shard
are skipped, an incomplete shard is redone, so no sample is counted twice.

The work is in `fra_core.accumulate.run`, the CLI in `fra_core.accumulate.cli`.
"""

from __future__ import annotations

import dataclasses

from fra_core.config import ConfigError, JobConfig
from fra_core.errors import FRAStudioError

KIND = "accumulate"
EXECUTORS = ("local", "ray")
STATISTICS = ("all_pairs", "top_m")


class AccumulateError(FRAStudioError):
    """Bad input for an accumulation job (model/SAE mismatch, heads out of range, ...)."""


class ShardWriteError(FRAStudioError, RuntimeError):
    """A shard could not be written (disk full, permissions); earlier shards are intact."""


@dataclasses.dataclass(frozen=True)
class AccumulateFRAConfig(JobConfig):
    """Accumulate FRA pair statistics of one layer's heads over a dataset.

    q_saes / k_saes: SAE refs (`fra_core.sae.load_sae`) for the query / key side: one SAE on
        blocks.L.ln1.hook_normalized or blocks.L.hook_resid_pre, or the upstream blocks.l.attn.hook_z SAEs
        (l < L). k_saes empty: the key side uses the query side's dictionaries.
    layer / layers: the layer(s) whose heads are decomposed; `layers` (several, all in one run) wins
        when not empty, `layer` alone keeps older YAML working. Per layer the dictionaries are picked from
        q_saes / k_saes: the one SAE on that layer's head input, else every upstream hook_z SAE (l < L),
        so one list of upstream SAEs serves every layer.
    heads: empty = every head of each layer.
    statistics: "all_pairs" (default): exact statistics over EVERY feature pair of every selected cell
        (`fra_core.fra.allpairs`), per-feature marginals and node totals, examples = each pair's
        extreme cells. "top_m": the older statistics over the top_m pairs kept per cell (sums undercount
        every cell where a pair was not kept; labelled "top-m kept" in the store); one layer only.
    dataset: see `fra_core.datasets` ('demo', a .txt/.jsonl path, 'disk:<folder>', 'hf:<name>').
    include_diagonal: record the query = key cells too (kept apart in the store's diag_* columns, so the
        pages show every statistic with and without them).
    top_m: feature pairs kept per (query, key) cell.
    k_active: 0 (default) = every active feature (K per side = the batch's largest L0: no truncation);
        n > 0 caps the features kept per position and side at n (largest |activation|); what it drops is
        the named "truncation" node, whose share the run records (`truncation_share` in run.json).
    min_pair_count: pairs seen fewer times than this within a shard are not written to the shard's pair
        table (1 = keep every pair); their count, Σ sum and Σ abs_sum are recorded per (layer, head) in
        run.json ("dropped_pairs"), so stored + dropped = the exact totals.
    threads: CPU threads of the job process (OMP/MKL/torch); 0 = auto, min(CPU cores, 4).
    shard_size: samples per shard, the unit of resume (and of ingest while the job runs); shard i holds
        samples [i·shard_size, (i+1)·shard_size) of the dataset order, whichever executor computes it.
    executor: "local" (this process) or "ray" (shard tasks on Ray workers, `fra_core.accumulate.ray_executor`;
        the job folder must be on storage every worker can write).
    ray_address: "" = $RAY_ADDRESS when set, else a local Ray cluster started (and stopped) by the job;
        otherwise passed to `ray.init(address=...)` ("auto", "ray://head:10001", "head:6379").
    ray_workers: worker actors (each loads the model and SAEs once); 0 = one per GPU of the cluster,
        else one per `ray_cpus_per_worker` CPUs.
    ray_gpus_per_worker: GPUs per worker; -1 = 1 when the cluster has GPUs, else 0.
    ray_cpus_per_worker: CPUs per worker (also its torch thread count).
    """

    model: str = "demo"
    q_saes: tuple[str, ...] = ("demo-l1-ln1",)
    k_saes: tuple[str, ...] = ()
    layer: int = 1
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    dataset: str = "demo"
    text_column: str = "text"
    split: str = "train"
    n_samples: int = 256
    context_length: int = 64
    batch_size: int = 8
    shard_size: int = 64
    prepend_bos: bool = True
    include_diagonal: bool = True
    exclude_bos_key: bool = False
    exclude_bos_query: bool = False
    row_centre: bool = False
    attention_weighted: bool = False
    statistics: str = "all_pairs"
    top_m: int = 8
    k_active: int = 0
    min_pair_count: int = 1
    threads: int = 0
    examples_per_pair: int = 3
    device: str = "auto"
    seed: int = 0
    executor: str = "local"
    ray_address: str = ""
    ray_workers: int = 0
    ray_gpus_per_worker: float = -1
    ray_cpus_per_worker: float = 1

    def __post_init__(self):
        for name in ("q_saes", "k_saes"):  # a YAML string means one SAE
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,) if value else ())
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.layers, (int, list)):
            object.__setattr__(self, "layers", (self.layers,) if isinstance(self.layers, int) else tuple(self.layers))
        if isinstance(self.heads, (int, list)):
            object.__setattr__(self, "heads", (self.heads,) if isinstance(self.heads, int) else tuple(self.heads))
        checks = [(not self.q_saes, "q_saes must name at least one SAE"),
                  (self.n_samples < 1, f"n_samples must be >= 1, got {self.n_samples}"),
                  (self.batch_size < 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.shard_size < 1, f"shard_size must be >= 1, got {self.shard_size}"),
                  (self.context_length < 2, f"context_length must be >= 2, got {self.context_length}"),
                  (self.top_m < 1, f"top_m must be >= 1, got {self.top_m}"),
                  (self.k_active < 0, f"k_active must be >= 0 (0 = every active feature), got {self.k_active}"),
                  (self.min_pair_count < 1, f"min_pair_count must be >= 1 (1 = keep every pair), got {self.min_pair_count}"),
                  (self.threads < 0, f"threads must be >= 0 (0 = auto), got {self.threads}"),
                  (self.examples_per_pair < 0, f"examples_per_pair must be >= 0, got {self.examples_per_pair}"),
                  (self.layer < 0, f"layer must be >= 0, got {self.layer}"),
                  (any(l < 0 for l in self.layers) or len(set(self.layers)) != len(self.layers),
                   f"layers must be distinct and >= 0, got {list(self.layers)}"),
                  (self.statistics not in STATISTICS,
                   f"statistics must be one of {list(STATISTICS)}, got {self.statistics!r}"),
                  (self.statistics == "top_m" and len(self.layers) > 1,
                   f"statistics='top_m' covers one layer, got layers={list(self.layers)}: use 'all_pairs'"),
                  (any(h < 0 for h in self.heads), f"heads must be >= 0, got {list(self.heads)}"),
                  (self.executor not in EXECUTORS, f"executor must be one of {list(EXECUTORS)}, got {self.executor!r}"),
                  (not isinstance(self.ray_address, str), f"ray_address must be a string, got {self.ray_address!r}"),
                  (self.ray_workers < 0, f"ray_workers must be >= 0 (0 = one per GPU or CPU), got {self.ray_workers}"),
                  (self.ray_gpus_per_worker < 0 and self.ray_gpus_per_worker != -1,
                   f"ray_gpus_per_worker must be >= 0 or -1 (auto), got {self.ray_gpus_per_worker}"),
                  (self.ray_cpus_per_worker <= 0, f"ray_cpus_per_worker must be > 0, got {self.ray_cpus_per_worker}"),
                  (self.executor == "local" and (self.ray_address or self.ray_workers),
                   "ray_address / ray_workers need executor: ray (got executor: local)")]
        for bad, message in checks:
            if bad:
                raise ConfigError(f"AccumulateFRAConfig: {message}")

    @property
    def job_threads(self) -> int:
        """The job's CPU thread count: `threads`, or min(CPU cores, 4) for 0 (auto)."""
        from fra_core.jobs import auto_threads

        return self.threads or auto_threads()

    @property
    def run_layers(self) -> tuple[int, ...]:
        """The layers this run covers: `layers`, or (`layer`,)."""
        return self.layers or (self.layer,)
