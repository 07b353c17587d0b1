"""``benchmarks/incremental.py --quick``: windows, updates, ratios with their intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "incremental.py"


def test_incremental_study_runs_quick_with_intervals(tmp_path):
    res = tmp_path / "res.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--strategies", "naive", "--test-share",
           "0.3", "--checkpoint", "last", "--work", str(tmp_path / "work"), "--results",
           str(res), "--plots", str(tmp_path / "plots")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(res.read_text())
    r = out["datasets"]["synthetic"]
    w1 = r["counts"]["w1"]
    assert out["checkpoint"] == "last"
    assert out["test_share"] == 0.3 and w1["splits"]["test"] == round(0.3 * w1["users"])
    assert 0 < r["test_users"]["future_categories"] <= w1["splits"]["test"]
    row = r["strategies"]["naive"]
    for key in ("retained_w1", "compat_w1_after_w2", "plasticity_w3"):
        for task, ratio in row[key].items():
            low, high = row["intervals"][key][task]
            assert low <= ratio <= high
    md = res.with_suffix(".md").read_text()
    assert "test users 30% of each window's; checkpoints last" in md
    assert "Labelled W1 test users" in md
    assert "| synthetic | naive | future_categories | " in md and "%-" in md
    assert (tmp_path / "plots" / "synthetic.png").is_file()
    bad = subprocess.run([*cmd[:2], "--test-share", "0.95"], capture_output=True, text=True,
                         timeout=120, check=False, env=env)  # fmt: skip
    assert bad.returncode != 0 and "--test-share 0.95 must lie in (0, 0.9)" in bad.stderr


def test_churn_log_retires_whole_categories_and_leaves_the_plain_log_alone(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import incremental
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import polars as pl

    read = lambda f: pl.read_parquet(f / "log.parquet")  # noqa: E731
    plain = read(incremental.drift_log(tmp_path / "plain"))
    assert plain.equals(read(incremental.drift_log(tmp_path / "zero", retired=0)))
    churn = read(incremental.drift_log(tmp_path / "churn", retired=incremental.RETIRED))
    cat = (pl.col("item_id") - 1) % incremental.CATEGORIES
    retired = churn.filter(cat < incremental.RETIRED)
    assert retired.height > 0 and retired["timestamp"].max() < 100  # sold before, never after
    # the same users and times; only what they pick changes
    assert churn.select("user_id", "timestamp").equals(plain.select("user_id", "timestamp"))
    late = churn.filter(pl.col("timestamp") >= 100).with_columns(cat.alias("cat"))
    assert set(late["cat"].unique()) == set(range(incremental.RETIRED, incremental.CATEGORIES))
