"""Synthetic all-pair jobs whose head-independent layers are stored as co-activation tables (COACT_SCHEMA)
plus each head's projected rows (PROJ_SCHEMA), in the real shard format — and the numpy expectation of
every head's pair statistics, enumerated cell by cell (no torch, no store code).

The model of a cell (query position i, key position j <= i of one sample) of head h: the (f, g) term is
ã_if · ã_jg · G_h[f, g] with G_h[f, g] = U_f[h] · V_g[h] (the 'q' and 'k' proj vectors). Activations are
non-negative, as every SAE's are; half the features take values from {0.5, 1, 1.5, 2} so products tie
across cells and shards (the earliest-cell rule is exercised), the rest are continuous.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from fra_core import contracts
from fra_core.jobs import write_json_atomic
from tests.store.fake_jobs import aggregate, examples_for, pair_rows

LAYERS = {1: (0, 1, 2), 2: (0, 3)}  # coact layers and their heads
PAIR_LAYER = 0                       # a layer stored per head (pairs/examples), as attention-weighted ones are
N_SRC, N_FEAT, T, D_HEAD = 2, 5, 6, 8
KEY = ["layer", "q_src", "q_feat", "k_src", "k_feat"]


def vectors(seed: int = 7) -> dict[tuple, np.ndarray]:
    """(layer, head, side, src, feature) -> float64 vector of d_head: random 8-d rows, so G is random."""
    rng = np.random.default_rng(seed)
    return {(layer, head, side, src, f): rng.normal(0, 1, D_HEAD)
            for layer, heads in LAYERS.items() for head in heads for side in ("q", "k")
            for src in range(N_SRC) for f in range(N_FEAT)}


def dot(u: np.ndarray, v: np.ndarray) -> float:
    """u · v added left to right (as a plain loop adds it, DuckDB's list_dot_product included)."""
    out = 0.0
    for a, b in zip(u.tolist(), v.tolist()):
        out += a * b
    return out


def cells(rng: np.random.Generator, samples: list[int]) -> pd.DataFrame:
    """Every (layer, sample, q, k, q feature, k feature) term's product ã_if ã_jg of the samples' causal
    cells (k <= q, the diagonal included), for the coact layers."""
    rows = []
    for layer in LAYERS:
        for sample in samples:
            active = rng.random((T, N_SRC, N_FEAT)) < 0.35
            discrete = rng.choice([0.5, 1.0, 1.5, 2.0], (T, N_SRC, N_FEAT))
            acts = np.where(np.arange(N_FEAT) % 2 == 0, discrete, rng.gamma(2.0, 0.5, (T, N_SRC, N_FEAT))) * active
            pos, src, feat = np.nonzero(acts)
            a = acts[pos, src, feat]
            qi, ki = np.meshgrid(np.arange(len(a)), np.arange(len(a)), indexing="ij")
            keep = pos[qi] >= pos[ki]
            qi, ki = qi[keep], ki[keep]
            rows.append(pd.DataFrame({"layer": layer, "sample": sample, "q": pos[qi], "k": pos[ki],
                                      "q_src": src[qi], "q_feat": feat[qi], "k_src": src[ki], "k_feat": feat[ki],
                                      "p": a[qi] * a[ki]}))
    return pd.concat(rows, ignore_index=True)


def _cell_of(df: pd.DataFrame, ascending: bool) -> pd.DataFrame:
    """Per pair: the cell of the largest (ascending=False) or smallest product, the earliest
    (sample, q, k) among ties."""
    order = df.assign(key=df["p"] if ascending else -df["p"]).sort_values(KEY + ["key", "sample", "q", "k"])
    return order.groupby(KEY, sort=True).first()[["p", "sample", "q", "k"]]


def coact_table(c: pd.DataFrame) -> pa.Table:
    """A shard's co-activation table from its cells (what a job writes)."""
    d = c.assign(diag=c["q"] == c["k"])
    d = d.assign(dp=np.where(d["diag"], d["p"], 0.0))
    g = d.groupby(KEY, sort=True).agg(n=("p", "size"), s=("p", "sum"), diag_n=("diag", "sum"), diag_s=("dp", "sum"))
    hi, lo = _cell_of(d, ascending=False), _cell_of(d, ascending=True)
    cols = {**{k: g.index.get_level_values(k) for k in KEY}, "n": g["n"], "s": g["s"], "abs": g["s"],
            "mx": hi["p"], "mn": lo["p"], "diag_n": g["diag_n"], "diag_s": g["diag_s"], "diag_abs": g["diag_s"],
            "mx_sample": hi["sample"], "mx_q": hi["q"], "mx_k": hi["k"],
            "mn_sample": lo["sample"], "mn_q": lo["q"], "mn_k": lo["k"]}
    return pa.table({name: pa.array(np.asarray(cols[name]), contracts.COACT_SCHEMA.field(name).type)
                     for name in contracts.COACT_SCHEMA.names})


def proj_table(coact: pa.Table, vecs: dict[tuple, np.ndarray]) -> pa.Table:
    """The proj rows of the features the shard's coact rows touch (every head of their layer, each side)."""
    df = coact.to_pandas()
    keys = []
    for side, s, f in (("q", "q_src", "q_feat"), ("k", "k_src", "k_feat")):
        for layer, src, feat in sorted(set(zip(df["layer"], df[s], df[f]))):
            keys += [(layer, head, side, src, feat) for head in LAYERS[layer]]
    return pa.table({"layer": pa.array([k[0] for k in keys], pa.uint16()), "head": pa.array([k[1] for k in keys], pa.uint16()),
                     "side": pa.array([k[2] for k in keys], pa.string()), "src": pa.array([k[3] for k in keys], pa.uint16()),
                     "feature": pa.array([k[4] for k in keys], pa.uint32()),
                     "vec": pa.array([vecs[k].tolist() for k in keys], pa.list_(pa.float64()))},
                    schema=contracts.PROJ_SCHEMA)


def make_coact_job(jobs_root: Path, name: str, n_shards: int = 3, samples_per_shard: int = 3, seed: int = 0,
                   examples_per_pair: int = 3, state: str = "done") -> tuple[Path, pd.DataFrame, dict]:
    """A finished all-pair job: coact layers LAYERS (+ the per-head layer PAIR_LAYER); returns the folder,
    all cells of the coact layers, and {"vecs", "occ" (PAIR_LAYER's occurrence rows), "samples"}."""
    rng = np.random.default_rng(seed)
    vecs = vectors(seed + 100)
    job_dir = Path(jobs_root) / name
    job_dir.mkdir(parents=True)
    config = {"job": "AccumulateFRAConfig", "model": "demo", "q_saes": ["sae-a", "sae-b"], "layers": [0, 1, 2],
              "heads": [0, 1, 2, 3], "n_samples": n_shards * samples_per_shard, "statistics": "all_pairs",
              "examples_per_pair": examples_per_pair}
    (job_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    write_json_atomic(job_dir / "job.json", {"kind": "accumulate", "created": _dt.datetime.now().isoformat(),
                                              "config_hash": f"hash-{name}"})
    contracts.write_run_info(job_dir, {"code_version": "test", "sources": [
        {"src": s, "kind": "sae", "name": f"sae-{'ab'[s]}", "sae_id": f"sae-{'ab'[s]}", "hook": "blocks.1.ln1.hook_normalized",
         "d_sae": N_FEAT} for s in range(N_SRC)]})
    all_cells, occs = [], []
    for shard in range(n_shards):
        samples = list(range(shard * samples_per_shard, (shard + 1) * samples_per_shard))
        c = cells(rng, samples)
        all_cells.append(c)
        occ = pair_rows(rng, 60, heads=(0, 1), n_feat=N_FEAT)
        occs.append(occ)
        coact = coact_table(c)
        tokens = pa.array([[f"w{s}_{i}" for i in range(T)] for s in samples], pa.list_(pa.string()))
        tables = {"pairs": aggregate(occ, layer=PAIR_LAYER), "examples": examples_for(occ, samples, layer=PAIR_LAYER),
                  "coact": coact, "proj": proj_table(coact, vecs),
                  "samples": pa.table({"sample": pa.array(samples, pa.uint64()),
                                       "n_tokens": pa.array([T] * len(samples), pa.uint16()), "tokens": tokens}),
                  "features": pa.table({"src": pa.array([0], pa.uint16()), "feature": pa.array([1], pa.uint32()),
                                        "n_active": pa.array([5], pa.uint64()), "n_tokens": pa.array([18], pa.uint64())})}
        contracts.write_shard(job_dir, shard, tables, samples)
    write_json_atomic(job_dir / "status.json", {"state": state, "done": n_shards * samples_per_shard,
                                                 "updated": _dt.datetime.now().isoformat(timespec="seconds"),
                                                 "started": _dt.datetime.now().isoformat(timespec="seconds"),
                                                 "wall_s": 1.0})
    occ_all = {k: np.concatenate([o[k] for o in occs]) for k in occs[0]}
    return job_dir, pd.concat(all_cells, ignore_index=True), {"vecs": vecs, "occ": occ_all}


def ingested_coact_job(root: Path, name: str, **job_kwargs):
    """(store, run id, cells, extra, job folder): `make_coact_job` under root/jobs, ingested into
    root/fra.duckdb (the caller closes the store)."""
    from store import Store, ingest_job_shards

    job, cells_, extra = make_coact_job(root / "jobs", name, **job_kwargs)
    store = Store(root / "fra.duckdb")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    return store, run, cells_, extra, job


def expected_rows(c: pd.DataFrame, vecs: dict) -> pd.DataFrame:
    """Every head's pair statistics by enumeration of the per-cell terms ã·ã·G (pair_rows' columns
    but `run`), sorted by (layer, head, pair)."""
    out = []
    for layer, heads in LAYERS.items():
        cl = c[c["layer"] == layer]
        for head in heads:
            g = np.array([dot(vecs[(layer, head, "q", qs, qf)], vecs[(layer, head, "k", ks, kf)])
                          for qs, qf, ks, kf in zip(cl["q_src"], cl["q_feat"], cl["k_src"], cl["k_feat"])])
            t = cl.assign(head=head, t=cl["p"].to_numpy() * g, diag=cl["q"] == cl["k"])
            t = t.assign(a=t["t"].abs(), dt=np.where(t["diag"], t["t"], 0.0), nt=np.where(t["diag"], 0.0, t["t"]))
            t = t.assign(da=t["dt"].abs())
            agg = t.groupby(["layer", "head", "q_src", "q_feat", "k_src", "k_feat"], sort=True).agg(
                n=("t", "size"), sum=("t", "sum"), abs_sum=("a", "sum"), max=("t", "max"), min=("t", "min"),
                diag_n=("diag", "sum"), diag_sum=("dt", "sum"), diag_abs_sum=("da", "sum"), nd_sum=("nt", "sum"))
            out.append(agg.reset_index())
    df = pd.concat(out, ignore_index=True)
    df["max"], df["min"] = df["max"].astype(np.float32), df["min"].astype(np.float32)
    return df


def expected_examples(c: pd.DataFrame, vecs: dict, examples_per_pair: int) -> pd.DataFrame:
    """Per pair and head: the cell of the largest product (value G·mx) and, if another cell, that of the
    smallest (G·mn), over all the run's cells (earliest cell among ties); with examples_per_pair = 1 the
    one of larger |value| (ties: the cell of the head's max value: the max cell if G >= 0); 0: none."""
    hi, lo = _cell_of(c, ascending=False).reset_index(), _cell_of(c, ascending=True).reset_index()
    rows = []
    for h, l in zip(hi.itertuples(), lo.itertuples()):
        for head in LAYERS[h.layer]:
            g = dot(vecs[(h.layer, head, "q", h.q_src, h.q_feat)], vecs[(h.layer, head, "k", h.k_src, h.k_feat)])
            key = (h.layer, head, h.q_src, h.q_feat, h.k_src, h.k_feat)
            v_hi, v_lo = np.float32(g * h.p), np.float32(g * l.p)
            cand = [(*key, h.sample, h.q, h.k, v_hi)]
            if (l.sample, l.q, l.k) != (h.sample, h.q, h.k):
                cand.append((*key, l.sample, l.q, l.k, v_lo))
            if examples_per_pair == 1 and len(cand) == 2:
                hi_wins = abs(v_hi) > abs(v_lo) or (abs(v_hi) == abs(v_lo) and g >= 0)
                cand = cand[:1] if hi_wins else cand[1:]
            rows += cand[:max(examples_per_pair, 0)]
    cols = ["layer", "head", "q_src", "q_feat", "k_src", "k_feat", "sample", "q_pos", "k_pos", "value"]
    return pd.DataFrame(rows, columns=cols).sort_values(cols[:9], ignore_index=True)
