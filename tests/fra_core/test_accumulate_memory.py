"""All-pair shards project their memory after every batch and fail, naming shard_size, before they run
out of it (an out-of-memory kill would leave a "died" job minutes later)."""

import pytest

from fra_core import contracts
from fra_core.accumulate import AccumulateFRAConfig, memory
from fra_core.accumulate.config import AccumulateError
from fra_core.accumulate.run import run_accumulate
from fra_core.jobs import Progress

CFG = dict(model="tiny", q_saes=("sae-l1",), layers=(1,), n_samples=8, batch_size=2, shard_size=8,
           k_active=6, context_length=16)


def test_projection_is_linear_in_samples_and_counts_every_head_row():
    # 1 000 rows after 2 of 8 samples, 100 B of tables: (100 + 1000 · 136) · 4
    assert memory.projected_shard_bytes(100, 1000, 2, 8) == (100 + 1000 * memory.OUTPUT_BYTES_PER_PAIR_HEAD) * 4
    # a head-independent layer's coact rows count once per pair, not per (pair, head)
    assert memory.projected_shard_bytes(100, 0, 2, 8, coact_rows=1000) == (100 + 1000 * memory.COACT_BYTES_PER_PAIR) * 4


def test_a_tensor_two_columns_share_counts_once():
    import torch

    s, n = torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.int64)
    assert memory.tables_bytes([{"s": s, "abs": s, "n": n}]) == 160  # a raw table: abs is s
    assert memory.tables_bytes([{"s": s, "abs": s.clone(), "n": n}]) == 240


def test_a_head_independent_shard_projects_its_rows_once(parts, monkeypatch):
    """The job's projection of a 4-head, head-independent layer counts each table row once."""
    from fra_core.accumulate.allpairs import AllPairsRunner
    from fra_core.accumulate.run import prepare
    from fra_core.datasets import open_texts

    model, sae = parts
    seen = []
    monkeypatch.setattr(memory, "check_shard_memory", lambda *a, **kw: seen.append((a, kw)))
    runner = prepare(AccumulateFRAConfig(**CFG), model, [sae])
    assert isinstance(runner, AllPairsRunner) and len(runner.plans[0].heads) == 4
    buf = runner.new_buffer()
    runner.process(list(enumerate(open_texts("demo").texts(2))), buf)
    (args, kw), = seen
    assert args[1] == 0 and kw["coact_rows"] == sum(len(t["key"]) for t in buf.co[1]) > 0


def test_check_names_the_fields_and_a_shard_size_that_fits():
    per_sample = 1000 * memory.OUTPUT_BYTES_PER_PAIR_HEAD  # one sample's rows
    with pytest.raises(AccumulateError, match=r"shard_size = 64\).*set shard_size to 3 or fewer.*statistics: top_m"):
        memory.check_shard_memory(0, 1000, 1, 64, 64, free_bytes=int(3.5 * per_sample / memory.HEADROOM))
    memory.check_shard_memory(0, 1000, 1, 64, 64, free_bytes=None)  # unknown memory: no check
    memory.check_shard_memory(0, 1000, 1, 3, 64, free_bytes=int(3.5 * per_sample / memory.HEADROOM))


def test_free_memory_is_known_here():
    assert (memory.free_memory_bytes() or 0) > 0


def test_a_shard_that_cannot_fit_fails_after_its_first_batch_and_writes_nothing(parts, tmp_path, monkeypatch):
    model, sae = parts
    saes = [sae]
    batches = []
    from fra_core.accumulate.allpairs import AllPairsRunner

    real = AllPairsRunner._check_memory
    monkeypatch.setattr(AllPairsRunner, "_check_memory", lambda self, buf: (batches.append(1), real(self, buf)))
    monkeypatch.setattr(memory, "free_memory_bytes", lambda: 10_000)  # 10 kB free
    job = tmp_path / "job"
    job.mkdir()
    with pytest.raises(AccumulateError, match="shard_size = 8"):
        run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=saes)
    assert len(batches) == 1 and not contracts.complete_shards(job)


def test_a_shard_that_fits_runs(parts, tmp_path):
    model, sae = parts
    saes = [sae]
    job = tmp_path / "job"
    job.mkdir()
    run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=saes)
    assert len(contracts.complete_shards(job)) == 1
