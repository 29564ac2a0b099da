"""Half-precision models: FRA decomposes a float32 copy of the model (weights upcast, forward in float32).

A bf16 / fp16 forward pass rounds q, k and the scores to 8–11 mantissa bits, so no decomposition of its
`hook_attn_scores` can be exact to float32 precision. Instead the engine runs the same weights, upcast to
float32, and decomposes that model's scores exactly; `FRAResult.upcast_from` names the original dtype.
The copy is cached per model and rebuilt whenever a checksum of the model's weights changes.
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch

from fra_core.fra.checksum import checksum

HALF = (torch.float16, torch.bfloat16)
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def is_half(model) -> bool:
    """True when the model's config or any parameter is float16 / bfloat16."""
    return model.cfg.dtype in HALF or any(p.dtype in HALF for p in model.parameters())


def float32_model(model):
    """The model itself (float32/float64), or its float32 copy (cached; rebuilt when a weight changes)."""
    if not is_half(model):
        return model
    key = checksum(list(model.state_dict().values()))
    with _LOCK:
        hit = _COPIES.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        m32 = copy.deepcopy(model)
        m32.cfg.dtype = torch.float32  # modules share this cfg object (RMSNorm reads it)
        for mod in m32.modules():
            if hasattr(mod, "cfg") and mod.cfg is not m32.cfg:
                mod.cfg.dtype = torch.float32
        m32.to(torch.float32)
        _COPIES[model] = (key, m32)
        return m32
