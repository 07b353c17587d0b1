"""``seqtwins run``: the main job, one experiment file end to end.

prepare (or synth) -> pretrain each listed objective -> evaluate (with the floors) ->
report. Each stage is skipped when its output already exists and matches, so an
interrupted experiment continues where it stopped (a half-trained run resumes).

An experiment file (YAML)::

    name: ml-1m
    data:
      prepare: {input: ${SEQTWINS_DATA}/ml-1m, format: movielens}   # or synth: {users: 5000}
    pretrain:            # a PretrainConfig layer shared by every objective
      train: {epochs: 10}
    objectives:          # objective name -> its own PretrainConfig layer
      barlow: {}
      dual: {}
    evaluate: {fractions: [0.01, 0.1, 1.0], seeds: 3}

``${VAR}`` is expanded from the environment in ``data.prepare.input``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from seqtwins.config import (
    OBJECTIVES,
    PretrainConfig,
    build,
    deep_merge,
    load_yaml,
    read_yaml,
    to_dict,
)
from seqtwins.data.dataset import is_dataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.runs import BASELINES, PROTOCOLS
from seqtwins.files import atomic_write, check_replaceable, write_json, write_marker
from seqtwins.run import Run, out_folder
from seqtwins.tune_space import TuneSpec


@dataclass
class DataSpec:
    """Where the experiment's dataset comes from: exactly one of ``synth`` / ``prepare``."""

    synth: dict[str, Any] | None = None
    """Keyword settings of the synthetic generator (``seqtwins synth``)."""
    prepare: dict[str, Any] | None = None
    """``input`` and ``format`` plus any ``seqtwins prepare`` options (by field name)."""

    def __post_init__(self) -> None:
        if (self.synth is None) == (self.prepare is None):
            raise ValueError("data must set exactly one of data.synth or data.prepare")
        if self.prepare is not None and "input" not in self.prepare:
            raise ValueError("data.prepare.input is required (a file or folder)")


@dataclass
class EvalSpec:
    """Downstream evaluation settings (see ``seqtwins evaluate``)."""

    tasks: list[str] | None = None
    """Task names; ``None`` = every task the dataset supports."""
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 1.0])
    """Label budgets as fractions of the labelled training users."""
    seeds: int = 3
    """Labelled subsets (and probe seeds) per fraction."""
    protocol: str = "linear"
    """``linear`` or ``mlp`` probe on frozen embeddings, or ``finetune`` (linear probe plus
    end-to-end fine-tuning of each run at the smallest fraction)."""
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    """Floors evaluated identically beside the trained runs."""
    faithfulness: bool = False
    """Also run the deletion test of each run's attributions (``--faithfulness``; needs
    Captum, docs/explain.md)."""
    faithfulness_users: int = 500
    """Test users of the deletion test, per run (``--faithfulness-users``)."""

    def __post_init__(self) -> None:
        """Checked up front, not after hours of pretraining (task names need the data:
        :func:`run_experiment` checks them once the dataset exists)."""
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]  # NaN fails too
        if bad or not self.fractions:
            raise ValueError(f"evaluate.fractions={self.fractions} must be label shares in (0, 1]")
        if self.seeds < 1:
            raise ValueError(f"evaluate.seeds={self.seeds} must be >= 1")
        if self.faithfulness_users < 1:
            raise ValueError(f"evaluate.faithfulness_users={self.faithfulness_users} must be >= 1")
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"evaluate.protocol={self.protocol!r} must be one of {', '.join(PROTOCOLS)}"
            )
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(
                f"evaluate.baselines: unknown {unknown}; choose from {', '.join(BASELINES)}"
            )


@dataclass
class ExperimentConfig:
    """One experiment: a dataset, objectives to pretrain, and how to evaluate them."""

    name: str = "experiment"
    """Used for the output folder ``<out>/<name>``."""
    data: DataSpec = field(default_factory=DataSpec)
    pretrain: dict[str, Any] = field(default_factory=dict)
    """A PretrainConfig layer (YAML mapping) shared by every objective."""
    objectives: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"barlow": {}, "dual": {}}
    )
    """Objective -> extra PretrainConfig layer for that objective only."""
    evaluate: EvalSpec = field(default_factory=EvalSpec)
    tune: TuneSpec = field(default_factory=TuneSpec)
    """How ``seqtwins tune`` searches hyper-parameters (budget and search space)."""
    init: dict[str, str] | None = None
    """Objective -> an earlier run to update (``pretrain --init``; docs/incremental.md):
    that objective continues from it on this experiment's data."""
    incremental: dict[str, Any] = field(default_factory=dict)
    """Settings of the updates in ``init`` (``IncrementalConfig`` by field name)."""

    def __post_init__(self) -> None:
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise ValueError(f"objectives.{name} is not one of {', '.join(OBJECTIVES)}")
        for name in self.init or {}:
            if name not in self.objectives:
                raise ValueError(f"init.{name} names no objective of this experiment")
        if not self.objectives:
            raise ValueError("objectives must list at least one objective")
        self.tune.check_objectives(list(self.objectives))

    def pretrain_config(self, objective: str) -> PretrainConfig:
        layer = deep_merge(self.pretrain, self.objectives[objective] or {})
        return build(PretrainConfig, layer, {"objective": objective})


DEFAULT_EXPERIMENT = "demo.yaml"


def load_experiment(
    path: Path | str | None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Load an experiment file, or the embedded default (synthetic data) when ``None``."""
    if path is None:
        text = resources.files("seqtwins").joinpath("presets", DEFAULT_EXPERIMENT).read_text()
        data = read_yaml(text)
    else:
        data = load_yaml(path)
    cfg = build(ExperimentConfig, data, overrides=overrides or [])
    for obj in cfg.objectives:
        cfg.pretrain_config(obj)  # validate every objective's config up front
    return cfg


def _expand(value: str) -> str:
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise SeqtwinsError(
            f"data.prepare.input={value!r}: an environment variable in it is not set "
            "(e.g. export SEQTWINS_DATA=../shared/data)"
        )
    return expanded


KEY_PATHS = ("key_file", "salt_file")
"""``data.prepare`` settings naming where the pseudonymisation key is: never written out."""


def public_dict(cfg: Any) -> dict[str, Any]:
    """``cfg`` (an experiment or its ``data`` section) as written to ``experiment.yaml`` or
    ``data.spec.json``: the key file paths replaced by ``"<set>"`` (docs/privacy.md: no
    output holds the key or its path)."""
    out = to_dict(cfg)
    prepare = (out.get("data", out) or {}).get("prepare")
    if isinstance(prepare, dict):
        for name in KEY_PATHS:
            if prepare.get(name) is not None:
                prepare[name] = "<set>"
    return out


def _marker_matches(marker: Path, spec: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")) == spec)
    except (OSError, ValueError):  # absent or damaged: the data is built again
        return False


@dataclass
class ExperimentResult:
    root: Path
    data_dir: Path
    runs: dict[str, Path]
    eval_json: Path
    report_dir: Path


def build_data(cfg: ExperimentConfig, data_dir: Path, say: Any = print) -> Path:
    """Create the experiment's dataset directory, or reuse it when its spec is unchanged."""
    spec = public_dict(cfg.data)
    marker = data_dir.parent / "data.spec.json"
    if (data_dir / "meta.json").is_file() and _marker_matches(marker, spec):
        say(f"data: reusing {data_dir}")
        return data_dir
    # replaced below: only when it is a dataset seqtwins wrote (named as the user knows it)
    check_replaceable(data_dir, "the experiment's data folder", owned=is_dataset)
    if cfg.data.synth is not None:
        from seqtwins.data.synth import SynthConfig, synthesize

        synthesize(data_dir, build(SynthConfig, cfg.data.synth, prefix="data.synth"),
                   overwrite=True)  # fmt: skip
        say(f"data: synthesised {data_dir}")
    else:
        from seqtwins.data.options import build_options
        from seqtwins.data.prepare import prepare

        options = dict(cfg.data.prepare or {})
        source = _expand(str(options.pop("input")))
        opts = build_options(options, {"overwrite": True}, prefix="data.prepare")
        summary = prepare(source, data_dir, opts)
        say("\n".join(summary.lines()))
    write_json(marker, spec)
    return data_dir


def pretrain_run(
    cfg: PretrainConfig,
    data_dir: Path,
    run_dir: Path,
    progress: bool,
    say: Any = print,
    init: tuple[str | None, dict[str, Any]] = (None, {}),
) -> Path:
    """Train one objective; skip a finished run, resume an interrupted one with the same
    config (from scratch when it stopped before its first checkpoint), retrain when the
    config changed. ``init``: an earlier run to update and the update's settings."""
    from seqtwins.evaluate.proxy import headline_proxy
    from seqtwins.train import pretrain

    run = Run(run_dir)
    try:
        same = run.trained_with(cfg)
    except SeqtwinsError:  # no run there yet, or a damaged config.yaml: (re)train
        same = False
    if same and run.finished:
        say(f"pretrain {cfg.objective}: done already ({run_dir})")
        return run_dir
    resume = same and run.has_checkpoint("last")
    say(f"pretrain {cfg.objective}: {'resuming' if resume else 'training'} -> {run_dir}")
    inc = None
    if init[0] is not None and not resume:
        from seqtwins.incremental.config import IncrementalConfig

        inc = build(IncrementalConfig, init[1], prefix="incremental")
    pretrain(data_dir, run_dir, None if resume else cfg, resume=resume, progress=progress,
             overwrite=True, proxy=headline_proxy, init=None if resume else init[0],
             incremental=inc)  # fmt: skip
    return run_dir


def _check_tasks(cfg: ExperimentConfig, data_dir: Path) -> None:
    """Unknown evaluation tasks are refused before any pretraining."""
    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.evaluate.tasks import available_tasks

    if cfg.evaluate.tasks is None:
        return
    known = available_tasks(SequenceDataset.open(data_dir, verify=False))
    unknown = [t for t in cfg.evaluate.tasks if t not in known]
    if unknown:
        raise SeqtwinsError(
            f"evaluate.tasks: {', '.join(unknown)} not available for {data_dir}; "
            f"its tasks are: {', '.join(known)}"
        )


EXPERIMENT_KIND = "experiment"


def _legacy_experiment(root: Path) -> bool:
    """An experiment folder written before ownership markers: its experiment.yaml is an
    experiment (a mapping with a name and a data section)."""
    try:
        data = read_yaml((root / "experiment.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"name", "data"} <= set(data)


def run_experiment(
    cfg: ExperimentConfig, out: Path | str = "out", progress: bool = True, say: Any = print
) -> ExperimentResult:
    """Run an experiment end to end under ``<out>/<name>`` and return where things are."""
    from seqtwins.evaluate.report import write_report
    from seqtwins.evaluate.runs import evaluate_runs

    root = out_folder(out) / cfg.name
    check_replaceable(root, "the experiment folder", owned=_legacy_experiment,
                      kinds=(EXPERIMENT_KIND,))  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, EXPERIMENT_KIND)
    atomic_write(root / "experiment.yaml", yaml.safe_dump(public_dict(cfg), sort_keys=False))
    data_dir = build_data(cfg, root / "data", say)
    _check_tasks(cfg, data_dir)
    runs = {
        obj: pretrain_run(
            cfg.pretrain_config(obj),
            data_dir,
            root / "runs" / obj,
            progress,
            say,
            ((cfg.init or {}).get(obj), cfg.incremental),
        )
        for obj in cfg.objectives
    }
    ev = cfg.evaluate
    eval_json = root / "eval.json"
    say(f"evaluate: {', '.join(runs)} + {', '.join(ev.baselines)}")
    evaluate_runs(
        list(runs.values()), data_dir, eval_json, tasks=ev.tasks, fractions=ev.fractions,
        seeds=ev.seeds, protocol=ev.protocol, baselines=ev.baselines, progress=progress,
        faithfulness=ev.faithfulness, faithfulness_users=ev.faithfulness_users,
    )  # fmt: skip
    report_dir = root / "report"
    write_report([eval_json], report_dir)
    return ExperimentResult(root, data_dir, runs, eval_json, report_dir)
