"""Upstream dictionaries of every kind (hook_z, attn_out, mlp_out SAEs incl. layer_norm-normalised and folded
constant-scale ones, transcoders, skip transcoders) and their mixes: Σ(all FRA terms) == hook_attn_scores on
both sides, the nodes named per layer, and everything not modelled refused by name."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

from fra_core.fra import FRAOptions, compute_fra
from fra_core.fra.options import FRAInputError
from fra_core.fra.sides import UPSTREAM, parse_dictionary

from .helpers_fra import make_sae, tiny, tokens

F64 = torch.float64


def _fill(sae, seed: int, neg: float = 0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(p.shape[0], 1) ** 0.5)
            if name == "b_enc":
                p.sub_(neg)
    return sae.eval()


def dict_sae(d: int, hook: str, seed: int, norm: str = "none", topk: bool = False, d_sae: int = 48):
    meta = SAEMetadata(hook_name=hook)
    if topk:
        return _fill(TopKSAE(TopKSAEConfig(d_in=d, d_sae=d_sae, k=5, normalize_activations=norm, metadata=meta)),
                     seed, 0.0)
    return _fill(StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, normalize_activations=norm, metadata=meta)), seed)


def transcoder(d: int, layer: int, seed: int, skip: bool = False, d_sae: int = 40,
               hook_in: str | None = None, hook_out: str | None = None):
    meta = SAEMetadata(hook_name=hook_in or f"blocks.{layer}.ln2.hook_normalized",
                       hook_name_out=hook_out or f"blocks.{layer}.hook_mlp_out")
    cls, cfg_cls = (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig)
    return _fill(cls(cfg_cls(d_in=d, d_out=d, d_sae=d_sae, apply_b_dec_to_input=False, metadata=meta)), seed)


def _mix(model):
    """hook_z L0 + mlp_out L0 + transcoder L1 + attn_out L1 (layer_norm-normalised TopK, OpenAI v5 style)."""
    cfg = model.cfg
    return [make_sae(cfg.n_heads * cfg.d_head, "blocks.0.attn.hook_z", 48, "topk", seed=1),
            dict_sae(cfg.d_model, "blocks.0.hook_mlp_out", 2),
            transcoder(cfg.d_model, 1, 3),
            dict_sae(cfg.d_model, "blocks.1.hook_attn_out", 4, norm="layer_norm", topk=True)]


def _exact(model, q, k, layer: int, heads=None, k_active: int = 256):
    model = model.to(F64)
    for s in (q if isinstance(q, list) else [q]) + (k if isinstance(k, list) else [k]):
        s.to(F64)
    result = compute_fra(model, tokens(model, 2, 9), layer, heads, q, k, FRAOptions(k_active=k_active, top_m=4))
    assert result.completeness_error() <= 1e-5
    assert result.n_entries > 0 and not result.truncated
    return result


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS"])
def test_mix_of_every_kind_is_exact_on_both_sides(norm):
    model = tiny(norm, n_layers=3)
    q = _mix(model)
    k = [transcoder(model.cfg.d_model, 0, 7, skip=True), dict_sae(model.cfg.d_model, "blocks.1.hook_mlp_out", 8)]
    result = _exact(model, q, k, 2)
    names = result.q_node_names
    for n in ("sae_error.l0", "b_dec.l0", "b_O.l0", "sae_error.mlp_out.l0", "b_dec.mlp_out.l0",
              "sae_error.attn_out.l1", "b_dec.attn_out.l1", "ln_mean.attn_out.l1", "sae_error.mlp_out.l1"):
        assert n in names, n
    assert not any(n in names for n in ("attn_out.l0", "mlp_out.l0", "attn_out.l1", "mlp_out.l1"))
    k_names = result.k_node_names  # layers without a dictionary stay one opaque node each
    assert {"attn_out.l0", "skip.mlp_out.l0", "attn_out.l1", "sae_error.mlp_out.l1"} <= set(k_names)
    assert result.q_side.kind == UPSTREAM and len(result.q_side.offsets) == 5
    assert "the layer_norm scale of blocks.1.hook_attn_out's SAE input" in result.assumptions()


@pytest.mark.parametrize("kind", ["attn_out", "mlp_out", "attn_out_ln", "mlp_out_rescale", "transcoder", "skip"])
@pytest.mark.parametrize("rotary", [False, True])
def test_each_kind_alone_is_exact(kind, rotary):
    model = tiny("LN", rotary=rotary, n_layers=3)
    d = model.cfg.d_model
    make = {"attn_out": lambda l: dict_sae(d, f"blocks.{l}.hook_attn_out", 10 + l),
            "mlp_out": lambda l: dict_sae(d, f"blocks.{l}.hook_mlp_out", 20 + l, topk=True),
            "attn_out_ln": lambda l: dict_sae(d, f"blocks.{l}.hook_attn_out", 30 + l, norm="layer_norm", topk=True),
            "mlp_out_rescale": lambda l: dict_sae(d, f"blocks.{l}.hook_mlp_out", 40 + l, norm="constant_norm_rescale"),
            "transcoder": lambda l: transcoder(d, l, 50 + l),
            "skip": lambda l: transcoder(d, l, 60 + l, skip=True)}[kind]
    saes = [make(0), make(1)]
    _exact(model, saes, saes, 2, [0, 3])


def test_transcoder_nodes_are_the_exact_remainders():
    """mlp_out = Σ a W_dec + b_dec + x·W_skipᵀ + error, each piece as SAELens defines it."""
    from fra_core.fra import upstream

    model = tiny("LN", n_layers=2).to(F64)
    tc = transcoder(model.cfg.d_model, 0, 5, skip=True).to(F64)
    with torch.no_grad():
        tc.W_skip.copy_(torch.randn_like(tc.W_skip) * 0.1)
        _, cache = model.run_with_cache(tokens(model))
        x_in, x_out = cache["blocks.0.ln2.hook_normalized"], cache["blocks.0.hook_mlp_out"]
        enc = upstream.encode_source(tc, x_in, x_out, 1000, lambda s: s.W_dec)
        torch.testing.assert_close(enc.skip, x_in @ tc.W_skip.T)
        torch.testing.assert_close(enc.recon + tc.b_dec + enc.skip, tc.forward(x_in))  # SAELens's own forward
        torch.testing.assert_close(enc.recon + tc.b_dec + enc.skip + enc.error, x_out)
    result = _exact(model, [tc], [tc], 1)
    skip = result.q_node_names.index("skip.mlp_out.l0")
    assert result.node_terms(0, 0)[:, :, skip].abs().max() > 0


def test_layer_norm_sae_matches_saelens_decode():
    """OpenAI v5 SAEs (normalize_activations='layer_norm'): c·(Σ a W_dec + b_dec) + μ is SAELens's decode."""
    from fra_core.fra import upstream

    model = tiny("LN", n_layers=2).to(F64)
    sae = dict_sae(model.cfg.d_model, "blocks.0.hook_attn_out", 3, norm="layer_norm", topk=True).to(F64)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(model))
        x = cache["blocks.0.hook_attn_out"]
        enc = upstream.encode_source(sae, x, x, 1000, lambda s: s.W_dec)
        expected = sae.decode(sae.encode(x))
        torch.testing.assert_close(enc.recon + enc.b_dec_scale * sae.b_dec + enc.mean, expected)
        assert (enc.l0 == 5).all()


def test_folded_norm_scaling_factor_is_exact_and_equivalent():
    """gpt2-small-mlp-tm: a constant scale s folds into the weights (W_enc·s, W_dec/s, b_dec/s): the same
    activations as encoding s·x, the same reconstruction in raw units, and an exact decomposition."""
    model = tiny("LNPre", n_layers=2).to(F64)
    sae = dict_sae(model.cfg.d_model, "blocks.0.hook_mlp_out", 9, norm="expected_average_only_in").to(F64)
    with pytest.raises(FRAInputError, match="normalize_activations='expected_average_only_in'.*not folded"):
        parse_dictionary(model, 1, [sae])
    raw = {k: v.clone() for k, v in sae.state_dict().items()}
    s = 1.7
    sae.fold_activation_norm_scaling_factor(s)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(model))
        x = cache["blocks.0.hook_mlp_out"]
        unfolded = torch.relu((s * x - raw["b_dec"]) @ raw["W_enc"] + raw["b_enc"])
        torch.testing.assert_close(sae.encode(x), unfolded)
        torch.testing.assert_close(sae.decode(sae.encode(x)), (unfolded @ raw["W_dec"] + raw["b_dec"]) / s)
    _exact(model, [sae], [sae], 1)


def test_single_resid_sae_with_layer_norm_is_exact():
    """A layer_norm-normalised SAE as a single resid side (gpt2-small-resid-post-v5 on blocks.L-1.hook_resid_post)."""
    model = tiny("LN", n_layers=3)
    sae = dict_sae(model.cfg.d_model, "blocks.1.hook_resid_post", 11, norm="layer_norm", topk=True)
    result = _exact(model, sae, sae, 2)
    assert "ln_mean" in result.q_node_names


def test_refused_by_name():
    model = tiny("LN", n_layers=3)
    d = model.cfg.d_model
    cases = [
        ([dict_sae(d, "blocks.2.hook_mlp_out", 1)], "not upstream of layer 2"),
        ([dict_sae(d, "blocks.0.hook_mlp_out", 1), transcoder(d, 0, 2)], r"two mlp dictionaries for the same layer \(0\)"),
        ([make_sae(d, "blocks.0.attn.hook_z", 48), dict_sae(d, "blocks.0.hook_attn_out", 3)],
         r"two attn dictionaries for the same layer \(0\)"),
        ([dict_sae(d, "blocks.0.hook_attn_out", 1, norm="covariance_whitening")],
         "normalize_activations='covariance_whitening'"),
        ([transcoder(d, 0, 1, hook_out="blocks.0.hook_resid_post")], "hook_name_out='blocks.0.hook_resid_post'"),
        ([transcoder(d, 0, 1, hook_in="blocks.0.mlp.hook_nowhere")], "does not exist on this model"),
        ([dict_sae(d + 1, "blocks.0.hook_mlp_out", 1)], "d_in=33"),
        ([dict_sae(d, "blocks.0.hook_resid_mid", 1)], "cannot sit on layer 2's head input"),
    ]
    for saes, message in cases:
        with pytest.raises(FRAInputError, match=message):
            parse_dictionary(model, 2, saes)
    with pytest.raises(FRAInputError, match="pass it in a list of upstream dictionaries"):
        parse_dictionary(model, 2, transcoder(d, 1, 1, hook_in="blocks.2.hook_resid_pre"))
    attn_only = tiny("LN", attn_only=True, n_layers=2)
    with pytest.raises(FRAInputError, match="attention-only"):
        parse_dictionary(attn_only, 1, [dict_sae(d, "blocks.0.hook_mlp_out", 1)])


def test_reference_refuses_what_it_does_not_model():
    from fra_core.fra import reference_fra

    model = tiny("LN", n_layers=3)
    with pytest.raises(FRAInputError, match="reference_fra does not model dictionary kind 'upstream'"):
        reference_fra(model, tokens(model), 2, [0], _mix(model))


def test_refused_on_post_norm_models():
    from .helpers_fra import tiny as make

    try:
        model = make("RMS", n_layers=2, use_normalization_before_and_after=True)
    except Exception:  # noqa: BLE001 - this TL build cannot make one: nothing to refuse
        pytest.skip("no post-norm tiny model")
    with pytest.raises(FRAInputError, match="post-attention norms"):
        parse_dictionary(model, 1, [dict_sae(model.cfg.d_model, "blocks.0.hook_mlp_out", 1)])


def test_truncation_over_mixed_sources_stays_exact():
    model = tiny("LN", n_layers=3).to(F64)
    q = [s.to(F64) for s in _mix(model)]
    result = compute_fra(model, tokens(model), 2, [1], q, q, FRAOptions(k_active=3, top_m=4))
    assert result.truncated and result.completeness_error() <= 1e-5


@pytest.mark.parametrize("rotary", [False, True])
def test_allpairs_picks_up_the_mix_exactly(rotary):
    """The all-pair path projects decoder rows through `side_maps` and takes the engine's coefficients, so
    the mix flows through it: every pair equals the brute force, and features + nodes = hook_attn_scores."""
    from fra_core.fra.allpairs_batch import Projector, allpairs_batch, batch_marginals
    from tests.fra_core.fra.test_allpairs import as_dict, brute_force

    model = tiny("LN", rotary=rotary, n_layers=3)
    q = _mix(model)
    k = [transcoder(model.cfg.d_model, 0, 7, skip=True), dict_sae(model.cfg.d_model, "blocks.1.hook_mlp_out", 8)]
    heads = list(range(model.cfg.n_heads))
    opts = FRAOptions(k_active=256, top_m=None, exclude_diagonal=False)
    toks = tokens(model, 2, 7)
    proj = (Projector(model, 2, q, "Q", heads), Projector(model, 2, k, "K", heads))
    bs = allpairs_batch(model, toks, 2, None, q, k, opts, proj)
    got = as_dict(bs)
    assert len(got) > 50
    # brute_force uses one dictionary for both sides: check the query side's pairs with q on both
    same = (Projector(model, 2, q, "Q", heads), Projector(model, 2, q, "K", heads))
    got_qq = as_dict(allpairs_batch(model, toks, 2, None, q, None, opts, same))
    want = brute_force(model, toks, 2, q, opts, same)
    assert set(got_qq) == set(want)
    for key, w in want.items():
        assert abs(got_qq[key]["sum"] - w["sum"]) <= 1e-10 * max(w["abs_sum"], 1e-30), key  # float64 rounding
    err = batch_marginals(model, 2, bs, proj, opts)["completeness"]
    assert float((err[:, 0] / err[:, 1]).max()) <= 1e-4


def test_feature_share_splits_each_cell():
    """share_ij = |F|/(|F|+|N|) with F = Σ of every feature×feature node term and F + N = the score."""
    from fra_core.fra.share import cell_split, feature_share, share_sums

    model = tiny("LN", n_layers=3)
    q = _mix(model)
    result = _exact(model, q, q, 2, [0, 2])
    F, N = cell_split(result, 1, 1)
    terms = result.node_terms(1, 1)
    torch.testing.assert_close(F, terms[:, :, 0, 0])  # the features × features node term
    torch.testing.assert_close(F + N, result.target(1, 1))
    share = feature_share(result, 1)
    mask = result.attn_mask
    assert share["cells"].shape == (2, 9, 9) and bool(torch.isnan(share["cells"][0][~mask]).all())
    inside = share["cells"][:, mask]
    assert bool(((inside >= 0) & (inside <= 1)).all()) and 0 < share["text"] < 1
    f, n = share_sums(result)[2]
    assert f > 0 and n > 0
    # a side with no dictionary on any layer explains nothing in features: share 0 on the key side's account
    bare = [dict_sae(model.cfg.d_model, "blocks.0.hook_mlp_out", 1)]
    with torch.no_grad():
        bare[0].b_enc.fill_(-1e6)  # never active
    none = feature_share(_exact_any(model, q, bare, 2))
    assert none["text"] == 0.0


def _exact_any(model, q, k, layer):
    model = model.to(F64)
    for s in q + k:
        s.to(F64)
    result = compute_fra(model, tokens(model, 2, 9), layer, [0], q, k, FRAOptions(k_active=256, top_m=4))
    assert result.completeness_error() <= 1e-5
    return result


def test_error_budget_classifies_the_new_nodes():
    from fra_core.fra.validate import error_budget, node_source

    model = tiny("LN", n_layers=3)
    result = _exact(model, _mix(model), [transcoder(model.cfg.d_model, 0, 7, skip=True)], 2, [1])
    kinds = {n: node_source(n) for n in result.q_node_names + result.k_node_names}
    assert kinds["sae_error.mlp_out.l0"] == kinds["sae_error.attn_out.l1"] == "sae_error"
    assert kinds["b_dec.mlp_out.l0"] == "b_dec" and kinds["skip.mlp_out.l0"] == kinds["ln_mean.attn_out.l1"] == "other"
    budget = error_budget(result)
    assert budget["sae_error"] > 0 and budget["numerical"] < 1e-6 * budget["mean_abs_score"]


def test_default_k_keeps_every_feature_of_the_mix():
    """k_active None (the default) over transcoders, layer-norm SAEs and plain SAEs: K = the largest
    Σ L0, nothing truncated, and the same kept pairs and sums as a K far above every L0."""
    import torch

    model = tiny("LN", n_layers=3)
    q = _mix(model)
    k = [transcoder(model.cfg.d_model, 0, 7, skip=True), dict_sae(model.cfg.d_model, "blocks.1.hook_mlp_out", 8)]
    wide = _exact(model, q, k, 2)  # k_active 256
    default = _exact(model, q, k, 2, k_active=None)
    assert default.q_side.ids.shape[-1] == default.q_side.max_l0 < wide.q_side.ids.shape[-1]
    assert default.k_side.ids.shape[-1] == default.k_side.max_l0
    assert default.n_entries == wide.n_entries
    assert torch.allclose(default.kept_sum, wide.kept_sum, atol=1e-9)
