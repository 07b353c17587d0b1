"""``benchmarks/bench_large.py`` at a tiny size: it generates, prepares, records, cleans up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_large.py"


def test_bench_large_runs_at_tiny_size(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--rows", "50000", "--days", "7", "--budget", "400MB",
           "--workdir", str(work), "--results", str(results)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((results / "large.json").read_text())
    assert res["data"]["rows"] == 50_000 and res["data"]["partitions"] == 7
    assert res["run"]["peak_rss_bytes"] > 0 and res["target_met"]
    assert "interactions" in res["run"]["output"][0]
    assert "--memory-budget 400MB" in (results / "large.md").read_text()
    assert not list(work.iterdir())  # the generated log and dataset are deleted
