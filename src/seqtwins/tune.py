"""``seqtwins tune``: Optuna hyper-parameter search, one study per objective.

For each objective of an experiment (or a chosen subset) an Optuna study (TPE sampler,
seeded; maximise) searches a space of ``PretrainConfig`` settings. A trial pretrains the
objective exactly as ``seqtwins run`` would (``ExperimentConfig.pretrain_config``) with the
sampled values on top, and scores it with the run's validation proxy,
``summary.best_score``: linear probes of the dataset's headline tasks on the embeddings of
**valid** users, each relative to its popularity floor, over 5 rotated folds
(:mod:`seqtwins.evaluate.proxy`).
Test users are never touched. The user's guide is docs/tuning.md.

**Fairness rule: every objective gets the same budget** -- the same number of complete
(finished) trials, the same wall-clock timeout per objective, the same training epochs per
trial (``tune.epochs``, raised alike by ``train.min_steps`` on a small dataset) and the same
pruner -- so that tuned objectives are compared on equal terms (issues 5 and 11). Pruned and
failed trials do not count towards the ``tune.trials`` complete ones: an objective whose
trials are pruned more often runs more of them, up to :data:`MAX_ATTEMPTS` x ``tune.trials``
attempts, and one that an earlier call left behind catches up, so the complete counts end
equal. When the timeout (or the attempts cap) stops an objective first, ``summary.json`` and
the preset header say so ("NOT EQUAL: ..."). The pruner (Optuna's MedianPruner) never stops
a trial in its first ``ceil(tune.prune_warmup * epochs)`` epochs (40 % by default) of the
epochs it trains.

Outputs, under ``<out>/<name>/tune/<objective>/``::

    study.db          the Optuna study (SQLite): a rerun resumes it when the base config (as
                      trials train it: a train.min_steps that raises no epochs changes
                      nothing), the space and the data are the same (a setting added to
                      seqtwins since counts as the same at its default); resumed on a
                      machine of another precision, it says so
    history.json      every trial: number, state, params, value, seconds, epochs done,
                      precision (bf16 autocast or fp32: this CPU's, with train.precision auto);
                      the complete / pruned / failed counts and why the search stopped
    trial-NNNN/       each trial's run dir (config.yaml, summary.json, metrics.jsonl;
                      checkpoints are deleted unless tune.keep_runs)

``<out>/<name>/tune/summary.json`` (the counts of every objective, and whether the
complete counts are equal), and a preset, ``<out>/<name>/tune/tuned.yaml`` by default:
the experiment with each tuned objective's layer in ``objectives:`` merged with its best
values, ready for ``seqtwins run``.

The search space (``tune.space`` in the experiment file) maps objective -> dotted
``PretrainConfig`` path -> ``{type: float|int|categorical, low, high, log, choices}``; an
objective without one gets :data:`DEFAULT_SPACES`. Categorical choices may be lists (e.g.
projector widths); Optuna sees them as JSON strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from seqtwins.config import PretrainConfig, deep_merge, load_yaml, nest, to_dict
from seqtwins.errors import SeqtwinsError
from seqtwins.files import atomic_file, atomic_write, check_replaceable
from seqtwins.run import Run, out_folder
from seqtwins.tune_space import (  # noqa: F401  (DEFAULT_SPACES, parse_*: re-exported)
    DEFAULT_SPACES,
    FIXED_PATHS,
    Param,
    TuneSpec,
    parse_param,
    parse_space,
)

if TYPE_CHECKING:
    import optuna

    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.experiment import ExperimentConfig


@dataclass
class TuneResult:
    """The outcome of one objective's study."""

    objective: str
    best_value: float
    """Best validation proxy (headline-task probes on valid users, relative to popularity)."""
    best_params: dict[str, Any]
    """Dotted path -> value of the best trial."""
    best_trial: int
    n_trials: int
    """Trials that used up budget (complete, pruned, or failed on a bad setting)."""
    history: Path
    study: Path
    complete: int = 0
    """Finished trials: trained to the end and scored (the count made equal across
    objectives)."""
    pruned: int = 0
    """Trials stopped early by the pruner."""
    failed: int = 0
    """Trials that failed on their own settings (invalid combination, divergence)."""
    stopped: str | None = None
    """Why the search stopped short of its complete-trial target: ``timeout``,
    ``attempts`` (:data:`MAX_ATTEMPTS` x target trials tried), or None (target reached)."""


MAX_ATTEMPTS = 3
"""An objective tries at most this many times its complete-trial target (pruned and
failed trials included) before giving up on reaching it."""

_clock = time.monotonic  # the timeout's clock (tests replace it)


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up budget: finished, or failed on its own settings (not one
    interrupted or crashed)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """``complete`` / ``pruned`` / ``failed`` (on its own settings) trials of a study;
    interrupted trials (a crash, Ctrl-C) are in none of them."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials),
    }


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def _history(study: optuna.Study, params: list[Param], budget: dict[str, Any]) -> dict[str, Any]:
    by_path = {p.path: p for p in params}
    trials = []
    for t in study.get_trials(deepcopy=False):
        seconds = None
        if t.datetime_start is not None and t.datetime_complete is not None:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": {
                    k: by_path[k].value(v) if k in by_path else v for k, v in t.params.items()
                },
                "value": t.value,
                "seconds": seconds,
                "epochs_done": t.user_attrs.get("epochs_done", 0),
                "scores": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "error": t.user_attrs.get("error"),
                "interrupted": t.state.name == "FAIL" and "error" not in t.user_attrs,
                "run_dir": t.user_attrs.get("run_dir"),
                "precision": t.user_attrs.get("precision"),  # None: not recorded then
            }
        )
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(done, key=lambda t: t["value"]) if done else None
    return {
        "objective": study.user_attrs.get("objective"),
        "direction": "maximize",
        "score": "headline-task probes on valid users / popularity floor, 5 rotated folds "
        "(summary.best_score)",
        **budget,
        "counts": trial_counts(study),
        "best": best,
        "trials": trials,
    }


def _check_endpoints(cfg: ExperimentConfig, objective: str, params: list[Param], key: str) -> None:
    """Fail up front when a searched value alone makes the objective's config invalid
    (unless another setting of the same section is searched too: then only some
    combinations may be invalid, and those trials fail)."""
    sections = [p.path.split(".")[0] for p in params]
    for p in params:
        if sections.count(p.path.split(".")[0]) > 1:
            continue
        values = p.choices if p.type == "categorical" else (p.low, p.high)
        for v in values:
            try:
                _trial_config(cfg, objective, {p.path: v}, None)
            except (SeqtwinsError, ValueError) as e:
                raise SeqtwinsError(
                    f"{key}.{p.path}: {v!r} gives an invalid config ({e})"
                ) from None


def _trial_config(
    cfg: ExperimentConfig, objective: str, values: Mapping[str, Any], epochs: int | None
) -> PretrainConfig:
    """The objective's config as ``seqtwins run`` builds it, plus the sampled values."""
    from seqtwins.config import build

    base = deep_merge(cfg.pretrain, cfg.objectives[objective] or {})
    layer: dict[str, Any] = {}
    for path, value in values.items():
        layer = deep_merge(layer, nest(path, value))
    if epochs is not None:
        layer = deep_merge(layer, {"train": {"epochs": epochs}})
    return build(PretrainConfig, base, layer, {"objective": objective})


def tune_experiment(
    cfg: ExperimentConfig,
    out: Path | str = "out",
    *,
    trials: int | None = None,
    timeout: float | None = None,
    objectives: Sequence[str] | None = None,
    write_preset: Path | str | None = None,
    progress: bool = True,
    say: Callable[..., Any] = print,
    source: Path | str | None = None,
) -> dict[str, TuneResult]:
    """Search hyper-parameters of each objective (or ``objectives``) of an experiment.

    **Every objective gets the same budget**: ``trials`` complete (finished) trials
    (default ``tune.trials``; a rerun resumes the study and runs only the missing ones;
    pruned and failed trials do not count, up to :data:`MAX_ATTEMPTS` x ``trials``
    attempts), at most ``timeout`` seconds per objective in this call (default
    ``tune.timeout``), and ``tune.epochs`` training epochs per trial. When the studies end
    with different complete counts (an earlier call ran more for one objective), the
    others run on until the counts are equal, within their timeout; a count that stays
    unequal is reported with its reason. Trials are scored on valid users only.

    Writes ``<out>/<name>/tune/<objective>/{study.db,history.json,trial-NNNN/}``,
    ``<out>/<name>/tune/summary.json`` (trial counts per objective) and the preset
    ``write_preset`` (default ``<out>/<name>/tune/tuned.yaml``); ``source`` names the
    experiment file in the preset's header. ``progress`` prints a line per trial, and on a
    terminal each trial's training progress bar.
    """
    import optuna

    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.evaluate.proxy import MIN_USERS, headline_proxy
    from seqtwins.experiment import build_data

    spec = cfg.tune
    n_wanted = spec.trials if trials is None else trials
    budget_s = spec.timeout if timeout is None else timeout
    if n_wanted < 1:
        raise SeqtwinsError(f"--trials {n_wanted} must be >= 1")
    if budget_s is not None and budget_s <= 0:
        raise SeqtwinsError(f"--timeout {budget_s} must be > 0 seconds")
    chosen = list(objectives) if objectives else list(cfg.objectives)
    for obj in chosen:
        if obj not in cfg.objectives:
            raise SeqtwinsError(
                f"--objectives {obj}: not an objective of experiment {cfg.name} "
                f"(it has {', '.join(cfg.objectives)})"
            )
    spaces = {obj: spec.params(obj) for obj in chosen}  # check every space before any work
    for obj, params in spaces.items():
        key = f"tune.space.{obj}" if obj in spec.space else f"default space of {obj}"
        _check_endpoints(cfg, obj, params, key)

    root = out_folder(out) / cfg.name
    preset = Path(write_preset) if write_preset else root / "tune" / "tuned.yaml"
    _check_preset(preset)  # before hours of search, not after
    root.mkdir(parents=True, exist_ok=True)
    data_dir = build_data(cfg, root / "data", say)
    ds = SequenceDataset.open(data_dir)
    if headline_proxy(ds, ds.split_users("valid"), cfg.tune.seed) is None:
        raise SeqtwinsError(
            f"{data_dir} has too few valid users with a future window (at least {MIN_USERS}): "
            "tune scores trials with the headline-task probes on valid users and cannot rank "
            "them by training loss alone"
        )
    budget = {"trials_wanted": n_wanted, "timeout_s": budget_s, "epochs": spec.epochs}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        search = _Search(cfg, spaces, ds, root / "tune", budget, progress, say)
        results = search.run(chosen, n_wanted, budget_s)
    finally:
        optuna.logging.set_verbosity(verbosity)
    _write_json(root / "tune" / "summary.json", tune_summary(results, budget))
    write_tuned_preset(cfg, results, preset, source=source, budget=budget)
    return results


def tune_summary(results: Mapping[str, TuneResult], budget: Mapping[str, Any]) -> dict[str, Any]:
    """Trial counts per objective and whether the complete counts are equal (why not)."""
    complete = {obj: r.complete for obj, r in results.items()}
    equal = len(set(complete.values())) <= 1
    return {
        **budget,
        "equal_complete": equal,
        "note": None if equal else _unequal_note(results),
        "objectives": {
            obj: {
                "complete": r.complete,
                "pruned": r.pruned,
                "failed": r.failed,
                "stopped": r.stopped,
                "best_value": r.best_value,
                "best_trial": r.best_trial,
            }
            for obj, r in results.items()
        },  # fmt: skip
    }


def _unequal_note(results: Mapping[str, TuneResult]) -> str:
    parts = [f"{obj} {r.complete}" + (f" (stopped: {r.stopped})" if r.stopped else "")
             for obj, r in results.items()]  # fmt: skip
    return "complete trial counts differ: " + ", ".join(parts)


@dataclass
class _Search:
    """One call's searches: each objective's study, then the equalising round."""

    cfg: ExperimentConfig
    spaces: dict[str, list[Param]]
    ds: SequenceDataset
    """The prepared dataset (``ds.path``), opened once for every objective."""
    folder: Path
    budget: dict[str, Any]
    progress: bool
    say: Callable[..., Any]

    def run(
        self, chosen: list[str], n_wanted: int, budget_s: float | None
    ) -> dict[str, TuneResult]:
        results: dict[str, TuneResult] = {}
        spent = dict.fromkeys(chosen, 0.0)
        for obj in chosen:
            results[obj] = self.objective(obj, n_wanted, budget_s, spent)
        # an earlier call may have left one study with more complete trials: catch up
        top = max(r.complete for r in results.values())
        for obj in chosen:
            if results[obj].complete < top and results[obj].stopped is None:
                left = None if budget_s is None else budget_s - spent[obj]
                self.say(f"tune {obj}: {results[obj].complete} complete trials, "
                         f"{top} for another objective: running more to equal it")  # fmt: skip
                results[obj] = self.objective(obj, top, left, spent)
        return results

    def objective(
        self, obj: str, target: int, budget_s: float | None, spent: dict[str, float]
    ) -> TuneResult:
        started = _clock()
        try:
            if budget_s is not None and budget_s <= 0:
                return _tune_objective(self, obj, target, 0.0)
            return _tune_objective(self, obj, target, budget_s)
        finally:
            spent[obj] += _clock() - started


def _open_study(search: _Search, objective: str) -> tuple[optuna.Study, dict[str, Any]]:
    """The objective's study (created, or resumed when its setup is unchanged, saying so
    when its trials trained under another precision), with the sampler and the pruner set;
    also the setup that must not change."""
    import optuna
    from optuna.trial import TrialState

    from seqtwins.train import budget, training_users

    cfg, spec, params = search.cfg, search.cfg.tune, search.spaces[objective]
    folder = search.folder / objective
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "study.db"
    base = _trial_config(cfg, objective, {}, spec.epochs)
    # the epochs a trial trains: train.min_steps raises them on a small dataset
    epochs, patience = budget(base.train, len(training_users(search.ds, objective)))
    # what must not change for a study to be resumed: the base config as a trial trains it
    # (a train.min_steps that raises no epochs changes nothing), the space and the data
    trained = dataclasses.replace(base.train, epochs=epochs, patience=patience, min_steps=0)
    setup = {
        "config": to_dict(dataclasses.replace(base, train=trained)),
        "space": [dataclasses.asdict(p) | {"choices": list(p.choices)} for p in params],
        "data": to_dict(cfg.data),
    }
    setup = json.loads(json.dumps(setup))  # tuples -> lists, as stored
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name=objective,
                                direction="maximize", load_if_exists=True)  # fmt: skip
    if "setup" not in study.user_attrs:
        study.set_user_attr("setup", setup)
        study.set_user_attr("objective", objective)
    elif changes := _setup_changes(study.user_attrs["setup"], setup,
                                   {"config": _default_config()}):  # fmt: skip
        more = f"; {len(changes) - 3} more" if len(changes) > 3 else ""
        raise SeqtwinsError(
            f"{db} was made with another config, search space or dataset for {objective} "
            f"({'; '.join(changes[:3])}{more}); delete {folder} to start that search afresh, "
            "or use another --out"
        )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # killed mid-trial: not counted
    _say_mixed_precision(study, _precision(base), objective, search.say)
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials),
                                               n_startup_trials=spec.startup_trials)  # fmt: skip
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=max(1, spec.startup_trials // 2),
                                    n_warmup_steps=prune_warmup(spec, epochs))
        if spec.prune
        else optuna.pruners.NopPruner()
    )  # fmt: skip
    return study, setup


def _default_config() -> dict[str, Any]:
    """Every pretraining setting at its default, as a study stores its setup."""
    return dict(json.loads(json.dumps(to_dict(PretrainConfig()))))


def _setup_changes(stored: Any, current: Any, default: Any, at: str = "") -> list[str]:
    """Where ``current`` differs from ``stored`` (dotted paths, with both values; none when
    they are the same), except that a key the stored setup lacks (a setting added to
    seqtwins after the study was made) matches when ``current`` holds its default: the
    study's trials ran with what that default does."""
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        return [c for i, (s, v) in enumerate(zip(stored, current, strict=True))
                for c in _setup_changes(s, v, None, f"{at}[{i}]")]  # fmt: skip
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return [] if stored == current else [f"{at} {_brief(stored)} -> {_brief(current)}"]
    known = default if isinstance(default, dict) else {}
    path = lambda k: f"{at}.{k}" if at else k  # noqa: E731
    changes = [f"{path(k)} only in the study" for k in stored if k not in current]
    for k, v in current.items():
        if k in stored:
            changes += _setup_changes(stored[k], v, known.get(k), path(k))
        elif not (k in known and v == known[k]):
            changes.append(f"{path(k)} {_brief(v)}, not in the study")
    return changes


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def prune_warmup(spec: TuneSpec, epochs: int) -> int:
    """Epochs (0-based steps) before the pruner may stop a trial:
    ``ceil(tune.prune_warmup * epochs)``, never at or before 40 % of them by default."""
    return math.ceil(spec.prune_warmup * epochs - 1e-9)


def _tune_objective(
    search: _Search, objective: str, target: int, budget_s: float | None
) -> TuneResult:
    """Run trials until ``target`` complete ones, the timeout, or too many attempts."""
    from optuna.trial import TrialState

    from seqtwins.train import is_terminal, pretrain

    study, setup = _open_study(search, objective)
    folder, params, say = search.folder / objective, search.spaces[objective], search.say
    history = folder / "history.json"
    budget = {**search.budget, "space": setup["space"], "complete_target": target}
    counts = trial_counts(study)
    tried = sum(_counts(t) for t in study.get_trials(deepcopy=False))
    if counts["complete"] >= target:
        say(f"tune {objective}: {counts['complete']} complete trials already ({target} wanted)")
    else:
        say(f"tune {objective}: {target - counts['complete']} complete trial(s) to go "
            f"({counts['complete']} done) -> {folder}")  # fmt: skip
    started, best, stopped = _clock(), None, None
    bar = search.progress and is_terminal(sys.stderr)  # each trial's bar; in a log, a line
    try:
        while counts["complete"] < target:
            if budget_s is not None and _clock() - started >= budget_s:
                stopped = "timeout"
                break
            if tried >= MAX_ATTEMPTS * target:
                stopped = "attempts"
                break
            trial = study.ask()
            state, value = _run_trial(trial, search.cfg, objective, params, search.ds.path,
                                      folder, pretrain, bar)  # fmt: skip
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            tried += 1
            counts = trial_counts(study)
            _write_json(history, _history(study, params, budget))
            if value is not None and (best is None or value > best):
                best = value
            if search.progress:
                say(_trial_line(objective, trial, state, value, best))
    finally:  # also after a crash or Ctrl-C: the history shows what happened
        _write_json(history, _history(study, params, {**budget, "stopped": stopped}))
    if stopped:
        say(f"tune {objective}: stopped ({stopped}) at {counts['complete']} of {target} "
            "complete trials")  # fmt: skip
    return _result(study, objective, params, history, folder / "study.db", stopped)


def _precision(pcfg: PretrainConfig) -> str:
    """``bf16`` or ``fp32``: how a config trains on this machine."""
    from seqtwins.train import precision_name, resolve_device, resolve_precision

    device = resolve_device(pcfg.train.device)
    return precision_name(resolve_precision(pcfg.train.precision, device))


def _say_mixed_precision(
    study: optuna.Study, now: str, objective: str, say: Callable[..., Any]
) -> None:
    """Warn when earlier trials of a resumed study trained under another precision (bf16
    autocast on a CPU with AVX512-BF16, fp32 without): their scores are not strictly
    comparable with this machine's."""
    other = [t for t in study.get_trials(deepcopy=False)
             if t.user_attrs.get("precision") not in (None, now)]  # fmt: skip
    if other:
        was = other[0].user_attrs["precision"]
        say(f"tune {objective}: {len(other)} earlier trial(s) trained under {was}, this "
            f"machine trains under {now}; the search mixes the two (history.json records "
            "each trial's)")  # fmt: skip


def _trial_line(
    objective: str, trial: optuna.Trial, state: Any, value: float | None, best: float | None
) -> str:
    from optuna.trial import TrialState

    epochs = trial.user_attrs.get("epochs_done", 0)
    if state == TrialState.COMPLETE:
        shown = f"{value:.4f}"
    elif state == TrialState.PRUNED:
        shown = f"after {epochs} epoch(s)"
    else:
        shown = str(trial.user_attrs.get("error"))
    return (f"  {objective} trial {trial.number}: {state.name.lower()} {shown}"
            + (f" (best this call {best:.4f})" if best is not None else ""))  # fmt: skip


def _result(
    study: optuna.Study,
    objective: str,
    params: list[Param],
    history: Path,
    db: Path,
    stopped: str | None,
) -> TuneResult:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        errors = [t.user_attrs["error"] for t in study.trials if "error" in t.user_attrs]
        first = f"; the first: {errors[0]}" if errors else ""
        raise SeqtwinsError(f"tune {objective}: no trial finished ({history}){first}")
    top = max(complete, key=lambda t: float(t.value if t.value is not None else -math.inf))
    by_path = {p.path: p for p in params}
    counts = trial_counts(study)
    return TuneResult(
        objective=objective,
        best_value=float(top.value if top.value is not None else math.nan),
        best_params={k: by_path[k].value(v) for k, v in top.params.items()},
        best_trial=top.number,
        n_trials=sum(_counts(t) for t in study.get_trials(deepcopy=False)),
        history=history,
        study=db,
        stopped=stopped,
        **counts,
    )


def _run_trial(
    trial: optuna.Trial,
    cfg: ExperimentConfig,
    objective: str,
    params: list[Param],
    data_dir: Path,
    folder: Path,
    pretrain: Callable[..., Any],
    bar: bool,
) -> tuple[Any, float | None]:
    """Train one trial (with pretrain's progress bar when ``bar``); (state, value). A bad
    sampled setting or a diverging run fails the trial; any other exception is a bug and
    propagates (the trial is marked failed)."""
    import optuna
    from optuna.trial import TrialState

    from seqtwins.evaluate.proxy import headline_proxy

    run_dir = folder / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    values = {p.path: p.suggest(trial) for p in params}

    def on_epoch(record: dict[str, Any]) -> None:
        trial.set_user_attr("epochs_done", int(record["epoch"]) + 1)
        if record.get("proxy") is None:
            raise SeqtwinsError(
                f"epoch {record['epoch']}: the headline-task proxy could not be computed "
                "(too few valid users with a future window)"
            )
        trial.report(float(record["score"]), step=int(record["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned()

    try:
        try:
            pcfg = _trial_config(cfg, objective, values, cfg.tune.epochs)
        except (SeqtwinsError, ValueError) as e:  # a sampled combination is invalid
            trial.set_user_attr("error", f"invalid setting: {e}")
            return TrialState.FAIL, None
        try:
            trial.set_user_attr("precision", _precision(pcfg))
            summary = pretrain(data_dir, run_dir, pcfg, progress=bar, overwrite=True,
                               on_epoch=on_epoch, proxy=headline_proxy)  # fmt: skip
        except optuna.TrialPruned:
            return TrialState.PRUNED, None
        except SeqtwinsError as e:  # e.g. the loss diverged at a high learning rate
            trial.set_user_attr("error", str(e))
            return TrialState.FAIL, None
        if summary.best_score is None:
            trial.set_user_attr("error", "no validation score")
            return TrialState.FAIL, None
        return TrialState.COMPLETE, float(summary.best_score)
    except BaseException as e:
        # a bug or Ctrl-C: close the trial (not counted in the budget), then stop
        trial.set_user_attr("interrupted", f"{type(e).__name__}: {e}"[:300])
        trial.study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        if not cfg.tune.keep_runs:
            Run(run_dir).remove_checkpoints()


# --- the preset ---------------------------------------------------------------------------

_HEADER_LINE = re.compile(r"^#   (\S+): best ")
_HEADER_FIRST = "# Written by `seqtwins tune`"


def is_tuned_preset(path: Path) -> bool:
    """True for a preset written by :func:`write_tuned_preset` (its first line says so)."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(_HEADER_FIRST)
    except (OSError, UnicodeDecodeError):
        return False


def _check_preset(path: Path) -> None:
    if path.is_dir():
        raise SeqtwinsError(f"--write-preset {path} is a folder; give the path of a .yaml file")
    check_replaceable(path, "--write-preset", owned=is_tuned_preset)


def write_tuned_preset(
    cfg: ExperimentConfig,
    results: Mapping[str, TuneResult],
    path: Path | str,
    *,
    source: Path | str | None = None,
    budget: Mapping[str, Any] | None = None,
) -> Path:
    """Write the experiment with each tuned objective's best values merged into its layer
    under ``objectives:``. Objectives tuned in an earlier call and kept in an existing
    ``path`` stay as they are there (tune barlow and dual in separate calls)."""
    from seqtwins.experiment import load_experiment

    path = Path(path)
    _check_preset(path)
    data = to_dict(cfg)  # a copy: writing into it leaves cfg alone
    kept_lines: dict[str, str] = {}
    if path.is_file():
        kept = load_yaml(path).get("objectives") or {}
        if not isinstance(kept, dict):
            raise SeqtwinsError(f"{path}: objectives must be a mapping; fix or remove the file")
        for obj, layer in kept.items():
            if obj in data["objectives"] and obj not in results:
                data["objectives"][obj] = layer
        for line in path.read_text().splitlines():
            m = _HEADER_LINE.match(line)
            if m and m.group(1) in data["objectives"] and m.group(1) not in results:
                kept_lines[m.group(1)] = line
    budget = budget or {}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017
    lines = dict(kept_lines)
    for obj, r in results.items():
        layer = dict(data["objectives"].get(obj) or {})
        for key, value in r.best_params.items():
            layer = deep_merge(layer, nest(key, value))
        data["objectives"][obj] = layer
        timeout = budget.get("timeout_s")
        stopped = f" (stopped: {r.stopped})" if r.stopped else ""
        lines[obj] = (
            f"#   {obj}: best {r.best_value:.4f} (trial {r.best_trial}); trials: "
            f"{r.complete} complete{stopped}, {r.pruned} pruned, {r.failed} failed; "
            f"budget {budget.get('trials_wanted')} complete trials, timeout "
            f"{'none' if timeout is None else f'{timeout:g} s'}, "
            f"epochs {budget.get('epochs') or 'as the experiment'}; {date}"
        )
    equal = "" if len({r.complete for r in results.values()}) <= 1 else (
        f"# NOT EQUAL: {_unequal_note(results)}"
    )  # fmt: skip
    header = [
        f"{_HEADER_FIRST} from {source or 'an experiment'} (experiment {cfg.name}).",
        "# Best values per objective (validation proxy: headline-task probes on valid users,",
        "# relative to the popularity floor), merged into objectives: below:",
        *[lines[obj] for obj in data["objectives"] if obj in lines],
        *([equal] if equal else []),
    ]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False))
        load_experiment(tmp)  # the preset must be a valid experiment
    return path
