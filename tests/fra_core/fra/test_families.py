"""The architecture matrix: every family is exact (Σ terms = hook_attn_scores ≤ 1e-5 on every masked-in
cell, checked against TransformerLens's own scores) or refused by an FRAInputError naming the field."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from transformer_lens import HookedTransformerConfig

from fra_core.fra import FRAInputError, FRAOptions, compute_fra, guard, reference_fra
from fra_core.fra.families import FAMILIES, TOL, WINDOW, T, build_model, check_family, family_sides

from .test_fra_reference import engine_entries

REFUSED = {"OLMo (clip_qkv, active)": "clip_qkv=0.05", "OLMoE (clip_qkv + QK-norm)": "clip_qkv=8.0"}
PARTIAL = {"OLMo 2 (LayerNorm)": {"hook_z (upstream)"}}  # a LayerNorm on the attention output: hook_z refused


def test_guard_classifies_every_config_field_of_the_pinned_tl():
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    assert fields - guard.classified_fields() == set(), "new TransformerLens fields: classify them in guard.py"
    assert guard.classified_fields() - fields == set(), "guard.py names fields TransformerLens no longer has"


def test_unknown_field_is_refused_unless_at_its_default(monkeypatch):
    model = build_model("GPT-2")
    monkeypatch.setattr(guard, "NEUTRAL", guard.NEUTRAL - {"use_attention_sinks"})  # as if TL added it
    guard.check_model_supported(model, 2)  # at its default: nothing changes
    model.cfg.use_attention_sinks = True
    with pytest.raises(FRAInputError, match=r"use_attention_sinks=True.*unknown to FRA"):
        guard.check_model_supported(model, 2)


@pytest.mark.parametrize("field,value", [
    ("use_split_qkv_input", True), ("use_attn_in", True), ("load_in_4bit", True), ("quantization_method", "gptq"), ("n_devices", 2),
    ("positional_embedding_type", "relative_positional_bias"), ("attention_dir", "sideways"),
])
def test_every_checked_field_names_itself(field, value):
    model = build_model("GPT-2")
    setattr(model.cfg, field, value)
    with pytest.raises(FRAInputError, match=re.escape(f"({field}={value!r})")):
        guard.check_model_supported(model, 2)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_is_exact_or_refused_by_name(name):
    r = check_family(name)
    refusals = [v for v in r.sides.values() if isinstance(v, str)]
    assert all(re.search(r"\(\w+=|blocks\.\d+\.\w+ \(", m) for m in refusals), refusals  # names the field
    if name in REFUSED:
        assert r.status == "refused" and all(REFUSED[name] in m for m in refusals), r.sides
    elif name in PARTIAL:
        assert r.status == "partial" and set(r.sides) - set(r.errors) == PARTIAL[name], r.sides
    else:  # a wrong number without an error fails here
        assert r.status == "exact", r.sides
        assert len(r.errors) >= 2 and max(r.errors.values()) <= TOL


@pytest.mark.parametrize("name", ["GPT-Neo", "Mistral", "Gemma 2"])
def test_sliding_window_mask_drives_pairs_and_centring(name):
    model = build_model(name)
    layer = next(l for l, t in enumerate(model.cfg.attn_types) if t == "local")
    tok = torch.randint(0, model.cfg.d_vocab, (2, T), generator=torch.Generator().manual_seed(1))
    d = family_sides(model, layer)["resid_pre"]
    res = compute_fra(model, tok, layer, None, d, None, FRAOptions(k_active=48, top_m=None, row_centre=True))
    far = (res.entries["query_pos"] - res.entries["key_pos"]) >= WINDOW
    assert res.n_entries and not bool(far.any()), "pairs reported for keys outside the window"
    assert int(res.attn_mask.sum()) < T * (T + 1) // 2  # the window really masks cells here
    err = res.completeness_error()
    assert err == err and err <= TOL  # not NaN, and the centred terms equal the centred scores


@pytest.mark.parametrize("name", ["GPT-Neo", "BLOOM", "Llama 3", "Qwen 3", "Gemma 2 (soft-cap 0.5)", "Gemma 3",
                                  "OLMo 2", "Shortformer", "Qwen 1 (log-n, dynamic NTK)"])
@pytest.mark.parametrize("side", ["resid_pre", "hook_z (upstream)"])
def test_engine_matches_float64_reference(name, side):
    model = build_model(name)
    layer = model.cfg.n_layers - 1
    tok = torch.randint(0, model.cfg.d_vocab, (1, 6 if side == "resid_pre" else 5),
                        generator=torch.Generator().manual_seed(2))
    d = family_sides(model, layer)[side]
    opts = FRAOptions(k_active=4, top_m=3, row_centre=name == "GPT-Neo")
    res = compute_fra(model, tok, layer, [1], d, None, opts)
    ref = reference_fra(model, tok, layer, [1], d, None, opts)
    eng = engine_entries(res)
    assert eng and set(eng) == set(ref["entries"])
    assert all(abs(eng[k] - v) <= 1e-5 for k, v in ref["entries"].items())
    for (b, hi, i, j), terms in ref["node_terms"].items():
        nt = res.node_terms(b, hi)
        for (qn, kn), v in terms.items():
            got = float(nt[i, j, res.q_node_names.index(qn), res.k_node_names.index(kn)])
            assert abs(got - v) <= 1e-5, (qn, kn, got, v)


def test_softcap_correction_is_one_named_term():
    model = build_model("Gemma 2 (soft-cap 0.5)")
    tok = torch.randint(0, model.cfg.d_vocab, (2, T), generator=torch.Generator().manual_seed(3))
    res = compute_fra(model, tok, 2, None, family_sides(model, 2)["resid_pre"], None, FRAOptions(k_active=48))
    assert res.q_node_names[-1] == res.k_node_names[-1] == "softcap"
    corr = res.node_terms(0, 0)[:, :, -1, -1]
    assert float(corr.abs().max()) > 1e-2  # the cap is active: the correction is not negligible
    assert res.completeness_error() <= TOL


def test_disabled_softcap_value_accepted():
    model = build_model("GPT-2")
    model.cfg.attn_scores_soft_cap = -2.0  # TL: any value ≤ 0 means "disabled"
    tok = torch.randint(0, model.cfg.d_vocab, (1, 8))
    res = compute_fra(model, tok, 2, None, family_sides(model, 2)["resid_pre"], None, FRAOptions(k_active=48))
    assert "softcap" not in res.q_node_names and res.completeness_error() <= TOL


def test_qk_norm_and_half_precision_say_what_they_do():
    model = build_model("Qwen 3", dtype=torch.bfloat16)
    tok = torch.randint(0, model.cfg.d_vocab, (2, T))
    res = compute_fra(model, tok, 2, [0, 3], family_sides(model, 2)["resid_pre"], None, FRAOptions(k_active=48))
    assert res.upcast_from == "bfloat16"
    assert {"blocks.2.attn.q_norm.hook_scale", "blocks.2.attn.k_norm.hook_scale"} <= set(res.frozen)
    assert res.completeness_error() <= TOL


def test_duplicate_heads_refused():
    model = build_model("GPT-2")
    with pytest.raises(FRAInputError, match=r"heads \[1, 1\] lists a head twice"):
        compute_fra(model, torch.zeros(1, 4, dtype=torch.long), 2, [1, 1], family_sides(model, 2)["resid_pre"])


def test_mask_check_refuses_a_mask_it_did_not_model():
    model = build_model("GPT-2")
    model.blocks[2].attn.attn_type = "local"  # TL would now mask a window the config does not announce
    model.cfg.window_size = WINDOW
    with pytest.raises(FRAInputError, match="attention mask"):
        from fra_core.fra.arch import check_mask
        tok = torch.randint(0, model.cfg.d_vocab, (1, T))
        _, cache = model.run_with_cache(tok, names_filter=lambda n: n.endswith("hook_attn_scores"))
        check_mask(cache["blocks.2.attn.hook_attn_scores"], torch.ones(T, T, dtype=torch.bool).tril(), 2)


_L = FAMILIES["Qwen 2.5"]
MORE = {  # combinations beyond the named families: still exact (or refused by name)
    "wide heads (n_heads·d_head ≠ d_model)": dict(FAMILIES["Gemma 2"], d_head=16),
    "custom attn_scale": dict(FAMILIES["GPT-2"], attn_scale=7.0),
    "scale by inverse layer idx": dict(FAMILIES["GPT-2"], scale_attn_by_inverse_layer_idx=True),
    "bidirectional local": dict(FAMILIES["GPT-Neo"], attention_dir="bidirectional"),
    "attention sinks": dict(_L, use_attention_sinks=True),
    "YaRN rotary": dict(_L, use_yarn_rope=True, yarn_factor=4.0, yarn_attention_factor=1.3,
                        yarn_original_max_position_embeddings=8),
    "ALiBi + soft-cap + GQA": dict(normalization_type="RMS", positional_embedding_type="alibi",
                                   attn_scores_soft_cap=0.7, n_key_value_heads=2),
    "OLMo 3 (GQA k_norm)": dict(_L, original_architecture="Olmo3ForCausalLM"),
    "QK-norm, ungrouped GQA": dict(_L, use_qk_norm=True, ungroup_grouped_query_attention=True),
    "attention-only, post-norms": dict(_L, attn_only=True, use_normalization_before_and_after=True, d_mlp=None),
    "LNPre shortformer": dict(normalization_type="LNPre", positional_embedding_type="shortformer"),
    "NeoX sequential": dict(FAMILIES["Pythia / GPT-NeoX"], parallel_attn_mlp=False),
    "OLMo 2 + shortformer (TL's post-norm blocks drop the q/k pos_embed)": dict(
        _L, positional_embedding_type="shortformer", original_architecture="Olmo2ForCausalLM"),
}


@pytest.mark.parametrize("name", list(MORE))
def test_more_configurations_are_exact(name, monkeypatch):
    monkeypatch.setitem(FAMILIES, name, MORE[name])
    r = check_family(name)
    assert r.status == "exact", r.sides


def test_dfa_on_gqa_splits_the_encoder_preactivation_exactly():
    from fra_core.fra import dfa_by_source
    from fra_core.fra.families import _sae

    model = build_model("Llama 3")
    sae = _sae(model.cfg.n_heads * model.cfg.d_head, "blocks.2.attn.hook_z", 7)
    tok = torch.randint(0, model.cfg.d_vocab, (2, T))
    out = dfa_by_source(model, tok, 2, sae, [0, 5, 9])
    total = out["by_source"].sum((1, 3)) + out["constant"]
    assert torch.allclose(total, out["hidden_pre"], atol=1e-5)


def _random_config(rng) -> dict:
    """A random combination of every modelled flag (norms, positions, GQA, QK-norm, post-norms, soft-cap,
    windows, scales, layouts)."""
    nh = rng.choice([2, 4])
    pos = rng.choice(["standard", "rotary", "alibi", "shortformer"])
    cfg = dict(normalization_type=rng.choice(["LN", "LNPre", "RMS", "RMSPre", None]), positional_embedding_type=pos,
               n_heads=nh, d_head=rng.choice([8, 16]), gated_mlp=rng.random() < 0.3,
               parallel_attn_mlp=rng.random() < 0.3, attention_dir="bidirectional" if rng.random() < 0.15 else "causal")
    if pos == "rotary":
        cfg.update(rotary_dim=rng.choice([2, 4, cfg["d_head"]]), rotary_adjacent_pairs=rng.random() < 0.5)
    if rng.random() < 0.5:
        cfg["n_key_value_heads"] = rng.choice([1, nh // 2, nh])
    if rng.random() < 0.3 and cfg["normalization_type"] in ("RMS", "RMSPre", None):
        cfg["use_normalization_before_and_after"] = True
    if rng.random() < 0.3:
        cfg["use_qk_norm"] = True
    elif rng.random() < 0.2 and cfg["normalization_type"] in ("RMS", "RMSPre") and nh * cfg["d_head"] == 32:
        cfg["original_architecture"] = rng.choice(["Olmo2ForCausalLM", "OlmoeForCausalLM"])
    if rng.random() < 0.3:
        cfg["attn_scores_soft_cap"] = rng.choice([0.3, 2.0, -2.0])
    if rng.random() < 0.4:
        cfg.update(use_local_attn=True, window_size=rng.choice([1, 3, 5]),
                   attn_types=[rng.choice(["local", "global"]) for _ in range(3)])
    if rng.random() < 0.2:
        cfg["use_attn_scale"] = False
    if rng.random() < 0.2:
        cfg["scale_attn_by_inverse_layer_idx"] = True
    return cfg


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations_are_exact_or_refused(seed, monkeypatch):
    import random

    rng = random.Random(seed)
    for i in range(3):
        name = f"random {seed}.{i}"
        monkeypatch.setitem(FAMILIES, name, _random_config(rng))
        r = check_family(name, seed=seed)
        refusals = [v for v in r.sides.values() if isinstance(v, str)]
        assert r.status != "WRONG", (FAMILIES[name], r.sides)
        assert all(re.search(r"\(\w+=|blocks\.\d+\.\w+ \(", m) for m in refusals), (FAMILIES[name], refusals)


def test_cell_outside_the_window_is_named_as_such():
    from fra_core.fra.cells import ExploreError, check_cell

    model = build_model("Mistral")
    tok = torch.randint(0, model.cfg.d_vocab, (1, T))
    res = compute_fra(model, tok, 2, [0], family_sides(model, 2)["resid_pre"], None, FRAOptions(k_active=48))
    check_cell(res, 0, 0, T - 1, T - WINDOW)  # the oldest key inside the window
    with pytest.raises(ExploreError, match="outside query 11's attention window"):
        check_cell(res, 0, 0, T - 1, T - WINDOW - 1)
