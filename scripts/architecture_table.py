"""Print the architecture matrix as a Markdown table (the README's "Architectures" section).

    python scripts/architecture_table.py

For every family of `fra_core.fra.families.FAMILIES` (tiny random HookedTransformers with the flags
TransformerLens 3.9 sets for that family, 3 layers, T = 12 > a 4-token window) and every dictionary
side, the last layer is decomposed and Σ terms compared with `hook_attn_scores` on every masked-in
cell: "exact (max relative error)" or "refused" with the field the engine named. Exits 1 if any
family gives a wrong number without an error.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = ("resid_pre", "ln1.hook_normalized", "hook_z (upstream)")
FLAGS = ("normalization_type", "positional_embedding_type", "rotary_dim", "rotary_adjacent_pairs", "n_key_value_heads",
         "use_qk_norm", "use_local_attn", "attn_types", "attn_scores_soft_cap", "use_normalization_before_and_after",
         "parallel_attn_mlp", "post_embedding_ln", "use_NTK_by_parts_rope", "rotary_scaling_factor", "use_attn_scale",
         "clip_qkv", "use_logn_attn", "num_experts")


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        field = re.search(r"\((\w+=[^)]*)\)", value) or re.search(r"(blocks\.\d+\.\w+ \(\w+\))", value)
        return f"refused: `{field.group(1)}`" if field else f"refused: {value[:60]}"
    return f"exact ({value:.0e})"


def _flags(cfg: dict) -> str:
    out = []
    for k in FLAGS:
        if k in cfg:
            v = cfg[k]
            if k == "attn_types":
                v = "/".join(dict.fromkeys(v))
            out.append(f"{k}={v}")
    return ", ".join(out)


def main() -> int:
    warnings.filterwarnings("ignore")
    import torch

    from fra_core.fra.families import FAMILIES, check_family

    torch.set_num_threads(1)
    print("| Family | Status | TL flags exercised | hook_resid_pre | ln1.hook_normalized | upstream hook_z | "
          "frozen scales / named terms |")
    print("|---|---|---|---|---|---|---|")
    wrong = 0
    for name, cfg in FAMILIES.items():
        r = check_family(name)
        wrong += r.status == "WRONG"
        cells = " | ".join(_cell(r.sides.get(s)) for s in SIDES)
        print(f"| {name} | {r.status} | {_flags(cfg)} | {cells} | {', '.join(r.notes) or '—'} |")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
