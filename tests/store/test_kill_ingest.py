"""kill -9 at many moments of ingest and compaction: no committed run lost, none left empty, the database
reopens cleanly and the next ingest completes every run exactly (same rows as an uninterrupted ingest)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from store import Store, ingest_all_jobs, ingest_job_shards
from tests.conftest import REPO_ROOT
from tests.store.fake_jobs import make_job

STATS = "SELECT run, layer, head, q_feat, k_feat, n, sum, abs_sum, max, min FROM pair_stats ORDER BY ALL"
RUNS = "SELECT name, status, n_samples, n_pairs FROM runs ORDER BY name"


def _child(db, jobs, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.store.kill_child", str(db), str(jobs), str(kill_at)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _snapshot(store: Store):
    with store.read() as cur:
        return cur.execute(RUNS).fetchall(), cur.execute(STATS).fetchall()


def kill_setup(root, make_committed, make_rest, snapshot):
    """A template database holding the job `make_committed(jobs)` made (ingested before the kills), the
    jobs `make_rest(jobs)` makes, and the reference `snapshot` of an uninterrupted ingest of them all:
    (jobs, template, reference, the child's step count)."""
    jobs = root / "jobs"
    template = root / "template.duckdb"
    store = Store(template)
    with store.write() as con:
        ingest_job_shards(con, make_committed(jobs))
    store.close()
    make_rest(jobs)
    ref_db = root / "ref.duckdb"
    shutil.copy(template, ref_db)
    done = _child(ref_db, jobs, 0)
    assert done.returncode == 0, done.stderr
    store = Store(ref_db)
    reference = snapshot(store)
    store.close()
    return jobs, template, reference, int(done.stdout.strip())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Jobs (a finished one, a died one, one already ingested before the kills) and a template database
    holding that earlier run; plus the reference result of an uninterrupted ingest."""
    root = tmp_path_factory.mktemp("kill")

    def committed(jobs):
        make_job(jobs, "job-0-committed", n_shards=2, seed=3)
        return jobs / "job-0-committed"

    def rest(jobs):
        make_job(jobs, "job-a", n_shards=3, seed=1)
        make_job(jobs, "job-b", n_shards=2, seed=2, state="running")  # no live pid: reads as died

    return (root, *kill_setup(root, committed, rest, _snapshot))


def _moments(total: int) -> list[int]:
    even = list(np.linspace(1, total, 10, dtype=int))
    rng = np.random.default_rng(17)
    return sorted(set(even) | set(int(x) for x in rng.integers(1, total + 1, 4)))


def test_kill_at_many_moments_loses_nothing(setup):
    root, jobs, template, reference, total = setup
    ref_runs, ref_stats = reference
    assert total > 50 and all(n_pairs > 0 for _, _, _, n_pairs in ref_runs)
    moments = _moments(total)
    assert len(moments) >= 10
    for kill_at in moments:
        db = root / f"killed-{kill_at}.duckdb"
        shutil.copy(template, db)
        killed = _child(db, jobs, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        store = Store(db)  # the restart: opens and replays its WAL without error
        with store.read() as cur:
            committed = cur.execute("SELECT name, n_pairs FROM runs WHERE name = 'job-0-committed'").fetchone()
            assert committed is not None and committed[1] > 0, kill_at
            # every ingested shard's rows are somewhere: compacted, or staged for the next compaction
            orphans = cur.execute("""SELECT r.name FROM runs r WHERE EXISTS (SELECT 1 FROM ingested_shards s WHERE s.run = r.id)
                                     AND NOT EXISTS (SELECT 1 FROM pair_stats p WHERE p.run = r.id)
                                     AND NOT EXISTS (SELECT 1 FROM pair_stats_staged p WHERE p.run = r.id)""").fetchall()
            assert orphans == [], (kill_at, orphans)
        with store.write() as con:  # the next ingest (what the app does on its next page view)
            ingest_all_jobs(con, jobs)
        runs, stats = _snapshot(store)
        store.close()
        assert runs == ref_runs, kill_at
        assert len(stats) == len(ref_stats)
        for got, want in zip(stats, ref_stats):
            assert got[:6] == want[:6] and got[6:] == pytest.approx(want[6:], abs=1e-9), kill_at
        db.unlink()
        db.with_name(db.name + ".wal").unlink(missing_ok=True)
