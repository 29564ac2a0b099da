"""The model check: an allow-list over every `HookedTransformerConfig` field of the pinned TransformerLens.

Each field is either NEUTRAL (it cannot change the attention scores of layers ≤ L in a way the engine
does not read from the model's own modules and hooks — shapes, MLP/unembedding choices, everything
baked into the rotary sin/cos tables that `attn.apply_rotary` uses, attn_scale factors read as
`attn.attn_scale`) or CHECKED (a function returning None when its value is modelled, else the reason).
A field this module does not know (a newer TransformerLens) is refused unless it has its default value.
Module types are checked too: only TL's TransformerBlock with Attention / GroupedQueryAttention.
"""

from __future__ import annotations

import dataclasses

from fra_core.fra.options import FRAInputError

NEUTRAL = frozenset({
    # shapes and bookkeeping (read from the weights / modules)
    "d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_vocab", "d_vocab_out", "n_params", "model_name",
    "device", "seed", "init_mode", "initializer_range", "init_weights", "from_checkpoint", "checkpoint_index",
    "checkpoint_label_type", "checkpoint_value", "tokenizer_name", "default_prepend_bos", "tokenizer_prepends_bos",
    "trust_remote_code", "use_hook_tokens", "tie_word_embeddings", "decoder_start_token_id",
    # MLPs and the unembedding: their outputs enter the residual through hook_mlp_out / never reach layer L
    "d_mlp", "act_fn", "gated_mlp", "num_experts", "experts_per_token", "norm_topk_prob", "final_rms",
    "output_logits_soft_cap", "use_hook_mlp_in", "attn_only", "parallel_attn_mlp",
    # norms: σ is read from hook_scale, the gains from the modules
    "eps", "uses_rms_norm", "layer_norm_folding", "post_embedding_ln", "use_attn_result",
    # score scaling: read as attn.attn_scale
    "use_attn_scale", "attn_scale", "scale_attn_by_inverse_layer_idx",
    # rotary variants: all of them only change the sin/cos tables that attn.apply_rotary applies
    "rotary_dim", "rotary_base", "rotary_base_local", "rotary_scaling_factor", "rotary_adjacent_pairs",
    "use_NTK_by_parts_rope", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor",
    "NTK_by_parts_factor", "NTK_original_ctx_len", "use_yarn_rope", "yarn_factor", "yarn_attention_factor",
    "yarn_beta_fast", "yarn_beta_slow", "yarn_original_max_position_embeddings", "yarn_truncate",
    "yarn_global_attn_only", "train_seq_length",
    # Qwen-1 dynamic NTK: TL rebuilds the sin/cos tables for the sequence length inside apply_rotary, which
    # the engine calls with the same length as the forward pass
    "use_dynamic_ntk_rope",
    # Qwen-1 log-n: a fixed per-position factor on q (sides.py applies it like a frozen scale)
    "use_logn_attn",
    # GQA: W_K / b_K per query head are TL's repeat_interleave of _W_K either way
    "ungroup_grouped_query_attention",
    # the sink logit joins the softmax after hook_attn_scores: the scores themselves are unchanged
    "use_attention_sinks",
    # T5 relative attention only (positional_embedding_type is checked)
    "relative_attention_max_distance", "relative_attention_num_buckets",
    # modelled by engine / sides / arch (mask, QK-norm, post norms, soft-cap, upcast of half precision)
    "n_key_value_heads", "use_local_attn", "window_size", "attn_types", "use_qk_norm", "original_architecture",
    "use_normalization_before_and_after", "attn_scores_soft_cap", "dtype",
})


def _must_be(expected):
    return lambda cfg, value: None if value == expected else f"only {expected!r} is modelled"


def _clip_checked(cfg, value):
    """QKV clipping is the identity while no |q|, |k| exceeds it: the engine checks that on the batch
    (`arch.check_clip`); with QK-norm the clamped values are not hooked, so it is refused there."""
    if value is None:
        return None
    if cfg.use_qk_norm or cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"):
        return "modelled only without QK-norm (the clamp acts on the normalised q/k, which TL does not hook)"
    return None


def _one_of(*allowed):
    return lambda cfg, value: None if value in allowed else f"modelled values: {', '.join(map(repr, allowed))}"


CHECKED = {
    "positional_embedding_type": _one_of("standard", "rotary", "alibi", "shortformer"),
    "normalization_type": _one_of("LN", "LNPre", "RMS", "RMSPre", None),
    "attention_dir": _one_of("causal", "bidirectional"),
    "use_split_qkv_input": _must_be(False),
    "use_attn_in": _must_be(False),
    "clip_qkv": _clip_checked,
    "load_in_4bit": _must_be(False),
    "quantization_method": _must_be(None),
    "n_devices": _must_be(1),
}

WHAT = {
    "use_split_qkv_input": "split QKV inputs", "use_attn_in": "per-head attention inputs",
    "clip_qkv": "QKV clipping", "use_logn_attn": "log-n query scaling", "use_dynamic_ntk_rope": "dynamic NTK rotary",
    "load_in_4bit": "4-bit weights", "quantization_method": "quantised weights", "n_devices": "multi-device models",
}


def classified_fields() -> set[str]:
    return set(NEUTRAL) | set(CHECKED)


def check_model_supported(model, layer: int | None = None) -> None:
    """Raise FRAInputError naming the first config field (or module) whose value FRA does not model."""
    from transformer_lens import HookedTransformerConfig

    cfg = model.cfg
    for f in dataclasses.fields(HookedTransformerConfig):
        value = getattr(cfg, f.name, None)
        if f.name in NEUTRAL:
            continue
        if f.name in CHECKED:
            why = CHECKED[f.name](cfg, value)
        elif f.default is not dataclasses.MISSING and value == f.default:
            continue
        else:
            why = "this TransformerLens field is unknown to FRA"
        if why:
            what = WHAT.get(f.name, f.name)
            raise FRAInputError(f"FRA does not support {what} ({f.name}={value!r}): {why}")
    if cfg.n_key_value_heads is not None and cfg.n_heads % cfg.n_key_value_heads:
        raise FRAInputError(f"n_key_value_heads={cfg.n_key_value_heads} does not divide n_heads={cfg.n_heads}")
    _check_modules(model, cfg.n_layers - 1 if layer is None else layer)


def _check_modules(model, layer: int) -> None:
    from transformer_lens import HookedTransformer
    from transformer_lens.components import Attention, GroupedQueryAttention, TransformerBlock

    if not isinstance(model, HookedTransformer):
        raise FRAInputError(f"FRA needs a transformer_lens.HookedTransformer, got {type(model).__name__}")
    for l in range(layer + 1):
        block = model.blocks[l]
        if type(block) is not TransformerBlock or type(block.attn) not in (Attention, GroupedQueryAttention):
            raise FRAInputError(f"blocks.{l} is {type(block).__name__}/{type(getattr(block, 'attn', None)).__name__}: "
                                "FRA models TransformerBlock with Attention or GroupedQueryAttention only")
