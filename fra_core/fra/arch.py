"""What a TransformerLens block does around the bilinear q·k, modelled exactly (TL 3.9 code paths).

Everything here is read from the model's own modules and hooks, so the engine and the reference share it:

- The attention input. Pre-norm blocks feed ln1(resid_pre) to the head; post-norm architectures
  (`POST_NORM_ARCHITECTURES`, OLMo 2/3) feed resid_pre itself and apply ln1 to the attention output.
- QK-norm. `use_qk_norm` (Qwen 3, Gemma 3) RMS-normalises each head's q and k over d_head; the OLMo
  family normalises the whole projected q (all heads) and k (all KV heads) at once. Either way
  q̂ = (q ⊙ w) / σ_q with σ_q the norm's `hook_scale` at that position: freezing σ_q at its actual value
  (as σ of ln1) keeps q̂ linear in q, so w folds into W_Q / b_Q and 1/σ_q scales every query node.
- Post-attention norms of upstream layers (hook_z sides): `use_normalization_before_and_after`
  (ln1_post, Gemma 2/3) and post-norm ln1 (OLMo 2) map raw = z·W_O + b_O to hook_attn_out by
  raw ⊙ w / σ (RMSNorm, σ frozen); two norms compose to raw ⊙ (w₁ ⊙ w₂) / (σ₁ σ₂).
- The real attention mask of the layer: causal (TL's `_make_causal_mask`, incl. the sliding window
  key > query − window_size of local layers) or none (bidirectional).
- Cell terms that are not q·k products: ALiBi's bias m_h·(j − i) (added after the soft-cap) and the
  soft-cap's correction c·tanh(s/c) − s, s = the decomposed pre-cap score. Each is one named node
  whose term sits only on its own (q node, k node) diagonal slot.
- Qwen-1 log-n: q × log(p)/log(train_len) beyond the training length (a fixed per-position factor).
- QKV clipping: the identity while no |q|, |k| exceeds clip_qkv — checked on every batch, refused if not.
"""

from __future__ import annotations

import math

import torch

from fra_core.fra.options import FRAInputError

OLMO_QK = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def post_norm_arch(model) -> bool:
    """True when ln1 normalises the attention output, not its input (TL's POST_NORM_ARCHITECTURES)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    return model.cfg.original_architecture in POST_NORM_ARCHITECTURES


def input_norm(model) -> str | None:
    """The normalization_type applied to the head's input (None: the head reads resid_pre raw)."""
    return None if post_norm_arch(model) else model.cfg.normalization_type


def shortformer_qk(model) -> bool:
    """True when pos_embed is added to the q/k input only (shortformer; TL's post-norm blocks skip it)."""
    return model.cfg.positional_embedding_type == "shortformer" and not post_norm_arch(model)


def layer_mask(model, layer: int, T: int, device=None) -> torch.Tensor:
    """[query_pos, key_pos] bool: the keys each query's softmax sees at `layer`."""
    attn = model.blocks[layer].attn
    if (attn._attention_dir_override or model.cfg.attention_dir) != "causal":
        return torch.ones(T, T, dtype=torch.bool, device=device)
    return attn._make_causal_mask(T, T, 0, torch.device("cpu" if device is None else device))[0, 0]


def check_mask(scores: torch.Tensor, amask: torch.Tensor, layer: int) -> None:
    """The modelled mask must be exactly where hook_attn_scores is finite (else something else masks)."""
    finite = torch.isfinite(scores)
    if not bool((finite == amask).all()):
        bad = (finite != amask).nonzero()[0].tolist()
        raise FRAInputError(
            f"layer {layer}: hook_attn_scores is {'finite' if finite[tuple(bad)] else 'not finite'} at "
            f"[batch, head, query_pos, key_pos]={bad}, where the modelled attention mask says "
            f"{'masked' if not amask[bad[2], bad[3]] else 'visible'}")


def logn_scale(model, T: int, device=None) -> torch.Tensor | None:
    """[pos] Qwen-1's log-n query factor (TL `_apply_logn_scaling`, eval mode): log(p)/log(train_len) for
    1-based positions p beyond the training length, else 1. None when the model does not scale q."""
    cfg = model.cfg
    if not cfg.use_logn_attn or model.training:
        return None
    train = cfg.train_seq_length or cfg.n_ctx
    p = torch.arange(1, T + 1, dtype=torch.float32, device=device)
    return torch.where(p > train, p.log() / math.log(train), torch.ones((), device=device))


def clip_hooks(model, layer: int) -> list[str]:
    return [f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"] if model.cfg.clip_qkv is not None else []


def check_clip(model, cache, layer: int) -> None:
    """clip_qkv clamps q and k to [−c, c] after projection: exact (the identity) only if nothing is clipped."""
    c = model.cfg.clip_qkv
    if c is None:
        return
    n = sum(int((cache[h].abs() > c).sum()) for h in clip_hooks(model, layer))
    if n:
        raise FRAInputError(f"FRA does not support active QKV clipping (clip_qkv={c!r}): {n} q/k values of layer "
                            f"{layer} exceed it on this batch, and a clamped score is not a sum of terms")


def _per_head(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[..., n] with n ∈ {1, n_kv, n_heads} groups → [..., n_heads] (query head h uses group h // (H/n))."""
    n = t.shape[-1]
    if n == 1:
        return t.expand(*t.shape[:-1], n_heads)
    if n_heads % n:
        raise FRAInputError(f"{n} normalisation groups do not divide n_heads={n_heads}")
    return t.repeat_interleave(n_heads // n, dim=-1)


def qk_norm_module(model, layer: int, which: str):
    """The RMSNorm applied to q ('Q') or k ('K') of the layer, or None."""
    cfg = model.cfg
    if not (cfg.use_qk_norm or cfg.original_architecture in OLMO_QK):
        return None
    return getattr(model.blocks[layer].attn, "q_norm" if which == "Q" else "k_norm")


def qk_norm_weight(model, layer: int, which: str, heads: list[int]) -> torch.Tensor | None:
    """[head_index, d_head] the norm's gain w per selected head (None without QK-norm)."""
    norm = qk_norm_module(model, layer, which)
    if norm is None:
        return None
    d_head = model.cfg.d_head
    w = norm.w.detach().reshape(-1, d_head)  # [1 or n groups, d_head]
    return _per_head(w.T, model.cfg.n_heads).T[heads]


def qk_norm_hooks(model, layer: int) -> list[str]:
    if qk_norm_module(model, layer, "Q") is None:
        return []
    return [f"blocks.{layer}.attn.q_norm.hook_scale", f"blocks.{layer}.attn.k_norm.hook_scale"]


def qk_inv_scale(model, cache, layer: int, which: str, heads: list[int], batch: int, pos: int):
    """[batch, pos, head_index] 1/σ of the q or k norm at each position (None without QK-norm).

    hook_scale is [batch·pos·groups, 1] (per-head norms, groups = n_heads or n_kv_heads) or
    [batch, pos, 1] (OLMo: one norm over all heads).
    """
    if qk_norm_module(model, layer, which) is None:
        return None
    name = f"blocks.{layer}.attn.{'q' if which == 'Q' else 'k'}_norm.hook_scale"
    s = cache[name].reshape(batch, pos, -1)
    return 1.0 / _per_head(s, model.cfg.n_heads)[..., heads]


def post_norm_modules(model, l: int) -> list:
    """(name, module) of the norms between layer l's raw attention output (z·W_O + b_O) and hook_attn_out,
    in order: RMSNorm (x/σ ⊙ w) or RMSNormPre (x/σ); identities are skipped; LayerNorms are refused."""
    from transformer_lens.components import RMSNorm, RMSNormPre

    block, out = model.blocks[l], []
    if model.cfg.use_normalization_before_and_after:
        out.append(("ln1_post", block.ln1_post))
    if post_norm_arch(model):
        out.append(("ln1", block.ln1))
    out = [(name, mod) for name, mod in out if not isinstance(mod, torch.nn.Identity)]
    for name, mod in out:
        if type(mod) not in (RMSNorm, RMSNormPre):
            raise FRAInputError(
                f"blocks.{l}.{name} ({type(mod).__name__}) after the attention output is not an RMS norm: "
                "hook_z dictionaries are only exact through RMSNorm / RMSNormPre post-norms")
    return out


def post_norm_hooks(model, layers: list[int]) -> list[str]:
    return [f"blocks.{l}.{name}.hook_scale" for l in layers for name, _ in post_norm_modules(model, l)]


def post_norm_weight(model, l: int) -> torch.Tensor | None:
    """[d_model] the product of layer l's post-attention norm gains (None: no post norm)."""
    w = None
    for _, mod in post_norm_modules(model, l):
        if isinstance(getattr(mod, "w", None), torch.Tensor):  # RMSNormPre has no gain
            w = mod.w.detach() if w is None else w * mod.w.detach()
    return w


def post_norm_inv_scale(model, cache, l: int) -> torch.Tensor | None:
    """[batch, pos, 1] 1/(σ₁σ₂…) of layer l's post-attention norms, frozen at their actual values."""
    inv = None
    for name, _ in post_norm_modules(model, l):
        s = 1.0 / cache[f"blocks.{l}.{name}.hook_scale"]
        inv = s if inv is None else inv * s
    return inv


def alibi_term(model, heads: list[int], T: int, device) -> torch.Tensor:
    """[head_index, query_pos, key_pos] ALiBi bias m_h·min(j − i, 0) (TL's create_alibi_bias)."""
    from transformer_lens.components import AbstractAttention

    return AbstractAttention.create_alibi_bias(model.cfg.n_heads, T, device)[heads]


def softcap_enabled(model) -> bool:
    cap = model.cfg.attn_scores_soft_cap
    return cap is not None and cap > 0


def cell_terms(model, pre: torch.Tensor, heads: list[int]) -> dict[str, torch.Tensor]:
    """Named cell terms [batch, head_index, query_pos, key_pos] that complete Σ q·k terms to the scores.

    pre: the decomposed pre-cap score Σ_{a,b} q^a·k^b / attn_scale (all positions).
    """
    out = {}
    if softcap_enabled(model):
        cap = float(model.cfg.attn_scores_soft_cap)
        out["softcap"] = cap * torch.tanh(pre / cap) - pre
    if model.cfg.positional_embedding_type == "alibi":
        out["alibi"] = alibi_term(model, heads, pre.shape[-1], pre.device).to(pre.dtype)[None].expand_as(pre)
    return out


def frozen_scales(model, layer: int, dicts) -> list[str]:
    """Human-readable list of the per-position scales the decomposition freezes at their actual values."""
    out = []
    if input_norm(model) is not None and any(d.kind != "normalized" for d in dicts):
        out.append(f"blocks.{layer}.ln1.hook_scale")
    out += qk_norm_hooks(model, layer)
    for d in dicts:
        if d.kind == "hook_z":
            out += [h for h in post_norm_hooks(model, d.layers) if h not in out]
        for sae, hook in zip(d.saes, d.hook_names):  # an SAE's own per-token input normalisation (upstream.py)
            norm = getattr(sae.cfg, "normalize_activations", "none")
            label = f"the {norm} scale of {hook}'s SAE input"
            if norm in ("layer_norm", "constant_norm_rescale") and "transcoder" not in str(sae.cfg.architecture()) \
                    and label not in out:
                out.append(label)
    return out
