"""Projected decoder rows U_f = d_f · M, cached across `compute_fra` calls.

Feature f of a side contributes coef_if · R_i(U_f[h]) to q_i (or k_i), where M (`sides.side_maps`) folds
ln1.w, mean-centring, W_O[l] (hook_z sources) and W_Q[h] / W_K[h]: U depends on the weights only, not
on the data. So each (model, layer, Q/K, heads, dictionaries) keeps one table [n_features + 1,
head_index, d_head], filled lazily (a block of ROW_BLOCK rows is projected the first time one of its
features is active in some batch; the last row, the padding id, stays 0). A table is valid while the weights it was made from are
unchanged: its fingerprint holds every weight's storage pointer and in-place version counter, so
training, `.to(device)` or `load_state_dict` all invalidate it. Models and SAEs are held weakly.
Tables above MAX_TABLE_BYTES (huge dictionaries), and calls under inference mode, are not cached: then only the rows active in the
batch are projected, per call.
"""

from __future__ import annotations

import threading
import weakref

import torch

MAX_TABLE_BYTES = 1 << 29  # 512 MiB: GPT-2 Small with a 24 576-feature SAE needs 75 MB per side
MAX_TABLES_PER_MODEL = 8
# Rows are projected in whole blocks of ROW_BLOCK ids, always the same block in one matmul: BLAS kernels round
# differently for different matrix shapes, so projecting "the rows this batch needs" would make a row's last
# bits depend on which batches came before — and a shard's max/min on which process (local loop, resumed job,
# Ray worker) computed it. Blocks make every shard bit-identical whoever computes it.
ROW_BLOCK = 256
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _project(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """[..., d_in] × [d_in, head_index, d_head] → [..., head_index, d_head]."""
    return torch.einsum("...d,dhe->...he", v, M)


def _fingerprint(tensors: list[torch.Tensor]):
    try:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors)
    except RuntimeError:  # inference-mode tensors have no version counter: never cache those
        return None


def _weights(model, layer: int, dic, which: str) -> list[torch.Tensor]:
    """Every tensor the projection maps depend on (see `sides.side_maps`)."""
    out = [getattr(model.blocks[layer].attn, f"W_{which}")]
    w = getattr(model.blocks[layer].ln1, "w", None)
    out += [w] if isinstance(w, torch.Tensor) else []
    out += [model.blocks[l].attn.W_O for l in dic.layers if l != layer]
    return out + [sae.W_dec for sae in dic.saes]


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


def project_active(dic, maps, ids: torch.Tensor, offsets: list[int], decoder):
    """Uncached: project only the decoder rows active in the batch → (rows, row_of into rows)."""
    uniq, row_of = torch.unique(ids, return_inverse=True)
    n_heads, d_head = maps[0].shape[1:]
    rows = torch.zeros(len(uniq), n_heads, d_head, dtype=maps[0].dtype, device=maps[0].device)
    _fill(rows, uniq, torch.arange(len(uniq), device=uniq.device), dic, maps, offsets, decoder)
    return rows, row_of  # the padding id (if present) is the last uniq value and keeps a zero row


def _fill(rows, gids, at, dic, maps, offsets, decoder) -> None:
    """rows[at] = projected decoder rows of the global ids `gids` (ids ≥ offsets[-1] stay untouched)."""
    for s, (sae, M) in enumerate(zip(dic.saes, maps)):
        mine = (gids >= offsets[s]) & (gids < offsets[s + 1])
        if mine.any():
            rows[at[mine]] = _project(decoder(sae)[gids[mine] - offsets[s]].to(M.dtype), M)


def projected_rows(model, layer: int, dic, which: str, heads: list[int], maps, ids: torch.Tensor,
                   offsets: list[int], decoder):
    """(rows, row_of) for global feature ids [batch, pos, K]: rows[row_of] are the projected rows,
    [..., head_index, d_head]; the padding id maps to a zero row."""
    n_rows, (n_heads, d_head) = offsets[-1] + 1, maps[0].shape[1:]
    fingerprint = _fingerprint(_weights(model, layer, dic, which))
    if fingerprint is None or torch.is_inference_mode_enabled() or n_rows * n_heads * d_head * maps[0].element_size() > MAX_TABLE_BYTES:
        return project_active(dic, maps, ids, offsets, decoder)
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
        if need.numel():  # fill whole blocks: a row's float32 value must not depend on the process's history
            need = torch.unique(need // ROW_BLOCK)[:, None] * ROW_BLOCK + torch.arange(ROW_BLOCK, device=need.device)
            need = need.reshape(-1)[need.reshape(-1) < offsets[-1]]
            _fill(table.rows, need, need, dic, maps, offsets, decoder)
            table.filled[need] = True
    return table.rows, ids


def clear_cache() -> None:
    """Drop every cached table (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()
