"""Upstream dictionaries: the residual stream entering layer L written as features of the layers l < L.

    resid_pre_L = embed + pos_embed + Σ_{l<L} attn_out_l + Σ_{l<L} mlp_out_l

and each term with a dictionary is opened up (d_model vectors unless said otherwise; [batch, pos] implied):

- hook_z SAE of layer l (`blocks.l.attn.hook_z`, z flattened head-major [head_index·d_head]):
  attn_out_l = (Σ_f a_f W_dec[f] + b_dec + err) · W_O[l] + b_O[l]     nodes sae_error.l, b_dec.l, b_O.l
- `blocks.l.hook_attn_out` / `blocks.l.hook_mlp_out` SAE (decoder rows in d_model, map = M_res):
  x = c_i (Σ_f a_f W_dec[f] + b_dec) + μ_i + err                        nodes sae_error.<site>_out.l, b_dec.<site>_out.l
  where c_i, μ_i undo the SAE's own per-token input normalisation, frozen at their actual values like ln1's σ:
  none → c = 1, μ = 0; `layer_norm` (OpenAI's v5 SAEs) → c = std(x_i) (unbiased), μ = mean(x_i)·1 (a node
  ln_mean.<site>_out.l); `constant_norm_rescale` → c = ‖x_i‖/√d_in. A constant scale s (`expected_average_only_in`,
  e.g. gpt2-small-mlp-tm's norm_scaling_factor) is linear: folded into the weights when the SAE is loaded
  (W_enc·s, W_dec/s, b_dec/s, `fold_activation_norm_scaling_factor`); an SAE still carrying it unfolded is
  refused by name, as is `covariance_whitening`.
- a transcoder (`sae_lens.Transcoder`, `SkipTranscoder`, JumpReLU variants) reading an MLP input of layer l and
  writing `blocks.l.hook_mlp_out` (its `hook_name_out`):
  mlp_out_l = Σ_f a_f W_dec[f] + b_dec + x_in · W_skipᵀ + err          nodes sae_error.mlp_out.l, b_dec.mlp_out.l,
                                                                          skip.mlp_out.l (skip transcoders)
  with a = encode(x_in) (its input normalisation only shapes a; decode writes W_dec rows as they are).
- a layer without an attention (MLP) dictionary keeps its whole output as one node attn_out.l (mlp_out.l).

Every error node is defined as the exact remainder, so the sum of all pieces is resid_pre_L to rounding.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from fra_core.fra import arch
from fra_core.fra.options import FRAInputError

HOOK_Z, ATTN_OUT, MLP_OUT, TRANSCODER = "hook_z", "attn_out", "mlp_out", "transcoder"
SITE = {HOOK_Z: "attn", ATTN_OUT: "attn", MLP_OUT: "mlp", TRANSCODER: "mlp"}
PER_TOKEN_NORMS = ("layer_norm", "constant_norm_rescale")  # frozen per-token scale (and mean): modelled exactly
MLP_INPUTS = ("ln2.hook_normalized", "hook_resid_mid", "hook_mlp_in", "mlp.hook_in")


def _layer_of(hook: str | None, suffix: str) -> int | None:
    """l when `hook` is blocks.l.<suffix>, else None."""
    parts = (hook or "").split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit() and ".".join(parts[2:]) == suffix:
        return int(parts[1])
    return None


def is_transcoder(sae) -> bool:
    return hasattr(sae.cfg, "d_out") and "transcoder" in str(sae.cfg.architecture())


def transcoder_out_hook(sae) -> str | None:
    """The hook a transcoder writes: cfg.metadata.hook_name_out, else blocks.l.hook_mlp_out for an MLP input."""
    out = getattr(sae.cfg.metadata, "hook_name_out", None)
    if out:
        return out
    hook = sae.cfg.metadata.hook_name
    for suffix in MLP_INPUTS:
        l = _layer_of(hook, suffix)
        if l is not None:
            return f"blocks.{l}.hook_mlp_out"
    return None


def check_norm(sae, hook: str, per_token_ok: bool) -> None:
    """Refuse input normalisations the decomposition does not model, naming the field and value."""
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm == "none" or (per_token_ok and norm in PER_TOKEN_NORMS):
        return
    if norm == "expected_average_only_in":
        raise FRAInputError(
            f"SAE on {hook} has normalize_activations='expected_average_only_in' with its norm_scaling_factor not "
            "folded: load it through 'release:' (SAELens folds the registry's factor) or call "
            "sae.fold_activation_norm_scaling_factor(factor) first")
    raise FRAInputError(f"SAE on {hook} uses normalize_activations={norm!r}, which the decomposition does not "
                        f"model (modelled: 'none', a folded constant scale, {list(PER_TOKEN_NORMS)})")


def classify(model, layer: int, sae) -> tuple[str, int, str]:
    """(kind, source layer, input hook) of one upstream dictionary of layer `layer`; refuses the rest by name."""
    cfg = model.cfg
    hook = getattr(sae.cfg.metadata, "hook_name", None)
    if is_transcoder(sae):
        out = transcoder_out_hook(sae)
        l = _layer_of(out, "hook_mlp_out")
        if l is None:
            raise FRAInputError(f"transcoder reading {hook!r} writes hook_name_out={out!r}: only "
                                "blocks.l.hook_mlp_out (an MLP's output) is modelled")
        if hook not in model.hook_dict and _layer_of(hook, "mlp.hook_in") is None:
            raise FRAInputError(f"transcoder input hook {hook!r} does not exist on this model")
        if sae.cfg.d_out != cfg.d_model:
            raise FRAInputError(f"transcoder {hook!r} → {out} has d_out={sae.cfg.d_out}, d_model is {cfg.d_model}")
        if any(hook.endswith(s) for s in MLP_INPUTS) and sae.cfg.d_in != cfg.d_model:
            raise FRAInputError(f"transcoder on {hook} has d_in={sae.cfg.d_in}, the hook has {cfg.d_model} dims")
        check_norm(sae, hook, per_token_ok=True)  # input normalisation only shapes the activations
        return TRANSCODER, l, hook
    for kind, suffix, width in ((HOOK_Z, "attn.hook_z", cfg.n_heads * cfg.d_head),
                                (ATTN_OUT, "hook_attn_out", cfg.d_model), (MLP_OUT, "hook_mlp_out", cfg.d_model)):
        l = _layer_of(hook, suffix)
        if l is not None:
            check_norm(sae, hook, per_token_ok=kind != HOOK_Z)
            if sae.cfg.d_in != width:
                raise FRAInputError(f"SAE on {hook} has d_in={sae.cfg.d_in} but the hook has {width} dims")
            return kind, l, hook
    raise FRAInputError(
        f"SAE hook {hook!r} cannot sit on layer {layer}'s head input: use blocks.{layer}.ln1.hook_normalized, "
        f"blocks.{layer}.hook_resid_pre (= blocks.{layer - 1}.hook_resid_post), or a list of upstream dictionaries "
        f"of layers l < {layer}: blocks.l.attn.hook_z, blocks.l.hook_attn_out or blocks.l.hook_mlp_out SAEs, "
        "or transcoders writing blocks.l.hook_mlp_out")


def parse_sources(model, layer: int, saes: list) -> tuple[list[str], list[int], list[str]]:
    """(kinds, layers, input hooks) of a list of upstream dictionaries; one per (site, layer)."""
    kinds, layers, hooks = [], [], []
    for sae in saes:
        kind, l, hook = classify(model, layer, sae)
        if l >= layer:
            raise FRAInputError(f"{kind} dictionary {hook} is not upstream of layer {layer} (needs l < {layer})")
        if SITE[kind] == "mlp" and model.cfg.attn_only:
            raise FRAInputError(f"{kind} dictionary {hook}: the model is attention-only (attn_only=True)")
        kinds.append(kind)
        layers.append(l)
        hooks.append(hook)
    seen: dict[tuple[str, int], str] = {}
    for kind, l, hook in zip(kinds, layers, hooks):
        if (SITE[kind], l) in seen:
            raise FRAInputError(f"two {SITE[kind]} dictionaries for the same layer ({l}): {seen[(SITE[kind], l)]} and {hook}")
        seen[(SITE[kind], l)] = hook
    if any(k != HOOK_Z for k in kinds) and any(arch.post_norm_modules(model, l) for l in range(layer)):
        raise FRAInputError("attn_out / mlp_out / transcoder dictionaries are not modelled on models with "
                            f"post-attention norms (use_normalization_before_and_after="
                            f"{model.cfg.use_normalization_before_and_after!r}); use hook_z SAEs")
    return kinds, layers, hooks


def source_input(model, cache, hook: str) -> torch.Tensor:
    """The activation a dictionary reads; `blocks.l.mlp.hook_in` (TransformerBridge naming, mwhanna
    transcoders) is the MLP's input, ln2(resid_mid) = ln2.hook_normalized ⊙ w + b on a HookedTransformer."""
    if hook in cache:
        return cache[hook]
    l = _layer_of(hook, "mlp.hook_in")
    ln2 = model.blocks[l].ln2
    if model.cfg.normalization_type is None or not hasattr(ln2, "hook_normalized"):
        return cache[f"blocks.{l}.hook_resid_mid"]
    x = cache[f"blocks.{l}.ln2.hook_normalized"]
    w, b = getattr(ln2, "w", None), getattr(ln2, "b", None)
    x = x * w.detach() if isinstance(w, torch.Tensor) else x
    return x + b.detach() if isinstance(b, torch.Tensor) else x


def cache_names(model, layer: int, hooks: list[str]) -> set[str]:
    """Hooks the upstream decomposition reads: sources' inputs (and what they are computed from), embeddings,
    every layer's attention and MLP outputs."""
    names = {"hook_embed"} | ({"hook_pos_embed"} if model.cfg.positional_embedding_type == "standard" else set())
    for hook in hooks:
        l = _layer_of(hook, "mlp.hook_in")
        if l is not None and hook not in model.hook_dict:
            names.update({f"blocks.{l}.ln2.hook_normalized", f"blocks.{l}.hook_resid_mid"} & set(model.hook_dict))
        else:
            names.add(hook)
    for l in range(layer):
        names.add(f"blocks.{l}.hook_attn_out")
        if not model.cfg.attn_only:
            names.add(f"blocks.{l}.hook_mlp_out")
    return names


@dataclasses.dataclass
class SourceEncoding:
    """One dictionary's activations, all [batch, pos, ...]; duck-types `sides.Encoded` (ids, acts, recon,
    error, l0) with the per-token scale c_i already in acts and recon, plus the extra nodes."""

    ids: torch.Tensor  # [batch, pos, K] local ids, top-|c·a|
    acts: torch.Tensor  # [batch, pos, K] c_i · a_if
    recon: torch.Tensor  # [batch, pos, d_model] c_i Σ_f a_if W_dec[f] over all active features
    error: torch.Tensor  # [batch, pos, d_model] x_out − recon − c_i b_dec − μ_i − skip
    l0: torch.Tensor  # [batch, pos]
    b_dec_scale: torch.Tensor | None  # [batch, pos, 1] c_i (None: 1)
    mean: torch.Tensor | None  # [batch, pos, d_model] μ_i·1 (layer_norm only)
    skip: torch.Tensor | None  # [batch, pos, d_model] x_in · W_skipᵀ (skip transcoders)


def token_scale(sae, x: torch.Tensor):
    """(c [batch, pos, 1] or None, μ [batch, pos, 1] or None) of the SAE's per-token input normalisation, as
    SAELens computes it (layer_norm: x̂ = (x − μ)/(std + eps), decode · std + μ; constant_norm_rescale:
    x̂ = x·√d_in/‖x‖, decode ÷ that)."""
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        return (x - mu).std(dim=-1, keepdim=True), mu
    if norm == "constant_norm_rescale":
        return x.norm(dim=-1, keepdim=True) / math.sqrt(sae.cfg.d_in), None
    return None, None


def encode_source(sae, x_in: torch.Tensor, x_out: torch.Tensor, k: int | None, decoder) -> SourceEncoding:
    """Encode a dictionary reading x_in [batch, pos, d_in] that writes x_out [batch, pos, d_model]; keep top-k.

    k None keeps every active feature: k = the batch's largest L0 (≥ 1), as `sides.encode` (a top-k over all
    d_sae columns would sort every position's 24 576 activations)."""
    if x_in.shape[-1] != sae.cfg.d_in:
        raise FRAInputError(f"dictionary on {sae.cfg.metadata.hook_name} has d_in={sae.cfg.d_in}, its input "
                            f"activations are {list(x_in.shape)}")
    with torch.no_grad():
        acts = sae.encode(x_in.to(sae.W_dec.dtype)).to(x_out.dtype)
        for attr in ("ln_mu", "ln_std", "x_norm_coeff"):  # SAELens's encode leaves them for its decode
            if attr in sae.__dict__:
                delattr(sae, attr)
        c, mu = (None, None) if is_transcoder(sae) else token_scale(sae, x_in.to(x_out.dtype))
        if c is not None:
            acts = acts * c
        D = decoder(sae).to(x_out.dtype)
        l0 = (acts != 0).sum(-1)
        if k is None:
            k = max(1, int(l0.max()) if l0.numel() else 1)
        top = acts.abs().topk(min(k, acts.shape[-1]), dim=-1)
        flat = acts.reshape(-1, acts.shape[-1])
        recon = torch.sparse.mm(flat.to_sparse(), D).reshape(*x_out.shape[:-1], D.shape[1])
        b_dec = sae.b_dec.detach().to(x_out.dtype)
        error = x_out - recon - (b_dec if c is None else c * b_dec)
        mean = None if mu is None else mu.expand_as(x_out)
        if mean is not None:
            error = error - mean
        skip = None
        if isinstance(getattr(sae, "W_skip", None), torch.Tensor):
            skip = x_in.to(x_out.dtype) @ sae.W_skip.detach().to(x_out.dtype).T
            error = error - skip
    return SourceEncoding(top.indices, acts.gather(-1, top.indices), recon, error, l0, c, mean, skip)


def nodes(model, cache, layer: int, dic, encs, maps, M_res, project, post=None):
    """Named dense nodes of an upstream side (before 1/σ and rotation): names, [batch, pos, head, d_head].

    `post` [n_sources, batch, pos, 1]: 1/σ of hook_z sources' post-attention norms (hook_z-only sides).
    """
    names, vecs = ["embed"], [project(cache["hook_embed"], M_res)]
    if model.cfg.positional_embedding_type == "standard":
        names.append("pos_embed")
        vecs.append(project(cache["hook_pos_embed"], M_res).expand_as(vecs[0]))
    kinds = dic.kinds or [HOOK_Z] * len(dic.saes)
    at = {(SITE[k], l): s for s, (k, l) in enumerate(zip(kinds, dic.layers))}
    for l in range(layer):
        for site in ("attn", "mlp"):
            if site == "mlp" and model.cfg.attn_only:
                continue
            s = at.get((site, l))
            if s is None:  # no dictionary: the whole output is one node
                names.append(f"{site}_out.l{l}")
                vecs.append(project(cache[f"blocks.{l}.hook_{site}_out"], M_res))
            elif kinds[s] == HOOK_Z:
                b_dec = dic.saes[s].b_dec.detach().to(M_res.dtype)
                w = arch.post_norm_weight(model, l)
                b_O = model.blocks[l].attn.b_O.detach() * (1 if w is None else w)
                inv = 1.0 if post is None else post[s][..., None]  # [batch, pos, 1, 1]
                names += [f"sae_error.l{l}", f"b_dec.l{l}", f"b_O.l{l}"]
                vecs += [project(encs[s].error, maps[s]) * inv,
                         (project(b_dec, maps[s]) * inv).expand_as(vecs[0]),
                         (project(b_O, M_res) * inv).expand_as(vecs[0])]
            else:
                enc, tag = encs[s], f"{site}_out"
                b_dec = project(dic.saes[s].b_dec.detach().to(M_res.dtype), M_res)
                scale = getattr(enc, "b_dec_scale", None)
                names += [f"sae_error.{tag}.l{l}", f"b_dec.{tag}.l{l}"]  # the budget's prefixes (validate.py)
                vecs += [project(enc.error, M_res),
                         b_dec.expand_as(vecs[0]) if scale is None else b_dec * scale[..., None]]
                for extra in ("mean", "skip"):
                    v = getattr(enc, extra, None)
                    if v is not None:
                        names.append(f"{'ln_mean' if extra == 'mean' else 'skip'}.{tag}.l{l}")
                        vecs.append(project(v, M_res))
    return names, vecs
