"""Content checksums of weight tensors: change with any edit, however it is made (.data writes, in-place
ops that do not bump the version counter, `load_state_dict`, SAELens's `fold_W_dec_norm`).

checksum(t) = Σ_c r2[c] · (chunk_c(t) · r1) in float64, with fixed pseudo-random r1 [CHUNK] and r2
(seeded, the same in every process): a weighted sum of every element with weights that differ per
position, so changing, swapping or moving elements changes it (except for a measure-zero set of edits).
One pass over the tensor; float64 (CPU for devices without float64, e.g. MPS).
"""

from __future__ import annotations

import torch

CHUNK = 1 << 16
_WEIGHTS: dict = {}


def _weights(device) -> tuple[torch.Tensor, torch.Tensor]:
    key = str(device)
    if key not in _WEIGHTS:
        gen = torch.Generator().manual_seed(20261201)
        r1 = torch.rand(CHUNK, generator=gen, dtype=torch.float64) + 0.5
        r2 = torch.rand(CHUNK, generator=gen, dtype=torch.float64) + 0.5
        _WEIGHTS[key] = (r1.to(device), r2.to(device))
    return _WEIGHTS[key]


def tensor_checksum(t: torch.Tensor) -> float:
    """One float64 number that changes with any edit of t's values (see the module docstring)."""
    t = t.detach()
    if t.device.type == "mps":
        t = t.cpu()
    flat = t.reshape(-1)
    r1, r2 = _weights(flat.device)
    n_full = flat.numel() // CHUNK
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    for c0 in range(0, n_full, 256):  # 256 chunks (16 M elements) at a time: bounded float64 memory
        c1 = min(n_full, c0 + 256)
        block = flat[c0 * CHUNK:c1 * CHUNK].view(c1 - c0, CHUNK).to(torch.float64)
        total += (block @ r1 * r2[torch.arange(c0, c1, device=flat.device) % CHUNK]).sum()
    rest = flat[n_full * CHUNK:].to(torch.float64)
    total += (rest @ r1[:rest.numel()]) * r2[n_full % CHUNK]
    return float(total)


def checksum(tensors) -> tuple:
    """(shape, dtype, device, checksum) of each tensor: equal tuples ⇔ (almost surely) equal contents."""
    return tuple((tuple(t.shape), t.dtype, str(t.device), tensor_checksum(t)) for t in tensors)
