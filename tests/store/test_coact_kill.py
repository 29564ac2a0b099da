"""kill -9 at many moments of a co-activation run's ingest and compaction: the database reopens, no
ingested shard's rows are lost or counted twice, and the next ingest gives exactly the uninterrupted result
(pair_rows, pair_example_rows and pair_proj as an ingest that was never killed)."""

from __future__ import annotations

import shutil
import signal

import numpy as np
import pytest

from store import Store, ingest_all_jobs
from tests.store.coact_jobs import make_coact_job
from tests.store.test_kill_ingest import _child, kill_setup

RUNS = "SELECT name, status, n_samples, n_pairs FROM runs ORDER BY name"
ROWS = "SELECT * EXCLUDE (run) FROM pair_rows ORDER BY ALL"
EXAMPLES = "SELECT * EXCLUDE (run) FROM pair_example_rows ORDER BY ALL"
PROJ = "SELECT layer, head, side, src, feature, vec FROM pair_proj ORDER BY ALL"


def _snapshot(store: Store):
    with store.read() as cur:
        return [cur.execute(sql).fetchall() for sql in (RUNS, ROWS, EXAMPLES, PROJ)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("coact-kill")

    def committed(jobs):
        make_coact_job(jobs, "coact-0-committed", n_shards=2, seed=11)
        return jobs / "coact-0-committed"

    return (root, *kill_setup(root, committed, lambda jobs: make_coact_job(jobs, "coact-a", n_shards=3, seed=12),
                              _snapshot))


def test_kill_during_coact_ingest_loses_nothing(setup):
    root, jobs, template, reference, total = setup
    ref_runs, ref_rows, ref_examples, ref_proj = reference
    assert total > 20 and len(ref_rows) > 0 and len(ref_examples) > 0
    moments = sorted(set(np.linspace(1, total, 8, dtype=int)) | {total - 1})
    for kill_at in moments:
        db = root / f"killed-{kill_at}.duckdb"
        shutil.copy(template, db)
        killed = _child(db, jobs, int(kill_at))
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        store = Store(db)
        with store.read() as cur:
            assert cur.execute("SELECT n_pairs FROM runs WHERE name = 'coact-0-committed'").fetchone()[0] > 0
            # every ingested shard's co-activation rows are compacted or staged, and its vectors stored
            orphans = cur.execute("""SELECT r.name FROM runs r WHERE EXISTS (SELECT 1 FROM ingested_shards s WHERE s.run = r.id)
                                     AND (NOT EXISTS (SELECT 1 FROM pair_proj p WHERE p.run = r.id)
                                          OR NOT EXISTS (SELECT 1 FROM pair_coact p WHERE p.run = r.id
                                                         UNION ALL SELECT 1 FROM pair_coact_staged p WHERE p.run = r.id))
                                  """).fetchall()
            assert orphans == [], (kill_at, orphans)
        with store.write() as con:
            ingest_all_jobs(con, jobs)
        runs, rows, examples, proj = _snapshot(store)
        store.close()
        assert runs == ref_runs and proj == ref_proj and examples == ref_examples, kill_at
        assert len(rows) == len(ref_rows)
        for got, want in zip(rows, ref_rows):
            assert got[:7] == want[:7] and got[7:] == pytest.approx(want[7:], rel=1e-12, abs=1e-12), kill_at
        db.unlink()
        db.with_name(db.name + ".wal").unlink(missing_ok=True)
