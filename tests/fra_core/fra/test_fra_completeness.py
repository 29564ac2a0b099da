"""Σ(all FRA terms) == hook_attn_scores for every supported side × norm × RoPE × attention direction."""

from __future__ import annotations

import itertools

import pytest
import torch

from fra_core.fra import FRAOptions, compute_fra

from .helpers_fra import make_sae, side_saes, tiny, tokens

NORMS = ["LN", "LNPre", "RMS", "RMSPre", None]
CASES = [(norm, side, rot, bi) for norm, side, rot, bi in itertools.product(
    NORMS, ["normalized", "resid_pre", "hook_z"], [False, True], [False, True]) if not (norm is None and side == "normalized")]


def _rel_err(result) -> float:
    return result.completeness_error()


@pytest.mark.parametrize("norm,side,rotary,bidirectional", CASES)
def test_terms_sum_to_scores(norm, side, rotary, bidirectional):
    model = tiny(norm, rotary, bidirectional)
    # TopK SAEs on hook_z: always k active features, whatever the scale of z in this tiny model
    d = side_saes(model, 1, side, kind="topk" if side == "hook_z" else "standard")
    result = compute_fra(model, tokens(model, 2, 9), 1, None, d, None, FRAOptions(k_active=64, top_m=4))
    assert _rel_err(result) <= 1e-4
    assert result.n_entries > 0
    assert not result.truncated
    # the attention mask is read from the config, never assumed
    assert bool(result.attn_mask.all()) == bidirectional
    names = result.q_node_names
    assert ("ln1.b" in names) == (norm == "LN")
    if side == "hook_z":
        assert ("pos_embed" in names) == (not rotary)
        assert "sae_error.l0" in names and "mlp_out.l0" in names


@pytest.mark.parametrize("norm", ["LN", "RMS"])
@pytest.mark.parametrize("side", ["normalized", "resid_pre", "hook_z"])
def test_folded_ln_model(norm, side):
    model = tiny(norm, rotary=True)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert model.cfg.normalization_type == norm + "Pre"
    d = side_saes(model, 1, side, kind="topk")
    result = compute_fra(model, tokens(model), 1, [0, 3], d, None, FRAOptions(k_active=8))
    assert _rel_err(result) <= 1e-4


def test_truncation_node_keeps_sum_exact():
    model = tiny("LN")
    d = side_saes(model, 1, "resid_pre")
    result = compute_fra(model, tokens(model), 1, 2, d, None, FRAOptions(k_active=2))
    assert result.truncated and result.q_side.max_l0 > 2
    assert _rel_err(result) <= 1e-4
    trunc = result.q_node_names.index("truncation")
    assert result.node_terms(0, 0)[:, :, trunc].abs().max() > 0


def test_different_query_and_key_dictionaries():
    model = tiny("LN", rotary=True)
    q = make_sae(32, "blocks.1.ln1.hook_normalized", 48, seed=1)
    k = [make_sae(32, "blocks.0.attn.hook_z", 40, kind="topk", seed=2)]
    result = compute_fra(model, tokens(model), 1, None, q, k, FRAOptions(k_active=16, top_m=None))
    assert _rel_err(result) <= 1e-4
    assert result.q_sources == ["blocks.1.ln1.hook_normalized"] and result.k_sources == ["blocks.0.attn.hook_z"]
    assert int(result.entries["q_feature"].max()) < 48 and int(result.entries["k_feature"].max()) < 40


def test_two_upstream_hook_z_saes_and_attn_out_node():
    model = tiny("LN", n_layers=3)
    d = [make_sae(32, "blocks.0.attn.hook_z", 32, kind="topk", seed=3),
         make_sae(32, "blocks.1.attn.hook_z", 24, kind="topk", seed=4)]
    result = compute_fra(model, tokens(model), 2, 1, d, None, FRAOptions(k_active=6, top_m=None))
    assert _rel_err(result) <= 1e-4
    assert set(result.entries["q_source"].tolist()) == {0, 1}
    assert int(result.entries["q_feature"][result.entries["q_source"] == 1].max()) < 24
    # a layer without a dictionary is one node: its whole attention output
    partial = compute_fra(model, tokens(model), 2, 1, d[1:], None, FRAOptions(k_active=6))
    assert "attn_out.l0" in partial.q_node_names and _rel_err(partial) <= 1e-4


@pytest.mark.parametrize("arch", ["jumprelu", "topk_rescaled"])
def test_other_sae_architectures(arch):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model = tiny("RMS", rotary=True, bidirectional=True)
    meta = SAEMetadata(hook_name="blocks.1.hook_resid_pre")
    if arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=64, metadata=meta))
        with torch.no_grad():
            sae.W_enc.normal_(0, 0.3)
            sae.W_dec.normal_(0, 0.2)
            sae.b_dec.normal_(0, 0.1)
            sae.threshold.fill_(0.5)
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=5, rescale_acts_by_decoder_norm=True, metadata=meta))
        with torch.no_grad():
            sae.W_dec.mul_(3.0)
            sae.b_dec.normal_(0, 0.1)
    result = compute_fra(model, tokens(model), 1, None, sae, None, FRAOptions(k_active=64))
    assert result.q_side.max_l0 > 0
    assert _rel_err(result) <= 1e-4
