"""Synthetic accumulation-job folders (real shard format, random numbers) for store tests: no torch."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from fra_core import contracts
from fra_core.jobs import write_json_atomic


def pair_rows(rng: np.random.Generator, n_rows: int, heads=(0, 1), n_feat: int = 12) -> dict[str, np.ndarray]:
    """Occurrence-level rows: (head, q_feat, k_feat, value, diag) that a shard aggregates."""
    return {"head": rng.choice(np.array(heads), n_rows), "q_feat": rng.integers(0, n_feat, n_rows),
            "k_feat": rng.integers(0, n_feat, n_rows), "value": rng.normal(0, 1, n_rows).astype(np.float32),
            "diag": rng.random(n_rows) < 0.2}


def aggregate(occ: dict[str, np.ndarray], layer: int = 1) -> pa.Table:
    """Aggregate occurrence rows per pair exactly as a job shard does (reference implementation)."""
    import pandas as pd

    df = pd.DataFrame(occ)
    df["value64"] = df["value"].astype(np.float64)
    df["abs"] = df["value64"].abs()
    df["dv"] = np.where(df["diag"], df["value64"], 0.0)
    df["dabs"] = np.where(df["diag"], df["abs"], 0.0)
    g = df.groupby(["head", "q_feat", "k_feat"], sort=True).agg(
        n=("value", "size"), sum=("value64", "sum"), abs_sum=("abs", "sum"),
        max=("value", "max"), min=("value", "min"), diag_n=("diag", "sum"), diag_sum=("dv", "sum"),
        diag_abs_sum=("dabs", "sum")).reset_index()
    cols = {"layer": np.full(len(g), layer), "head": g["head"], "q_src": np.zeros(len(g)), "q_feat": g["q_feat"],
            "k_src": np.zeros(len(g)), "k_feat": g["k_feat"], "n": g["n"], "sum": g["sum"],
            "abs_sum": g["abs_sum"], "max": g["max"], "min": g["min"], "diag_n": g["diag_n"],
            "diag_sum": g["diag_sum"], "diag_abs_sum": g["diag_abs_sum"]}
    return pa.table({name: pa.array(np.asarray(cols[name]), contracts.PAIRS_SCHEMA.field(name).type)
                     for name in contracts.PAIRS_SCHEMA.names})


def examples_for(occ: dict[str, np.ndarray], samples: list[int], layer: int = 1) -> pa.Table:
    n = len(occ["value"])
    sample = np.array(samples)[np.arange(n) % len(samples)]
    cols = {"layer": np.full(n, layer), "head": occ["head"], "q_src": np.zeros(n), "q_feat": occ["q_feat"],
            "k_src": np.zeros(n), "k_feat": occ["k_feat"], "sample": sample, "q_pos": np.arange(n) % 7 + 3,
            "k_pos": np.arange(n) % 3, "value": occ["value"]}
    return pa.table({name: pa.array(np.asarray(cols[name]), contracts.EXAMPLES_SCHEMA.field(name).type)
                     for name in contracts.EXAMPLES_SCHEMA.names})


# per shard (features 1 and 2 are active 5 and 10 times): feature 1 on 'alpha' 4 / 'beta' 1, always after
# 'gamma'; feature 2 on 'delta' 3 / 'eps' 3 / 'zeta' 2 (+ 2 tokens below its top 3), always at position 0
FEATURE_TOKENS = pa.table({
    "src": pa.array([0] * 7, pa.uint16()), "feature": pa.array([1, 1, 1, 2, 2, 2, 2], pa.uint32()),
    "kind": ["tok", "tok", "prev", "tok", "tok", "tok", "prev"],
    "token": ["alpha", "beta", "gamma", "eps", "delta", "zeta", "∅"],
    "n": pa.array([4, 1, 5, 3, 3, 2, 10], pa.uint64())}, schema=contracts.FEATURE_TOKENS_SCHEMA)
def feature_acts(samples: list[int], shard: int) -> dict[str, pa.Table]:
    """Feature 1 (per shard): top activations 3.0 + shard and 2.0 at position 4 of the shard's first two
    samples (the first also active on the token before, at 1.0), sampled ones 0.5 (position 2) and 1.5
    (position 0); context windows of 3 tokens either side; its histogram: 5 activations in 3 bins."""
    n, nan = 4, float("nan")
    acts = pa.table({
        "src": pa.array([0] * n, pa.uint16()), "feature": pa.array([1] * n, pa.uint32()),
        "kind": ["top", "top", "sample", "sample"],
        "sample": pa.array([samples[0], samples[1], samples[2], samples[3]], pa.uint64()),
        "pos": pa.array([4, 4, 2, 0], pa.uint16()),
        "value": pa.array([3.0 + shard, 2.0, 0.5, 1.5], pa.float32()),
        "ctx_acts": pa.array([[0, 0, 1.0, 3.0 + shard, 0, 0, 0], [0, 0, 0, 2.0, 0, 0, 0],
                              [nan, 0, 0, 0.5, 0, 0, 0], [nan, nan, nan, 1.5, 0, 0, 0]], pa.list_(pa.float32()))},
        schema=contracts.FEATURE_ACTS_SCHEMA)
    hist = pa.table({"src": pa.array([0, 0, 0], pa.uint16()), "feature": pa.array([1, 1, 1], pa.uint32()),
                     "bin": pa.array([-2, 1, 3], pa.int16()), "n": pa.array([1, 2, 2], pa.uint64())},
                    schema=contracts.FEATURE_HIST_SCHEMA)
    return {"feature_acts": acts, "feature_hist": hist}


LABELS = {1: "‘alpha’ 80% · after ‘gamma’ 100%", 2: "‘delta’ 30% ‘eps’ 30% ‘zeta’ 20% · after ‘∅’ 100%"}


def make_job(jobs_root: Path, name: str, n_shards: int = 3, samples_per_shard: int = 4, seed: int = 0,
             state: str = "done", n_feat: int = 12, feature_tokens: bool = True) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A finished (by default) accumulate job folder with `n_shards` shards; returns it and the raw rows.
    feature_tokens=False writes shards as jobs did before they counted tokens (no such file)."""
    rng = np.random.default_rng(seed)
    job_dir = Path(jobs_root) / name
    job_dir.mkdir(parents=True)
    config = {"job": "AccumulateFRAConfig", "model": "demo", "q_saes": ["demo-l1-ln1"], "layer": 1,
              "heads": [0, 1], "n_samples": n_shards * samples_per_shard, "examples_per_pair": 2}
    (job_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    write_json_atomic(job_dir / "job.json", {"kind": "accumulate", "created": _dt.datetime.now().isoformat(),
                                              "config_hash": f"hash-{name}"})
    contracts.write_run_info(job_dir, {"code_version": "test", "sources": [
        {"src": 0, "kind": "sae", "name": "demo-l1-ln1", "sae_id": "demo-l1-ln1", "hook": "blocks.1.ln1.hook_normalized",
         "d_sae": n_feat}]})
    raw = []
    for shard in range(n_shards):
        samples = list(range(shard * samples_per_shard, (shard + 1) * samples_per_shard))
        occ = pair_rows(rng, 200, n_feat=n_feat)
        raw.append(occ)
        tokens = pa.array([[f"w{s}_{i}" for i in range(10)] for s in samples], pa.list_(pa.string()))
        tables = {"pairs": aggregate(occ), "examples": examples_for(occ, samples),
                  "samples": pa.table({"sample": pa.array(samples, pa.uint64()),
                                       "n_tokens": pa.array([10] * len(samples), pa.uint16()), "tokens": tokens}),
                  "features": pa.table({"src": pa.array([0, 0], pa.uint16()), "feature": pa.array([1, 2], pa.uint32()),
                                        "n_active": pa.array([5, 10], pa.uint64()),
                                        "n_tokens": pa.array([40, 40], pa.uint64())})}
        if feature_tokens:
            tables["feature_tokens"] = FEATURE_TOKENS
            tables.update(feature_acts(samples, shard))
        contracts.write_shard(job_dir, shard, tables, samples)
    write_json_atomic(job_dir / "status.json", {"state": state, "done": n_shards * samples_per_shard,
                                                 "updated": _dt.datetime.now().isoformat(timespec="seconds"),
                                                 "started": _dt.datetime.now().isoformat(timespec="seconds"),
                                                 "wall_s": 1.5})
    return job_dir, raw


def concat(raw: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([r[key] for r in raw]) for key in raw[0]}
