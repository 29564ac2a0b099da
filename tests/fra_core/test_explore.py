"""fra_core.explore: cell tables sum to the score, feature profiles, induction cells, weights vs data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fra_core.fra import FRAOptions, cells, compare, compute_fra, pair_strengths
from fra_core.sae import profiles
from tests.fra_core.fra.helpers_fra import make_sae, tiny, tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup():
    model = tiny("LN")
    sae = make_sae(32, "blocks.1.ln1.hook_normalized", 48, kind="topk", k=4, seed=3)
    tok = tokens(model, 1, 12, seed=5)
    result = compute_fra(model, tok, 1, None, sae, None, FRAOptions(k_active=8, top_m=5))
    return model, sae, tok, result


def test_cell_terms_sum_to_the_score(setup):
    model, sae, tok, result = setup
    for hi in range(len(result.heads)):
        for q, k in ((11, 3), (5, 5), (7, 0)):
            terms = cells.cell_terms(result, 0, hi, q, k)
            assert terms["value"].sum() == pytest.approx(float(result.target(0, hi)[q, k]), abs=1e-5)
            by = cells.terms_by_source(terms)
            assert by["value"].sum() == pytest.approx(terms["value"].sum(), abs=1e-6)
            assert {"kept feature pairs", "other feature pairs", "sae_error", "b_dec", "bias"} <= set(by["kind"])
            ex = cells.exactness(result, 0, hi, q, k)
            assert ex["rel_error_vs_max"] < 1e-5 and ex["abs_error"] < 1e-5


def test_cell_pairs_sorted_with_activations(setup):
    model, sae, tok, result = setup
    acts = profiles.feature_activations(model, tok, sae)
    pairs = cells.cell_pairs(result, 0, 2, 9, 4, acts, acts, top=5)
    assert 0 < len(pairs) <= 5
    assert (np.diff(pairs["value"].abs().to_numpy()) <= 1e-7).all()
    assert pairs["q_act"].notna().all() and pairs["k_act"].notna().all()
    assert pairs["value"].sum() == pytest.approx(float(result.kept_sum[0, 2, 9, 4]), abs=1e-5)


def test_pair_value_is_activations_times_weights_strength(setup):
    """FRA value of (f at i, g at j) = a_if · a_jg · S_fg for an ln1.hook_normalized SAE (σ is inside)."""
    model, sae, tok, result = setup
    acts = profiles.feature_activations(model, tok, sae)
    pairs = cells.cell_pairs(result, 0, 1, 10, 6, acts, acts)
    S = pair_strengths(model, 1, result.heads[1], sae, q_features=pairs.q_feature.tolist(),
                       k_features=pairs.k_feature.tolist())
    want = pairs.q_act.to_numpy() * pairs.k_act.to_numpy() * S.diagonal().numpy()
    assert np.allclose(pairs["value"].to_numpy(), want, atol=1e-5)


def test_bad_cells_are_clear_errors(setup):
    _, _, _, result = setup
    with pytest.raises(cells.ExploreError, match="outside the text"):
        cells.cell_terms(result, 0, 0, 12, 0)
    with pytest.raises(cells.ExploreError, match="causal"):
        cells.cell_pairs(result, 0, 0, 3, 5)


def test_head_summary_and_score_frame(setup):
    _, _, tok, result = setup
    summary = cells.head_summary(result)
    assert summary["head"].tolist() == [0, 1, 2, 3] and (summary["rel_error"] < 1e-5).all()
    frame = cells.score_frame(result, 0, 0, [f"t{i}" for i in range(12)])
    assert len(frame) == 12 * 13 // 2 and (frame.key_pos <= frame.query_pos).all()


def test_feature_profiles_and_token_strip():
    acts = pd.DataFrame({"batch": [0, 0, 0, 1, 1], "pos": [1, 2, 3, 1, 2], "source": 0,
                         "feature": [7, 7, 9, 7, 9], "activation": [1.0, 3.0, 2.0, 1.5, 1.0]})
    strs = [["<bos>", "a", "b", "a"], ["<bos>", "b", "a"]]
    prof = profiles.feature_profiles(acts, strs).set_index("feature")
    # feature 7 fired on a (1), b (3), b (1.5): top token b with 4.5/5.5 of its mass; previous a (3) > <bos> (2.5)
    assert prof.loc[7, "top_token"] == "b" and prof.loc[7, "top_token_share"] == pytest.approx(4.5 / 5.5)
    assert prof.loc[7, "top_prev"] == "a" and prof.loc[9, "top_prev"] == "b"
    # after: previous tokens by mean activation per occurrence; 'a' precedes only once (< min_count=2)
    assert prof.loc[7, "after"] == ("<bos>",)
    assert profiles.feature_profiles(acts, strs, min_count=1).set_index("feature").loc[7, "after"] == ("a", "<bos>")
    assert profiles.describe(prof.reset_index(), 0, 7) == "tok ‘b’ 82% · after ‘<bos>’"
    assert profiles.describe(prof.reset_index(), 0, 99) == "—"
    strip = profiles.token_strip(acts, strs[0], prof.reset_index())
    assert strip["n_active"].tolist() == [0, 1, 1, 1] and "f7=3.00" in strip.loc[2, "top features"]


def test_induction_positions():
    # BOS x A B y A → query 5 (A) attends to key 3 (B, after the earlier A)
    df = compare.induction_positions([0, 11, 12, 13, 14, 12])
    assert df[["query_pos", "key_pos"]].values.tolist() == [[5, 3]]
    assert df.token_id.tolist() == [12] and df.next_id.tolist() == [13]
    assert compare.induction_positions([0, 1, 2, 3]).empty


def test_agreement_metrics():
    data = pd.DataFrame({"q_gid": [1, 2, 3, 4], "k_gid": [1, 1, 1, 1], "abs_sum": [4.0, 3.0, 2.0, 1.0],
                         "sum": [4.0, -3.0, 2.0, 1.0]})
    strengths = pd.DataFrame({"q_gid": [1, 2, 3, 4, 5], "k_gid": 1, "strength": [8.0, -6.0, 4.0, 2.0, 0.1]})
    a = compare.agreement(data, strengths, k=2)
    assert a["overlap_at_k"] == 1.0 and a["spearman"] == pytest.approx(1.0)
    a = compare.agreement(data.assign(abs_sum=[1.0, 2.0, 3.0, 4.0]), strengths, k=2)
    assert a["overlap_at_k"] == 0.0 and a["spearman"] == pytest.approx(-1.0)


def test_weights_vs_data_on_hook_z_side():
    model = tiny("LN")
    saes = [make_sae(32, "blocks.0.attn.hook_z", 40, kind="topk", k=3, seed=1)]
    tok = tokens(model, 2, 9, seed=2)
    result = compute_fra(model, tok, 1, [3], saes, None, FRAOptions(k_active=8, top_m=None))
    acts = profiles.feature_activations(model, tok, saes)
    strengths, data, agree = compare.weights_vs_data(model, 1, 3, saes, saes, result, acts, acts, k=5)
    assert data["strength"].notna().all()  # every pair seen in the data is a candidate
    assert len(strengths) == len(compare.active_gids(acts, [0, 40])) ** 2
    assert 0.0 <= agree["overlap_at_k"] <= 1.0 and -1.0 <= agree["spearman"] <= 1.0
    assert cells.split_gid(45, [0, 40, 80]) == (1, 5)


def test_neuronpedia_links():
    assert (profiles.neuronpedia_url("blocks.5.attn.hook_z", 123, True)
            == "https://www.neuronpedia.org/gpt2-small/5-att-kk/123")
    assert profiles.neuronpedia_url("blocks.5.ln1.hook_normalized", 1, True) is None
    assert profiles.neuronpedia_url("blocks.5.attn.hook_z", 1, False) is None
