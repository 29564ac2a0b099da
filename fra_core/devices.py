"""Device choice: CUDA > CPU automatically; Apple MPS only when asked for.

`FRA_DEVICE` (auto | cpu | cuda | cuda:N | mps) overrides the automatic choice. TransformerLens refuses
MPS unless `TRANSFORMERLENS_ALLOW_MPS=1` (it has given wrong results on some torch versions), so
choosing MPS sets that flag explicitly. All maths runs in float32: FRA's exactness checks are float32
tolerances, MPS has no float64, and on CUDA we switch TF32 off so matmuls stay exact to ~1e-6.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "FRA_DEVICE"
CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.insert(0, "cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def pick_device(requested: str | None = None) -> torch.device:
    """Resolve a device request ('auto', 'cpu', 'cuda', 'cuda:1', 'mps'; None reads $FRA_DEVICE)."""
    requested = (requested or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available here")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device(requested)
    if requested == "mps":
        if "mps" not in available_devices():
            raise ValueError("device 'mps' requested but Apple MPS is not available here")
        os.environ["TRANSFORMERLENS_ALLOW_MPS"] = "1"
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {requested!r}; choose one of {CHOICES} (or cuda:N)")


def dtype_for(device: torch.device) -> torch.dtype:
    """Compute dtype for a device: float32 everywhere (exactness; MPS lacks float64)."""
    return torch.float32
