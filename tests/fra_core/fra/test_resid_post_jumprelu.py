"""Residual JumpReLU SAEs (Gemma Scope style) in SAELens's saved format: an SAE on blocks.{L-1}.hook_resid_post
is the blocks.L.hook_resid_pre side (the same tensor), exact against the scores and the float64 reference."""

from __future__ import annotations

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from fra_core.fra import FRAOptions, compute_fra, reference_fra
from fra_core.fra.families import build_model
from fra_core.sae import load_sae

from .test_fra_reference import engine_entries


def _jumprelu(d_in: int, hook: str, d_sae: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_in ** 0.5)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
        sae.threshold.copy_(0.2 + 0.3 * torch.rand(d_sae, generator=gen))  # JumpReLU: a ≥ θ or 0
    return sae.eval()


def test_resid_post_jumprelu_from_disk_is_the_resid_pre_side(tmp_path):
    model = build_model("Gemma 2")
    _jumprelu(model.cfg.d_model, "blocks.1.hook_resid_post").save_model(str(tmp_path / "gemmascope-like"))
    sae = load_sae(str(tmp_path / "gemmascope-like"))
    assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    tok = torch.randint(0, model.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    res = compute_fra(model, tok, 2, None, sae, None, FRAOptions(k_active=40, top_m=None))
    assert res.q_sources == ["blocks.1.hook_resid_post"] and res.n_entries
    assert res.completeness_error() <= 1e-5
    small = tok[:1, :6]
    opts = FRAOptions(k_active=4, top_m=3)
    eng, ref = compute_fra(model, small, 2, [1], sae, None, opts), reference_fra(model, small, 2, [1], sae, None, opts)
    e = engine_entries(eng)
    assert e and set(e) == set(ref["entries"])
    assert all(abs(e[k] - v) <= 1e-5 for k, v in ref["entries"].items())


def test_resid_post_of_another_layer_is_refused():
    import pytest

    from fra_core.fra import FRAInputError

    model = build_model("GPT-2")
    sae = _jumprelu(model.cfg.d_model, "blocks.0.hook_resid_post")
    with pytest.raises(FRAInputError, match=r"blocks.0.hook_resid_post.*cannot sit on layer 2.*blocks.1.hook_resid_post"):
        compute_fra(model, torch.zeros(1, 4, dtype=torch.long), 2, None, sae)


def test_attention_output_jumprelu_saes_from_disk_on_gemma2(tmp_path):
    """Gemma-Scope-style attention SAEs (JumpReLU on blocks.l.attn.hook_z, head-major) through the
    post-attention norms of a Gemma 2 model: exact."""
    model = build_model("Gemma 2")
    d_z = model.cfg.n_heads * model.cfg.d_head
    saes = []
    for l in range(2):
        _jumprelu(d_z, f"blocks.{l}.attn.hook_z", seed=10 + l).save_model(str(tmp_path / f"att-l{l}"))
        saes.append(load_sae(str(tmp_path / f"att-l{l}")))
    tok = torch.randint(0, model.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(4))
    res = compute_fra(model, tok, 2, None, saes, None, FRAOptions(k_active=40, top_m=4))
    assert res.q_sources == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"] and res.n_entries
    assert {"blocks.0.ln1_post.hook_scale", "blocks.1.ln1_post.hook_scale"} <= set(res.frozen)
    assert res.completeness_error() <= 1e-5
