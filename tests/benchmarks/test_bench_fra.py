"""bench_fra.py on a tiny configuration: it runs end to end (engine, reference, memory subprocesses) and
ends with the one line other tools parse. No timing is asserted."""

from __future__ import annotations

import math
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

LAST_LINE = re.compile(r"s_per_sample_head=(\S+) reference_s=(\S+) speedup=(\S+) peak_mb_T512=(\S+)")


def test_bench_fra_tiny_run_ends_with_the_summary_line():
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_fra.py"), "--T", "12", "--k", "4", "--d-sae", "64",
           "--layer", "0", "--samples", "1", "--repeats", "1", "--ref-rows", "1", "--threads", "1",
           "--memory-lengths", "8,16"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, f"last line not in the agreed format: {lines[-1]!r}"
    engine_s, reference_s, speedup = (float(match.group(i)) for i in (1, 2, 3))
    assert engine_s > 0 and reference_s > 0
    assert math.isclose(speedup, reference_s / engine_s, rel_tol=0.05)
    assert math.isnan(float(match.group(4)))  # no T = 512 run was asked for
    completeness = float(re.search(r"completeness error (\S+)", out.stdout).group(1))
    assert completeness < 1e-4
    assert any(line.startswith("memory T=16:") for line in lines)
