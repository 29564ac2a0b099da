"""Projected decoder rows U_f = d_f · M, cached across `compute_fra` calls.

Feature f of a side contributes coef_if · R_i(U_f[h]) to q_i (or k_i), where M (`sides.side_maps`) folds
ln1.w, mean-centring, W_O[l] and post-attention norm gains (hook_z sources), the QK-norm gain and
W_Q[h] / W_K[h]: U depends on the weights only, not on the data. So each (model, layer, Q/K, heads,
dictionaries) keeps one table [n_features + 1, head_index, d_head], filled lazily; the last row, the
padding id, stays 0.

Cannot go stale: a table is used only while a content checksum (`checksum.py`) of the maps M (computed
fresh from the current weights on every call) and of every decoder W_dec equals the one it was filled
with. Any edit — training, `.data` writes, `sae.fold_W_dec_norm()`, `load_state_dict`, `.to(...)` —
changes the checksum and drops the table.

Inside `fixed_weights()` (an accumulation job's batch loop: the job holds its weights) a decoder's checksum
is computed once per weight version instead of on every call (≈ 0.15 s per call for five 24 576 × 768
decoders): it is memoised under (SAE, tensor identity, storage address, `_version`, shape, dtype, device), so
an in-place op (`W_dec.mul_`, `copy_`, `fold_W_dec_norm`), a new tensor (`load_state_dict` with assign,
`.to`) or a new SAE still drops the table; only `.data` writes, which leave the version counter alone, go
unseen there. The maps M are still checksummed on every call (small: d_in × heads × d_head per source).

Deterministic: rows are projected in fixed blocks of BLOCK feature ids ([b·BLOCK, (b+1)·BLOCK) of one
source), always the whole block, so a row's bits never depend on which batch first needed it (resumed
accumulation runs are bit-identical) and the uncached path gives the same bits as the cached one.
Tables above MAX_TABLE_BYTES (huge dictionaries) are not cached: only the blocks active in the batch are
projected, per call.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch

from fra_core.fra.checksum import checksum

MAX_TABLE_BYTES = 1 << 29  # 512 MiB: GPT-2 Small with a 24 576-feature SAE needs 75 MB per side
MAX_TABLES_PER_MODEL = 8
BLOCK = 256
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_SCOPE = threading.local()  # depth of `fixed_weights()` scopes in this thread
_VERSIONED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # SAE → (version key, W_dec checksum)


@contextlib.contextmanager
def fixed_weights():
    """Within this scope (this thread), decoder checksums are memoised per weight version (module docstring)."""
    _SCOPE.depth = getattr(_SCOPE, "depth", 0) + 1
    try:
        yield
    finally:
        _SCOPE.depth -= 1


def _version_key(t: torch.Tensor) -> tuple:
    return id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device)


def _decoder_checksum(sae) -> tuple:
    """checksum([W_dec]); inside `fixed_weights()` once per (SAE, W_dec version)."""
    W = sae.W_dec
    if not getattr(_SCOPE, "depth", 0):
        return checksum([W])
    key = _version_key(W)
    with _LOCK:
        hit = _VERSIONED.get(sae)
    # the weak reference rules out a freed tensor whose id and address a new one reuses
    if hit is not None and hit[0]() is W and hit[1] == key:
        return hit[2]
    value = checksum([W])
    with _LOCK:
        _VERSIONED[sae] = (weakref.ref(W), key, value)
    return value


def _fingerprint(dic, maps, memo: dict | None = None) -> tuple:
    """Flags + checksums of the maps and decoders; `memo` (one engine call's scratch dict) computes each
    decoder's checksum once per call when both sides use the same SAE."""
    flags = tuple(bool(getattr(s.cfg, "rescale_acts_by_decoder_norm", False)) for s in dic.saes)
    memo = {} if memo is None else memo
    decs = []
    for s in dic.saes:
        key = ("W_dec checksum", id(s))
        if key not in memo:
            memo[key] = _decoder_checksum(s)
        decs.append(memo[key])
    return flags, checksum(maps), tuple(decs)


class _Table:
    def __init__(self, saes, fingerprint, n_rows: int, like: torch.Tensor):
        self.refs = [weakref.ref(s) for s in saes]
        self.fingerprint = fingerprint
        # rows are only read once filled (or the zeroed padding row): untouched pages cost no memory
        self.rows = torch.empty(n_rows, *like.shape[1:], dtype=like.dtype, device=like.device)
        self.rows[-1] = 0
        self.filled = torch.zeros(n_rows, dtype=torch.bool, device=like.device)

    def valid(self, saes, fingerprint) -> bool:
        return fingerprint == self.fingerprint and all(r() is s for r, s in zip(self.refs, saes))


def _blocks(gids: torch.Tensor, offsets: list[int]) -> list[tuple[int, int, int]]:
    """(source, first local id, end local id) of every BLOCK that holds one of the global ids."""
    out = []
    for s in range(len(offsets) - 1):
        mine = gids[(gids >= offsets[s]) & (gids < offsets[s + 1])] - offsets[s]
        n = offsets[s + 1] - offsets[s]
        for b in torch.unique(mine // BLOCK).tolist():
            out.append((s, b * BLOCK, min(n, (b + 1) * BLOCK)))
    return out


def _projected_block(dic, maps, decoder, s: int, f0: int, f1: int) -> torch.Tensor:
    """[f1 − f0, head_index, d_head] the projected rows f0..f1 of source s.

    One GEMM [f1 − f0, d_in] @ [d_in, d_head] per head: the same shapes whatever the batch and
    whichever other heads are selected, hence the same bits.
    """
    M = maps[s]
    D = decoder(dic.saes[s])[f0:f1].to(M.dtype)
    return torch.stack([D @ M[:, h] for h in range(M.shape[1])], dim=1)


def project_active(dic, maps, ids: torch.Tensor, offsets: list[int], decoder):
    """Uncached: project the blocks active in the batch → (rows, row_of into rows)."""
    blocks = _blocks(torch.unique(ids), offsets)
    n_heads, d_head = maps[0].shape[1:]
    parts = [_projected_block(dic, maps, decoder, s, f0, f1) for s, f0, f1 in blocks]
    rows = torch.cat(parts + [maps[0].new_zeros(1, n_heads, d_head)])  # last row: the padding id
    where = torch.full((offsets[-1] + 1,), len(rows) - 1, dtype=torch.long, device=ids.device)
    at = 0
    for (s, f0, f1), p in zip(blocks, parts):
        where[offsets[s] + f0:offsets[s] + f1] = torch.arange(at, at + len(p), device=ids.device)
        at += len(p)
    return rows, where[ids]


def projected_rows(model, layer: int, dic, which: str, heads: list[int], maps, ids: torch.Tensor,
                   offsets: list[int], decoder, memo: dict | None = None):
    """(rows, row_of) for global feature ids [batch, pos, K]: rows[row_of] are the projected rows,
    [..., head_index, d_head]; the padding id maps to a zero row."""
    n_rows, (n_heads, d_head) = offsets[-1] + 1, maps[0].shape[1:]
    if torch.is_inference_mode_enabled() or n_rows * n_heads * d_head * maps[0].element_size() > MAX_TABLE_BYTES:
        return project_active(dic, maps, ids, offsets, decoder)
    fingerprint = _fingerprint(dic, maps, memo)
    key = (layer, which, tuple(heads), tuple(id(s) for s in dic.saes))
    with _LOCK:
        tables = _CACHE.setdefault(model, {})
        table = tables.get(key)
        if table is None or not table.valid(dic.saes, fingerprint):
            tables.pop(key, None)
            while len(tables) >= MAX_TABLES_PER_MODEL:  # dicts keep insertion order: drop the oldest
                tables.pop(next(iter(tables)))
            table = tables[key] = _Table(dic.saes, fingerprint, n_rows, maps[0][:1])
        uniq = torch.unique(ids)
        need = uniq[~table.filled[uniq] & (uniq < offsets[-1])]
        for s, f0, f1 in _blocks(need, offsets):
            table.rows[offsets[s] + f0:offsets[s] + f1] = _projected_block(dic, maps, decoder, s, f0, f1)
            table.filled[offsets[s] + f0:offsets[s] + f1] = True
    return table.rows, ids


def clear_cache() -> None:
    """Drop every cached table (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()
        _VERSIONED.clear()
