"""Inside `fixed_weights()` a decoder's checksum is computed once per weight version, and any versioned edit
(in-place op, new tensor, new SAE) still drops the projected-row table."""

from __future__ import annotations

import pytest
import torch

from fra_core.fra import FRAOptions, compute_fra, rowcache
from fra_core.fra.families import build_model, family_sides
from fra_core.fra.rowcache import clear_cache, fixed_weights

OPTS = FRAOptions(k_active=48, top_m=4)


def _tokens(model, seed, T=10):
    return torch.randint(0, model.cfg.d_vocab, (2, T), generator=torch.Generator().manual_seed(seed))


def _count_checksums(monkeypatch) -> list:
    calls = []
    real = rowcache.checksum

    def counting(tensors):
        tensors = list(tensors)
        calls.append(len(tensors))
        return real(tensors)

    monkeypatch.setattr(rowcache, "checksum", counting)
    return calls


def _fresh(model, tok, layer, d):
    clear_cache()
    return compute_fra(model, tok, layer, None, d, None, OPTS)


def test_checksum_once_per_version_inside_the_scope(monkeypatch):
    clear_cache()
    model = build_model("Mistral")
    d = family_sides(model, 2)["resid_pre"]
    calls = _count_checksums(monkeypatch)
    with fixed_weights():
        for seed in range(3):
            compute_fra(model, _tokens(model, seed), 2, None, d, None, OPTS)
    # per call: the maps of Q and of K (fresh every call) + the one decoder checksum, the latter only once
    assert len(calls) == 3 * 2 + 1
    calls.clear()
    compute_fra(model, _tokens(model, 0), 2, None, d, None, OPTS)  # outside the scope: every call, as before
    assert len(calls) == 2 + 1


def _scale_in_place(d):
    version = d.W_dec._version
    with torch.no_grad():
        d.W_dec[:7].mul_(1.9)  # only the decoder changes: the maps' checksum stays the same
    assert d.W_dec._version != version


def _replace_tensor(d):
    d.W_dec = torch.nn.Parameter(d.W_dec.detach() * 0.5 + 0.01)  # a new tensor, version 0 again


@pytest.mark.parametrize("edit", [_scale_in_place, _replace_tensor], ids=["in-place edit", "new tensor"])
def test_a_decoder_change_inside_the_scope_drops_the_table(edit):
    clear_cache()
    model = build_model("Mistral")
    d = family_sides(model, 2)["resid_pre"]
    tok = _tokens(model, 1)
    with fixed_weights():
        before = compute_fra(model, tok, 2, None, d, None, OPTS)
        edit(d)
        after = compute_fra(model, tok, 2, None, d, None, OPTS)
    fresh = _fresh(model, tok, 2, d)
    assert not torch.equal(before.entries["value"], after.entries["value"])
    for f in fresh.entries:
        assert torch.equal(after.entries[f], fresh.entries[f]), f
    assert after.completeness_error() <= 1e-5


def test_scope_gives_the_same_bits_as_no_scope():
    clear_cache()
    model = build_model("Llama 3")
    d = family_sides(model, 2)["resid_pre"]
    tok = _tokens(model, 3, 12)
    with fixed_weights():
        scoped = [compute_fra(model, tok, 2, None, d, None, OPTS) for _ in range(2)]
    plain = _fresh(model, tok, 2, d)
    for r in scoped:
        for f in plain.entries:
            assert torch.equal(r.entries[f], plain.entries[f]), f
