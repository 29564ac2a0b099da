"""Data-independent strengths, DFA by source, aggregate merging, error budget and loss recovered."""

from __future__ import annotations

import pytest
import torch

from fra_core.fra import (
    FRAOptions,
    compute_fra,
    dfa_by_source,
    error_budget,
    loss_recovered,
    merge_pair_tables,
    pair_aggregates,
    pair_strengths,
    top_partners,
)

from .helpers_fra import make_sae, side_saes, tiny, tokens


def brute_strengths(model, layer, head, sae_q, sae_k):
    """d_sae × d_sae by hand (tiny only): centred, w-folded decoders through W_Q / W_K."""
    ln1, attn = model.blocks[layer].ln1, model.blocks[layer].attn

    def proj(sae, W):
        D = sae.W_dec.detach()
        if sae.cfg.metadata.hook_name.endswith("resid_pre"):
            D = D - D.mean(1, keepdim=True)
        return (D * ln1.w.detach()) @ W[head].detach()

    return proj(sae_q, attn.W_Q) @ proj(sae_k, attn.W_K).T / attn.attn_scale


@pytest.mark.parametrize("hook", ["ln1.hook_normalized", "hook_resid_pre"])
def test_pair_strengths_match_brute_force(hook):
    model = tiny("LN")
    q, k = make_sae(32, f"blocks.1.{hook}", 40, seed=1), make_sae(32, f"blocks.1.{hook}", 30, seed=2)
    full = brute_strengths(model, 1, 3, q, k)
    got = pair_strengths(model, 1, 3, q, k, q_features=[0, 5, 39], k_features=[1, 29])
    assert torch.allclose(got, full[[0, 5, 39]][:, [1, 29]], atol=1e-6)
    vals, ids = top_partners(model, 1, 3, 5, q, k, top=6, block=7)
    want = full[5].abs().topk(6)
    assert torch.equal(ids, want.indices) and torch.allclose(vals, full[5][want.indices], atol=1e-6)
    vals_k, ids_k = top_partners(model, 1, 3, 4, q, k, side="k", top=3, block=16)
    assert torch.equal(ids_k, full[:, 4].abs().topk(3).indices)


def test_rotary_strength_depends_on_offset_only():
    model = tiny("RMSPre", rotary=True)
    sae = make_sae(32, "blocks.1.ln1.hook_normalized", 20)
    attn = model.blocks[1].attn
    U = sae.W_dec.detach() @ attn.W_Q[0].detach()
    V = sae.W_dec.detach() @ attn.W_K[0].detach()
    i, j = 7, 3  # rotate each side at its own position, then compare with the offset form
    rq = attn.apply_rotary(U[None, None], past_kv_pos_offset=i)[0, 0]
    rk = attn.apply_rotary(V[None, None], past_kv_pos_offset=j)[0, 0]
    got = pair_strengths(model, 1, 0, sae, offset=i - j)
    assert torch.allclose(got, rq @ rk.T / attn.attn_scale, atol=1e-5)


def test_dfa_by_source_sums_to_pre_activation():
    model = tiny("LN")
    sae = make_sae(32, "blocks.1.attn.hook_z", 50)
    out = dfa_by_source(model, tokens(model), 1, sae, [0, 7, 49])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(model), names_filter=lambda n: n == "blocks.1.attn.hook_z")
        z = cache["blocks.1.attn.hook_z"].flatten(-2)
        pre = (z - sae.b_dec) @ sae.W_enc[:, [0, 7, 49]] + sae.b_enc[[0, 7, 49]]
    assert torch.allclose(out["by_source"].sum((1, 3)) + out["constant"], pre, atol=1e-5)
    assert out["by_source"][:, :, 2, 5:].abs().max() == 0  # causal: no contribution from later keys


def test_merge_pair_tables_adds_counts():
    model = tiny("LN")
    d = side_saes(model, 1, "resid_pre")
    a = compute_fra(model, tokens(model, seed=1), 1, None, d, None, FRAOptions(k_active=4, top_m=2))
    b = compute_fra(model, tokens(model, seed=2), 1, None, d, None, FRAOptions(k_active=4, top_m=2))
    ta, tb = pair_aggregates(a), pair_aggregates(b, sample_offset=2)
    merged = merge_pair_tables([ta, tb], a.q_side.offsets, a.k_side.offsets)
    assert int(merged["n"].sum()) == a.n_entries + b.n_entries
    assert torch.allclose(merged["sum"].sum(), ta["sum"].sum() + tb["sum"].sum(), atol=1e-5)
    assert float(merged["max"].max()) == max(float(ta["max"].max()), float(tb["max"].max()))


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_pair_aggregates_in_chunks_equal_one_pass(chunk_rows):
    model = tiny("LN")
    r = compute_fra(model, tokens(model, 2, 10), 1, None, side_saes(model, 1, "resid_pre"), None,
                    FRAOptions(k_active=4, top_m=3))
    assert r.n_entries > 64
    whole, parts = pair_aggregates(r, sample_offset=5), pair_aggregates(r, sample_offset=5, chunk_rows=chunk_rows)
    assert set(parts) == set(whole)
    for c, t in whole.items():
        if c in ("sum", "abs_sum"):  # added in another order
            torch.testing.assert_close(parts[c], t, rtol=1e-6, atol=1e-6)
        else:  # counts, keys, max/min and the best entry (ties → the first) are exact
            assert torch.equal(parts[c], t), c


def test_error_budget_and_loss_recovered():
    model = tiny("LN")
    tok = tokens(model, 2, 10)
    r = compute_fra(model, tok, 1, [0, 2], side_saes(model, 1, "resid_pre"), None, FRAOptions(k_active=3))
    budget = error_budget(r)
    assert budget["numerical"] <= 1e-5 * budget["mean_abs_score"]
    assert budget["truncation"] > 0 and budget["sae_error"] > 0 and budget["truncated"] == 1.0
    everything = loss_recovered(model, tok, r, include=("sae_error", "truncation", "b_dec", "bias", "other"))
    assert abs(everything["patched"] - everything["clean"]) <= 1e-4
    assert abs(everything["fraction_recovered_zero"] - 1) <= 1e-2
    ff = loss_recovered(model, tok, r)
    assert set(ff) >= {"clean", "patched", "zero_ablated", "mean_ablated", "fraction_recovered_zero"}
