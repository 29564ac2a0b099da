"""Slow, obviously-correct FRA reference: float64, one Python loop iteration per (query, key) pair.

For every position it lists the side's components in the dictionary's own space (each kept feature
a·d_f, the truncated rest, b_dec, the SAE error, the dense residual nodes, ln1.b, the Q/K bias), maps
each one to the head's d_head space exactly as the model does (W_O for hook_z sources, mean-centring,
÷σ, ⊙w, @W_Q[h], rotary at its position), then for each allowed (i, j) multiplies the two component
matrices. Used by the tests (engine == reference) and as the benchmark baseline.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from fra_core.fra import arch
from fra_core.fra.engine import attention_mask, selection_mask
from fra_core.fra.options import FRAInputError, FRAOptions, check_layer_heads, check_tokens
from fra_core.fra.sides import HOOK_Z, NORMALIZED, RESID, cache_hooks, parse_dictionary, sae_decoder

F64 = torch.float64


def _components(model, cache, layer, dic, b, pos, k):
    """Components at (b, pos): list of (label, vector, source index); label = ("f", src, feat) or node name."""
    cfg = model.cfg
    cands, comps = [], []
    for s, (sae, hook) in enumerate(zip(dic.saes, dic.hook_names)):
        x = cache[hook][b, pos].reshape(-1)
        acts = sae.encode(x[None] if not getattr(sae, "hook_z_reshaping_mode", False)
                          else x.view(1, cfg.n_heads, -1))[0].to(F64)
        nz = acts.nonzero().flatten()
        recon = acts[nz] @ sae_decoder(sae)[nz].to(F64)  # Σ_f a_f d_f over the active features
        suffix = f".l{dic.layers[s]}" if dic.kind == HOOK_Z else ""
        comps += [(f"sae_error{suffix}", x.to(F64) - recon - sae.b_dec.to(F64), s),
                  (f"b_dec{suffix}", sae.b_dec.to(F64), s)]
        cands += [(abs(float(acts[f])), s, f, float(acts[f])) for f in nz.tolist()]
        comps.append(("truncation", recon, s))  # kept features are subtracted below
    cands.sort(key=lambda c: -c[0])
    for _, s, f, a in cands[:k]:
        d = sae_decoder(dic.saes[s])[f].to(F64)
        comps.append((("f", s, f), a * d, s))
        comps.append(("truncation", -a * d, s))
    if dic.kind == HOOK_Z:
        comps += [("embed", cache["hook_embed"][b, pos].to(F64), -1)]
        if cfg.positional_embedding_type == "standard":
            comps.append(("pos_embed", cache["hook_pos_embed"][0 if cache["hook_pos_embed"].shape[0] == 1 else b, pos].to(F64), -1))
        for l in range(layer):
            if l in dic.layers:  # b_O through layer l's post-attention norms (σ frozen), in residual space
                comps.append((f"b_O.l{l}", _post_norm(model, cache, l, b, pos, model.blocks[l].attn.b_O.to(F64)), -1))
            else:
                comps.append((f"attn_out.l{l}", cache[f"blocks.{l}.hook_attn_out"][b, pos].to(F64), -1))
            if not cfg.attn_only:
                comps.append((f"mlp_out.l{l}", cache[f"blocks.{l}.hook_mlp_out"][b, pos].to(F64), -1))
    return comps


def _to_head(model, layer, dic, which, h, b, pos, vec, src, cache):
    """Map one component (dictionary space) to the head's rotated d_head space."""
    cfg, attn, ln1 = model.cfg, model.blocks[layer].attn, model.blocks[layer].ln1
    if dic.kind == HOOK_Z and src >= 0:  # hook_z feature/error/b_dec: through this layer's W_O (+ post norms)
        l = dic.layers[src]
        vec = _post_norm(model, cache, l, b, pos,
                         torch.einsum("he,hem->m", vec.view(cfg.n_heads, cfg.d_head), model.W_O[l].to(F64)))
    norm = arch.input_norm(model)
    if dic.kind != NORMALIZED:  # residual-stream vector: ln1's linear part with σ frozen
        if norm in ("LN", "LNPre"):
            vec = vec - vec.mean()
        if norm is not None:
            vec = vec / cache[f"blocks.{layer}.ln1.hook_scale"][b, pos, 0].to(F64)
    if norm is not None and isinstance(getattr(ln1, "w", None), torch.Tensor):
        vec = vec * ln1.w.to(F64)
    return _finish(model, cache, layer, which, h, b, pos, vec @ getattr(attn, f"W_{which}")[h].to(F64))


def _post_norm(model, cache, l, b, pos, vec):
    """A raw attention-output vector of layer l through its post-attention RMS norms (σ frozen)."""
    for name, mod in arch.post_norm_modules(model, l):
        vec = vec / cache[f"blocks.{l}.{name}.hook_scale"][b, pos, 0].to(F64)
        if isinstance(getattr(mod, "w", None), torch.Tensor):
            vec = vec * mod.w.to(F64)
    return vec


def _finish(model, cache, layer, which, h, b, pos, v):
    """A q/k piece in d_head space → QK-norm (gain, σ frozen) → rotary at its position."""
    logn = arch.logn_scale(model, pos + 1) if which == "Q" else None
    if logn is not None:
        v = v * float(logn[pos])
    w = arch.qk_norm_weight(model, layer, which, [h])
    if w is not None:
        B, T = cache[f"blocks.{layer}.attn.hook_attn_scores"].shape[0], cache[f"blocks.{layer}.attn.hook_attn_scores"].shape[-1]
        inv = arch.qk_inv_scale(model, cache, layer, which, [h], B, T)[b, pos, 0]
        v = v * w[0].to(F64) * inv.to(F64)
    return _rotate(model, layer, v, pos)


def _pos_embed(cache, b, pos):
    pe = cache["hook_pos_embed"]
    return pe[b if pe.shape[0] > 1 else 0, pos].to(F64)


def _cell_fn(model, T):
    """(h, i, j, pre-cap score) → {(node, node): term} for the score terms that are not q·k products."""
    cap = float(model.cfg.attn_scores_soft_cap) if arch.softcap_enabled(model) else None
    alibi = (arch.alibi_term(model, list(range(model.cfg.n_heads)), T, "cpu").to(F64)
             if model.cfg.positional_embedding_type == "alibi" else None)

    def cells(h, i, j, pre):
        out = {}
        if cap is not None:
            out[("softcap", "softcap")] = cap * np.tanh(pre / cap) - pre
        if alibi is not None:
            out[("alibi", "alibi")] = float(alibi[h, i, j])
        return out

    return cells


def _rotate(model, layer, v, pos):
    if model.cfg.positional_embedding_type != "rotary":
        return v
    attn, rd = model.blocks[layer].attn, model.cfg.rotary_dim
    cos, sin = attn.rotary_cos[pos].to(F64), attn.rotary_sin[pos].to(F64)
    return torch.cat([v[:rd] * cos + attn.rotate_every_two(v[:rd]) * sin, v[rd:]])


def _side_matrix(model, cache, layer, dic, which, h, b, pos, k):
    """(labels, [n, d_head] float64) for one position; labels name each row's node or feature."""
    attn, ln1 = model.blocks[layer].attn, model.blocks[layer].ln1
    labels, rows = [], []
    for label, vec, src in _components(model, cache, layer, dic, b, pos, k):
        labels.append(label)
        rows.append(_to_head(model, layer, dic, which, h, b, pos, vec, src, cache))
    W = getattr(attn, f"W_{which}")[h].to(F64)
    if arch.input_norm(model) is not None and isinstance(getattr(ln1, "b", None), torch.Tensor):
        labels.append("ln1.b")
        rows.append(_finish(model, cache, layer, which, h, b, pos, ln1.b.to(F64) @ W))
    labels.append("bias")
    rows.append(_finish(model, cache, layer, which, h, b, pos, getattr(attn, f"b_{which}")[h].to(F64)))
    if arch.shortformer_qk(model):  # added to the q/k input after ln1
        labels.append("pos_embed.qk")
        rows.append(_finish(model, cache, layer, which, h, b, pos, _pos_embed(cache, b, pos) @ W))
    return labels, torch.stack(rows).numpy()


def reference_fra(model, tokens, layer, heads=None, q_dict=None, k_dict=None, options=None, query_rows=None,
                  node_names=None):
    """Reference FRA. Returns dict: entries {(b, head, i, j, qs, qf, ks, kf): value}, node_terms
    {(b, hi, i, j): {(q_node, k_node): value}}, n_pairs (pairs visited), setup_s / pairs_s (seconds in
    the per-position component maps / the pair loop). Options as in `compute_fra`; query_rows limits
    the rows visited (the benchmark extrapolates from a few)."""
    opts = options or FRAOptions()
    tokens, heads = check_tokens(tokens), check_layer_heads(model, layer, heads)
    k_dict = q_dict if k_dict is None else k_dict
    qd, kd = parse_dictionary(model, layer, q_dict), parse_dictionary(model, layer, k_dict)
    for d in (qd, kd):  # the reference models plain SAEs and hook_z lists; the rest is checked by completeness
        norms = [getattr(s.cfg, "normalize_activations", "none") for s in d.saes]
        if d.kind not in (HOOK_Z, NORMALIZED, RESID) or any(n != "none" for n in norms):
            raise FRAInputError(f"reference_fra does not model dictionary kind {d.kind!r} (normalize_activations="
                                f"{norms}): attn_out / mlp_out / transcoder sources are checked by completeness")
    names = cache_hooks(model, layer, [qd, kd])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        B, T = tokens.shape
        amask = attention_mask(model, T, layer=layer).numpy()
        sel = selection_mask(torch.as_tensor(amask), opts).numpy()
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].to(F64).numpy()
        scale = float(model.blocks[layer].attn.attn_scale)
        out = {"entries": {}, "node_terms": {}, "n_pairs": 0, "setup_s": 0.0, "pairs_s": 0.0}
        cells = _cell_fn(model, T)
        for b in range(B):
            for hi, h in enumerate(heads):
                t0 = time.perf_counter()
                qs = [_side_matrix(model, cache, layer, qd, "Q", h, b, p, opts.k_active) for p in range(T)]
                ks = [_side_matrix(model, cache, layer, kd, "K", h, b, p, opts.k_active) for p in range(T)]
                t1 = time.perf_counter()
                cands = []
                for i in (range(T) if query_rows is None else query_rows):
                    cands += _row(out, b, h, hi, i, qs[i], ks, amask[i], sel[i], pattern[b, h, i], scale, opts, cells)
                if opts.top_n is not None:
                    cands = sorted(cands, key=lambda c: -abs(c[1]))[:opts.top_n]
                out["entries"].update(cands)
                out["setup_s"] += t1 - t0
                out["pairs_s"] += time.perf_counter() - t1
    return out


def _row(out, b, h, hi, i, q, ks, amask_i, sel_i, pattern_i, scale, opts, cells):
    """All pairs of query row i: node terms into `out`, kept feature pairs returned as candidates."""
    q_labels, Q = q
    keys = [j for j in range(len(ks)) if amask_i[j]]
    pair_vals, node_vals = {}, {}
    for j in keys:  # the slow, obvious part: one matrix product per (i, j) pair
        k_labels, Kmat = ks[j]
        M = Q @ Kmat.T / scale
        out["n_pairs"] += 1
        nodes, pairs = defaultdict(float), {}
        for a, ql in enumerate(q_labels):
            for c, kl in enumerate(k_labels):
                qn = "features" if isinstance(ql, tuple) else ql
                kn = "features" if isinstance(kl, tuple) else kl
                nodes[(qn, kn)] += M[a, c]
                if isinstance(ql, tuple) and isinstance(kl, tuple):
                    pairs[(ql[1], ql[2], kl[1], kl[2])] = M[a, c]
        nodes.update(cells(h, i, j, float(M.sum())))
        node_vals[j], pair_vals[j] = nodes, pairs
    if opts.row_centre:  # subtract per-row means (absent pairs count 0)
        n = len(keys)
        for vals in (node_vals, pair_vals):
            mean = defaultdict(float)
            for j in keys:
                for key, v in vals[j].items():
                    mean[key] += v / n
            for j in keys:
                vals[j] = {key: vals[j].get(key, 0.0) - mean[key] for key in set(vals[j]) | set(mean)}
                if vals is pair_vals:  # only pairs present at j are table entries
                    vals[j] = {key: v for key, v in vals[j].items() if key in _present(q_labels, ks[j][0])}
    cands = []
    for j in keys:
        w = pattern_i[j] if opts.attention_weighted else 1.0
        out["node_terms"][(b, hi, i, j)] = {key: v * w for key, v in node_vals[j].items()}
        if sel_i[j]:
            cell = [((b, h, i, j) + key, v * w) for key, v in pair_vals[j].items() if v * w != 0]
            if opts.top_n is None and opts.top_m is not None:
                cell = sorted(cell, key=lambda c: -abs(c[1]))[:opts.top_m]
            cands += cell
    return cands


def _present(q_labels, k_labels):
    return {(a[1], a[2], c[1], c[2]) for a in q_labels if isinstance(a, tuple) for c in k_labels if isinstance(c, tuple)}


def reference_pair_aggregates(entries: dict) -> dict:
    """{(head, q_source, q_feature, k_source, k_feature): (n, sum, abs_sum, max, min)} from reference entries."""
    agg = {}
    for (_b, h, _i, _j, qs, qf, ks, kf), v in entries.items():
        n, s, a, mx, mn = agg.get((h, qs, qf, ks, kf), (0, 0.0, 0.0, -np.inf, np.inf))
        agg[(h, qs, qf, ks, kf)] = (n + 1, s + v, a + abs(v), max(mx, v), min(mn, v))
    return agg
