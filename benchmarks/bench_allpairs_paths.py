"""Exact all-pair statistics vs today's top-m path, on the same samples (used by bench_accumulate.py).

Both paths start from token ids and end with per-pair statistics of every head of one layer:
- top-m:     `compute_fra(top_m=8)` (the engine: T²K² pair values per head, top-m per cell) + the job's
             per-pair reduction (`fra.aggregate.reduce_by_key`);
- all pairs: `allpairs_batch` (co-activation tables shared by the heads, G_h per pair; every pair, no
             truncation); marginals (`batch_marginals`) are timed apart.
Cases: (a) the demo model, layer 1, all heads, demo texts; (b) a GPT-2-Small-shaped layer: random
weights, d_model 768, 12 heads × d_head 64, an SAE with d_sae 24 576 on blocks.0.ln1.hook_normalized
whose activations are synthetic: 32 active features per token, drawn from a Zipf(s = 1.1) frequency
distribution over the 24 576 features (a few features fire on a large share of tokens, most are rare,
as SAE feature densities are), with log-normal magnitudes; T = 128.
"""

from __future__ import annotations

import time

import torch


class ZipfSAE(torch.nn.Module):
    """Wraps an SAE; `encode` returns deterministic synthetic activations (see the module docstring)."""

    def __init__(self, sae, k: int = 32, s: float = 1.1, seed: int = 0):
        super().__init__()
        self.sae, self.k = sae, k
        ranks = torch.arange(1, sae.cfg.d_sae + 1, dtype=torch.float64)
        self.p = (ranks ** -s) / (ranks ** -s).sum()
        self.perm = torch.randperm(sae.cfg.d_sae, generator=torch.Generator().manual_seed(seed))
        self.cfg, self.W_dec, self.b_dec = sae.cfg, sae.W_dec, sae.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        seed = int((flat[:, :4].sum() * 1e4).abs()) % (2 ** 31)  # same input → same activations
        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self.p.expand(len(flat), -1), self.k, replacement=False, generator=gen)
        acts = torch.zeros(len(flat), self.cfg.d_sae, dtype=x.dtype)
        acts.scatter_(1, self.perm[idx], torch.exp(torch.randn(len(flat), self.k, generator=gen) * 0.5).to(x.dtype))
        return acts.view(*x.shape[:-1], -1)


def gpt2_shaped(T: int = 128, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=1, d_model=768, n_heads=12, d_head=64, d_vocab=1000, n_ctx=T,
                                  attn_only=True, normalization_type="LN", device="cpu", seed=seed)
    model = HookedTransformer(cfg).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576, metadata=SAEMetadata(hook_name="blocks.0.ln1.hook_normalized")))
    with torch.no_grad():
        sae.W_dec.normal_(0, 768 ** -0.5)
    return model, ZipfSAE(sae.eval()), torch.randint(0, 1000, (1, T), generator=torch.Generator().manual_seed(seed))


def time_paths(model, sae, batches: list[torch.Tensor], layer: int, k_active: int, top_m: int = 8) -> dict:
    """Seconds per path over the same batches, and the pairs each path reports."""
    from fra_core.accumulate.stats import entry_stats
    from fra_core.fra import FRAOptions, compute_fra
    from fra_core.fra.aggregate import PairCodec, reduce_by_key
    from fra_core.fra.allpairs_batch import Projector, allpairs_batch, batch_marginals

    heads = list(range(model.cfg.n_heads))
    codec = PairCodec(model.cfg.n_heads, 1, sae.cfg.d_sae)
    opts_t = FRAOptions(k_active=k_active, top_m=top_m, exclude_diagonal=False)
    opts_a = FRAOptions(k_active=k_active, top_m=None, exclude_diagonal=False)
    out = {"topm_s": 0.0, "allpairs_s": 0.0, "marginals_s": 0.0, "topm_cpu_s": 0.0, "allpairs_cpu_s": 0.0,
           "topm_pairs": 0, "allpairs_pairs": 0}
    clock = time.process_time  # CPU seconds of this process (all its threads): less noisy than wall on a shared machine
    proj = (Projector(model, layer, sae, "Q", heads), Projector(model, layer, sae, "K", heads))
    with torch.no_grad():
        compute_fra(model, batches[0][:1], layer, None, sae, None, opts_t)  # warm-up: caches, allocator
        allpairs_batch(model, batches[0][:1], layer, None, sae, None, opts_a, proj)
        for tokens in batches:
            t0, c0 = time.perf_counter(), clock()
            e = compute_fra(model, tokens, layer, None, sae, None, opts_t).entries
            key = codec.encode(e["head"], e["q_source"], e["q_feature"], e["k_source"], e["k_feature"])
            t = reduce_by_key(key, entry_stats(e["value"], e["query_pos"] == e["key_pos"]))
            t1, c1 = time.perf_counter(), clock()
            bs = allpairs_batch(model, tokens, layer, None, sae, None, opts_a, proj)
            t2, c2 = time.perf_counter(), clock()
            batch_marginals(model, layer, bs, proj, opts_a)
            t3 = time.perf_counter()
            out["topm_cpu_s"] += c1 - c0
            out["allpairs_cpu_s"] += c2 - c1
            out["topm_s"] += t1 - t0
            out["allpairs_s"] += t2 - t1
            out["marginals_s"] += t3 - t2
            out["topm_pairs"] += len(t["key"])
            out["allpairs_pairs"] += sum(len(s["n"]) for s in bs.stats if s is not None)
    return out
