"""The projected-row cache cannot go stale (content checksums) and its rows do not depend on history."""

from __future__ import annotations

import torch

from fra_core.fra import FRAOptions, compute_fra
from fra_core.fra.families import build_model, family_sides
from fra_core.fra.rowcache import clear_cache

OPTS = FRAOptions(k_active=48, top_m=4)


def _tokens(model, seed, T=10):
    return torch.randint(0, model.cfg.d_vocab, (2, T), generator=torch.Generator().manual_seed(seed))


def _same_as_fresh(model, tok, layer, d):
    """The (possibly cached) result equals a result computed with an empty cache, bit for bit."""
    cached = compute_fra(model, tok, layer, None, d, None, OPTS)
    clear_cache()
    fresh = compute_fra(model, tok, layer, None, d, None, OPTS)
    for f in fresh.entries:
        assert torch.equal(cached.entries[f], fresh.entries[f]), f
    assert cached.completeness_error() <= 1e-5
    return cached


def test_edits_that_do_not_bump_the_version_counter():
    clear_cache()
    model = build_model("Llama 3")  # GQA: W_K is a fresh repeat_interleave of _W_K on every access
    d = family_sides(model, 2)["resid_pre"]
    tok = _tokens(model, 0)
    before = compute_fra(model, tok, 2, None, d, None, OPTS)
    version = d.W_dec._version
    d.W_dec.data[:, :5] *= 1.7  # .data writes: the parameter's version counter does not move
    model.blocks[2].attn._W_K.data[0] += 0.05
    assert d.W_dec._version == version
    after = _same_as_fresh(model, tok, 2, d)
    assert not torch.equal(before.entries["value"], after.entries["value"])


def test_fold_w_dec_norm_between_calls():
    clear_cache()
    model = build_model("Gemma 2")
    d = family_sides(model, 2)["hook_z (upstream)"]
    tok = _tokens(model, 1)
    compute_fra(model, tok, 2, None, d, None, OPTS)
    for sae in d:
        sae.fold_W_dec_norm()  # SAELens's own in-place rescaling of W_dec / W_enc / b_enc
    _same_as_fresh(model, tok, 2, d)


def test_load_state_dict_of_other_weights():
    clear_cache()
    model, other = build_model("Qwen 3", seed=0), build_model("Qwen 3", seed=5)
    d = family_sides(model, 2)["ln1.hook_normalized"]
    tok = _tokens(model, 2)
    compute_fra(model, tok, 2, None, d, None, OPTS)
    model.load_state_dict(other.state_dict())
    _same_as_fresh(model, tok, 2, d)


def test_rows_do_not_depend_on_earlier_batches():
    model = build_model("Mistral")
    d = family_sides(model, 2)["resid_pre"]
    a, b = _tokens(model, 3, 12), _tokens(model, 4, 7)
    clear_cache()
    compute_fra(model, a, 2, [0, 1], d, None, OPTS)  # fills part of the table first
    after_a = compute_fra(model, b, 2, [0, 1], d, None, OPTS)
    clear_cache()
    alone = compute_fra(model, b, 2, [0, 1], d, None, OPTS)
    one_head = compute_fra(model, b, 2, [1], d, None, OPTS)
    with torch.inference_mode():  # the uncached path projects the same blocks
        uncached = compute_fra(model, b, 2, [0, 1], d, None, OPTS)
    for f in alone.entries:
        assert torch.equal(after_a.entries[f], alone.entries[f]), f
        assert torch.equal(uncached.entries[f], alone.entries[f]), f
    h1 = alone.entries["head"] == 1
    assert torch.equal(one_head.entries["value"], alone.entries["value"][h1])
