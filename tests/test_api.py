"""The public Python API: pretrain -> Run.open(...).embed -> evaluate, as in a notebook."""

from __future__ import annotations

import json

import numpy as np

from seqtwins.api import Run, evaluate, pretrain
from seqtwins.config import PretrainConfig, build
from tests.helpers import tiny_dataset
from tests.test_train import TINY


def test_pretrain_embed_evaluate(tmp_path):
    data = tiny_dataset(tmp_path / "ds")
    cfg = build(PretrainConfig, overrides=[*TINY, "train.epochs=2"])
    summary = pretrain(data, tmp_path / "run", cfg, progress=False)
    run = Run.open(tmp_path / "run")
    valid = [json.loads(x) for x in run.metrics_file.read_text().splitlines()]
    valid = [r for r in valid if r.get("event") == "valid"]
    # selected like the CLI: on the favourite-category probe of valid users
    assert all(r["proxy"] is not None and r["score"] == r["proxy"] for r in valid)
    assert summary.best_score == max(r["score"] for r in valid)
    emb = run.embed([["it1", "it2", "it3"], ["it4"]])
    assert emb.shape == (2, 16) and np.isfinite(emb).all()
    res = evaluate([run.path], data, tmp_path / "eval.json", tasks=["favorite_category"],
                   fractions=[1.0], seeds=1, baselines=["majority"], progress=False)  # fmt: skip
    assert set(res["methods"]) == {"barlow", "majority"}
