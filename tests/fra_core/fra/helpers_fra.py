"""FRA test helpers: random sae_lens SAEs on the hooks FRA supports, and tiny model variants."""

from __future__ import annotations

import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from fra_core.models.tiny import make_tiny_model


def make_sae(d_in: int, hook_name: str, d_sae: int = 64, kind: str = "standard", k: int = 6, seed: int = 0,
             bias_scale: float = 0.1):
    """A random SAE with non-zero b_dec/b_enc; standard ReLU SAEs get a negative b_enc so L0 is small."""
    gen = torch.Generator().manual_seed(seed)
    meta = SAEMetadata(hook_name=hook_name)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_in ** 0.5)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * bias_scale)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * bias_scale - (0.5 if kind == "standard" else 0.0))
    return sae.eval()


def tiny(norm: str | None = "LN", rotary: bool = False, bidirectional: bool = False, attn_only: bool = False,
         n_layers: int = 2, seed: int = 0, **extra):
    """A tiny random model; norm in LN, LNPre, RMS, RMSPre, None ('LN' keeps ln1.w/ln1.b unfolded)."""
    kw = dict(extra)
    if rotary:
        kw.update(positional_embedding_type="rotary", rotary_dim=8)
    if bidirectional:
        kw["attention_dir"] = "bidirectional"
    model = make_tiny_model(n_layers=n_layers, normalization_type=norm, attn_only=attn_only, seed=seed, **kw)
    if norm in ("LN", "RMS"):  # non-trivial ln1 weights so the unfolded w (and b) are exercised
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for block in model.blocks:
                block.ln1.w.copy_(1 + 0.3 * torch.randn(block.ln1.w.shape, generator=gen))
                if hasattr(block.ln1, "b"):
                    block.ln1.b.copy_(0.2 * torch.randn(block.ln1.b.shape, generator=gen))
    return model


def tokens(model, batch: int = 2, pos: int = 10, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen)


def side_saes(model, layer: int, side: str, kind: str = "standard", d_sae: int = 64, seed: int = 0):
    """The dictionary for one of the three supported sides at `layer`."""
    cfg = model.cfg
    if side == "normalized":
        return make_sae(cfg.d_model, f"blocks.{layer}.ln1.hook_normalized", d_sae, kind, seed=seed)
    if side == "resid_pre":
        return make_sae(cfg.d_model, f"blocks.{layer}.hook_resid_pre", d_sae, kind, seed=seed)
    d_z = cfg.n_heads * cfg.d_head
    return [make_sae(d_z, f"blocks.{l}.attn.hook_z", d_sae, kind, seed=seed + l) for l in range(layer)]
