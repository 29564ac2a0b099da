"""Options: exclusions, top-m / top-N, row centring, attention weighting, chunking; feature ablation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fra_core.fra import FRAOptions, compute_fra

from .helpers_fra import side_saes, tiny, tokens

BASE = FRAOptions(k_active=6, top_m=None, exclude_diagonal=False)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = tiny("LN", rotary=True)
    return model, side_saes(model, 1, "resid_pre"), tokens(model, 2, 12)


def run(setup, **changes):
    model, d, tok = setup
    return compute_fra(model, tok, 1, None, d, None, dataclasses.replace(BASE, **changes))


def test_exclusions(setup):
    e = run(setup, exclude_diagonal=True, exclude_bos_key=True, exclude_bos_query=True).entries
    assert len(e["value"]) > 0
    assert not (e["query_pos"] == e["key_pos"]).any()
    assert not (e["key_pos"] == 0).any() and not (e["query_pos"] == 0).any()
    full = run(setup).entries
    assert (full["query_pos"] == full["key_pos"]).any() and (full["key_pos"] == 0).any()
    assert bool((full["key_pos"] <= full["query_pos"]).all())  # causal triangle only


def test_excluded_cells_stay_in_the_sum(setup):
    r = run(setup, exclude_diagonal=True, exclude_bos_key=True, top_m=2)
    assert r.completeness_error() <= 1e-4
    diag = torch.diagonal(r.ff_rest(0, 1))
    assert torch.allclose(diag, torch.diagonal(r.node_terms(0, 1)[:, :, 0, 0]))


def test_top_m_per_cell_and_top_n(setup):
    full, top = run(setup), run(setup, top_m=3)
    cells = top.entries["batch"] * 10_000 + top.entries["head"] * 1000 + top.entries["query_pos"] * 50 + top.entries["key_pos"]
    assert int(torch.unique(cells, return_counts=True)[1].max()) == 3
    # the kept ones are the largest |values| of their cell
    fe, te = full.entries, top.entries
    sel = (fe["batch"] == 0) & (fe["head"] == 1) & (fe["query_pos"] == 7) & (fe["key_pos"] == 3)
    tsel = (te["batch"] == 0) & (te["head"] == 1) & (te["query_pos"] == 7) & (te["key_pos"] == 3)
    want = fe["value"][sel].abs().sort(descending=True).values[:3]
    assert torch.allclose(te["value"][tsel].abs().sort(descending=True).values, want)
    n = run(setup, top_n=10)
    for b in range(2):
        for h in range(4):
            mine = (n.entries["batch"] == b) & (n.entries["head"] == h)
            allv = fe["value"][(fe["batch"] == b) & (fe["head"] == h)].abs().sort(descending=True).values[:10]
            assert torch.allclose(n.entries["value"][mine].abs().sort(descending=True).values, allv)


def test_chunking_is_identical(setup):
    a, b = run(setup, top_m=4, row_centre=True), run(setup, top_m=4, row_centre=True, chunk_rows=1)
    assert torch.equal(a.entries["query_pos"], b.entries["query_pos"])
    assert torch.allclose(a.entries["value"], b.entries["value"], atol=1e-6)
    c = run(setup, top_n=7, chunk_rows=3)
    d = run(setup, top_n=7)
    assert torch.allclose(c.entries["value"].abs().sort().values, d.entries["value"].abs().sort().values)


def test_row_centring(setup):
    r = run(setup, row_centre=True)
    assert r.completeness_error() <= 1e-4
    tgt = r.target(1, 2)
    assert tgt.sum(1).abs().max() <= 1e-5  # centred rows sum to zero over the allowed keys
    # the sparse entries of a row sum (with the dense rest) to the centred feature×feature row
    assert torch.allclose((r.kept_sum[1, 2] + r.ff_rest(1, 2)).sum(1), torch.zeros(12), atol=1e-5)


def test_row_centring_cancels_key_bias_without_rope():
    # b_K and the key-side ln1.b are constant across keys (no RoPE rotating them): every term with them
    # is 0 after centring, as in the softmax
    model = tiny("LN")
    r = compute_fra(model, tokens(model), 1, None, side_saes(model, 1, "resid_pre"), None,
                    dataclasses.replace(BASE, row_centre=True))
    nt = r.node_terms(0, 1)
    for name in ("bias", "ln1.b"):
        assert nt[:, :, :, r.k_node_names.index(name)].abs().max() <= 1e-6
    assert r.completeness_error() <= 1e-4


def test_attention_weighting(setup):
    raw, w = run(setup), run(setup, attention_weighted=True)
    e = raw.entries
    A = raw.pattern[e["batch"], torch.tensor([raw.heads.index(h) for h in e["head"].tolist()]), e["query_pos"], e["key_pos"]]
    assert torch.allclose(w.entries["value"], e["value"] * A, atol=1e-7)
    assert w.completeness_error() <= 1e-4


def test_zeroing_a_feature_changes_scores_by_exactly_its_terms(setup):
    model, d, tok = setup
    r = run(setup)
    b, hi, p = 0, 2, 6
    gid = int(r.q_side.ids[b, p, 0])  # the strongest feature at query position p
    with torch.no_grad():
        raw_act = float(d.encode(_resid(model, tok)[b, p][None])[0, gid])
    scale = None

    def remove(x, hook):
        x = x.clone()
        x[b, p] -= raw_act * d.W_dec[gid].detach()  # remove a_f d_f from the residual, σ stays frozen
        return x

    def freeze(s, hook):
        return scale

    with torch.no_grad():
        _, cache = model.run_with_cache(tok, names_filter=lambda n: n.startswith("blocks.1."))
        scale = cache["blocks.1.ln1.hook_scale"]
        model.run_with_hooks(tok, fwd_hooks=[("blocks.1.hook_resid_pre", remove), ("blocks.1.ln1.hook_scale", freeze),
                                             ("blocks.1.attn.hook_attn_scores", _grab)])
    delta = _grab.value[b, hi] - r.scores[b, hi]
    q_terms = r.feature_terms(b, hi, p, gid, side="q")  # [key_pos, n_k_nodes]
    k_terms = r.feature_terms(b, hi, p, gid, side="k")  # [query_pos, n_q_nodes]
    assert raw_act != 0
    # row p, keys j < p: only the query side changed
    assert torch.allclose(delta[p, :p], -q_terms[:p].sum(1), atol=1e-5)
    # column p, queries i > p: only the key side changed
    assert torch.allclose(delta[p + 1:, p], -k_terms[p + 1:].sum(1), atol=1e-5)
    # the feature×feature part of those terms is exactly the table's entries for this feature
    e = r.entries
    mine = (e["batch"] == b) & (e["head"] == r.heads[hi]) & (e["query_pos"] == p) & (e["q_feature"] == gid)
    ff = torch.zeros(12).index_add_(0, e["key_pos"][mine], e["value"][mine])
    assert torch.allclose(ff[:p + 1], q_terms[:p + 1, 0], atol=1e-6)


def _resid(model, tok):
    with torch.no_grad():
        _, cache = model.run_with_cache(tok, names_filter=lambda n: n == "blocks.1.hook_resid_pre")
    return cache["blocks.1.hook_resid_pre"]


def _grab(scores, hook):
    _grab.value = scores.clone()
    return scores
