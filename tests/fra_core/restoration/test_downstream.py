"""The converted restoration model is usable downstream: SAELens training through fra_core.sae.train,
and exact FRA on its bidirectional RoPE heads (no causal mask; the pieces sum to the scores), with and
without the seed RoPE quirk."""

from __future__ import annotations

import pytest
import torch

from fra_core.atf import BOS_ID, build_vocab, clean_fragment, load_fragments, sample_path
from fra_core.restoration.convert import convert_model
from fra_core.restoration.model import RestorationModel, RestorationModelConfig


@pytest.fixture(params=[False, True], ids=["rope", "seed-quirk"])
def converted_ws(request, workspace):
    """Workspace with model 'restorer' (converted, saved) and a text file of cleaned demo lines."""
    from fra_core.models import save_local_model

    lines = [line for f in load_fragments(sample_path()) for line in clean_fragment(f)]
    vocab = build_vocab(lines)
    torch.manual_seed(0)
    model = RestorationModel(RestorationModelConfig(d_vocab=vocab.size, n_layers=2, d_model=32, n_heads=4,
                                                    max_len=64, rope_quirk=request.param))
    model.reset_parameters(std=0.3)
    save_local_model(convert_model(model.eval(), vocab), workspace.models / "restorer",
                     tokenizer=vocab.to_tokenizer())
    texts = [line.text for line in lines if "g" not in line.status and len(line.text) > 10]
    (workspace.datasets / "lines.txt").write_text("\n".join(texts * 4), encoding="utf-8")
    return workspace, vocab, texts


def test_sae_trains_on_the_converted_model(converted_ws):
    from fra_core.sae.train import TrainSAEConfig, run_train_sae

    ws, _, _ = converted_ws
    result = run_train_sae(TrainSAEConfig(
        model="restorer", hook_name="blocks.1.ln1.hook_normalized", architecture="topk", k=4, d_sae=64,
        training_tokens=2048, train_batch_size_tokens=256, context_size=32, n_batches_in_buffer=8,
        dataset="lines.txt", output_name="restorer-sae", device="cpu"), workspace=ws)
    assert (ws.saes / "restorer-sae" / "cfg.json").is_file()
    assert 0 < result["l0"] <= 4


def test_fra_is_exact_on_the_bidirectional_converted_model(converted_ws):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from fra_core.fra import compute_fra
    from fra_core.models import load_local_model

    ws, vocab, texts = converted_ws
    model = load_local_model(ws.models / "restorer", "cpu")
    assert model.cfg.attention_dir == "bidirectional"
    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=48, k=6, metadata=SAEMetadata(hook_name="blocks.1.ln1.hook_normalized")))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    sae.eval()
    tokens = torch.tensor([[BOS_ID] + vocab.encode(t[:23]) for t in texts if len(t) >= 23][:2])
    result = compute_fra(model, tokens, layer=1, q_dict=sae)
    assert bool(result.attn_mask.all())                       # every query sees every key: no causal mask
    assert result.completeness_error() <= 1e-4                # the pieces sum to hook_attn_scores
    _, cache = model.run_with_cache(tokens)
    scores = cache["blocks.1.attn.hook_attn_scores"]
    upper = torch.triu(torch.ones(scores.shape[-2:], dtype=torch.bool), diagonal=1)
    assert torch.isfinite(scores[..., upper]).all()           # future keys carry real scores
    future = result.entries["key_pos"] > result.entries["query_pos"]
    assert future.any()                                       # and FRA reports pairs with them


def test_stored_tokens_of_the_char_model_come_back_as_text(converted_ws):
    """Opening a stored example (Pair tables → Single text FRA) on the character-level model: its token
    strings join back into the same text."""
    from fra_core.models import load_local_model
    from fra_core.models.prompting import prompt_tokens, text_for_str_tokens

    ws, _, texts = converted_ws
    model = load_local_model(ws.models / "restorer", "cpu")
    text = texts[0]
    stored = [str(t) for t in model.to_str_tokens(prompt_tokens(model, text)[0])]
    again, offset = text_for_str_tokens(model, stored)
    assert (again, offset) == (text, 0)
