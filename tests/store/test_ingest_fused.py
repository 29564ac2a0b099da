"""The last shard of an ingest pass is compacted inside its own ingest transaction, its co-activation rows handed
over instead of staged (store.ingest `_compact_with`): the stored run equals staging every shard and compacting
after, a failing compaction leaves nothing of the shard, and the proj checks still name what they refuse."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fra_core import contracts
from store import Store, StoreError, ingest_job_shards
from store import ingest as ingest_mod
from store.compact import compact_run
from store.ingest import _examples_per_pair, _register_job, ingest_shard
from tests.store.coact_jobs import make_coact_job

TABLES = ("pair_coact", "pair_coact_staged", "pair_proj", "pair_coact_heads", "pair_summary", "pair_top_lists",
          "samples_done", "feature_counts")


def _tables(con, run: int) -> dict[str, list]:
    out = {t: con.execute(f"SELECT * EXCLUDE (run) FROM {t} WHERE run = ? ORDER BY ALL", [run]).fetchall()
           for t in TABLES}
    out["pair_coact order"] = con.execute("SELECT * EXCLUDE (run) FROM pair_coact WHERE run = ?", [run]).fetchall()
    # list rows beyond each list's cut (rows tied with the cut may be cut either way: store.topk)
    out["pair_top"] = con.execute("""
        SELECT t.* EXCLUDE (run) FROM pair_top t JOIN pair_top_lists l USING (run, metric, diagonal, dir)
        WHERE t.run = ? AND (l.n_rows < l.k OR (t.dir = 'desc' AND t.value > l.cut) OR (t.dir = 'asc' AND t.value < l.cut))
        ORDER BY ALL""", [run]).fetchall()
    return out


@pytest.mark.parametrize("first_pass", [0, 2])
def test_fused_last_shard_equals_staging_then_compacting(tmp_path, first_pass):
    """Three shards, first `first_pass` of them ingested and compacted in an earlier pass (so the fused pass
    merges compacted, staged and held rows), against staging all three and compacting once."""
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-fused", n_shards=3, seed=21)
    fused, staged = Store(tmp_path / "fused.duckdb"), Store(tmp_path / "staged.duckdb")
    manifests = contracts.complete_shards(job)
    with fused.write() as con:
        if first_pass:
            run = _register_job(con, job)
            for m in manifests[:first_pass]:
                ingest_shard(con, run, job, m)
            compact_run(con, run, _examples_per_pair(con, run))
        run = ingest_job_shards(con, job)["run"]
        assert con.execute("SELECT count(*) FROM pair_coact_staged").fetchone()[0] == 0
        got = _tables(con, run)
    with staged.write() as con:
        run = _register_job(con, job)
        if first_pass:
            for m in manifests[:first_pass]:
                ingest_shard(con, run, job, m)
            compact_run(con, run, _examples_per_pair(con, run))
        for m in manifests[first_pass:]:
            ingest_shard(con, run, job, m)
        assert con.execute("SELECT count(*) FROM pair_coact_staged").fetchone()[0] > 0
        compact_run(con, run, _examples_per_pair(con, run))
        want = _tables(con, run)
    fused.close(), staged.close()
    assert len(got["pair_coact"]) > 0 and len(got["pair_top"]) > 0
    for table in want:
        assert got[table] == want[table], table


def test_failing_fused_compaction_leaves_nothing_of_the_shard(tmp_path, monkeypatch):
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-fail", n_shards=2, seed=22)
    store = Store(tmp_path / "db.duckdb")

    def boom(*args, **kwargs):
        raise RuntimeError("compaction broke")

    monkeypatch.setattr(ingest_mod, "compact_in_transaction", boom)
    with store.write() as con, pytest.raises(RuntimeError, match="compaction broke"):
        ingest_job_shards(con, job)
    with store.read() as cur:  # shard 0 committed (staged), shard 1 rolled back with its compaction
        assert cur.execute("SELECT list(shard) FROM ingested_shards").fetchone()[0] == [0]
        assert cur.execute("SELECT count(DISTINCT mx_sample // 3) FROM pair_coact_staged").fetchone()[0] == 1
    monkeypatch.undo()
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        assert con.execute("SELECT count(*) FROM ingested_shards WHERE run = ?", [run]).fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM pair_coact_staged").fetchone()[0] == 0
        assert con.execute("SELECT n_samples FROM runs WHERE id = ?", [run]).fetchone()[0] == 6
    store.close()


def test_a_shard_missing_a_query_vector_is_refused_naming_a_row(tmp_path, store):
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-missing-q", n_shards=1, seed=23)
    df = contracts.read_shard_table(job, 0, "proj").to_pandas()
    coact = contracts.read_shard_table(job, 0, "coact").to_pandas()
    drop = (df["side"] == "q") & (df["head"] == 0) & (df["layer"] == 2)  # layer 2 has heads 0 and 3 (LAYERS)
    drop &= drop.cumsum() == 1  # one head's query vector of one feature
    layer, src, feat = (int(df.loc[drop, c].iloc[0]) for c in ("layer", "src", "feature"))
    uses = coact[(coact["layer"] == layer) & (coact["q_src"] == src) & (coact["q_feat"] == feat)]
    assert len(uses) > 0
    contracts.write_kind_atomic(pa.Table.from_pandas(df[~drop], schema=contracts.PROJ_SCHEMA, preserve_index=False),
                                job, 0, "proj")
    with store.write() as con, pytest.raises(StoreError) as err:
        ingest_job_shards(con, job)
    msg = str(err.value)
    assert f"= ({layer}, {src}, {feat}, " in msg and "has 1 'q' and 2 'k' proj vectors stored" in msg, msg
    assert "its layer has 2 heads" in msg
    with store.read() as cur:
        for table in ("pair_coact", "pair_coact_staged", "pair_proj", "ingested_shards"):
            assert cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_a_shard_repeating_a_proj_key_stores_it_once(tmp_path, store):
    """Jobs write each (layer, head, side, src, feature) once per shard; a shard that repeats one (same vector)
    still ingests, the row stored once (ON CONFLICT, as before the anti-join)."""
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-dup-proj", n_shards=1, seed=24)
    proj = contracts.read_shard_table(job, 0, "proj")
    contracts.write_kind_atomic(pa.concat_tables([proj, proj.slice(0, 3)]), job, 0, "proj")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        n = con.execute("SELECT count(*), count(DISTINCT (layer, head, side, src, feature)) FROM pair_proj"
                        " WHERE run = ?", [run]).fetchone()
    assert n[0] == n[1] == proj.num_rows
