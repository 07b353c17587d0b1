"""``benchmarks/bench_validation.py`` on a tiny dataset: it trains and records the cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import tiny_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_validation.py"


def test_bench_validation_runs_at_tiny_size(tmp_path):
    data = tiny_dataset(tmp_path / "ds", users=400)
    out = tmp_path / "results" / "validation"
    cmd = [sys.executable, str(SCRIPT), "--data", str(data), "--objectives", "barlow", "dual",
           "--epochs", "2", "--threads", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["objective"] for r in res["runs"]] == ["barlow", "dual"]
    for r in res["runs"]:
        assert r["epochs"] == 2 and all(p is not None for p in r["proxy"])
        assert 0 < r["valid_share"] <= r["valid_share_max"] < 1
        assert r["users_per_s_end_to_end"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| `dual` | 2 |" in md and "--epochs 2" in md
