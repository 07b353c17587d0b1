"""The evidence-study scripts (benchmarks/evidence.py, evidence_doc.py) on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_tune import tiny_experiment

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
FC, FI = "future_categories", "future_items"


@pytest.fixture()
def evidence(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    import evidence

    return evidence


def _result(
    scores: dict[tuple[str, str, float], float], sig: bool = True, small: tuple[str, ...] = ()
) -> dict[str, Any]:
    tasks = {
        t: {"primary_metric": "map", "headline": t in (FC, FI), "too_small": t in small}
        for t, _, _ in scores
    }
    cells = [
        {"task": t, "method": m, "fraction": f, "mean": {"map": v}, "std": {"map": 0.01}}
        for (t, m, f), v in scores.items()
    ]
    significance = [
        {"task": t, "fraction": f, "against": "dual", "other": "dual", "significant": sig,
         "diff": 0.05 if sig else 0.0, "gain_low": 0.01 if sig else -0.1, "gain_high": 0.2}
        for (t, m, f) in scores if m == "barlow"
    ]  # fmt: skip
    return {"tasks": tasks, "cells": cells, "fractions": sorted({f for _, _, f in scores}),
            "significance": significance}  # fmt: skip


def test_targets_are_computed_from_the_numbers(evidence: Any) -> None:
    good = _result(
        {
            (FC, "barlow", 0.1): 0.55,
            (FC, "dual", 0.1): 0.40,
            (FC, "dual:native", 0.1): 0.50,  # the better dual counts: +10%
            (FI, "barlow", 0.1): 0.33,
            (FI, "dual", 0.1): 0.30,  # +10%
            (FC, "barlow", 1.0): 0.40,
            (FC, "dual", 1.0): 0.60,  # ignored: > 10%
            (FC, "tfidf-svd-window", 0.1): 0.20,
            (FI, "tfidf-svd-window", 0.1): 0.40,  # beats barlow on 1 of 2 cells
        }
    )
    bad = _result(
        {
            (FC, "barlow", 0.1): 0.50,
            (FC, "dual", 0.1): 0.50,
            (FI, "barlow", 0.1): 0.30,
            (FI, "dual", 0.1): 0.29,
            (FI, "history", 0.1): 0.31,
        }
    )
    unsure = _result({(FC, "barlow", 0.1): 0.55, (FC, "dual", 0.1): 0.50}, sig=False)
    tiny = _result({(FC, "barlow", 0.1): 0.9, (FC, "dual", 0.1): 0.1}, small=(FC,))
    main = {"a": good, "b": good, "c": good, "d": bad, "e": unsure, "f": tiny}
    t = evidence.check_targets(main, {})
    g = t["gain"]
    assert g["datasets_holding"] == 3 and g["holds"] and g["datasets_compared"] == 5
    means = {r["dataset"]: r["gain"] for r in g["rows"] if r["task"] == "mean"}
    assert means["a"] == pytest.approx(0.10) and means["d"] == pytest.approx((0 + 1 / 29) / 2)
    assert means["f"] is None  # too small to compare: in the rows, out of the target
    rows = [r for r in g["rows"] if r["dataset"] == "a" and r["task"] == FC]
    assert rows[0]["dual_method"] == "dual:native"
    floors = [(r["dataset"], r["task"], r["floor"]) for r in t["floors"]]
    assert floors == [(n, FI, "tfidf-svd-window") for n in "abc"] + [("d", FI, "history")]
    assert t["tfidf"]["share"] == pytest.approx(0.5) and not t["tfidf"]["holds"]
    t = evidence.check_targets({"a": good, "d": bad}, {})
    assert not t["gain"]["holds"]  # 2 of 3 datasets needed


def test_quick_study_end_to_end(evidence: Any, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    experiment = {
        "name": "toy",
        "data": {"synth": {"users": 300, "items": 80, "seed": 0}},
        "pretrain": {
            "encoder": {"dim": 16, "layers": 1, "heads": 1, "max_len": 20},
            "train": {"batch_size": 64, "valid_users": 100},
        },
        "objectives": {"barlow": {"barlow": {"lambda_": 0.01}}, "dual": {}},
    }
    (configs / "toy.yaml").write_text(yaml.safe_dump(experiment))
    results, docs = tmp_path / "results", tmp_path / "docs" / "evidence.md"
    plan = evidence.Plan(datasets=("toy",), batch_datasets=("toy",), fractions=(0.1, 1.0),
                         seeds=2, epochs=1, batch_epochs=2, batch_fractions=(0.1,),
                         bootstrap=50)  # fmt: skip
    evidence.run_study(plan, tmp_path / "out", results, configs, [], ["evidence.py", "--test"])
    argv = ["--results", str(results), "--docs", str(docs), "--docs-only"]
    assert evidence.main(argv) == 0

    main = json.loads((results / "main-toy.json").read_text())
    assert set(evidence.OBJECTIVES) | {"dual:native", "tfidf-svd", "tfidf-svd-window"} <= set(
        main["methods"]
    )
    assert main["fractions"] == [0.1, 1.0]
    assert evidence.headline(main) and main["last"]["checkpoint"] == "last"
    assert {r["against"] for r in main["significance"]} == {"dual", "floor"}
    assert main["pretrain"]["barlow"]["valid_share"] > 0
    assert main["pretrain"]["barlow"]["precision"] in ("bf16", "fp32")
    batch = json.loads((results / "batch-toy.json").read_text())
    assert set(batch["pretrain"]) == {
        f"{o}-{v}" for o in ("barlow", "dual") for v in ("ref", "small", "small-steps")
    }
    assert batch["variants"]["small-steps"] == {"batch_size": 32, "epochs": 1}
    meta = json.loads((results / "meta.json").read_text())
    assert meta["command"] == "python evidence.py --test" and "torch" in meta["versions"]
    assert meta["invocations"][-1]["machine"]["nproc"] == meta["machine"]["nproc"]

    text = docs.read_text()
    assert "precision" in text and "machine not recorded" not in text
    assert "## Fairness rules" in text and "## Targets" in text and "### toy" in text
    assert (docs.parent / "evidence" / "main-toy.png").is_file()
    docs.unlink()  # --docs-only rebuilds the same document from the JSON alone
    assert evidence.main(argv) == 0
    assert docs.read_text() == text


def test_an_interval_over_a_zero_mean_is_shown_as_missing(evidence: Any) -> None:
    import evidence_doc

    assert evidence_doc._ci([0.01, 0.2]) == "[+1.0%, +20.0%]"
    assert evidence_doc._ci([None, None]) == "–" and evidence_doc._ci(None) == "–"


def test_tuning_budget_names_the_epochs_per_trial(evidence: Any) -> None:
    import evidence_doc

    tune = {
        "beauty-barlow": {"objective": "barlow", "trials_wanted": 24, "epochs": None},
        "ml-1m-barlow": {"objective": "barlow", "trials_wanted": 8, "epochs": 5},
    }
    text = evidence_doc.fairness({}, tune)
    assert "24 trials x the experiment's epochs" in text
    assert "8 trials x 5 epochs" in text and "None" not in text


def test_untuned_objectives_are_named_per_dataset(evidence: Any) -> None:
    import evidence_doc

    # barlow+mask tuned on ml-1m only: on beauty it still ran with the defaults
    tune = {
        f"{d}-{o}": {"objective": o, "trials_wanted": 24, "epochs": None}
        for d, o in (("beauty", "barlow"), ("ml-1m", "barlow"), ("ml-1m", "barlow+mask"))
    }
    main = {d: {"pretrain": {"barlow": {}, "barlow+mask": {}}} for d in ("beauty", "ml-1m")}
    text = " ".join(evidence_doc.fairness(main, tune).split())
    assert "`barlow+mask` (beauty) ran untuned" in text
    assert "`barlow` (" not in text
    assert "no objective ran untuned" in " ".join(evidence_doc.fairness({}, tune).split())


def test_a_search_resumes_from_the_study_kept_beside_its_history(
    evidence: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evidence, "OBJECTIVES", ("barlow",))
    configs, results = tmp_path / "configs", tmp_path / "results"
    configs.mkdir()
    tiny_experiment(configs, objectives={"barlow": {}}, prune=False)  # configs/tiny.yaml
    evidence.run_tune(["tiny"], 1, None, tmp_path / "here", results, configs)
    kept = results / "tune" / "tiny-barlow.study.db"
    assert kept.is_file()

    # another machine: an empty --out, seeded from the kept study; one trial more is run
    evidence.run_tune(["tiny"], 2, None, tmp_path / "there", results, configs)
    trials = json.loads((results / "tune" / "tiny-barlow.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert (configs / "tuned" / "tiny.yaml").is_file()
