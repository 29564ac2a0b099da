"""Accumulation jobs check completeness on their first batch: recorded in run.json and the store, and a
decomposition that does not describe the model stops the job before anything is stored."""

import pytest

from fra_core import contracts as shards
from fra_core.accumulate import AccumulateError, AccumulateFRAConfig
from fra_core.accumulate.run import run_accumulate
from fra_core.datasets import open_texts
from fra_core.jobs import Progress
from tests.fra_core.accumulate_helpers import assert_totals_equal, direct_totals, shard_totals, tiny_sae

WINDOW = 4
CFG = dict(model="tiny", q_saes=("tiny-sae",), n_samples=5, batch_size=2, shard_size=3, top_m=3, k_active=8,
           context_length=24, examples_per_pair=2)


def _model(root, **flags):
    from fra_core.models.tiny import make_tiny_model
    from fra_core.models.tokenizers import load_tokenizer
    from tests.fra_core.accumulate_helpers import demo_tokenizer_folder

    tok = load_tokenizer(demo_tokenizer_folder(root))
    model = make_tiny_model(d_vocab=len(tok), n_ctx=64, default_prepend_bos=True, **flags)
    model.set_tokenizer(tok)
    return model


def _sliding(root):
    """Mistral-style: RMS, rotary, GQA, every layer local with a 4-token window (texts are longer)."""
    return _model(root, normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
                  n_key_value_heads=2, use_local_attn=True, window_size=WINDOW, attn_types=["local", "local"])


def test_sliding_window_job_records_completeness_and_store_keeps_it(tmp_path):
    from store import Store, ingest_job_shards

    model = _sliding(tmp_path)
    sae = tiny_sae(model)
    cfg = AccumulateFRAConfig(**CFG)
    job = tmp_path / "job"
    job.mkdir()
    run_accumulate(cfg, Progress(job), model=model, q_saes=[sae])
    texts = list(open_texts("demo").texts(5))
    assert max(len(model.to_tokens(t)[0]) for t in texts) > WINDOW  # T > window: the window masks cells
    assert_totals_equal(shard_totals(job), direct_totals(model, sae, texts, cfg))
    comp = shards.read_run_info(job)["completeness"]
    assert set(comp) == {"1"} and set(comp["1"]) == {"0", "1", "2", "3"}
    assert all(0 <= v <= 1e-4 for v in comp["1"].values())

    (job / "job.json").write_text('{"kind": "accumulate"}')
    cfg.save_yaml(job / "config.yaml")
    store = Store(tmp_path / "fra.duckdb")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        rows = con.execute("SELECT layer, head, max_relative_error FROM run_completeness WHERE run = ? "
                           "ORDER BY head", [run]).fetchall()
    store.close()
    assert [(l, h) for l, h, _ in rows] == [(1, h) for h in range(4)]
    assert [e for _, _, e in rows] == pytest.approx([comp["1"][str(h)] for h in range(4)])


def test_incomplete_decomposition_stops_the_job(tmp_path, monkeypatch):
    from fra_core.fra import arch

    # pretend the engine did not notice that TL clamps q/k at 0.05 (an unmodelled detail): wrong numbers
    monkeypatch.setattr(arch, "check_clip", lambda *args: None)
    model = _model(tmp_path, clip_qkv=0.05)
    job = tmp_path / "bad"
    job.mkdir()
    with pytest.raises(AccumulateError, match=r"do not sum to blocks\.1\.attn\.hook_attn_scores.*> 0\.0001"):
        run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=[tiny_sae(model)])
    assert not shards.complete_shards(job)  # nothing stored as "exact"
