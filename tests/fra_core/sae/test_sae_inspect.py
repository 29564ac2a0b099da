"""Inspection views on a hand-built SAE whose feature f fires exactly on token f (exact answers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def token_sae_setup(tiny_ws):
    """Model 'tiny' + an SAE on hook_embed with feature f = 'current token is f' (d_sae = d_vocab)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    from fra_core.models import load_model
    from tests.fra_core.sae.conftest import TINY_VOCAB

    ws, ref, _ = tiny_ws
    model = load_model(ref, "cpu", ws)
    E = model.W_E.detach().clone()                                             # [d_vocab, d_model]
    cfg = StandardSAEConfig(d_in=E.shape[1], d_sae=E.shape[0])
    cfg.metadata.hook_name = "hook_embed"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_((E / E.pow(2).sum(-1, keepdim=True)).T)      # pre_f(e_t) = e_t.e_f / |e_f|^2 (=1 iff t=f)
        sae.b_enc.fill_(-0.9)
        sae.W_dec.copy_(E / 0.1)                                     # decodes back to e_f
        sae.b_dec.zero_()
    assert float((E @ sae.W_enc.detach()).fill_diagonal_(0).max()) < 0.9      # off-diagonal never fires
    rng = np.random.default_rng(0)
    texts = ["w7 " + " ".join(rng.choice(TINY_VOCAB, size=12)) for _ in range(20)]
    return model, sae, texts


def test_views_are_exact_on_token_features(token_sae_setup):
    from fra_core.sae import inspect as si

    model, sae, texts = token_sae_setup
    acts = si.collect_activations(model, sae, texts, batch_size=7)
    assert acts.n_tokens == 20 * 14
    assert (acts.l0[acts.mask] == 1).all() and acts.explained_variance == pytest.approx(1.0, abs=1e-4)
    hist = si.l0_histogram(acts)
    assert hist.to_dict("list") == {"l0": [1], "tokens": [acts.n_tokens]}
    dens = si.feature_density(acts)
    assert dens["fires"].sum() == acts.n_tokens and dens.loc[1, "density"] == pytest.approx(20 / 280)  # BOS id 1
    assert set(si.dead_features(acts)) >= {0, 2, 3}                  # pad, eos, unk never occur
    assert si.activation_histogram(acts)["count"].sum() == acts.n_tokens

    w7 = model.to_single_token("w7")
    ctx = si.top_contexts(acts, w7, k=5)
    assert len(ctx) == min(5, int(dens.loc[w7, "fires"])) and set(ctx["token"]) == {"w7"}
    assert ctx["activation"].is_monotonic_decreasing

    found = si.search_features(acts, "w7", mode="exact")
    assert int(found.loc[0, "feature"]) == w7 and found.loc[0, "precision"] == pytest.approx(1.0)
    prev = si.search_features(acts, "w7", mode="exact", offset=1)    # "previous token was w7": no such feature
    assert int(prev.loc[0, "feature"]) != w7 or prev.loc[0, "precision"] < 1
    assert int(si.search_features(acts, "7", mode="suffix").loc[0, "feature"]) in {
        model.to_single_token(w) for w in ("w7", "w17", "w27", "w37")}
    with pytest.raises(ValueError, match="no token matches"):
        si.search_features(acts, "zzz")

    proj = si.vocab_projection(sae, model, w7, k=3)
    expected = torch.topk(sae.W_dec[w7] @ model.W_U, 3).indices.tolist()
    assert proj[proj.kind == "promoted"]["token"].tolist() == [model.to_single_str_token(t) for t in expected]

    table = si.compare_saes({"a": acts, "b": acts})
    assert list(table["sae"]) == ["a", "b"] and not table["dense_warning"].any()


def test_sparsity_trap_and_hook_z_projection(tiny_model):
    from sae_lens import StandardSAE, StandardSAEConfig

    from fra_core.sae import inspect as si

    assert si.sparsity_warning(5.0, 100) is None
    msg = si.sparsity_warning(1520, 1536)
    assert "99 %" in msg and "sparsity coefficient" in msg and "smaller k" in msg
    cfg = StandardSAEConfig(d_in=32, d_sae=8, reshape_activations="hook_z")
    cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    sae = StandardSAE(cfg)
    dirs = si.decoder_residual_directions(sae, tiny_model)
    manual = torch.einsum("fhd,hdm->fm", sae.W_dec.view(8, 4, 8), tiny_model.W_O[1])
    torch.testing.assert_close(dirs, manual)
    assert len(si.vocab_projection(sae, tiny_model, 3, k=4)) == 8
