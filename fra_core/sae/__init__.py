"""Sparse autoencoders: training through SAELens (a background job), loaders for every format we meet,
and inspection.

Public API:

- `load_sae(ref, device=None, workspace=None) -> sae_lens.SAE` — `ref` is a workspace SAE name, a SAELens
  disk folder, ``ckkissane:<path-to-.pt>`` or ``release:<release>/<sae_id>``; the hook name is in
  ``sae.cfg.metadata.hook_name``.
- `list_saes(workspace=None) -> list[SAEEntry]` — the SAEs in the workspace with their metadata.
- `check_sae_fits_model(sae, model)` — hook exists on the model and d_in matches it (clear errors).
- `fra_core.sae.train` — `TrainSAEConfig`, `run_train_sae(cfg, progress)` (job kind and CLI ``train-sae``).
- `fra_core.sae.inspect` — histograms, density, top contexts, pattern search, vocab projection.
- `fra_core.sae.demo.ensure_demo_saes(workspace)` — the demo workspace's SAEs.

Errors are `SAELoadError` / `SAECompatibilityError` (both `ValueError`) with one-line messages.
"""

from __future__ import annotations

from fra_core.sae.loaders import (
    SAECompatibilityError,
    SAEEntry,
    SAELoadError,
    check_sae_fits_model,
    hook_input_shape,
    list_saes,
    load_sae,
    sae_input,
)

__all__ = [
    "SAECompatibilityError", "SAEEntry", "SAELoadError", "check_sae_fits_model", "hook_input_shape",
    "list_saes", "load_sae", "sae_input",
]
