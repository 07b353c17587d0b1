from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.experiment import ExperimentConfig, load_experiment
from seqtwins.objectives import OBJECTIVES
from seqtwins.train import RunSummary, budget, training_users
from seqtwins.tune import DEFAULT_SPACES, TuneSpec, parse_param, prune_warmup, tune_experiment

runner = CliRunner()

BARLOW_SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "barlow.projector": {"type": "categorical", "choices": [[16, 16], [32, 32]]},
}


def tiny_experiment(
    tmp_path: Path,
    epochs: int = 1,
    objectives: dict[str, Any] | None = None,
    **tune: Any,
) -> Path:
    exp = tmp_path / "tiny.yaml"
    spec = {
        "name": "tiny",
        "data": {"synth": {"users": 800, "items": 80, "seed": 1}},
        "pretrain": {
            "encoder": {"dim": 16, "layers": 1, "ff_dim": 32, "max_len": 20},
            "augment": {"max_len": 20},
            "barlow": {"projector": [32, 32]},
            "train": {"epochs": 3, "batch_size": 64, "patience": 0},
        },
        "objectives": objectives or {"barlow": {}, "dual": {}},
        "tune": {"epochs": epochs, "startup_trials": 2, **tune},
    }
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    return exp


def history(out: Path, objective: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "tiny/tune" / objective / "history.json").read_text())
    return data


def test_docs_name_every_setting_of_the_default_spaces():
    text = (Path(__file__).parents[1] / "docs" / "tuning.md").read_text()
    for objective, space in DEFAULT_SPACES.items():
        assert f"`{objective}`" in text
        for path in space:
            assert f"`{path}`" in text, path


def test_default_spaces_are_valid_for_every_objective():
    spec = TuneSpec()
    assert set(DEFAULT_SPACES) == set(OBJECTIVES)
    for objective in DEFAULT_SPACES:
        paths = [p.path for p in spec.params(objective)]
        assert {"train.lr", "train.weight_decay", "encoder.dropout", "encoder.dim"} <= set(paths)
        if objective != "dual":  # the augmentation policy and the projector are searched
            assert {"augment.ops", "augment.mask_rate", "augment.same_category",
                    "augment.session_crop", "barlow.projector"} <= set(paths)  # fmt: skip
    assert "dual.temperature" in [p.path for p in spec.params("dual")]
    assert "barlow.lambda_" not in [p.path for p in spec.params("dual")]


@pytest.mark.parametrize(
    ("path", "spec", "message"),
    [
        (
            "barlow.lamda",
            {"low": 0.001, "high": 0.1},
            "'barlow.lamda' is not a pretraining setting",
        ),
        ("barlow", {"low": 0.001, "high": 0.1}, "is a section, not a setting"),
        ("train.lr", {"low": 0.1, "high": 0.01}, "low=0.1 must be < high=0.01"),
        ("train.lr", {"low": 0.0, "high": 0.1, "log": True}, "log=true needs low > 0"),
        ("train.lr", {"type": "uniform", "low": 0.0, "high": 0.1}, "type='uniform' must be"),
        ("train.lr", {"low": 0.01, "high": 0.1, "step": 2}, "step: unknown"),
        ("encoder.layers", {"type": "float", "low": 1, "high": 3}, "not a valid value"),
        ("barlow.projector", {"choices": ["wide"]}, "not a valid value"),
        (
            "train.epochs",
            {"low": 1, "high": 5},
            "cannot be searched: every trial trains tune.epochs",
        ),
    ],
)
def test_bad_space_entries_name_the_key(path, spec, message):
    with pytest.raises(SeqtwinsError, match=message) as info:
        parse_param(path, spec, "tune.space.barlow")
    assert str(info.value).startswith(f"tune.space.barlow.{path}")


def test_categorical_lists_map_to_labels_and_back():
    param = parse_param("barlow.projector", {"choices": [[16, 16], [32, 32]]}, "k")
    assert param.type == "categorical" and param.labels == ("[16, 16]", "[32, 32]")
    assert param.value("[32, 32]") == [32, 32]
    assert parse_param("encoder.layers", {"low": 1, "high": 3}, "k").type == "int"


def test_tune_both_objectives_same_budget_history_preset_and_resume(tmp_path):
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    out = tmp_path / "out"
    lines: list[str] = []
    results = tune_experiment(cfg, out, trials=2, say=lines.append, source="tiny.yaml")
    assert set(results) == {"barlow", "dual"}
    assert results["barlow"].n_trials == results["dual"].n_trials == 2

    # the custom space is honoured for barlow, the default one used for dual
    barlow, dual = history(out, "barlow"), history(out, "dual")
    assert [t["number"] for t in barlow["trials"]] == [0, 1]
    for t in barlow["trials"]:
        assert set(t["params"]) == set(BARLOW_SPACE)
        assert t["params"]["barlow.projector"] in ([16, 16], [32, 32])
        assert 1e-4 <= t["params"]["train.lr"] <= 3e-3
        assert t["state"] == "COMPLETE" and t["epochs_done"] == 1 and len(t["scores"]) == 1
        assert t["value"] > 0 and t["seconds"] > 0  # a ratio to the popularity floor
        run_dir = Path(t["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["best_score"], summary["precision"]) == (t["value"], t["precision"])
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 1
        assert not (run_dir / "checkpoints").exists()  # deleted (tune.keep_runs is false)
    assert set(dual["trials"][0]["params"]) == set(DEFAULT_SPACES["dual"])
    assert barlow["trials_wanted"] == dual["trials_wanted"] == 2
    assert barlow["epochs"] == dual["epochs"] == 1
    best = max(barlow["trials"], key=lambda t: t["value"])
    assert results["barlow"].best_value == best["value"] == barlow["best"]["value"]
    assert results["barlow"].best_params == best["params"]

    # the preset: a valid experiment with the best values merged into each objective's layer
    preset = out / "tiny/tune/tuned.yaml"
    text = preset.read_text()
    assert text.startswith("# Written by `seqtwins tune` from tiny.yaml")
    assert f"barlow: best {best['value']:.4f}" in text
    tuned = load_experiment(preset)
    barlow_cfg = tuned.pretrain_config("barlow")
    assert barlow_cfg.train.lr == pytest.approx(best["params"]["train.lr"])
    assert list(barlow_cfg.barlow.projector) == best["params"]["barlow.projector"]
    assert barlow_cfg.train.epochs == 3  # tuned at tune.epochs, the preset keeps the real epochs
    dual_best = results["dual"].best_params
    assert tuned.pretrain_config("dual").dual.temperature == pytest.approx(
        dual_best["dual.temperature"]
    )
    assert tuned.objectives["dual"]["train"]["lr"] == pytest.approx(dual_best["train.lr"])

    # resume: the same N runs nothing, N+1 exactly one more (barlow only this time)
    again = tune_experiment(cfg, out, trials=2, say=lambda *a: None)
    assert len(history(out, "barlow")["trials"]) == len(history(out, "dual")["trials"]) == 2
    assert again["barlow"].best_value == results["barlow"].best_value
    more = tune_experiment(cfg, out, trials=3, objectives=["barlow"], say=lambda *a: None)
    assert [t["number"] for t in history(out, "barlow")["trials"]] == [0, 1, 2]
    assert more["barlow"].n_trials == 3 and len(history(out, "dual")["trials"]) == 2
    # dual was not tuned in that call: the preset keeps its tuned layer and header line
    tuned = load_experiment(preset)
    assert tuned.pretrain_config("dual").dual.temperature == pytest.approx(
        dual_best["dual.temperature"]
    )
    assert "#   dual: best" in preset.read_text()


def test_changed_space_refuses_to_resume(tmp_path, monkeypatch):
    calls = fake_pretrain(monkeypatch, [0.5])
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    tune_experiment(cfg, tmp_path / "out", trials=1, objectives=["barlow"], say=lambda *a: None)
    assert len(calls) == 1
    other = {"barlow": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    cfg = load_experiment(tiny_experiment(tmp_path, space=other))
    with pytest.raises(SeqtwinsError, match="study.db was made with another config"):
        tune_experiment(cfg, tmp_path / "out", trials=2, objectives=["barlow"], say=print)


def test_a_study_made_before_a_setting_existed_resumes_at_its_default(tmp_path, monkeypatch):
    import optuna

    fake_pretrain(monkeypatch, [0.5, 0.6, 0.7])
    exp, out = tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}), tmp_path / "out"
    tune_experiment(load_experiment(exp), out, trials=1, objectives=["barlow"],
                    say=lambda *a: None)  # fmt: skip
    # the study as a seqtwins without train.min_steps stored it
    study = optuna.load_study(study_name="barlow",
                              storage=f"sqlite:///{out / 'tiny/tune/barlow/study.db'}")  # fmt: skip
    setup = study.user_attrs["setup"]
    del setup["config"]["train"]["min_steps"]
    study.set_user_attr("setup", setup)
    tune_experiment(load_experiment(exp), out, trials=2, objectives=["barlow"],
                    say=lambda *a: None)  # fmt: skip
    assert [t["number"] for t in history(out, "barlow")["trials"]] == [0, 1]
    # away from its default, the setting changes what a trial does: no resuming
    spec = yaml.safe_load(exp.read_text())
    spec["pretrain"]["train"]["min_steps"] = 100
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SeqtwinsError, match="study.db was made with another config"):
        tune_experiment(load_experiment(exp), out, trials=3, objectives=["barlow"],
                        say=lambda *a: None)  # fmt: skip


def test_a_min_steps_that_raises_no_epochs_resumes_the_study(tmp_path, monkeypatch):
    # so an experiment file may gain train.min_steps without orphaning its searches
    fake_pretrain(monkeypatch, [0.5, 0.6, 0.7])
    exp, out = tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}), tmp_path / "out"
    tune_experiment(load_experiment(exp), out, trials=1, objectives=["barlow"],
                    say=lambda *a: None)  # fmt: skip
    spec = yaml.safe_load(exp.read_text())
    users = training_users(SequenceDataset.open(out / "tiny/data", verify=False), "barlow")
    per_epoch = len(users) // spec["pretrain"]["train"]["batch_size"]
    for min_steps, resumes in ((per_epoch, True), (per_epoch + 1, False)):  # 1 epoch a trial
        spec["pretrain"]["train"]["min_steps"] = min_steps
        exp.write_text(yaml.safe_dump(spec, sort_keys=False))
        cfg = load_experiment(exp)
        if resumes:
            tune_experiment(cfg, out, trials=2, objectives=["barlow"], say=lambda *a: None)
            assert [t["number"] for t in history(out, "barlow")["trials"]] == [0, 1]
        else:  # the message names what changed
            changed = r"another config.*config\.train\.epochs 1 -> 2"
            with pytest.raises(SeqtwinsError, match=changed):
                tune_experiment(cfg, out, trials=3, objectives=["barlow"], say=lambda *a: None)


def test_setup_changes_name_each_path_that_differs():
    from seqtwins.tune import _setup_changes

    stored = {"config": {"train": {"epochs": 20, "gone": 1}}, "space": [{"high": 1}], "x": [1]}
    default = {"config": {"train": {"min_steps": 0}}}
    assert _setup_changes(stored, stored, default) == []
    current = {"config": {"train": {"epochs": 63, "min_steps": 0}}, "space": [{"high": 2}],
               "x": [1, 2]}  # fmt: skip
    assert _setup_changes(stored, current, default) == [
        "config.train.gone only in the study",
        "config.train.epochs 20 -> 63",
        "space[0].high 1 -> 2",
        "x [1] -> [1, 2]",
    ]  # min_steps, added since the study, matches at its default only
    current["config"]["train"]["min_steps"] = 500
    added = _setup_changes(stored, current, default)
    assert "config.train.min_steps 500, not in the study" in added


def fake_pretrain(
    monkeypatch: pytest.MonkeyPatch,
    scores: list[float] | dict[str, list[float]],
    clock: list[float] | None = None,
) -> list[Any]:
    """Replace training by a stub: trial i (of its objective, with a dict) reports
    ``scores[i]`` at each of its ``train.epochs`` epochs. With ``clock``, each trial moves
    tune's clock on by 100 s."""
    calls: list[Any] = []

    def pretrain(data_dir, run_dir, cfg, progress=True, overwrite=False, on_epoch=None,
                 proxy=None):  # fmt: skip
        if isinstance(scores, dict):
            mine = scores[cfg.objective]
            score = mine[sum(c.objective == cfg.objective for c in calls)]
        else:
            score = scores[len(calls)]
        calls.append(cfg)
        if clock is not None:
            clock[0] += 100.0
        epoch = 0
        users = training_users(SequenceDataset.open(data_dir, verify=False), cfg.objective)
        for epoch in range(budget(cfg.train, len(users))[0]):  # as train.min_steps raises them
            if on_epoch is not None:
                on_epoch({"event": "valid", "epoch": epoch, "loss": 1.0, "proxy": score,
                          "score": score})  # fmt: skip
        return RunSummary(Path(run_dir), epoch + 1, 3, 0, score, False, 0.1)

    monkeypatch.setattr("seqtwins.train.pretrain", pretrain)
    if clock is not None:
        monkeypatch.setattr("seqtwins.tune._clock", lambda: clock[0])
    return calls


@pytest.mark.parametrize("terminal", [True, False])
def test_each_trial_shows_its_training_bar_on_a_terminal_only(tmp_path, monkeypatch, terminal):
    import seqtwins.train

    fake_pretrain(monkeypatch, [0.5, 0.6])
    fake, shown = seqtwins.train.pretrain, []

    def pretrain(*args: Any, progress: bool = True, **kwargs: Any) -> Any:
        shown.append(progress)
        return fake(*args, progress=progress, **kwargs)

    monkeypatch.setattr("seqtwins.train.pretrain", pretrain)
    monkeypatch.setattr("seqtwins.train.is_terminal", lambda stream: terminal)
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    tune_experiment(cfg, tmp_path / "out", trials=1, objectives=["barlow"], say=lambda *a: None)
    tune_experiment(cfg, tmp_path / "out", trials=2, objectives=["barlow"], progress=False,
                    say=lambda *a: None)  # fmt: skip
    assert shown == [terminal, False]  # in a log, only the line per trial


def test_resuming_on_a_machine_of_another_precision_says_so(tmp_path, monkeypatch):
    fake_pretrain(monkeypatch, [0.5, 0.6, 0.7])
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    out, lines = tmp_path / "out", []
    monkeypatch.setattr("seqtwins.tune._precision", lambda pcfg: "bf16")
    tune_experiment(cfg, out, trials=1, objectives=["barlow"], say=lines.append)
    tune_experiment(cfg, out, trials=2, objectives=["barlow"], say=lines.append)
    assert not any("trained under" in line for line in lines)
    monkeypatch.setattr("seqtwins.tune._precision", lambda pcfg: "fp32")
    tune_experiment(cfg, out, trials=3, objectives=["barlow"], say=lines.append)
    said = "\n".join(lines)
    assert "2 earlier trial(s) trained under bf16, this machine trains under fp32" in said
    precisions = [t["precision"] for t in history(out, "barlow")["trials"]]
    assert precisions == ["bf16", "bf16", "fp32"]


def test_median_pruner_waits_for_40_percent_of_the_epochs(tmp_path, monkeypatch):
    calls = fake_pretrain(monkeypatch, [0.6, 0.2, 0.7, 0.65])
    exp = tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}, epochs=5)
    cfg = load_experiment(exp)
    result = tune_experiment(cfg, tmp_path / "out", trials=3, objectives=["barlow"],
                             say=lambda *a: None)  # fmt: skip
    hist = history(tmp_path / "out", "barlow")
    trials = hist["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    # warm-up ceil(0.4 * 5) = 2: epochs 0 and 1 are never pruned, epoch 2 may be
    assert trials[1]["epochs_done"] == 3
    assert hist["counts"] == {"complete": 3, "pruned": 1, "failed": 0}
    r = result["barlow"]
    assert (r.complete, r.pruned, r.failed, r.stopped) == (3, 1, 0, None)
    assert r.best_value == 0.7 and r.n_trials == 4 and len(calls) == 4


def test_pruner_warm_up_follows_epochs_raised_by_min_steps(tmp_path, monkeypatch):
    fake_pretrain(monkeypatch, [0.6, 0.2, 0.7, 0.65])
    exp = tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}, epochs=5)
    spec = yaml.safe_load(exp.read_text())
    spec["pretrain"]["train"]["min_steps"] = 1000  # 10 steps per epoch: 5 -> 100 epochs
    exp.write_text(yaml.safe_dump(spec, sort_keys=False))
    tune_experiment(load_experiment(exp), tmp_path / "out", trials=3, objectives=["barlow"],
                    say=lambda *a: None)  # fmt: skip
    trials = history(tmp_path / "out", "barlow")["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    epochs = trials[0]["epochs_done"]
    assert epochs == 100  # the trials trained the raised epochs
    assert trials[1]["epochs_done"] == prune_warmup(TuneSpec(), epochs) + 1  # not 3 (of 5)


def test_prune_warmup_and_defaults():
    spec = TuneSpec()
    assert spec.trials >= 24 and spec.prune_warmup == 0.4
    assert [prune_warmup(spec, e) for e in (1, 2, 3, 5, 10, 20)] == [1, 1, 2, 2, 4, 8]
    with pytest.raises(ValueError, match="tune.prune_warmup=1.5"):
        TuneSpec(prune_warmup=1.5)


def test_pruned_trials_are_made_up_so_complete_counts_are_equal(tmp_path, monkeypatch):
    fake_pretrain(monkeypatch, {"barlow": [0.6, 0.1, 0.7], "dual": [0.5, 0.6]})
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}, epochs=5))
    out = tmp_path / "out"
    results = tune_experiment(cfg, out, trials=2, say=lambda *a: None)
    assert {o: (r.complete, r.pruned) for o, r in results.items()} == {
        "barlow": (2, 1), "dual": (2, 0)}  # fmt: skip
    summary = json.loads((out / "tiny/tune/summary.json").read_text())
    assert summary["equal_complete"] and summary["note"] is None
    assert summary["objectives"]["barlow"]["pruned"] == 1
    text = (out / "tiny/tune/tuned.yaml").read_text()
    assert "barlow: best 0.7000 (trial 2); trials: 2 complete, 1 pruned, 0 failed" in text
    assert "NOT EQUAL" not in text


def test_an_objective_behind_from_an_earlier_call_catches_up(tmp_path, monkeypatch):
    calls = fake_pretrain(monkeypatch, {"barlow": [0.6, 0.5, 0.7], "dual": [0.5, 0.6, 0.4]})
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    out = tmp_path / "out"
    tune_experiment(cfg, out, trials=3, objectives=["barlow"], say=lambda *a: None)
    lines: list[str] = []
    results = tune_experiment(cfg, out, trials=2, say=lines.append)
    assert results["barlow"].complete == results["dual"].complete == 3
    assert len(calls) == 6 and any("running more to equal it" in x for x in lines)


def test_a_timeout_that_leaves_counts_unequal_is_reported(tmp_path, monkeypatch):
    clock = [0.0]
    fake_pretrain(monkeypatch, {"barlow": [0.5, 0.1], "dual": [0.5, 0.6]}, clock)
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}, epochs=5))
    out = tmp_path / "out"
    results = tune_experiment(cfg, out, trials=2, timeout=150, say=lambda *a: None)
    assert (results["barlow"].complete, results["barlow"].stopped) == (1, "timeout")
    assert (results["dual"].complete, results["dual"].stopped) == (2, None)
    summary = json.loads((out / "tiny/tune/summary.json").read_text())
    assert not summary["equal_complete"]
    assert summary["note"] == "complete trial counts differ: barlow 1 (stopped: timeout), dual 2"
    assert history(out, "barlow")["stopped"] == "timeout"
    text = (out / "tiny/tune/tuned.yaml").read_text()
    assert "# NOT EQUAL: complete trial counts differ: barlow 1 (stopped: timeout)" in text
    assert "barlow: best 0.5000 (trial 0); trials: 1 complete (stopped: timeout), 1 pruned" in text


@pytest.mark.slow
def test_tune_barlow_mask_default_space_on_synth_data(tmp_path):
    """The new objective and the full default space (augmentation policy, width,
    projector) on real tiny training: 2 trials of 2 epochs."""
    exp = tiny_experiment(tmp_path, epochs=2, objectives={"barlow+mask": {}})
    cfg = load_experiment(exp)
    results = tune_experiment(cfg, tmp_path / "out", trials=2, say=lambda *a: None)
    r = results["barlow+mask"]
    assert r.complete == 2 and r.stopped is None
    hist = history(tmp_path / "out", "barlow+mask")
    assert hist["counts"]["complete"] == 2
    params = hist["trials"][0]["params"]
    assert {"augment.ops", "augment.same_category", "augment.session_crop", "encoder.dim",
            "barlow.projector", "mask.alpha", "mask.rate"} <= set(params)  # fmt: skip
    assert params["encoder.dim"] in (64, 128)
    tuned = load_experiment(tmp_path / "out/tiny/tune/tuned.yaml")
    assert tuned.pretrain_config("barlow+mask").mask.alpha == pytest.approx(
        r.best_params["mask.alpha"]
    )


def test_invalid_sampled_config_fails_the_trial_not_the_search(tmp_path):
    # dim 16 with 3 heads is invalid only in combination (both in the space): trials fail
    space = {"encoder.heads": {"choices": [3]}, "encoder.dim": {"choices": [16]}}
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": space}))
    with pytest.raises(SeqtwinsError, match="no trial finished.*must be divisible"):
        tune_experiment(cfg, tmp_path / "out", trials=2, objectives=["barlow"], say=print)
    trials = history(tmp_path / "out", "barlow")["trials"]
    # pruned and failed trials do not count: it tried MAX_ATTEMPTS x 2 times, then gave up
    assert [t["state"] for t in trials] == ["FAIL"] * 6
    assert all("invalid setting" in t["error"] for t in trials)


def test_a_bug_in_training_crashes_the_search(tmp_path, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("seqtwins.train.pretrain", broken)
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    with pytest.raises(RuntimeError, match="boom"):
        tune_experiment(cfg, tmp_path / "out", trials=2, objectives=["barlow"], say=print)
    (trial,) = history(tmp_path / "out", "barlow")["trials"]
    assert trial["state"] == "FAIL" and trial["interrupted"]  # closed, not counted
    calls = fake_pretrain(monkeypatch, [0.4, 0.5])
    result = tune_experiment(cfg, tmp_path / "out", trials=2, objectives=["barlow"], say=print)
    assert result["barlow"].n_trials == 2 and len(calls) == 2


def test_cli_unknown_path_in_space_is_one_line_exit_2(tmp_path):
    space = {"barlow": {"barlow.lamda": {"low": 0.001, "high": 0.1}}}
    exp = tiny_experiment(tmp_path, space=space)
    result = runner.invoke(app, ["tune", str(exp), "--trials", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "tune.space.barlow.barlow.lamda" in result.output
    assert "Traceback" not in result.output


def test_cli_objective_not_in_experiment(tmp_path):
    exp = tiny_experiment(tmp_path)
    result = runner.invoke(
        app, ["tune", str(exp), "--objectives", "barlow+next", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--objectives barlow+next" in result.output
    bad = tiny_experiment(tmp_path, space={"barlow+next": {}})
    result = runner.invoke(app, ["tune", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "tune.space.barlow+next" in result.output


def test_cli_tune_prints_tables_and_preset(tmp_path, monkeypatch):
    fake_pretrain(monkeypatch, [0.3, 0.4])
    exp = tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE})
    preset = tmp_path / "presets" / "tiny-tuned.yaml"
    args = ["tune", str(exp), "--trials", "1", "--timeout", "600", "--objectives", "barlow,dual",
            "--out", str(tmp_path / "out"), "--write-preset", str(preset), "--no-progress",
            "--set", "tune.seed=3"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "barlow: best 0.3000" in result.output and "dual: best 0.4000" in result.output
    assert "train.lr" in result.output and "tiny-tuned.yaml" in result.output
    assert isinstance(load_experiment(preset), ExperimentConfig)
    assert "timeout 600 s" in preset.read_text()


def test_write_preset_never_replaces_a_file_seqtwins_did_not_write(tmp_path, monkeypatch):
    calls = fake_pretrain(monkeypatch, [0.5])
    cfg = load_experiment(tiny_experiment(tmp_path, space={"barlow": BARLOW_SPACE}))
    mine = tmp_path / "my.yaml"
    mine.write_text("# my own notes\n")
    with pytest.raises(SeqtwinsError, match=r"--write-preset .*my.yaml exists and was not"):
        tune_experiment(cfg, tmp_path / "out", trials=1, objectives=["barlow"],
                        write_preset=mine, say=lambda *a: None)  # fmt: skip
    assert mine.read_text() == "# my own notes\n" and not calls  # refused before any trial
    preset = tmp_path / "tuned.yaml"
    for _ in range(2):  # its own preset is replaced
        tune_experiment(cfg, tmp_path / "out", trials=1, objectives=["barlow"],
                        write_preset=preset, say=lambda *a: None)  # fmt: skip
    assert preset.read_text().startswith("# Written by `seqtwins tune`")
