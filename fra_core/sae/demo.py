"""The demo workspace's SAEs, created on first use like the demo model.

- ``demo-l1-ln1`` on ``blocks.1.ln1.hook_normalized``: the induction head's input space, so FRA on it is
  exact up to the SAE error. Layer 1's input is LN(token embedding + position + the layer-0 previous-token
  head's output), so a TopK SAE with a few active features per token and d_sae >= 4x the vocabulary
  learns "current token = A" features and "previous token was A" features. k = 3 (current token,
  previous token, one for position / the rest) and 1.2 M training tokens (~7 000 occurrences of each
  word): at 150 k tokens only ~4 words had a clean previous-token feature (precision and recall >= 0.8),
  at 1.2 M ~135 of 169 (168 current-token ones); larger k (4-8) or d_sae (1024-1536) gave fewer.
- ``demo-l0-hook-z`` on ``blocks.0.attn.hook_z`` (head-major flattened, d_in = 4 x 16): the upstream
  features side (what layer 0's heads write); mostly "previous token was A" features of the
  previous-token heads (1.2 M tokens as well: at 77 k tokens it had almost none and EV 0.67).
- ``demo-l0-ln1`` on ``blocks.0.ln1.hook_normalized``: layer 0's head input, LN(token embedding +
  position), so the previous-token head (L0H3) can be explored: its features are "current token = A" and
  position features, and the head's top pair in each query row sits at key = query − 1 (a position ×
  position pair) on ~80 % of rows. d_sae = 256 (EV 0.93, 21 % dead on held-out tokens); 384 gave EV 0.97
  but 34 % dead and 768 gave 0.99 but 58 % dead (more features than token × position structure needs),
  above the SAE page's 30 % dead warning.

All are trained by `fra_core.sae.train.run_train_sae` (the code the UI's jobs run), deterministically.
`scripts/build_demo_saes.py` writes them to ``fra_core/assets/demo_saes/`` (shipped, < 1 MB each);
`ensure_demo_saes` copies the shipped folders into the workspace, or trains them there if missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fra_core.atomic import atomic_folder
from fra_core.sae.train import SAEExistsError, TrainSAEConfig, run_train_sae
from fra_core.workspace import Workspace

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_saes"

DEMO_SAE_CONFIGS: dict[str, TrainSAEConfig] = {
    "demo-l1-ln1": TrainSAEConfig(
        model="demo", hook_name="blocks.1.ln1.hook_normalized", architecture="topk", k=3, d_sae=768,
        training_tokens=1_228_800, lr=3e-3, train_batch_size_tokens=512, context_size=64, n_batches_in_buffer=16,
        dataset="demo", n_texts=4000, output_name="demo-l1-ln1", device="cpu", seed=0, log_every=20),
    "demo-l0-hook-z": TrainSAEConfig(
        model="demo", hook_name="blocks.0.attn.hook_z", architecture="topk", k=3, d_sae=512,
        training_tokens=1_228_800, lr=3e-3, train_batch_size_tokens=512, context_size=64, n_batches_in_buffer=16,
        dataset="demo", n_texts=4000, output_name="demo-l0-hook-z", device="cpu", seed=0, log_every=20),
    "demo-l0-ln1": TrainSAEConfig(
        model="demo", hook_name="blocks.0.ln1.hook_normalized", architecture="topk", k=3, d_sae=256,
        training_tokens=1_228_800, lr=3e-3, train_batch_size_tokens=512, context_size=64, n_batches_in_buffer=16,
        dataset="demo", n_texts=4000, output_name="demo-l0-ln1", device="cpu", seed=0, log_every=20),
}


def _complete(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()


def _copy_asset(src: Path, dest: Path) -> None:
    """Copy a shipped SAE folder into the workspace; if another process got there first, keep theirs."""
    try:
        with atomic_folder(dest) as tmp:
            for f in src.iterdir():
                shutil.copy2(f, tmp / f.name)
    except FileExistsError:
        pass


def ensure_demo_saes(workspace: Workspace | None = None, progress=None, train_if_missing: bool = True,
                     asset_dir: Path = ASSET_DIR, model=None,
                     configs: dict[str, TrainSAEConfig] | None = None) -> dict[str, Path]:
    """Make sure the demo SAEs are in the workspace; returns {name: folder} of those present.

    Existing folders are kept; shipped folders (`asset_dir`) are copied; otherwise (if `train_if_missing`)
    they are trained on the demo model (or `model`) with `configs` (default `DEMO_SAE_CONFIGS`).
    """
    workspace = workspace or Workspace.from_env()
    out: dict[str, Path] = {}
    for name, cfg in (configs or DEMO_SAE_CONFIGS).items():
        dest = workspace.saes / name
        if not _complete(dest) and _complete(asset_dir / name):
            _copy_asset(asset_dir / name, dest)
        if not _complete(dest) and train_if_missing and not dest.exists():
            if model is None:
                from fra_core.models.demo import load_demo_model

                model = load_demo_model(cfg.device, workspace=workspace)
            try:
                run_train_sae(cfg, progress, model=model, workspace=workspace)
            except SAEExistsError:  # another process finished it first
                pass
        if _complete(dest):
            out[name] = dest
    return out


def word_coverage(acts, precision: float = 0.8, recall: float = 0.8, min_count: int = 5) -> dict[str, int]:
    """Words (seen >= `min_count` times, BOS excluded) with a clean "current token = w" feature and with a
    clean "previous token = w" feature, over `fra_core.sae.inspect.SAEActivations`.

    A feature is a clean detector of "current token = w" when precision >= 0.8 (of the tokens it fires
    on, >= 80 % are w) and recall >= 0.8 (it fires on >= 80 % of the occurrences of w); likewise for the
    previous token. FRA on the induction head shows the textbook (current A) x (previous token was A)
    pair only for words covered on both counts. Returns {"words", "current_clean", "previous_clean"}.
    """
    import numpy as np

    mask = acts.mask.copy()
    mask[:, 0] = False                                                # BOS: no current word, no previous
    keep = mask[acts.sample, acts.pos]
    s, p, f = acts.sample[keep], acts.pos[keep], acts.feature[keep]
    prev_tokens = np.full_like(acts.tokens, -1)
    prev_tokens[:, 1:] = acts.tokens[:, :-1]
    n_vocab = int(acts.tokens.max()) + 2
    out = {}
    for name, table in (("current", acts.tokens), ("previous", prev_tokens)):
        fires = np.zeros((acts.d_sae, n_vocab), dtype=np.int64)          # [d_sae, token + 1]
        np.add.at(fires, (f, table[s, p] + 1), 1)
        seen = np.bincount(table[mask] + 1, minlength=n_vocab)          # occurrences of each token
        prec = fires / np.maximum(fires.sum(1, keepdims=True), 1)
        rec = fires / np.maximum(seen[None, :], 1)
        words = np.flatnonzero(seen >= min_count)
        out[f"{name}_clean"] = int(((prec >= precision) & (rec >= recall))[:, words].any(0).sum())
        out["words"] = len(words)
    return out
