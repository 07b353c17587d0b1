"""``benchmarks/seed_spread.py`` on a tiny experiment: other training seeds beside seed 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_spread.py"


def test_seed_spread_tables_every_headline_cell_per_training_seed(tmp_path):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "tiny",
        "data": {"synth": {"users": 400, "items": 120, "seed": 1}},
        "pretrain": {"encoder": {"dim": 16, "ff_dim": 32, "max_len": 20},
                     "barlow": {"projector": [32, 32]},
                     "train": {"epochs": 1, "batch_size": 64}},
        "objectives": {"barlow": {}, "dual": {}},
        "evaluate": {"fractions": [0.1, 1.0], "seeds": 1, "tasks": ["future_categories"],
                     "baselines": ["majority"]},
    }))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1] / "src")}
    seqtwins = Path(sys.executable).with_name("seqtwins")
    base = [str(seqtwins), "run", str(exp), "--out", str(tmp_path / "base"), "--no-progress"]
    assert subprocess.run(base, env=env, capture_output=True, check=False).returncode == 0
    out = tmp_path / "results" / "spread"
    cmd = [sys.executable, str(SCRIPT), str(exp), "--base", str(tmp_path / "base" / "tiny"),
           "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["train_seeds"] == [0, 1]
    # headline cells at <= 10 % labels only: one task, one fraction, two objectives + floor
    assert {(r["task"], r["fraction"], r["method"]) for r in res["rows"]} == {
        ("future_categories", 0.1, m) for m in ("barlow", "dual", "majority")
    }
    barlow = next(r for r in res["rows"] if r["method"] == "barlow")
    assert len(barlow["values"]) == 2 and barlow["std"] >= 0
    config = yaml.safe_load((tmp_path / "work" / "seed1" / "tiny" / "runs" / "barlow"
                             / "config.yaml").read_text())  # fmt: skip
    assert config["train"]["seed"] == 1  # trained with the other seed, not reused
    assert [g["rival"] for g in res["gaps"]] == ["dual"]
    md = out.with_suffix(".md").read_text()
    assert "| seed 0 | seed 1 |" in md and "python benchmarks/seed_spread.py" in md
