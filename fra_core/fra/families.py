"""The architecture matrix: tiny random HookedTransformers with each model family's real TL flags.

FAMILIES holds, per family, the HookedTransformerConfig flags that TransformerLens 3.9's
`loading_from_pretrained.py` sets for it (normalisation, positions, rotary variant and fraction,
GQA, QK-norm, local/global layers, soft-cap, post-norms, parallel blocks, original_architecture),
shrunk to 3 layers of d_model 32 and a sliding window of 4 tokens so that T = 12 exceeds it. Built
offline (no hub). `check_family` decomposes the last layer's scores with every dictionary side the
model admits and measures Σ terms against `hook_attn_scores` on every masked-in cell; an
FRAInputError (which names the field) is the only other acceptable outcome. Used by
tests/fra_core/fra/test_families.py and scripts/architecture_table.py (the README table).
"""

from __future__ import annotations

import dataclasses

import torch

from fra_core.fra.options import FRAInputError, FRAOptions

TOL = 1e-5
T, WINDOW = 12, 4
SHAPE = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=32, d_mlp=64)

_LLAMA = dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, final_rms=True,
              gated_mlp=True, act_fn="silu", rotary_adjacent_pairs=False)
FAMILIES: dict[str, dict] = {
    "GPT-2": dict(normalization_type="LN", act_fn="gelu_new", original_architecture="GPT2LMHeadModel"),
    "GPT-Neo": dict(normalization_type="LN", act_fn="gelu_new", use_attn_scale=False, use_local_attn=True,
                    window_size=WINDOW, attn_types=["global", "local", "local"],
                    original_architecture="GPTNeoForCausalLM"),
    "GPT-J": dict(normalization_type="LN", act_fn="gelu_new", positional_embedding_type="rotary", rotary_dim=4,
                  rotary_adjacent_pairs=True, parallel_attn_mlp=True, original_architecture="GPTJForCausalLM"),
    "Pythia / GPT-NeoX": dict(normalization_type="LN", act_fn="gelu", positional_embedding_type="rotary",
                              rotary_dim=2, rotary_adjacent_pairs=False, parallel_attn_mlp=True,
                              original_architecture="GPTNeoXForCausalLM"),
    "OPT": dict(normalization_type="LN", act_fn="relu", original_architecture="OPTForCausalLM"),
    "BLOOM": dict(normalization_type="LN", act_fn="gelu_fast", post_embedding_ln=True,
                  positional_embedding_type="alibi", original_architecture="BloomForCausalLM"),
    "Llama 3": dict(_LLAMA, n_key_value_heads=2, rotary_base=500000.0, use_NTK_by_parts_rope=True,
                    NTK_by_parts_factor=8.0, NTK_original_ctx_len=8, original_architecture="LlamaForCausalLM"),
    "Mistral": dict(_LLAMA, n_key_value_heads=2, use_local_attn=True, window_size=WINDOW,
                    attn_types=["local"] * 3, original_architecture="MistralForCausalLM"),
    "Qwen 2.5": dict(_LLAMA, n_key_value_heads=2, rotary_base=1000000, original_architecture="Qwen2ForCausalLM"),
    "Qwen 3": dict(_LLAMA, n_key_value_heads=2, use_qk_norm=True, original_architecture="Qwen3ForCausalLM"),
    "Gemma 2": dict(_LLAMA, act_fn="gelu_pytorch_tanh", n_key_value_heads=2, use_local_attn=True,
                    window_size=WINDOW, attn_types=["local", "global", "local"], attn_scores_soft_cap=50.0,
                    output_logits_soft_cap=30.0, use_normalization_before_and_after=True,
                    original_architecture="Gemma2ForCausalLM"),
    "Gemma 2 (soft-cap 0.5)": dict(_LLAMA, n_key_value_heads=2, attn_scores_soft_cap=0.5,
                                   use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM"),
    "Gemma 3": dict(_LLAMA, act_fn="gelu_pytorch_tanh", n_key_value_heads=1, use_qk_norm=True,
                    use_normalization_before_and_after=True, use_local_attn=True, window_size=WINDOW,
                    attn_types=["local", "local", "global"], rotary_base=1000000, rotary_base_local=10000,
                    rotary_scaling_factor=8.0, original_architecture="Gemma3ForCausalLM"),
    "OLMo 2": dict(_LLAMA, attn_types=["global"] * 3, rotary_base=500000.0, original_architecture="Olmo2ForCausalLM"),
    "OLMoE": dict(_LLAMA, n_key_value_heads=4, num_experts=4, experts_per_token=2,
                  original_architecture="OlmoeForCausalLM"),
    "Phi": dict(normalization_type="LN", act_fn="gelu_new", positional_embedding_type="rotary", rotary_dim=4,
                parallel_attn_mlp=True, original_architecture="PhiForCausalLM"),
    "OLMo 2 (RMSPre)": dict(_LLAMA, normalization_type="RMSPre", use_normalization_before_and_after=True,
                            original_architecture="Olmo2ForCausalLM"),
    "OLMo 2 (LayerNorm)": dict(_LLAMA, normalization_type="LN", original_architecture="Olmo2ForCausalLM"),
    "Post-norms, no norm": dict(normalization_type=None, act_fn="gelu", use_normalization_before_and_after=True),
    "Shortformer": dict(normalization_type="LN", act_fn="gelu", positional_embedding_type="shortformer"),
    "OLMo (clip_qkv, not reached)": dict(_LLAMA, clip_qkv=8.0, original_architecture="OlmoForCausalLM"),
    "OLMo (clip_qkv, active)": dict(_LLAMA, clip_qkv=0.05, original_architecture="OlmoForCausalLM"),
    "OLMoE (clip_qkv + QK-norm)": dict(_LLAMA, clip_qkv=8.0, original_architecture="OlmoeForCausalLM"),
    "Qwen 1 (log-n, dynamic NTK)": dict(_LLAMA, use_logn_attn=True, use_dynamic_ntk_rope=True, train_seq_length=4,
                           original_architecture="QWenLMHeadModel"),
}


def build_model(name: str, seed: int = 0, dtype=torch.float32):
    """The family's tiny random HookedTransformer (random biases and norm gains, so every term is exercised)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(**{**SHAPE, **FAMILIES[name]}, seed=seed, device="cpu", dtype=dtype)
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("b_Q", "b_K", "_b_K", "b_V", "_b_V", "b_O", ".b")):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(".w"):  # norm gains (ln1, ln1_post, q_norm, k_norm, …)
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def family_sides(model, layer: int) -> dict[str, object]:
    """Every dictionary side the engine offers at `layer`: random StandardSAEs on their hooks."""
    from fra_core.fra.arch import input_norm

    cfg = model.cfg
    out = {"resid_pre": _sae(cfg.d_model, f"blocks.{layer}.hook_resid_pre", 1)}
    if input_norm(model) is not None:
        out["ln1.hook_normalized"] = _sae(cfg.d_model, f"blocks.{layer}.ln1.hook_normalized", 2)
    out["hook_z (upstream)"] = [_sae(cfg.n_heads * cfg.d_head, f"blocks.{l}.attn.hook_z", 3 + l) for l in range(layer)]
    return out


def _sae(d_in: int, hook: str, seed: int, d_sae: int = 48):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_in ** 0.5)
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen) - 0.3)
    return sae.eval()


@dataclasses.dataclass
class FamilyResult:
    family: str
    status: str  # "exact" (every side), "partial" (some sides refused), "refused" (all), "WRONG" (> TOL)
    sides: dict  # side → max relative completeness error (float) or the refusal message (str)
    notes: list  # frozen scales and cell terms of the exact sides

    @property
    def errors(self) -> dict:
        return {k: v for k, v in self.sides.items() if not isinstance(v, str)}


def check_family(name: str, seed: int = 0, options: FRAOptions | None = None) -> FamilyResult:
    """Decompose the last layer with every side: each side exact (≤ TOL) or refused (FRAInputError)."""
    from fra_core.fra.engine import compute_fra

    model = build_model(name, seed)
    layer = model.cfg.n_layers - 1
    tokens = torch.randint(0, model.cfg.d_vocab, (2, T), generator=torch.Generator().manual_seed(seed))
    opts = options or FRAOptions(k_active=48, top_m=None)
    sides, notes = {}, set()
    for side, dic in family_sides(model, layer).items():
        try:
            res = compute_fra(model, tokens, layer, None, dic, None, opts)
        except FRAInputError as e:
            sides[side] = str(e)
            continue
        sides[side] = res.completeness_error()
        notes |= set(res.cell_terms) | {f.split(".", 2)[-1] for f in res.frozen}
    errs = [v for v in sides.values() if not isinstance(v, str)]
    if any(not e <= TOL for e in errs):
        status = "WRONG"
    else:
        status = "exact" if len(errs) == len(sides) else "refused" if not errs else "partial"
    return FamilyResult(name, status, sides, sorted(notes))
