"""Clear FRAInputError (a ValueError) messages for bad input."""

from __future__ import annotations

import pytest
import torch

from fra_core.fra import FRAInputError, FRAOptions, compute_fra, dfa_by_source

from .helpers_fra import make_sae, side_saes, tiny, tokens


@pytest.fixture(scope="module")
def model():
    return tiny("LN")


def test_error_type_is_value_error():
    assert issubclass(FRAInputError, ValueError)


def test_d_in_mismatch_names_both_shapes(model):
    sae = make_sae(24, "blocks.1.hook_resid_pre")
    with pytest.raises(FRAInputError, match=r"d_in=24.*32"):
        compute_fra(model, tokens(model), 1, None, sae)
    z = [make_sae(16, "blocks.0.attn.hook_z")]
    with pytest.raises(FRAInputError, match=r"d_in=16.*32"):
        compute_fra(model, tokens(model), 1, None, z)


def test_layer_and_head_out_of_range(model):
    d = side_saes(model, 1, "resid_pre")
    with pytest.raises(FRAInputError, match=r"layer 5 out of range.*2 layers"):
        compute_fra(model, tokens(model), 5, None, d)
    with pytest.raises(FRAInputError, match=r"heads \[4\].*4 heads"):
        compute_fra(model, tokens(model), 1, 4, d)


@pytest.mark.parametrize("bad", [torch.zeros(0, 5, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long),
                                 torch.zeros(2, 3, 4, dtype=torch.long)])
def test_empty_or_malformed_batch(model, bad):
    with pytest.raises(FRAInputError, match=r"shape \("):
        compute_fra(model, bad, 1, None, side_saes(model, 1, "resid_pre"))


def test_wrong_hooks(model):
    with pytest.raises(FRAInputError, match="cannot sit on layer 1"):
        compute_fra(model, tokens(model), 1, None, make_sae(32, "blocks.0.hook_resid_pre"))
    with pytest.raises(FRAInputError, match="not upstream"):
        compute_fra(model, tokens(model), 1, None, [make_sae(32, "blocks.1.attn.hook_z")])
    with pytest.raises(FRAInputError, match="same layer"):
        compute_fra(model, tokens(model), 1, None, [make_sae(32, "blocks.0.attn.hook_z")] * 2)
    with pytest.raises(FRAInputError, match="DFA needs an SAE on blocks.1.attn.hook_z"):
        dfa_by_source(model, tokens(model), 1, make_sae(32, "blocks.0.attn.hook_z"), [0])


def test_normalised_sae_and_no_ln_model_rejected(model):
    sae = make_sae(32, "blocks.1.hook_resid_pre")
    sae.cfg.normalize_activations = "expected_average_only_in"
    with pytest.raises(FRAInputError, match="normalize_activations"):
        compute_fra(model, tokens(model), 1, None, sae)
    plain = tiny(None)
    with pytest.raises(FRAInputError, match="no ln1"):
        compute_fra(plain, tokens(plain), 1, None, make_sae(32, "blocks.1.ln1.hook_normalized"))


def test_unsupported_model_configs():
    # GQA used to be refused here; it is decomposed exactly now (test_families.py). Split QKV input is not.
    split = tiny("LN", use_split_qkv_input=True)
    with pytest.raises(FRAInputError, match=r"split QKV inputs \(use_split_qkv_input=True\)"):
        compute_fra(split, tokens(split), 1, None, make_sae(32, "blocks.1.hook_resid_pre"))
    with pytest.raises(FRAInputError, match="top_m"):
        FRAOptions(top_m=0)
