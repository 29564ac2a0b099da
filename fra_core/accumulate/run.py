"""The accumulation loop: texts → tokens → exact FRA statistics → Parquet shards.

Samples are numbered by their index in the dataset's fixed order. Shard i covers samples
[i·shard_size, (i+1)·shard_size); its manifest (written last) lists them. On (re)start the job reads the
manifests and computes only the shards without one, so SIGKILL at any point costs at most the shards in
progress and never counts a sample twice. `compute_shard` is the one shard body: the local loop below
and the Ray executor (`fra_core.accumulate.ray_executor`, config `executor: ray`) both call it, so they
write the same shards. What a shard holds depends on `statistics`: a runner from `prepare` —
`allpairs.AllPairsRunner` (exact, every pair, several layers, marginals) or `topm.TopMRunner`.

Texts of one batch are grouped by token length and each group runs as one engine call without
padding: padding would change a bidirectional head's scores, and costs nothing to avoid here.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from fra_core import contracts, jobs
from fra_core.accumulate.config import AccumulateError, AccumulateFRAConfig, ShardWriteError
from fra_core.accumulate.topm import TopMRunner
from fra_core.datasets import open_texts
from fra_core.fra.rowcache import fixed_weights

__all__ = ["accumulate", "compute_shard", "prepare", "run_accumulate", "shard_items", "start_run_info"]


def prune_pairs(tables: dict, min_count: int) -> tuple[dict, list[dict]]:
    """Drop the pairs seen fewer than `min_count` times in this shard (and their examples): per-head `pairs`
    rows, and `coact` rows (n is head-independent) with the `proj` rows no kept pair uses
    (`coact.prune_coact`).

    Returns the tables and the dropped mass per (layer, head): n_pairs (pairs dropped), n (their
    occurrences), sum, abs_sum — so stored + dropped = the shard's exact totals."""
    from fra_core.accumulate.coact import prune_coact

    if min_count <= 1:
        return tables, []
    dropped = []
    if "coact" in tables:
        coact, proj, dropped = prune_coact(tables["coact"], tables["proj"], min_count)
        tables = {**tables, "coact": coact, "proj": proj}
    pairs = tables["pairs"]
    low = pc.less(pairs["n"], pa.scalar(min_count, pa.uint64()))
    gone = pairs.filter(low)
    if gone.num_rows:
        kept = pairs.filter(pc.invert(low))
        agg = gone.group_by(["layer", "head"]).aggregate([("n", "count"), ("n", "sum"), ("sum", "sum"),
                                                          ("abs_sum", "sum")]).to_pylist()
        dropped += [{"layer": int(r["layer"]), "head": int(r["head"]), "n_pairs": int(r["n_count"]),
                     "n": int(r["n_sum"]), "sum": float(r["sum_sum"]), "abs_sum": float(r["abs_sum_sum"])}
                    for r in agg]
        ex = tables["examples"]
        if ex.num_rows:  # examples of kept pairs only (a left semi join on the pair key)
            ex = ex.join(kept.select(list(contracts.PAIR_KEY)), keys=list(contracts.PAIR_KEY), join_type="left semi")
            ex = ex.select(contracts.EXAMPLES_SCHEMA.names).cast(contracts.EXAMPLES_SCHEMA)
        tables = {**tables, "pairs": kept, "examples": ex}
    return tables, sorted(dropped, key=lambda d: (d["layer"], d["head"]))


def dropped_totals(job_dir: Path) -> dict[str, dict[str, dict]]:
    """{"<layer>": {"<head>": {n_pairs, n, sum, abs_sum}}} summed over the complete shards' manifests."""
    out: dict[str, dict[str, dict]] = {}
    for m in contracts.complete_shards(job_dir):
        for d in m.get("dropped_pairs", []):
            t = out.setdefault(str(d["layer"]), {}).setdefault(str(d["head"]), dict.fromkeys(DROPPED, 0))
            for c in DROPPED:
                t[c] += d[c]
    return out


DROPPED = ("n_pairs", "n", "sum", "abs_sum")


def _write(job_dir: Path, shard: int, buf, codec, cfg, n_done: int) -> None:
    """Write a runner's shard buffer (its `arrow()` tables, manifest last); a full disk is one clear error.
    With min_pair_count > 1 the shard's rare pairs are dropped and their mass goes into its manifest
    (written with the shard, so a redone shard replaces it) and, summed over shards, into run.json."""
    samples = [s for s, _ in buf.samples]
    tables, dropped = prune_pairs(buf.arrow(codec, cfg.layer), cfg.min_pair_count)
    try:
        contracts.write_shard(job_dir, shard, tables, samples,
                              {"dropped_pairs": dropped, "min_pair_count": cfg.min_pair_count})
        if cfg.min_pair_count > 1:
            info = contracts.read_run_info(job_dir)
            contracts.write_run_info(job_dir, {**info, "min_pair_count": cfg.min_pair_count,
                                               "dropped_pairs": dropped_totals(job_dir)})
    except OSError as exc:
        why = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise ShardWriteError(f"could not write shard {shard} ({len(samples)} samples) in "
                              f"{contracts.shards_dir(job_dir)}: "
                              f"{why}; the {n_done} samples of earlier shards are safe: free space and resume the job"
                              ) from exc


def clear_temp_files(job_dir: Path) -> None:
    """Remove the temp files a killed writer left (only while no writer of this job runs)."""
    folder = contracts.shards_dir(job_dir)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def shard_items(source, cfg: AccumulateFRAConfig):
    """(shard, [(sample, text), ...]) in dataset order: shard i holds samples [i·shard_size, (i+1)·shard_size).

    The assignment depends on the config alone, so every executor (and every resume) writes the same
    shard i from the same samples, whichever shards are already complete."""
    items = []
    for sample, text in enumerate(source.texts(cfg.n_samples)):
        items.append((sample, text))
        if len(items) == cfg.shard_size:
            yield sample // cfg.shard_size, items
            items = []
    if items:
        yield items[0][0] // cfg.shard_size, items


def prepare(cfg: AccumulateFRAConfig, model=None, q_saes=None, k_saes=None):
    """Load and check the model and SAEs (unless given): the runner of the run's statistics, which every
    shard this process computes shares (`run_info()`, `new_buffer()`, `process(items, buf)`,
    `shard_computed(buf, job_dir)`, `codec`, `model`, `completeness`)."""
    if cfg.statistics == "all_pairs":
        from fra_core.accumulate.allpairs import AllPairsRunner

        runner = AllPairsRunner(cfg, model, q_saes, k_saes)
    else:
        runner = TopMRunner(cfg, model, q_saes, k_saes)
    runner.model.eval()
    return runner


def start_run_info(job_dir: Path, info: dict) -> None:
    """run.json for a (re)started run: the runner's `run_info()`, keeping what earlier processes measured."""
    previous = contracts.read_run_info(job_dir)
    kept = {k: previous[k] for k in ("completeness", "completeness_detail", "feature_share", "feature_share_parts")
            if k in previous}
    contracts.write_run_info(job_dir, {**info, **kept})


def compute_shard(runner, cfg: AccumulateFRAConfig, shard: int, items: list[tuple[int, str]], job_dir: Path,
                  on_batch=None, n_done: int = 0) -> int:
    """Compute shard `shard` from its (sample, text) items and write it (manifest last); the one shard
    body of every executor. Batches are consecutive runs of `batch_size` items, so the shard's tables
    do not depend on who computes it. on_batch(n): called with the samples processed so far (progress
    and cancel checks). Returns the number of samples written."""
    buf = runner.new_buffer()
    with torch.no_grad(), fixed_weights():  # the job holds its weights: decoder checksums once per version
        for start in range(0, len(items), cfg.batch_size):
            runner.process(items[start:start + cfg.batch_size], buf)
            if on_batch is not None and start + cfg.batch_size < len(items):
                on_batch(len(buf.samples))
    runner.shard_computed(buf, Path(job_dir))  # records completeness; raises before a bad shard is written
    _write(Path(job_dir), shard, buf, runner.codec, cfg, n_done)
    return len(buf.samples)


def accumulate(cfg: AccumulateFRAConfig, progress, model=None, q_saes=None, k_saes=None) -> dict[str, Any]:
    job_dir = Path(progress.job_dir)
    source = open_texts(cfg.dataset, cfg.text_column, cfg.split, cfg.seed)  # fail fast before the model loads
    progress.update(0, cfg.n_samples, message="loading model and SAEs", force=True)
    runner = prepare(cfg, model, q_saes, k_saes)
    start_run_info(job_dir, runner.run_info())
    done = {int(m["shard"]): len(m["samples"]) for m in contracts.complete_shards(job_dir)}
    clear_temp_files(job_dir)
    n_done = n_start = sum(done.values())
    t0, seen, n_shards, clock = time.time(), 0, 0, [0.0]  # clock: time of the last log line
    cpu0 = time.process_time()

    def report(n: int) -> None:
        clock[0] = _report(progress, cfg, n, n_start, t0, clock[0])

    progress.update(n_done, cfg.n_samples, message=f"resuming after {n_done} samples" if n_done else "running",
                    force=True)
    for shard, items in shard_items(source, cfg):
        seen, n_shards = seen + len(items), shard + 1
        if shard in done:
            continue
        n_done += compute_shard(runner, cfg, shard, items, job_dir, lambda n, base=n_done: report(base + n),
                                n_done)
        report(n_done)
    clock[0] = 0.0
    report(n_done)
    note = "" if seen >= cfg.n_samples else f" (the dataset has only {seen} texts)"
    wall, cpu = max(time.time() - t0, 1e-9), time.process_time() - cpu0
    rate = (n_done - n_start) / wall
    progress.update(n_done, cfg.n_samples, message=f"finished: {n_done} samples{note}", force=True, rate=rate)
    new = max(n_done - n_start, 1)
    return {"samples": n_done, "shards": n_shards, "new_samples": n_done - n_start, "samples_per_s": rate,
            "cpu_s_per_sample": cpu / new, "peak_rss_mb": peak_rss_mb(), "dataset_texts": seen}


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MiB (what the launch estimate scales from), None if unknown."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    except (ImportError, OSError):
        return None


def _report(progress, cfg, n_done: int, n_start: int, t0: float, last_print: float, **extra) -> float:
    """Status (throttled by Progress; raises JobCancelled on cancel; `extra` goes into status.json) and a
    log line every 5 s."""
    now = time.time()
    rate = (n_done - n_start) / max(now - t0, 1e-9)  # this process's loop only: no model loading
    eta = (cfg.n_samples - n_done) / rate if rate > 0 else float("nan")
    progress.update(n_done, cfg.n_samples, message=f"{n_done}/{cfg.n_samples} samples, {fmt_rate(rate)}",
                    samples_per_s=rate, rate=rate, **extra)
    if now - last_print >= 5.0:
        print(f"{n_done}/{cfg.n_samples} samples  {fmt_rate(rate)}  ETA {eta:.0f} s", flush=True)
        return now
    return last_print


def fmt_rate(rate: float) -> str:
    """The job's rate in its log and status lines (`fra_core.jobs.fmt_rate`; "— samples/s" while unknown)."""
    return jobs.fmt_rate(rate, unknown="— samples/s")


def run_accumulate(cfg: AccumulateFRAConfig, progress, *, model=None, q_saes=None, k_saes=None) -> dict[str, Any]:
    """The local executor: accumulate into `progress.job_dir`/shards in this process; resumable.

    `model` / `q_saes` / `k_saes` may be passed in-process (tests, notebooks) instead of loading refs.
    The job entry point that also knows `executor: ray` is `fra_core.accumulate.job.run_accumulate`.
    """
    if cfg.executor != "local":
        raise AccumulateError(f"executor {cfg.executor!r} runs through fra_core.accumulate.job.run_accumulate, "
                              "not the local loop")
    return accumulate(cfg, progress, model=model, q_saes=q_saes, k_saes=k_saes)
