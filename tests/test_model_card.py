"""``model_card.md``: written when pretraining ends, updated by evaluate / report, rendered
only from what was recorded, never holding the key or a raw user id."""

from __future__ import annotations

import copy
import json
import shutil
import sys

import pytest

from seqtwins.config import PretrainConfig, build
from seqtwins.data.formats import ReaderOptions
from seqtwins.data.options import PrepareOptions
from seqtwins.data.prepare import prepare
from seqtwins.data.privacy import KEY_ENV, key_id
from seqtwins.evaluate.protocol import RESULTS_SCHEMA
from seqtwins.evaluate.report import write_report
from seqtwins.evaluate.runs import evaluate_runs
from seqtwins.model_card import (
    MODEL_CARD,
    render_model_card,
    result_limitations,
    update_model_cards,
    write_model_card,
)
from seqtwins.train import pretrain
from tests.data.test_privacy_pipeline import TINY_PRETRAIN, raw_id, write_log
from tests.helpers import tiny_dataset

KEY = "model-card-test-key-0b5e"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A pseudonymised, rare-item-filtered dataset with times and a 1-epoch barlow run."""
    tmp = tmp_path_factory.mktemp("card")
    log = write_log(tmp / "in", users=200)
    (tmp / "key").write_text(KEY)
    reader = ReaderOptions(items_file=tmp / "in" / "items.csv")
    opts = PrepareOptions(reader=reader, pseudonymize=True, key_file=tmp / "key", min_item_users=3)
    prepare(log, tmp / "data", opts)
    cfg = build(PretrainConfig, TINY_PRETRAIN, {"objective": "barlow"})
    pretrain(tmp / "data", tmp / "run", cfg, progress=False)
    return tmp


def test_card_after_pretrain(trained):
    card = (trained / "run" / MODEL_CARD).read_text()
    meta = json.loads((trained / "data" / "meta.json").read_text())
    assert meta["content_hash"] in card and "objective: `barlow`" in card
    assert "time range: 2020-09-13" in card  # the log's first timestamp, 1.6e9 s
    assert "min-item-users 3: items seen by fewer distinct users are dropped" in card
    assert "pseudonymised (HMAC-SHA256" in card and key_id(KEY.encode()) in card
    assert "Not evaluated yet" in card
    assert KEY not in card and "rawuser-" not in card


def test_card_gets_the_metrics_after_evaluate_not_report(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    out = trained / "eval.json"
    evaluate_runs(
        [trained / "run"],
        trained / "data",
        out,
        fractions=[0.5, 1.0],
        seeds=1,
        baselines=["majority"],
        progress=False,
        tasks=["future_categories", "future_items", "next_category"],
    )
    card = (trained / "run" / MODEL_CARD).read_text()
    res = json.loads(out.read_text())
    cell = next(
        c
        for c in res["cells"]
        if c["method"] == "barlow" and c["fraction"] == 1.0 and c["task"] == "future_items"
    )
    n_train = cell["runs"][0]["n_train"]
    assert "## Headline metrics" in card and "Not evaluated yet" not in card
    want = f"| future_items | recall@10 | 100% | {n_train:,} | {cell['mean']['recall@10']:.4f}"
    assert want in card
    assert "| future_categories | map | 50% |" in card
    assert "too small to compare" in card  # 20 test users here
    assert KEY not in card and "rawuser-" not in card
    assert f"the metrics of `{out}`" in card and f"From `{out}`" in card  # which eval.json
    (trained / "run" / MODEL_CARD).unlink()
    write_report([out], trained / "report")
    assert not (trained / "run" / MODEL_CARD).exists()  # report never writes run folders
    assert write_model_card(trained / "run", out).read_text() == card  # same records, same card


def test_card_of_a_dataset_not_made_by_prepare(tmp_path):
    tiny_dataset(tmp_path / "data", users=120)
    cfg = build(PretrainConfig, TINY_PRETRAIN, {"objective": "barlow"})
    pretrain(tmp_path / "data", tmp_path / "run", cfg, progress=False)
    card = render_model_card(tmp_path / "run")
    assert "not made by `prepare`" in card and "no interaction times" in card


def _results(run_acc: float, maj_acc: float, std: float = 0.0) -> dict:
    def cell(method: str, v: float, s: float) -> dict:
        return {
            "task": "next_category",
            "method": method,
            "fraction": 1.0,
            "status": "ok",
            "mean": {"accuracy": v},
            "std": {"accuracy": s},
            "runs": [],
        }

    return {
        "floors": ["majority"],
        "methods": ["majority", "barlow"],
        "tasks": {
            "next_category": {
                "primary_metric": "accuracy",
                "headline": False,
                "too_small": False,
                "labelled_users": {"test": 900},
            }
        },
        "cells": [cell("majority", maj_acc, 0.0), cell("barlow", run_acc, std)],
    }


def test_no_signal_limitation_is_derived_from_the_numbers():
    flat = result_limitations(_results(0.3100, 0.3100), "barlow")
    assert any("carries no signal on this dataset" in x for x in flat)
    within_noise = result_limitations(_results(0.3150, 0.3100, std=0.01), "barlow")
    assert any("carries no signal" in x for x in within_noise)
    better = result_limitations(_results(0.4000, 0.3100, std=0.01), "barlow")
    assert not any("carries no signal" in x for x in better)
    res = copy.deepcopy(_results(0.4, 0.31))
    res["tasks"]["next_category"]["too_small"] = True
    assert any("too small to compare" in x for x in result_limitations(res, "barlow"))


def test_card_never_shows_a_key_from_the_environment(trained, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    card = render_model_card(trained / "run")
    assert KEY not in card and not any(raw_id(u) in card for u in range(200))


def test_a_damaged_summary_is_named_not_fatal(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / "summary.json").write_text("{oops")
    card = render_model_card(run)
    assert "no readable summary.json" in card and "objective: `barlow`" in card


def test_card_keeps_the_privacy_facts_from_another_working_directory(
    trained, tmp_path, monkeypatch
):
    """A run trained on a relative dataset path, its card rendered from elsewhere."""
    shutil.copytree(trained / "data", tmp_path / "a" / "data")
    monkeypatch.chdir(tmp_path / "a")
    cfg = build(PretrainConfig, TINY_PRETRAIN, {"objective": "barlow"})
    pretrain("data", "run", cfg, progress=False)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    run = tmp_path / "a" / "run"
    card = render_model_card(run)
    assert "pseudonymised (HMAC-SHA256" in card and "time range: 2020-09-13" in card
    # a run recorded before paths were absolute: the dataset the caller opened is used
    info = json.loads((run / "dataset.json").read_text())
    (run / "dataset.json").write_text(json.dumps({**info, "path": "data"}))
    assert "no longer at that path" in render_model_card(run)
    card = write_model_card(run, data_dir=tmp_path / "a" / "data").read_text()
    assert "pseudonymised (HMAC-SHA256" in card and "no longer at that path" not in card


def test_a_malformed_eval_cell_is_one_warning_not_a_traceback(trained, tmp_path):
    res = {"schema": RESULTS_SCHEMA, "fractions": [1.0], "protocol": "linear",
           "runs": {"barlow": str(trained / "run")}, **_results(0.5, 0.4)}  # fmt: skip
    res["tasks"]["next_category"]["headline"] = True
    res["cells"][1]["runs"] = [{"status": "ok"}]  # damaged by hand: no n_train
    bad = tmp_path / "eval.json"
    bad.write_text(json.dumps(res))
    before = (trained / "run" / MODEL_CARD).read_text()
    with pytest.warns(UserWarning, match=r"could not update .*model_card.md from .*eval.json"):
        assert update_model_cards(bad) == []
    assert (trained / "run" / MODEL_CARD).read_text() == before
