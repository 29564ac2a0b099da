"""Fixtures for the SAE tests: a tiny word-level model saved in the workspace, and a text file for it."""

from __future__ import annotations

import random

import pytest

TINY_VOCAB = [f"w{i}" for i in range(46)]  # + 4 special tokens = d_vocab 50 of make_tiny_model


@pytest.fixture
def tiny_ws(workspace):
    """(workspace, model ref, dataset spec): a tiny LN model with a word tokenizer, saved as 'tiny'."""
    from fra_core.models import save_local_model
    from fra_core.models.tiny import make_tiny_model
    from fra_core.models.tokenizers import build_tokenizer

    model = make_tiny_model(n_ctx=32)
    save_local_model(model, workspace.models / "tiny", tokenizer=build_tokenizer(TINY_VOCAB, "word"))
    rng = random.Random(0)
    lines = [" ".join(rng.choice(TINY_VOCAB) for _ in range(rng.randint(8, 30))) for _ in range(300)]
    text_file = workspace.root / "texts.txt"
    text_file.write_text("\n".join(lines), encoding="utf-8")
    return workspace, "tiny", f"file:{text_file}"


def small_cfg(dataset: str, **kw):
    from fra_core.sae.train import TrainSAEConfig

    base = dict(model="tiny", hook_name="blocks.1.ln1.hook_normalized", d_sae=64, training_tokens=4096,
                train_batch_size_tokens=256, context_size=16, store_batch_size_prompts=8, n_batches_in_buffer=16,
                dataset=dataset, n_texts=300, output_name="t1", device="cpu", log_every=2, lr=1e-3,
                sparsity_coefficient=0.5)
    base.update(kw)
    return TrainSAEConfig(**base)
