"""AppTest: Single text FRA and Validation on a GQA + QK-norm tiny workspace model (Qwen 3 flags): exact,
and the pages say which scales the decomposition froze."""

from __future__ import annotations

import pytest

from tests.pages.fra_helpers import errors, frame_with, open_page

MODEL, SAE = "qwen3-tiny", "qwen3-tiny-sae"
SIDE = f"{SAE}  (blocks.1.ln1.hook_normalized)"


@pytest.fixture
def gqa_ws(workspace):
    import torch

    from fra_core.models import save_local_model
    from fra_core.models.tiny import make_tiny_model
    from fra_core.models.tokenizers import load_tokenizer
    from tests.fra_core.accumulate_helpers import demo_tokenizer_folder
    from tests.fra_core.fra.helpers_fra import make_sae

    tok = load_tokenizer(demo_tokenizer_folder(workspace.root))
    model = make_tiny_model(d_vocab=len(tok), n_ctx=64, normalization_type="RMS", positional_embedding_type="rotary",
                            rotary_dim=8, n_key_value_heads=2, use_qk_norm=True, gated_mlp=True,
                            default_prepend_bos=True)
    with torch.no_grad():  # non-trivial QK-norm gains
        for block in model.blocks:
            block.attn.q_norm.w.mul_(1.5)
            block.attn.k_norm.w.add_(0.25)
    save_local_model(model, workspace.models / MODEL, tokenizer=tok)
    make_sae(32, "blocks.1.ln1.hook_normalized", 48, kind="topk", k=4).save_model(str(workspace.saes / SAE))
    return workspace


def _pick(at, prefix):
    at.selectbox(key=f"{prefix}_model").set_value(MODEL).run()
    at.selectbox(key=f"{prefix}_layer").set_value(1).run()
    at.selectbox(key=f"{prefix}_qsae").set_value(SIDE).run()
    assert not at.exception and not errors(at), ([e.value for e in at.exception], errors(at))


def test_single_text_page_on_gqa_qk_norm(gqa_ws):
    at = open_page("pages/fra_text.py")
    _pick(at, "fra_text")
    at.text_area(key="fra_text_text_0").set_value("the cat sees the dog . the cat sees the").run()
    assert not at.exception and not errors(at), errors(at)
    captions = " ".join(c.value for c in at.caption)
    assert "blocks.1.attn.q_norm.hook_scale" in captions and "blocks.1.attn.k_norm.hook_scale" in captions
    for head in (0, 3):  # heads 0 and 3 use different KV groups
        at.number_input(key="fra_text_head").set_value(head).run()
        assert not at.exception and not errors(at), errors(at)
        assert float({m.label: m.value for m in at.metric}["Rel. error"]) < 1e-4


def test_validation_page_on_gqa_qk_norm(gqa_ws):
    at = open_page("pages/fra_validation.py")
    _pick(at, "fra_val")
    at.number_input(key="fra_val_n").set_value(3).run()
    at.toggle(key="fra_val_all").set_value(True).run()
    assert not at.exception and not errors(at), errors(at)
    assert float({m.label: m.value for m in at.metric}["numerical error (mean |Σ−score|)"]) < 1e-4
    assert any("q_norm.hook_scale" in c.value for c in at.caption)
    exact = frame_with(at, "fraction_recovered_zero").set_index("include").loc["all terms (exact)"]
    assert exact["patched"] == pytest.approx(exact["clean"], abs=1e-4)
