"""Tiny seeded random HookedTransformers, for tests, benchmarks and quick experiments (CPU, float32)."""

from __future__ import annotations


def make_tiny_model(n_layers: int = 2, d_model: int = 32, n_heads: int = 4, d_vocab: int = 50,
                    n_ctx: int = 32, normalization_type: str | None = "LN", attn_only: bool = False,
                    positional_embedding_type: str = "standard", seed: int = 0, **extra):
    """A random `n_layers`-layer model with random biases (so every bias term of FRA is exercised);
    `extra` goes to HookedTransformerConfig (e.g. rotary_dim, attention_dir)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_vocab=d_vocab,
        n_ctx=n_ctx, d_mlp=None if attn_only else 4 * d_model, act_fn=None if attn_only else "gelu",
        attn_only=attn_only, normalization_type=normalization_type,
        positional_embedding_type=positional_embedding_type, seed=seed, device="cpu", **extra,
    )
    model = HookedTransformer(cfg)
    # random biases too, so bias terms are exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O")):
                p.normal_(0, 0.1)
    return model.eval()
