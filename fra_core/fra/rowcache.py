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

Deterministic: the rows a batch needs are gathered into chunks of exactly BLOCK rows of one source (the
last chunk zero-padded) and projected by GEMMs of one fixed shape, so a row's bits never depend on which
batch first needed it or where in a chunk it fell (resumed accumulation runs are bit-identical) and the
uncached path gives the same bits as the cached one. Tables above MAX_TABLE_BYTES (huge dictionaries, or
GPT-2 Small's 12 heads × 10 dictionaries of 24 576 features) are not cached: only the rows active in the
batch are projected, per call.
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


def _by_source(gids: torch.Tensor, offsets: list[int]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(source, its global ids, their local ids) of the sources that hold some of the (sorted) global ids."""
    out = []
    for s in range(len(offsets) - 1):
        mine = gids[(gids >= offsets[s]) & (gids < offsets[s + 1])]
        if len(mine):
            out.append((s, mine, mine - offsets[s]))
    return out


def _projected(dic, maps, decoder, s: int, local: torch.Tensor) -> torch.Tensor:
    """[n, head_index, d_head] the projected rows `local` [n] of source s.

    The rows are gathered into chunks of exactly BLOCK rows (the last one zero-padded), and each chunk is one
    GEMM [BLOCK, d_in] @ [d_in, d_head] per head: the same shapes whatever the batch, whichever rows it needs
    and whichever other heads are selected, hence the same bits. (Projecting only the rows in use, not whole
    id blocks: 8 400 rows per GPT-2 sample instead of the 470 000 of the ≈ 1 800 id blocks they touch.)
    """
    M = maps[s]
    D = decoder(dic.saes[s])
    out = M.new_empty(len(local), *M.shape[1:])
    for c0 in range(0, len(local), BLOCK):
        idx = local[c0:c0 + BLOCK]
        chunk = D.new_zeros(BLOCK, D.shape[1])
        chunk[:len(idx)] = D.index_select(0, idx)
        chunk = chunk.to(M.dtype)
        out[c0:c0 + len(idx)] = torch.stack([chunk @ M[:, h] for h in range(M.shape[1])], dim=1)[:len(idx)]
    return out


def project_active(dic, maps, ids: torch.Tensor, offsets: list[int], decoder):
    """Uncached: project the rows active in the batch → (rows, row_of into rows)."""
    uniq = torch.unique(ids)
    parts = _by_source(uniq, offsets)
    n_heads, d_head = maps[0].shape[1:]
    rows = torch.cat([_projected(dic, maps, decoder, s, local) for s, _, local in parts]
                     + [maps[0].new_zeros(1, n_heads, d_head)])  # last row: the padding id
    where = torch.full((offsets[-1] + 1,), len(rows) - 1, dtype=torch.long, device=ids.device)
    kept = torch.cat([g for _, g, _ in parts]) if parts else uniq[:0]
    where[kept] = torch.arange(len(kept), device=ids.device)
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
        for s, gids, local in _by_source(need, offsets):
            table.rows[gids] = _projected(dic, maps, decoder, s, local)
            table.filled[gids] = True
    return table.rows, ids


def clear_cache() -> None:
    """Drop every cached table (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()
        _VERSIONED.clear()
