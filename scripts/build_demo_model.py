"""Regenerate the shipped demo weights in fra_core/assets/demo_model/ (deterministic, CPU).

    python scripts/build_demo_model.py [--steps N]

Trains with `fra_core.models.demo.train_demo_model`, measures the head scores and refuses to write weights
whose best layer-1 induction score is below the threshold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fra_core.models.demo import ASSET_DIR, DEFAULT_STEPS, INDUCTION_THRESHOLD, save_demo_model, train_demo_model  # noqa: E402
from fra_core.models.head_scores import head_scores  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-for-bit reproducible across machines with different core counts
    t0 = time.time()
    model = train_demo_model(steps=args.steps, progress=lambda s, n, loss: print(f"step {s}/{n} loss {loss:.3f}"))
    scores = head_scores(model)
    best_induction = float(scores["induction"][1].max())
    best_prev = float(scores["previous_token"][0].max())
    print(f"trained in {time.time() - t0:.0f} s; best L1 induction {best_induction:.3f}, "
          f"best L0 previous-token {best_prev:.3f}")
    if best_induction < INDUCTION_THRESHOLD:
        print("induction below threshold: not writing weights", file=sys.stderr)
        return 1
    save_demo_model(model, args.out, meta={
        "origin": "scripts/build_demo_model.py", "steps": args.steps,
        "induction_best_l1": round(best_induction, 4), "previous_token_best_l0": round(best_prev, 4),
        "train_s": round(time.time() - t0, 1)})
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
