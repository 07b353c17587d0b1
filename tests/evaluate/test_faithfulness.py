"""``seqtwins evaluate --faithfulness``: the deletion test in eval.json and in the report."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.faithfulness import FAITHFULNESS, SCHEMA
from seqtwins.evaluate.protocol import evaluate_embeddings, load_results, save_results
from seqtwins.evaluate.report import write_report
from seqtwins.evaluate.tasks import headline_tasks
from seqtwins.explain.faithfulness import plan_deletion_test
from seqtwins.run import Run
from tests.helpers import tiny_run

pytest.importorskip("captum")
runner = CliRunner()
FAST = ["--tasks", "favorite_category", "--fractions", "1.0", "--seeds", "1", "--no-progress",
        "--baselines", "majority"]  # fmt: skip
HEADING = "### Faithfulness (deletion test)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_run(tmp_path_factory.mktemp("faith"), epochs=1)


def _eligible(ds: SequenceDataset, task_name: str, max_len: int) -> int:
    """Labelled test users with more than 5 window items, counted from the raw arrays."""
    from seqtwins.evaluate.tasks import build_task

    seq = ds.sequences
    test = build_task(ds, task_name).labelled(ds.split_users("test"))
    window = np.minimum(seq.history_end[test] - seq.offsets[test], max_len)
    return int(np.count_nonzero(window > 5))


def test_evaluate_faithfulness_writes_the_section_and_report_renders_it(
    trained, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "umap", None)  # the map by PCA: no UMAP compile here
    data, run = trained
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run), "--data", str(data), "--out", str(out), *FAST]
    result = runner.invoke(app, [*args, "--faithfulness", "--faithfulness-users", "10"])
    assert result.exit_code == 0, result.output
    sec = load_results(out)[FAITHFULNESS]  # checked on read
    ds = SequenceDataset.open(data)
    max_len = Run.open(run).config.encoder.max_len
    assert sec["schema"] == SCHEMA and sec["users_requested"] == 10 and sec["ks"] == [1, 2, 3, 4, 5]
    assert sec["eligible_by_task"] == {t: _eligible(ds, t, max_len) for t in headline_tasks(ds)}
    assert sec["task"] == headline_tasks(ds)[0]  # the first headline task with >= 10 users
    res = sec["runs"]["barlow"]
    assert res["users"] == 10 and res["eligible_test_users"] == _eligible(ds, sec["task"], max_len)
    assert set(res["methods"]) == {"ig", "occlusion"}
    for s in [res["random"], *res["methods"].values()]:
        assert len(s["drop"]) == 5 and np.isfinite(s["auc"])

    md = write_report([out], tmp_path / "rep").read_text()
    assert HEADING in md and "](deletion_curves.png)" in md
    assert (tmp_path / "rep" / "deletion_curves.png").stat().st_size > 5000
    assert "**`barlow`**: 10 test users" in md and "fewer than the" not in md
    for row in ("| random |", "| top-k integrated gradients |", "| top-k occlusion |"):
        assert row in md

    # without the option the key is absent, and so is the section
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert FAITHFULNESS not in json.loads(out.read_text())
    assert HEADING not in write_report([out], tmp_path / "rep2").read_text()


def test_fewer_eligible_users_than_asked_is_said(trained):
    data, run = trained
    ds = SequenceDataset.open(data)
    encoder = Run.open(run).encoder("best", ds)
    plan = plan_deletion_test(ds, [encoder], users=100_000)
    counts = plan.eligible_by_task
    assert plan.task.name == max(counts, key=lambda t: counts[t])  # none has enough: the most
    assert plan_deletion_test(ds, [encoder], users=1).task.name == headline_tasks(ds)[0]
    with pytest.raises(SeqtwinsError, match="--faithfulness-users 0 must be >= 1"):
        plan_deletion_test(ds, [encoder], users=0)


def test_bad_users_option_is_one_line(trained, tmp_path):
    data, run = trained
    args = ["evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "e.json"), *FAST]
    result = runner.invoke(app, [*args, "--faithfulness", "--faithfulness-users", "0"])
    assert result.exit_code == 2
    assert "--faithfulness-users 0 must be >= 1" in result.output
    assert not (tmp_path / "e.json").exists()


# --- planted sections ----------------------------------------------------------------------


def _curve(drop: list[float], random: list[float] | None = None) -> dict[str, Any]:
    """A curve as :func:`seqtwins.explain.faithfulness.compare` writes it."""
    from seqtwins.explain.faithfulness import curve_summary

    s = curve_summary(np.array([drop]))
    if random is not None:
        r = curve_summary(np.array([random]))
        s["auc_ratio"] = s["auc"] / r["auc"] if r["auc"] > 0 else None
        s["drop_ratio_at_k"] = drop[-1] / random[-1] if random[-1] > 0 else None
    return s


RANDOM = [0.02, 0.04, 0.06, 0.08, 0.10]


def planted_section() -> dict[str, Any]:
    """Integrated gradients below random, occlusion 3x random; a second run 1.5x; a third
    without users; 40 of 500 users asked for."""
    base = {"users": 40, "eligible_test_users": 40, "labelled_test_users": 52,
            "probe_solver": "ridge", "confidence": 0.5, "random": _curve(RANDOM),
            "seconds": {"setup": 1.0, "attribution": 2.0, "deletion": 0.5}}  # fmt: skip
    weak = [0.5 * v for v in RANDOM]
    strong = [3.0 * v for v in RANDOM]
    mid = [1.5 * v for v in RANDOM]
    return {
        "schema": SCHEMA, "task": "future_categories", "users_requested": 500,
        "eligible_by_task": {"future_categories": 40, "future_items": 12},
        "ks": [1, 2, 3, 4, 5], "methods": ["ig", "occlusion"], "random_draws": 3, "seed": 0,
        "seconds": 3.5,
        "runs": {
            "barlow": base | {"methods": {"ig": _curve(weak, RANDOM),
                                          "occlusion": _curve(strong, RANDOM)}},
            "dual": base | {"methods": {"ig": _curve(mid, RANDOM),
                                        "occlusion": _curve(mid, RANDOM)}},
            "mask": {"users": 0, "reason": "no labelled test user of task 'x' has more than 5"},
        },
    }  # fmt: skip


@pytest.fixture
def old_eval(ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path) -> Path:
    """An eval.json as evaluate wrote it before the deletion test (no such key)."""
    res = evaluate_embeddings(ds, {"barlow": kind_embeddings["good"]}, tasks=["kind"],
                              fractions=(1.0,), seeds=1)  # fmt: skip
    (tmp_path / "old").mkdir()
    return save_results(res, tmp_path / "old" / "eval.json")


def test_report_wording_comes_from_the_planted_section(old_eval, tmp_path):
    md = write_report([old_eval], tmp_path / "old_report").read_text()
    assert "Faithfulness" not in md and "| barlow |" in md  # an old eval.json still reports

    doc = json.loads(old_eval.read_text())
    doc[FAITHFULNESS] = planted_section()
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(doc))
    md = write_report([path], tmp_path / "rep").read_text()
    section = md[md.index(HEADING) :]
    assert "no headline task has 500 eligible test users, so the one with the most" in section
    assert "`future_categories` 40, `future_items` 12" in section
    assert (
        "**`barlow`**: 40 test users" in section and "**fewer than the 500 asked for**" in section
    )
    barlow, dual = section.split("**`dual`**")
    assert (
        "- integrated gradients: **no better than random** (drop@5 ratio 0.50, AUC ratio 0.50)"
        in barlow
    )
    assert "- occlusion: beat random by 2x or more at k=5 (drop@5 ratio 3.00" in barlow
    assert "| random | 0.0200 | 0.0400 | 0.0600 | 0.0800 | 0.1000 | 0.2500 | n/a | n/a |" in barlow
    assert dual.count("better than random, but by less than 2x at k=5 (drop@5 ratio 1.50") == 2
    assert "**`mask`**: not measured: no labelled test user of task 'x' has more than 5" in dual
    assert (tmp_path / "rep" / "deletion_curves.png").is_file()


def test_random_drop_not_positive_has_no_ratio(old_eval, tmp_path):
    doc = json.loads(old_eval.read_text())
    sec = planted_section()
    flat = [0.0, -0.01, 0.0, 0.01, -0.02]
    sec["runs"] = {"barlow": sec["runs"]["barlow"] | {
        "random": _curve(flat),
        "methods": {"ig": _curve(RANDOM, flat), "occlusion": _curve(flat, flat)}}}  # fmt: skip
    doc[FAITHFULNESS] = sec
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(doc))
    md = write_report([path], tmp_path / "rep").read_text()
    assert "- integrated gradients: lowered the confidence where random removal did not" in md
    assert "- occlusion: **no better than random** (drop@5 ratio n/a, AUC ratio n/a)" in md


@pytest.mark.parametrize(
    "edit, where",
    [
        (
            lambda s: s["runs"]["barlow"]["methods"]["ig"].update(drop=[0.1]),
            "barlow.methods.ig.drop",
        ),
        (
            lambda s: s["runs"]["dual"]["methods"]["ig"].pop("auc_ratio"),
            "dual.methods.ig.auc_ratio",
        ),
        (lambda s: s["runs"]["barlow"].pop("random"), "runs.barlow.random"),
        (lambda s: s["runs"]["mask"].pop("reason"), "runs.mask has no users and no 'reason'"),
        (lambda s: s.update(schema="other/1"), "faithfulness is not a deletion-test section"),
        (lambda s: s.update(ks=[]), "faithfulness.ks must list positive integers"),
    ],
)
def test_a_damaged_section_is_refused_on_read_in_one_line(old_eval, tmp_path, edit, where):
    doc = json.loads(old_eval.read_text())
    sec = copy.deepcopy(planted_section())
    edit(sec)
    doc[FAITHFULNESS] = sec
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SeqtwinsError, match="rerun `seqtwins evaluate --faithfulness`") as e:
        load_results(path)
    assert where in str(e.value) and str(path) in str(e.value)
    result = runner.invoke(app, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 2 and where in result.output
    assert not (tmp_path / "rep").exists()
