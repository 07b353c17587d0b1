"""The evidence-study scripts (benchmarks/evidence.py, evidence_doc.py) on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def evidence(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    import evidence

    return evidence


def _result(scores: dict[tuple[str, str, float], float]) -> dict[str, Any]:
    tasks = {t: {"primary_metric": "accuracy"} for t, _, _ in scores}
    cells = [
        {"task": t, "method": m, "fraction": f, "mean": {"accuracy": v}, "std": {"accuracy": 0.01}}
        for (t, m, f), v in scores.items()
    ]
    return {"tasks": tasks, "cells": cells, "fractions": sorted({f for _, _, f in scores})}


def test_targets_are_computed_from_the_numbers(evidence: Any) -> None:
    fc, nc = "favorite_category", "next_category"
    good = _result(
        {
            (fc, "barlow", 0.1): 0.55,
            (fc, "dual", 0.1): 0.50,  # +10%
            (nc, "barlow", 0.1): 0.33,
            (nc, "dual", 0.1): 0.30,  # +10%
            (fc, "barlow", 1.0): 0.40,
            (fc, "dual", 1.0): 0.60,  # ignored: > 10%
            (fc, "tfidf-svd", 0.1): 0.20,
        }
    )
    bad = _result(
        {
            (fc, "barlow", 0.1): 0.50,
            (fc, "dual", 0.1): 0.50,
            (nc, "barlow", 0.1): 0.30,
            (nc, "dual", 0.1): 0.29,
            (nc, "tfidf-svd", 0.1): 0.31,
        }
    )
    t = evidence.check_targets({"a": good, "b": good, "c": good, "d": bad}, {})
    assert t["gain"]["datasets_holding"] == 3 and t["gain"]["holds"]
    means = {r["dataset"]: r["gain"] for r in t["gain"]["rows"] if r["task"] == "mean"}
    assert means["a"] == pytest.approx(0.10) and means["d"] == pytest.approx((0 + 1 / 29) / 2)
    assert not t["floors"]["holds"]
    assert [(r["dataset"], r["task"], r["floor"]) for r in t["floors"]["rows"]] == [
        ("d", nc, "tfidf-svd")
    ]
    t = evidence.check_targets({"a": good, "d": bad}, {})
    assert not t["gain"]["holds"]  # 1 of 2 datasets


def test_quick_study_end_to_end(evidence: Any, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    experiment = {
        "name": "toy",
        "data": {"synth": {"users": 300, "items": 80, "seed": 0}},
        "pretrain": {
            "encoder": {"dim": 16, "layers": 1, "heads": 1, "max_len": 20},
            "augment": {"max_len": 20},
            "train": {"batch_size": 64, "valid_users": 100},
        },
        # as in a tuned preset: the objective's own layer sets lambda_, which the ablation
        # must still be able to vary
        "objectives": {"barlow": {"barlow": {"lambda_": 0.01}}, "dual": {}, "barlow+next": {}},
    }
    (configs / "toy.yaml").write_text(yaml.safe_dump(experiment))
    results, docs = tmp_path / "results", tmp_path / "docs" / "evidence.md"
    plan = evidence.Plan(
        datasets=("toy",),
        ablation_datasets=("toy",),
        fractions=(0.1, 1.0),
        seeds=1,
        epochs=1,
        ablation_epochs=1,
        batch_sizes=(32,),
        ops=("mask", "crop"),
        lambda_scales=(4.0,),
        widths=(),
    )
    evidence.run_study(plan, tmp_path / "out", results, configs, [], ["evidence.py", "--test"])
    argv = ["--results", str(results), "--docs", str(docs), "--docs-only"]
    assert evidence.main(argv) == 0

    main = json.loads((results / "main-toy.json").read_text())
    assert {"barlow", "dual", "barlow+next", "tfidf-svd", "barlow+finetune"} <= set(main["methods"])
    assert main["fractions"] == [0.1, 1.0]
    abl = json.loads((results / "ablation-toy.json").read_text())
    batch = set(abl["groups"]["batch"]["pretrain"])
    assert batch == {"barlow-b32", "barlow-b64", "dual-b32", "dual-b64"}  # + the file's 64
    assert abl["best_pair"] == ["mask", "crop"]  # two single ops: the pair is both, in order
    assert abl["groups"]["batch"]["configs"]["dual-b32"]["batch_size"] == 32
    lam = abl["reference_config"]["lambda_"]
    assert lam == 0.01 and abl["groups"]["barlow"]["configs"]["barlow-b64"]["lambda_"] == lam
    assert abl["groups"]["barlow"]["configs"]["barlow-lambda4x"]["lambda_"] == pytest.approx(
        4 * lam
    )
    meta = json.loads((results / "meta.json").read_text())
    assert meta["command"] == "python evidence.py --test" and "torch" in meta["versions"]

    text = docs.read_text()
    assert "## Fairness rules" in text and "## Targets" in text and "### toy" in text
    for png in ("main-toy.png", "batch.png"):
        assert (docs.parent / "evidence" / png).is_file()
    docs.unlink()  # --docs-only rebuilds the same document from the JSON alone
    assert evidence.main(argv) == 0
    assert docs.read_text() == text
