r"""Upstream dictionary kinds at GPT-2 Small's widths (random weights): the cost of opening MLP outputs into
features, and of measuring the feature share, against the hook_z-only side in the same run.

    python benchmarks/bench_dicts.py [--T 64] [--batch 1] [--heads 0] [--k 512] [--threads 1] [--reps 2]

Model: 3 layers of GPT-2 Small's shape (d_model 768, 12 heads of 64, d_mlp 3072, LayerNorm), FRA of layer 2,
the --heads (comma-separated), T tokens, K = --k (above the largest L0: nothing truncated), top-8 per cell. Sides:
  reference: kk-shaped hook_z SAEs of layers 0–1 (d_sae 24 576, TopK-40);
  mix: the same + an OpenAI-v5-shaped mlp_out SAE of layer 0 (d_sae 32 768, TopK-32, layer_norm) + a
       transcoder of layer 1 (d_sae 24 576, TopK-style sparsity through a negative b_enc).
Timed per batch (best of --reps): compute_fra with each side, and `share.share_sums` of the mix's result (what
every job batch adds). The last line: mix_ratio=<mix / reference> share_ratio=<share_sums / mix compute_fra>
feature_share_ref=<x> feature_share_mix=<x>
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _sae(d_sae: int, hook: str, k: int, seed: int, norm: str = "none"):
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = TopKSAE(TopKSAEConfig(d_in=768, d_sae=d_sae, k=k, normalize_activations=norm,
                                metadata=SAEMetadata(hook_name=hook)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = torch.randn(d_sae, 768, generator=gen)
        sae.W_dec.copy_(W / W.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    return sae.eval()


def _transcoder(seed: int):
    import torch
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    tc = Transcoder(TranscoderConfig(d_in=768, d_out=768, d_sae=24_576, apply_b_dec_to_input=False,
                                     metadata=SAEMetadata(hook_name="blocks.1.ln2.hook_normalized",
                                                          hook_name_out="blocks.1.hook_mlp_out")))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(768, 24_576, generator=gen) / 768 ** 0.5)
        tc.b_enc.copy_(torch.full((24_576,), -2.6))  # ≈ 0.5 % of features fire per token
        tc.W_dec.copy_(torch.randn(24_576, 768, generator=gen) * 0.02)
        tc.b_dec.zero_()
    return tc.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", default="0")
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    import torch

    from fra_core.fra import FRAOptions, compute_fra
    from fra_core.fra.share import ratio, share_sums
    from fra_core.models.tiny import make_tiny_model

    torch.set_num_threads(args.threads)
    model = make_tiny_model(n_layers=3, d_model=768, n_heads=12, d_vocab=50257, n_ctx=max(args.T, 128))
    ref = [_sae(24_576, f"blocks.{l}.attn.hook_z", 40, l) for l in range(2)]
    for s in ref:
        s.cfg.reshape_activations = "hook_z"  # kk layout: z flattened head-major
    mix = ref + [_sae(32_768, "blocks.0.hook_mlp_out", 32, 7, norm="layer_norm"), _transcoder(8)]
    tokens = torch.randint(0, 50257, (args.batch, args.T), generator=torch.Generator().manual_seed(0))
    opts = FRAOptions(k_active=args.k, top_m=8)
    heads = [int(h) for h in args.heads.split(",")]

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(args.reps):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    with torch.no_grad():
        t_ref, r_ref = timed(lambda: compute_fra(model, tokens, 2, heads, ref, ref, opts))
        t_mix, r_mix = timed(lambda: compute_fra(model, tokens, 2, heads, mix, mix, opts))
        t_share, sums = timed(lambda: share_sums(r_mix))
    for name, r in (("reference", r_ref), ("mix", r_mix)):
        print(f"{name}: completeness {r.completeness_error():.2e}, max active/position {r.q_side.max_l0}, "
              f"truncated {r.truncated}")
    share = {name: ratio(sum(f for f, _ in s.values()), sum(n for _, n in s.values()))
             for name, s in (("ref", share_sums(r_ref)), ("mix", sums))}
    print(f"compute_fra per batch of {args.batch}: reference {t_ref:.2f} s, mix {t_mix:.2f} s; share_sums {t_share:.3f} s")
    print(f"mix_ratio={t_mix / t_ref:.3f} share_ratio={t_share / t_mix:.4f} feature_share_ref={share['ref']:.4f} "
          f"feature_share_mix={share['mix']:.4f}")


if __name__ == "__main__":
    main()
