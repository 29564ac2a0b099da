"""G of co-activation rows: G[row, h] = Σ_d qv[qi[row], h, d] · kv[ki[row], h, d] (float64), by BLAS tiles of one
fixed shape, so a pair's G has the same bits whatever other rows are computed with it and however many threads
compute the blocks. Torch-free and duckdb-free: the job (`fra_core.accumulate.coact`) and the store
(`store.compact`, through `fra_core.contracts`) call the same function.

Shapes: qv [n_q_features, head_index, d_head], kv [n_k_features, head_index, d_head], qi / ki [n_rows].
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np

from fra_core.errors import FRAStudioError

# G by tiles of one fixed shape: G_TILE_Q distinct query features × tile_k(d) distinct key features of the block's
# rows, one GEMM per head. A dot product's rounding may depend on where BLAS puts it (edge tiles of an odd-sized
# matrix, gemv for one row, the split among threads), never on the other rows of a fixed full shape; tiles of
# at most G_TILE_FMAS multiply-adds are below OpenBLAS's multithreading threshold (65536 · 4), so each runs on
# one thread, the same way in every process. Rows outside the features are zero padding.
G_TILE_Q = 32
G_TILE_FMAS = 262_144


def tile_k(d_head: int) -> int:
    """Key features per tile for vectors of d_head: a multiple of 32 (no edge tiles), G_TILE_FMAS at most."""
    return max(32, G_TILE_FMAS // (G_TILE_Q * max(d_head, 1)) // 32 * 32)


def row_strengths(qv: np.ndarray, qi: np.ndarray, kv: np.ndarray, ki: np.ndarray) -> np.ndarray:
    """G of each pair row: Σ_d qv[qi, …, d] · kv[ki, …, d] (float64). qv/kv [n_features, d_head] or
    [n_features, head_index, d_head] → G [n_rows] or [n_rows, head_index].

    Rows are grouped by query feature; per block of G_TILE_Q of them, G_tile[h] = Q_tile[h] @ K_tile[h]ᵀ (BLAS)
    over tiles of tile_k(d_head) key features (kv's own, or where the block's keys are sparse among them, just
    those keys), all of one fixed shape, so a pair's G never depends on which other pairs are computed with it
    (tests/store/test_coact_g.py)."""
    qi, ki = np.asarray(qi, dtype=np.int64), np.asarray(ki, dtype=np.int64)
    if len(qi) != len(ki):
        raise FRAStudioError(f"row_strengths: qi has {len(qi)} rows but ki has {len(ki)}")
    d, H, head_shape = qv.shape[-1], int(np.prod(qv.shape[1:-1], dtype=np.int64)), qv.shape[1:-1]
    G = np.empty((len(qi), H), dtype=np.float64)
    if len(qi):
        qv, kv = qv.reshape(len(qv), H, d), kv.reshape(len(kv), H, d)
        lock = threading.Lock()

        @functools.cache
        def kt_once() -> np.ndarray:
            return _k_tiles(kv, np.arange(len(kv)), tile_k(d))

        def kt() -> np.ndarray:  # kv's tiles, when a block needs them: built once, whichever thread asks first
            with lock:
                return kt_once()

        order = np.argsort(qi, kind="stable") if np.any(qi[1:] < qi[:-1]) else None
        q_sorted = qi if order is None else qi[order]
        new_q = np.r_[True, q_sorted[1:] != q_sorted[:-1]]
        q_rank = np.cumsum(new_q) - 1  # each sorted row's query feature, counted from 0
        bounds = np.r_[np.flatnonzero(new_q)[::G_TILE_Q], len(qi)]

        def block(r0: int, r1: int) -> None:
            rows = slice(r0, r1) if order is None else order[r0:r1]
            G[rows] = _block_strengths(qv, q_sorted[r0:r1], q_rank[r0:r1] - q_rank[r0], kv, kt, ki[rows])

        # blocks write disjoint rows and each tile's GEMM is one fixed single-threaded BLAS call, so running
        # blocks on all cores changes no bit (numpy releases the GIL in the GEMMs)
        _on_cores(block, list(zip(bounds[:-1].tolist(), bounds[1:].tolist())))
    return G.reshape((len(qi),) + head_shape)


def _on_cores(fn, args: list[tuple]) -> None:
    """fn(*a) for every a in args, on a thread per usable core (in this thread when one block or one core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(args), cores)
    if workers <= 1:
        for a in args:
            fn(*a)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="row-strengths") as pool:
        for f in [pool.submit(fn, *a) for a in args]:
            f.result()


def _k_tiles(kv: np.ndarray, at: np.ndarray, bk: int) -> np.ndarray:
    """kv[at] [n, head_index, d_head] zero-padded to whole tiles: C-contiguous [tile, head_index, bk, d_head]."""
    tiles = np.zeros((-(-len(at) // bk), kv.shape[1], bk, kv.shape[2]))
    pos = np.arange(len(at))
    tiles.transpose(0, 2, 1, 3)[pos // bk, pos % bk] = kv[at]
    return tiles


def _block_strengths(qv: np.ndarray, qi: np.ndarray, q_at: np.ndarray, kv: np.ndarray, kt: np.ndarray,
                     ki: np.ndarray) -> np.ndarray:
    """G [rows, head_index] of one block's rows: qi sorted, at most G_TILE_Q distinct (q_at: their rank), one
    GEMM per (tile, head) of the one fixed shape [G_TILE_Q, d_head] @ [d_head, bk]; kt() = kv's tiles
    [tile, head_index, bk, d_head]."""
    H, d, bk = kv.shape[1], kv.shape[2], tile_k(kv.shape[2])
    n_tiles = -(-len(kv) // bk)
    q_tile = np.zeros((1, H, G_TILE_Q, d))
    q_tile[0, :, :q_at[-1] + 1] = qv[qi[np.r_[True, q_at[1:] != q_at[:-1]]]].transpose(1, 0, 2)
    present = np.bincount(ki, minlength=n_tiles * bk) > 0  # the block's keys among kv's
    used = present.reshape(n_tiles, bk).any(axis=1)  # kv's tiles that hold one
    n_used, n_packed = int(used.sum()), -(-int(present.sum()) // bk)
    if n_used <= 2 * n_packed:  # dense: kv's own tiles
        tiles = kt() if n_used == n_tiles else kt()[used]
        tile_of, col = (ki // bk if n_used == n_tiles else (np.cumsum(used) - 1)[ki // bk]), ki % bk
    else:  # sparse: tiles of just the block's keys
        k_at = (np.cumsum(present) - 1)[ki]
        tiles, tile_of, col = _k_tiles(kv, np.flatnonzero(present), bk), k_at // bk, k_at % bk
    out = np.matmul(q_tile, tiles.transpose(0, 1, 3, 2))  # [tile, head_index, G_TILE_Q, bk]
    flat = np.ascontiguousarray(out.transpose(0, 2, 3, 1)).reshape(-1, H)  # [(tile, q, k), head_index]
    return np.take(flat, (tile_of * G_TILE_Q + q_at) * bk + col, axis=0)
