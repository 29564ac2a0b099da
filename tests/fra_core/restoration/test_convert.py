"""Conversion of the restoration model family to TransformerLens: exact logits, the seed RoPE quirk,
save/load round trip, and the CLI on good and bad checkpoints."""

from __future__ import annotations

import pytest
import torch

from fra_core.atf import CharVocab, build_vocab, clean_fragment, load_fragments, sample_path
from fra_core.restoration.convert import (
    TOLERANCE,
    cli_main,
    convert_model,
    max_abs_dlogit,
    real_token_batches,
    verification_texts,
)
from fra_core.restoration.model import (
    CheckpointError,
    RestorationModel,
    RestorationModelConfig,
    load_checkpoint,
    rope_tables,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def vocab() -> CharVocab:
    return build_vocab([line for f in load_fragments(sample_path()) for line in clean_fragment(f)])


def random_model(vocab: CharVocab, seed: int = 0, **shape) -> RestorationModel:
    """A model with O(1) activations: large random weights, random biases and LayerNorm parameters."""
    torch.manual_seed(seed)
    model = RestorationModel(RestorationModelConfig(d_vocab=vocab.size, **shape))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if ".ln" in name or "ln_final" in name else 0.0, 0.3 if p.ndim > 1 else 0.1)
    return model.eval()


SHAPES = [
    dict(n_layers=1, d_model=16, n_heads=2, max_len=24),
    dict(n_layers=2, d_model=32, n_heads=4, max_len=64),
    dict(n_layers=3, d_model=24, n_heads=2, d_head=8, d_mlp=40, max_len=40, rope_base=500.0),
]


@pytest.mark.parametrize("quirk", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_models_convert_exactly(vocab, shape, quirk):
    model = random_model(vocab, **shape, rope_quirk=quirk)
    tl = convert_model(model, vocab)
    assert tl.cfg.attention_dir == "bidirectional" and tl.cfg.positional_embedding_type == "rotary"
    batches = real_token_batches(vocab, model.cfg.max_len, verification_texts(vocab))
    assert {b.shape[1] for b in batches} >= {model.cfg.max_len, 2}  # full length and shorter inputs
    with torch.no_grad():
        assert model(batches[0]).abs().max() > 1.0  # the comparison is not between near-zero logits
    assert max_abs_dlogit(model, tl, batches) <= TOLERANCE


def test_quirk_matters_and_is_what_the_docs_say(vocab):
    d_head, max_len = 8, 24
    sin_q, cos_q = rope_tables(d_head, max_len, quirk=True)
    sin, cos = rope_tables(d_head, max_len)
    assert not torch.allclose(cos_q, cos)
    # position p, pair i takes flat entry p*d_head/2 + i of the frequency-major [d_head/2, max_len] table
    half = d_head // 2
    freq = 10000.0 ** (torch.arange(half, dtype=torch.float32) / half)
    for p, i in [(0, 0), (3, 1), (7, 3), (23, 2)]:
        f = p * half + i
        expected = (f % max_len) / freq[f // max_len]
        assert torch.isclose(cos_q[p, i], torch.cos(expected), atol=1e-6)
        assert torch.isclose(cos_q[p, i + half], torch.cos(expected), atol=1e-6)
    # a quirk checkpoint converted WITHOUT the quirk table fails verification: the check has teeth
    shape = dict(n_layers=2, d_model=32, n_heads=4, max_len=64)
    quirky = random_model(vocab, **shape, rope_quirk=True)
    plain = RestorationModel(RestorationModelConfig(d_vocab=vocab.size, **shape))
    plain.load_state_dict(quirky.state_dict())
    batches = real_token_batches(vocab, 64, verification_texts(vocab))
    assert max_abs_dlogit(quirky, convert_model(plain.eval(), vocab), batches) > 1e-2


def test_converted_quirk_model_survives_save_and_load(vocab, workspace):
    from fra_core.models import load_local_model, save_local_model

    model = random_model(vocab, n_layers=2, d_model=32, n_heads=4, max_len=48, rope_quirk=True)
    tl = convert_model(model, vocab)
    folder = save_local_model(tl, workspace.models / "q", tokenizer=vocab.to_tokenizer(), meta={"rope_quirk": True})
    loaded = load_local_model(folder, "cpu")
    batches = real_token_batches(vocab, 48, verification_texts(vocab))
    assert max_abs_dlogit(model, loaded, batches) <= TOLERANCE
    assert loaded.to_str_tokens("a-na")[:2] == ["<bos>", "a"]


def test_cli_converts_and_prints_dlogit_last(vocab, workspace, tmp_path, capsys):
    model = random_model(vocab, n_layers=2, d_model=32, n_heads=4, max_len=32, rope_quirk=True)
    ckpt = save_checkpoint(model, tmp_path / "m.pt", vocab.to_json())
    assert cli_main(["--checkpoint", str(ckpt), "--out", "restorer"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("max_abs_dlogit=") and float(out[-1].split("=")[1]) <= TOLERANCE
    assert (workspace.models / "restorer" / "model.safetensors").is_file()
    loaded, _ = load_checkpoint(ckpt)
    assert loaded.cfg.rope_quirk


def _corrupt(payload_edit, vocab, tmp_path):
    model = random_model(vocab, n_layers=1, d_model=16, n_heads=2, max_len=16)
    path = save_checkpoint(model, tmp_path / "bad.pt", vocab.to_json())
    payload = torch.load(path, weights_only=True)
    payload_edit(payload)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["state_dict"].pop("blocks.0.attn.W_Q.weight"), "lacks 1 tensors"),
    (lambda p: p["state_dict"].__setitem__("blocks.0.mlp.W_in.weight", torch.zeros(3, 16)), "has shape (3, 16)"),
    (lambda p: p["state_dict"].__setitem__("extra.weight", torch.zeros(1)), "does not define"),
    (lambda p: p.__setitem__("format", "other"), "is not a fra-restoration-v1"),
    (lambda p: p["config"].__setitem__("d_head", 3), "bad model config"),
    (lambda p: p["config"].__setitem__("n_heads", 4), "the config implies (32, 16)"),
    (lambda p: p.__setitem__("vocab", None), "carries no vocabulary"),
])
def test_cli_bad_checkpoints_write_nothing(vocab, workspace, tmp_path, capsys, edit, message):
    path = _corrupt(edit, vocab, tmp_path)
    assert cli_main(["--checkpoint", str(path), "--out", "broken"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (workspace.models / "broken").exists()
    assert [p.name for p in workspace.models.iterdir()] == []


def test_cli_unreadable_and_missing_files(workspace, tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli_main(["--checkpoint", str(tmp_path / "junk.pt"), "--out", "x"]) == 2
    assert cli_main(["--checkpoint", str(tmp_path / "absent.pt"), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "not a readable torch checkpoint" in err and "not found" in err
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
