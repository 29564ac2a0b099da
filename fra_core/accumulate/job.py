"""The accumulation job's entry point (`fra_core.jobs` kind "accumulate"): picks the executor.

`executor: local` runs the loop in this process (`run.accumulate`); `executor: ray` drives Ray workers
(`ray_executor.accumulate_ray`). Both write the same shards into `progress.job_dir`, so a job folder may
be resumed on either. This module sits above both (the Ray executor reuses the local loop's shard body,
so the choice cannot live in `run` without an import cycle).
"""

from __future__ import annotations

from typing import Any

from fra_core.accumulate.config import AccumulateError, AccumulateFRAConfig


def run_accumulate(cfg: AccumulateFRAConfig, progress, *, model=None, q_saes=None, k_saes=None) -> dict[str, Any]:
    """Accumulate into `progress.job_dir`/shards with the configured executor; resumable.

    `model` / `q_saes` / `k_saes` may be passed in-process (tests, notebooks) to the local executor; Ray
    workers load them by name. The local executor runs with `cfg.job_threads` torch threads (restored
    afterwards: in-process callers keep their own setting); the job process also had OMP_NUM_THREADS
    set to it before torch loaded (`fra_core.jobs.start_process`)."""
    if cfg.executor == "ray":
        if model is not None or q_saes is not None or k_saes is not None:
            raise AccumulateError("executor 'ray' loads the model and SAEs by name on every worker: "
                                  "pass refs in the config, not in-process objects")
        from fra_core.accumulate.ray_executor import accumulate_ray

        return accumulate_ray(cfg, progress)
    import torch

    from fra_core.accumulate.run import accumulate

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.job_threads)
    try:
        return accumulate(cfg, progress, model=model, q_saes=q_saes, k_saes=k_saes)
    finally:
        torch.set_num_threads(before)
