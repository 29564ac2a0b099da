"""The on-disk formats that jobs write and the store reads: job status files and accumulation shards.

Torch-free and duckdb-free: both the job processes and `store` import this module (and only this one of
fra_core, besides `fra_core.errors`); it uses two torch-free helpers of its own, `fra_core.pair_strengths`
(G of co-activation rows, re-exported here) and `fra_core.coact_pack` (the on-disk packing of coact tables).

A job folder (``$FRA_WORKSPACE/jobs/<job_id>/``, see `fra_core.jobs`) holds `job.json` (kind, created,
config hash), `config.yaml`, `status.json` (state, done, total, message, pid, result …), `metrics.jsonl`,
`log.txt`, and for accumulation jobs `run.json` and `shards/`.

An accumulation job folder's `shards/` holds, per shard `i` (a batch of samples)::

    shard-000042.pairs.parquet     per-pair aggregates over the shard's samples (PAIRS_SCHEMA)
    shard-000042.examples.parquet  top example contexts per pair within the shard (EXAMPLES_SCHEMA)
    shard-000042.samples.parquet   the samples it covers, with their token strings (SAMPLES_SCHEMA)
    shard-000042.features.parquet  active-token counts per (source, feature) (FEATURES_SCHEMA)
    shard-000042.feature_tokens.parquet  each feature's most frequent tokens, and tokens before it, where it
                                   is active in the shard (FEATURE_TOKENS_SCHEMA; absent in older shards)
    shard-000042.marginals.parquet / .node_totals.parquet  all-pair runs only: per-feature marginals and
                                   node totals (MARGINALS_SCHEMA, NODE_TOTALS_SCHEMA; absent otherwise)
    shard-000042.feature_acts.parquet / .feature_hist.parquet  top and sampled activations per feature
                                   with their context windows, and activation histograms (absent in older shards)
    shard-000042.coact.arrow / .proj.arrow  all-pair runs, head-independent layers: the layer's
                                   co-activation table and the heads' projected rows (COACT_SCHEMA, PROJ_SCHEMA),
                                   as Arrow IPC files (`IPC_CODECS`): millions of float-heavy rows per shard,
                                   written 2–6× faster than Parquet; coact's repeated values are stored once
                                   (`fra_core.coact_pack`); older shards: .parquet
    shard-000042.json              manifest: written last, so its presence marks a complete shard

Every file is written to a temp name and moved into place with `os.replace`, and the manifest comes
last: a job killed at any instant leaves either a complete shard or one without a manifest, which
ingest ignores and the resumed job overwrites. The job folder also holds `sources.json` (the run's
named node kinds, code version, ...) in `run.json`, written before the first shard.

"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fra_core.errors import FRAStudioError
from fra_core.pair_strengths import G_TILE_FMAS, G_TILE_Q, row_strengths, tile_k  # noqa: F401  (re-exported)

_KEY = [("layer", pa.uint16()), ("head", pa.uint16()), ("q_src", pa.uint16()), ("q_feat", pa.uint32()),
        ("k_src", pa.uint16()), ("k_feat", pa.uint32())]
PAIR_KEY = tuple(name for name, _ in _KEY)

PAIRS_SCHEMA = pa.schema(_KEY + [
    ("n", pa.uint64()), ("sum", pa.float64()), ("abs_sum", pa.float64()),
    ("max", pa.float32()), ("min", pa.float32()),
    ("diag_n", pa.uint64()), ("diag_sum", pa.float64()), ("diag_abs_sum", pa.float64()),
])
EXAMPLES_SCHEMA = pa.schema(_KEY + [
    ("sample", pa.uint64()), ("q_pos", pa.uint16()), ("k_pos", pa.uint16()), ("value", pa.float32()),
])
SAMPLES_SCHEMA = pa.schema([("sample", pa.uint64()), ("n_tokens", pa.uint16()),
                            ("tokens", pa.list_(pa.string()))])
FEATURES_SCHEMA = pa.schema([("src", pa.uint16()), ("feature", pa.uint32()), ("n_active", pa.uint64()),
                             ("n_tokens", pa.uint64())])

# kind "tok": the token at the active position; "prev": the token before it ("∅" at position 0)
FEATURE_TOKENS_SCHEMA = pa.schema([("src", pa.uint16()), ("feature", pa.uint32()), ("kind", pa.string()),
                                   ("token", pa.string()), ("n", pa.uint64())])

# all-pair runs (statistics='all_pairs'): each feature's total contribution against the whole other side
# (side 'query' / 'key'), and each named non-feature node's (SAE error, b_dec, biases, …) totals
MARGINALS_SCHEMA = pa.schema([("layer", pa.uint16()), ("head", pa.uint16()), ("side", pa.string()),
                              ("src", pa.uint16()), ("feature", pa.uint32()), ("n", pa.uint64()),
                              ("sum", pa.float64()), ("abs_sum", pa.float64())])
NODE_TOTALS_SCHEMA = pa.schema([("layer", pa.uint16()), ("head", pa.uint16()), ("side", pa.string()),
                                ("node", pa.string()), ("n", pa.uint64()), ("sum", pa.float64()),
                                ("abs_sum", pa.float64()), ("sum_vs_features", pa.float64())])

# per feature: its largest ('top') and randomly drawn ('sample') activations, each with the feature's activation
# on the tokens around it (ctx_acts, NaN outside the sample), and a log2-binned activation histogram
# (fra_core.accumulate.feature_acts)
FEATURE_ACTS_SCHEMA = pa.schema([("src", pa.uint16()), ("feature", pa.uint32()), ("kind", pa.string()),
                                 ("sample", pa.uint64()), ("pos", pa.uint16()), ("value", pa.float32()),
                                 ("ctx_acts", pa.list_(pa.float32()))])
FEATURE_HIST_SCHEMA = pa.schema([("src", pa.uint16()), ("feature", pa.uint32()), ("bin", pa.int16()),
                                 ("n", pa.uint64())])

# all-pair runs, layers whose co-activation table is head-independent (no attention weighting, no rotary):
# the shard stores that table ONCE for all heads of the layer (COACT_SCHEMA) and each head's projected
# decoder rows of the features in it (PROJ_SCHEMA); it writes no per-head `pairs`/`examples` rows for
# such layers. Head h's statistics of pair (f, g) follow exactly (fra_core.fra.allpairs.head_stats), with
# G = Σ_d q.vec[d] · k.vec[d] (q: side 'q', head h, feature f; k: side 'k', head h, feature g):
#   n = n, sum = G·s, abs_sum = |G|·abs, max = max(G·mx, G·mn), min = min(G·mx, G·mn),
#   diag_n = diag_n, diag_sum = G·diag_s, diag_abs_sum = |G|·diag_abs,
#   examples: the max cell (mx_sample, mx_q, mx_k) with value G·mx and the min cell with G·mn.
# vec (float64, d_head): side 'q' = U_f[h] = d_f W_Q^h (LN-folded, the engine's query row),
# side 'k' = V_g[h] / attn_scale. The store applies G (store.schema `pair_rows`).
COACT_SCHEMA = pa.schema([
    ("layer", pa.uint16()), ("q_src", pa.uint16()), ("q_feat", pa.uint32()), ("k_src", pa.uint16()),
    ("k_feat", pa.uint32()), ("n", pa.uint64()), ("s", pa.float64()), ("abs", pa.float64()),
    ("mx", pa.float64()), ("mn", pa.float64()),
    ("diag_n", pa.uint64()), ("diag_s", pa.float64()), ("diag_abs", pa.float64()),
    ("mx_sample", pa.uint64()), ("mx_q", pa.uint16()), ("mx_k", pa.uint16()),
    ("mn_sample", pa.uint64()), ("mn_q", pa.uint16()), ("mn_k", pa.uint16()),
])
PROJ_SCHEMA = pa.schema([("layer", pa.uint16()), ("head", pa.uint16()), ("side", pa.string()),
                         ("src", pa.uint16()), ("feature", pa.uint32()), ("vec", pa.list_(pa.float64()))])

def feature_code(src: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """(source, feature) → one sortable uint64 code src · 2³² + feature (how proj rows are looked up)."""
    return (np.asarray(src).astype(np.uint64) << np.uint64(32)) | np.asarray(feature).astype(np.uint64)


def find_codes(codes: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of `want` in the sorted `codes`, mask of the wanted codes that are missing)."""
    at = np.searchsorted(codes, want).clip(max=max(len(codes) - 1, 0))
    missing = codes[at] != want if len(codes) else np.ones(len(want), dtype=bool)
    return at, missing


def describe_code(code) -> str:
    return f"(src, feature) = ({int(code) >> 32}, {int(code) & 0xFFFFFFFF})"


KINDS = {"pairs": PAIRS_SCHEMA, "examples": EXAMPLES_SCHEMA, "samples": SAMPLES_SCHEMA,
         "features": FEATURES_SCHEMA, "feature_tokens": FEATURE_TOKENS_SCHEMA, "marginals": MARGINALS_SCHEMA,
         "node_totals": NODE_TOTALS_SCHEMA, "feature_acts": FEATURE_ACTS_SCHEMA, "feature_hist": FEATURE_HIST_SCHEMA,
         "coact": COACT_SCHEMA, "proj": PROJ_SCHEMA}
# shards written before a kind existed (or by top-m runs) are read as if it were empty
OPTIONAL_KINDS = ("feature_tokens", "marginals", "node_totals", "feature_acts", "feature_hist", "coact", "proj")
_MANIFEST_RE = re.compile(r"^shard-(\d{6})\.json$")


def shards_dir(job_dir: str | Path) -> Path:
    return Path(job_dir) / "shards"


# kinds written as Arrow IPC files instead of Parquet (one column encoder at a time), with their codec: the
# store reads the whole table anyway. coact: zstd, compressed on all cores, of the packed table
# (`fra_core.coact_pack`): a GPT-2-shaped table of 3.2 M rows wrote in 0.36 s instead of 1.32 s as Parquet,
# and packed in 53 MB instead of 106 MB; proj (float64 vectors, incompressible): lz4, 0.02 s instead of
# Parquet's 0.13 s for 34 MB instead of 32 MB (load 1, 2 cores)
IPC_CODECS = {"coact": "zstd", "proj": "lz4"}
IPC_KINDS = tuple(IPC_CODECS)


def shard_path(job_dir: str | Path, shard: int, kind: str) -> Path:
    suffix = "json" if kind == "manifest" else f"{kind}.arrow" if kind in IPC_KINDS else f"{kind}.parquet"
    return shards_dir(job_dir) / f"shard-{shard:06d}.{suffix}"


def _replace_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# kinds of float64-heavy, high-cardinality columns: a dictionary encoding is tried per column and given up,
# so it is not tried (measured on a 3.2 M-row coact table: write 0.58 → 0.51 s, read 0.76 → 0.24 s)
NO_DICTIONARY = ("coact", "proj")


def write_table_atomic(table: pa.Table, path: Path, use_dictionary: bool = True) -> None:
    """Write a Parquet file to a temp name, then move it into place (readers never see half a file)."""
    _replace_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", use_dictionary=use_dictionary))


def write_ipc_atomic(table: pa.Table, path: Path, codec: str = "zstd") -> None:
    """Write an Arrow IPC file to a temp name, then move it into place."""
    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
            writer.write_table(table, max_chunksize=1 << 20)
    _replace_atomic(path, write)


def write_kind_atomic(table: pa.Table, job_dir: str | Path, shard: int, kind: str) -> None:
    """Write one shard table in its kind's format (`IPC_KINDS`: Arrow IPC, coact packed; else Parquet)."""
    path = shard_path(job_dir, shard, kind)
    if kind in IPC_KINDS:
        from fra_core import coact_pack

        write_ipc_atomic(coact_pack.pack(table) if kind == "coact" else table, path, IPC_CODECS[kind])
    else:
        write_table_atomic(table, path, use_dictionary=kind not in NO_DICTIONARY)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp name beside `path`, then move it into place (readers see old or new, whole)."""
    _replace_atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(data, default=str), encoding="utf-8"))


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when the file is missing or (being written) not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


# ----------------------------------------------------------------------------- job status
TERMINAL_STATES = ("done", "failed", "cancelled")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process counts as dead
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


RUNNER_LOCK = "runner.lock"  # held (flock) by the one process running a job: fra_core.jobqueue


def runner_active(job_dir: Path) -> bool:
    """Whether a process holds the job's runner lock now (the OS drops it when that process dies)."""
    import fcntl

    path = Path(job_dir) / RUNNER_LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def job_status(job_dir: Path) -> dict[str, Any]:
    """status.json of a job; a "running"/"queued" job whose process is gone reads as "died"."""
    status = read_json(Path(job_dir) / "status.json", {}) or {}
    if status.get("state") in ("running", "queued") and not pid_alive(status.get("pid")) \
            and not runner_active(job_dir):
        status = {**status, "state": "died",
                  "message": "the job process is gone (killed or machine restarted); resume it to continue"}
    return status


# ----------------------------------------------------------------------------- accumulation shards
def write_shard(job_dir: str | Path, shard: int, tables: dict[str, pa.Table], samples: list[int],
                meta: dict[str, Any] | None = None) -> Path:
    """Write one complete shard (all tables, then the manifest). Raises OSError (e.g. ENOSPC) as is."""
    from concurrent.futures import ThreadPoolExecutor

    folder = shards_dir(job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {kind: tables.get(kind, schema.empty_table()) if kind in OPTIONAL_KINDS else tables[kind]
              for kind, schema in KINDS.items()}
    for kind, schema in KINDS.items():
        if not tables[kind].schema.equals(schema):
            raise FRAStudioError(f"shard {shard} {kind} table has schema {tables[kind].schema}, expected {schema}")
    # the IPC kinds (an all-pair shard's bulk) are written by a worker thread while this one writes the Parquet
    # kinds: pyarrow releases the GIL, and the two use the two cores a shard's write otherwise leaves half idle
    def write(kinds) -> None:
        for kind in kinds:
            write_kind_atomic(tables[kind], job_dir, shard, kind)

    with ThreadPoolExecutor(1, thread_name_prefix="shard-ipc") as pool:
        bulk = pool.submit(write, IPC_KINDS)
        write([kind for kind in KINDS if kind not in IPC_KINDS])
        bulk.result()
    counts = {kind: table.num_rows for kind, table in tables.items()}
    manifest = {"shard": shard, "samples": [int(s) for s in samples], "rows": counts, **(meta or {})}
    path = shard_path(job_dir, shard, "manifest")
    write_json_atomic(path, manifest)
    return path


def complete_shards(job_dir: str | Path) -> list[dict[str, Any]]:
    """Manifests of the complete shards of a job, in shard order."""
    folder = shards_dir(job_dir)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.iterdir()):
        if _MANIFEST_RE.match(path.name):
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def read_shard_table(job_dir: str | Path, shard: int, kind: str) -> pa.Table:
    path = shard_path(job_dir, shard, kind)
    legacy = path.with_suffix(".parquet")  # an IPC kind of a shard written before it was one
    if kind in IPC_KINDS and not path.exists() and legacy.exists():
        path = legacy
    if kind in OPTIONAL_KINDS and not path.exists():
        return KINDS[kind].empty_table()
    if path.suffix == ".arrow":
        with pa.OSFile(str(path), "rb") as source:  # read into memory: the table outlives the file handle
            table = pa.ipc.open_file(source).read_all()
        if not table.schema.equals(KINDS[kind]):
            raise FRAStudioError(f"{path}: schema {table.schema}, expected {KINDS[kind]}")
        if kind == "coact":
            from fra_core import coact_pack

            return coact_pack.unpack(table)
        return table
    return pq.read_table(path, schema=KINDS[kind])


def write_run_info(job_dir: str | Path, info: dict[str, Any]) -> None:
    """`info`: {"sources": [{"src", "kind", "name", "sae_id", "hook", "d_sae"}, ...], "code_version", ...}."""
    write_json_atomic(Path(job_dir) / "run.json", info)


def read_run_info(job_dir: str | Path) -> dict[str, Any]:
    path = Path(job_dir) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
