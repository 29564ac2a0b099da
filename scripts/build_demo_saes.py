"""Regenerate the shipped demo SAEs in fra_core/assets/demo_saes/ (run after the demo model changes).

    python scripts/build_demo_saes.py [--check] [--only NAME ...]

Trains `demo-l1-ln1`, `demo-l0-hook-z` and `demo-l0-ln1` (or only the named ones) with
`fra_core.sae.demo.DEMO_SAE_CONFIGS` through `run_train_sae` (the job code the UI uses) on the demo
model, in a temporary workspace, then replaces the asset folders. Prints each SAE's L0, explained
variance, dead features, size, and on fresh demo texts:

- how many features are "current token = A" / "previous token was A" features (>= 80 % of the
  feature's activation mass on one current / previous token);
- per-word coverage (`fra_core.sae.demo.word_coverage`): for how many vocabulary words some feature
  is a clean detector of "current token = w", and of "previous token = w".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def token_feature_counts(acts) -> dict[str, int]:
    """Features whose activation mass is >= 80 % on one current token / one previous token."""
    import numpy as np

    cur = acts.tokens[acts.sample, acts.pos]
    prev = np.where(acts.pos > 0, acts.tokens[acts.sample, np.maximum(acts.pos - 1, 0)], -1) + 1
    out = {"current_token": 0, "previous_token": 0, "other": 0}
    for f in np.unique(acts.feature):
        sel = acts.feature == f
        w = acts.value[sel]
        if np.bincount(cur[sel], weights=w).max() >= 0.8 * w.sum():
            out["current_token"] += 1
        elif np.bincount(prev[sel], weights=w).max() >= 0.8 * w.sum():
            out["previous_token"] += 1
        else:
            out["other"] += 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="train and report, but do not replace the assets")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="rebuild only these demo SAEs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="demo-saes-"))
    os.environ["FRA_WORKSPACE"] = str(root)

    from fra_core.jobs import ConsoleProgress
    from fra_core.models.demo import demo_texts, load_demo_model
    from fra_core.sae import load_sae
    from fra_core.sae.demo import ASSET_DIR, DEMO_SAE_CONFIGS, ensure_demo_saes, word_coverage
    from fra_core.sae.inspect import collect_activations, dead_features
    from fra_core.workspace import Workspace

    names = args.only or list(DEMO_SAE_CONFIGS)
    unknown = sorted(set(names) - set(DEMO_SAE_CONFIGS))
    if unknown:
        print(f"error: unknown demo SAE(s) {unknown}; known: {sorted(DEMO_SAE_CONFIGS)}", file=sys.stderr)
        return 1
    import torch

    # tiny matrices: one thread is as fast as two, much faster on a loaded shared machine, and makes
    # the result independent of the core count
    torch.set_num_threads(1)
    ws = Workspace.from_env()
    model = load_demo_model("cpu")
    t0 = time.time()
    made = ensure_demo_saes(ws, progress=ConsoleProgress("demo-saes", 10.0), model=model, asset_dir=root / "none",
                            configs={n: DEMO_SAE_CONFIGS[n] for n in names})
    print(f"trained {sorted(made)} in {time.time() - t0:.0f} s")
    texts = demo_texts(200, seed=12345)
    for name in names:
        acts = collect_activations(model, load_sae(name, device="cpu"), texts)
        size = sum(f.stat().st_size for f in made[name].iterdir())
        print(f"{name}: L0={acts.mean_l0:.2f} explained_variance={acts.explained_variance:.3f} "
              f"dead={dead_features(acts).size}/{acts.d_sae} {token_feature_counts(acts)} "
              f"{word_coverage(acts)} size={size / 1e6:.2f} MB")
        if not args.check:
            dest = ASSET_DIR / name
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(made[name], dest)
            print(f"wrote {dest}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
