"""``benchmarks/bench_long_history.py`` on a tiny dataset: it trains, embeds and records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import tiny_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_long_history.py"


def test_bench_long_history_runs_at_tiny_size(tmp_path):
    data = tiny_dataset(tmp_path / "ds")
    results = tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--data", str(data), "--max-lens", "4", "12",
           "--steps", "4", "--batch", "32", "--threads", "1", "--repeats", "1",
           "--results", str(results)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((results / "long_history.json").read_text())
    short, long = res["rows"]
    assert (short["max_len"], long["max_len"]) == (4, 12)
    assert short["window_tokens_per_user"] <= 4 < long["window_tokens_per_user"] <= 12
    assert short["steps"] >= 4 and short["step_users_per_s"] > 0
    assert long["embed_users_per_s_packed"] > 0 and long["embed_users_per_s_dense"] > 0
    md = (results / "long_history.md").read_text()
    assert "--max-lens 4 12" in md and "| 12 |" in md and "per real token" in md
