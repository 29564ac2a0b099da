"""bench_server.py's AppTest-sessions mode on a tiny load (2 users, 2 requests each, a 3 s SQL limit): it runs
end to end in its own process (it patches AppTest for concurrent sessions), every request is served, the
runaway query is stopped at its limit, the live job's shards are ingested, and it ends with the line other
tools parse. No latency is asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

LAST_LINE = re.compile(r"served=(\d+) errors=(\d+) p95_s=(\S+) runaway_stopped_s=(\S+) live_shards=(\d+)/(\d+)")


def test_bench_server_apptest_mode_tiny_run():
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_server.py"), "--users", "2", "--requests", "2",
           "--sql-timeout", "3", "--budget-s", "90"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    match = LAST_LINE.fullmatch(out.stdout.strip().splitlines()[-1])
    assert match, out.stdout[-2000:]
    served, errors, p95, stopped, ingested, written = match.groups()
    assert int(served) >= 4 and int(errors) == 0 and float(p95) > 0
    assert 3.0 <= float(stopped) < 60  # not before its limit
    assert re.search(r"runaway: query (stopped|killed) at its time limit of 3 s", out.stdout), out.stdout[-2000:]
    assert int(written) >= 2 and int(ingested) >= 1
    assert "server time per request (script run) median=" in out.stdout
