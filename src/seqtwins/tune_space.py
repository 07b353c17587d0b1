"""The search space of ``seqtwins tune``: the ``tune:`` section of an experiment file.

:class:`TuneSpec` (budget, pruning, search space) is part of the experiment's schema
(:class:`seqtwins.experiment.ExperimentConfig`); :mod:`seqtwins.tune` runs the search.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from seqtwins.config import PretrainConfig, from_dict
from seqtwins.errors import SeqtwinsError

if TYPE_CHECKING:
    import optuna

SPEC_TYPES = ("float", "int", "categorical")
SPEC_KEYS = ("type", "low", "high", "log", "choices")
FIXED_PATHS = {
    "objective": "it is fixed by the study",
    "train.epochs": "every trial trains tune.epochs epochs (the same for every objective)",
}

_COMMON: dict[str, dict[str, Any]] = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "train.weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "encoder.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "encoder.dim": {"type": "categorical", "choices": [64, 128]},
}
_AUGMENT: dict[str, dict[str, Any]] = {
    # the augmentation policy: which operations, their rates, and the domain-aware variants
    # (no-ops on datasets without categories / timestamps: docs/augmentations.md)
    "augment.ops": {
        "type": "categorical",
        "choices": [
            ["mask", "crop", "reorder", "substitute", "insert"],
            ["mask", "crop", "reorder"],
            ["crop", "substitute", "insert"],
            ["mask", "substitute", "insert"],
            ["mask", "crop", "substitute"],
        ],
    },
    "augment.mask_rate": {"type": "float", "low": 0.1, "high": 0.7},
    "augment.crop_keep": {"type": "float", "low": 0.3, "high": 0.9},
    "augment.reorder_ratio": {"type": "float", "low": 0.1, "high": 0.5},
    "augment.substitute_rate": {"type": "float", "low": 0.05, "high": 0.5},
    "augment.insert_rate": {"type": "float", "low": 0.05, "high": 0.5},
    "augment.same_category": {"type": "categorical", "choices": [False, True]},
    "augment.session_crop": {"type": "categorical", "choices": [False, True]},
}
_BARLOW: dict[str, dict[str, Any]] = {
    "barlow.lambda_": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
    "barlow.projector": {
        "type": "categorical",
        "choices": [[128, 128], [256, 256], [512, 512], [1024, 1024], [512, 512, 512]],
    },
    **_AUGMENT,
}
_TEMPERATURE: dict[str, dict[str, Any]] = {
    # in-batch softmax temperature; barlow+next's next-item term uses it too
    "dual.temperature": {"type": "float", "low": 0.02, "high": 1.0, "log": True},
}
DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "barlow": {**_COMMON, **_BARLOW},
    "dual": {
        **_COMMON,
        **_TEMPERATURE,
        # the dual encoder's projector choice: a linear layer on the context tower or none
        "dual.projection": {"type": "categorical", "choices": [False, True]},
    },
    "barlow+next": {
        **_COMMON,
        **_BARLOW,
        **_TEMPERATURE,
        "next.alpha": {"type": "float", "low": 0.1, "high": 3.0, "log": True},
    },
    "barlow+mask": {
        **_COMMON,
        **_BARLOW,
        "mask.alpha": {"type": "float", "low": 0.1, "high": 3.0, "log": True},
        "mask.rate": {"type": "float", "low": 0.1, "high": 0.5},
    },
}
"""The search space of an objective that ``tune.space`` does not list. Ranges bracket the
defaults: lr and weight decay around AdamW's usual values; encoder width 64 or 128;
Barlow Twins' lambda around 1/K for the projector widths offered (Tsai et al. 2021,
arXiv:2104.13712); the augmentation policy (which operations, their rates around
CL4SRec/CoSeRec's, same-category draws and session crops; ``docs/augmentations.md``); the
softmax temperature over the range where in-batch retrieval models are usually tuned (Yi
et al. 2019); the masked-item weight and rate around BERT4Rec's 0.2 (Sun et al. 2019)."""


# --- the search space ---------------------------------------------------------------------


_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One searched setting: a dotted ``PretrainConfig`` path and its distribution."""

    path: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> tuple[Any, ...]:
        """What Optuna sees for a categorical: the choices themselves when they are
        primitives, else their JSON text (Optuna needs hashable primitives)."""
        if all(isinstance(c, _PRIMITIVE) for c in self.choices):
            return self.choices
        return tuple(json.dumps(c) for c in self.choices)

    def value(self, raw: Any) -> Any:
        """The setting's value from what Optuna stored (a label for categoricals)."""
        if self.type != "categorical":
            return raw
        return self.choices[self.labels.index(raw)]

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return self.value(trial.suggest_categorical(self.path, list(self.labels)))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), log=self.log)


def _leaf(path: str, key: str) -> tuple[type, str, Any]:
    """The dataclass holding ``path``'s last part, that part, and its annotation."""
    cls: Any = PretrainConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = ".".join(parts[:i])
        if part not in names:
            where = f"under {prefix}" if prefix else "at the top"
            raise SeqtwinsError(
                f"{key}: {path!r} is not a pretraining setting (known {where}: "
                f"{', '.join(names)}); use a dotted PretrainConfig path such as train.lr"
            )
        tp = typing.get_type_hints(cls)[part]
        is_section = dataclasses.is_dataclass(tp)
        last = i == len(parts) - 1
        if last and is_section:
            raise SeqtwinsError(
                f"{key}: {path!r} is a section, not a setting; name one of its settings, "
                f"e.g. {path}.{dataclasses.fields(tp)[0].name}"
            )
        if not last:
            if not is_section:
                raise SeqtwinsError(f"{key}: {'.'.join(parts[: i + 1])!r} has no settings")
            cls = tp
    return cls, parts[-1], typing.get_type_hints(cls)[parts[-1]]


def _check_value(cls: type, name: str, value: Any, key: str) -> None:
    """A value of the wrong type is refused up front; one that breaks the section's own
    checks (``__post_init__``, e.g. encoder.heads vs encoder.dim) may be valid next to
    other sampled values, so it fails its trial instead, not the search."""
    try:
        from_dict(cls, {name: value}, prefix=key)
    except SeqtwinsError as e:
        raise SeqtwinsError(f"{key}: {value!r} is not a valid value ({e})") from None
    except ValueError:
        pass


def parse_param(path: str, spec: Any, key: str) -> Param:
    """Check one search-space entry (``key`` names it in the experiment file)."""
    key = f"{key}.{path}"
    if path in FIXED_PATHS:
        raise SeqtwinsError(f"{key}: cannot be searched: {FIXED_PATHS[path]}")
    cls, name, annotation = _leaf(path, key)
    if not isinstance(spec, Mapping):
        raise SeqtwinsError(
            f"{key} must be a mapping like {{type: float, low: 0.1, high: 0.5}} or "
            "{type: categorical, choices: [...]}"
        )
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SeqtwinsError(f"{key}.{unknown[0]}: unknown; a spec has {', '.join(SPEC_KEYS)}")
    kind = spec.get("type")
    if kind is None:  # inferred: choices -> categorical, else the setting's own type
        kind = "categorical" if "choices" in spec else ("int" if annotation is int else "float")
    if kind not in SPEC_TYPES:
        raise SeqtwinsError(f"{key}.type={kind!r} must be one of {', '.join(SPEC_TYPES)}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SeqtwinsError(f"{key}.log={log!r} must be true or false")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or "low" in spec or "high" in spec:
            raise SeqtwinsError(f"{key}: a categorical needs choices: [a non-empty list] only")
        param = Param(path, kind, choices=tuple(choices))
        if len(set(param.labels)) != len(choices):
            raise SeqtwinsError(f"{key}.choices has duplicates")
        for c in choices:
            _check_value(cls, name, c, key)
        return param
    if "choices" in spec or "low" not in spec or "high" not in spec:
        raise SeqtwinsError(f"{key}: a {kind} range needs low and high (and no choices)")
    low, high = spec["low"], spec["high"]
    number = int if kind == "int" else (int, float)
    for bound, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, number):
            what = "an integer" if kind == "int" else "a number"
            raise SeqtwinsError(f"{key}.{bound}={v!r} must be {what}")
    if not low < high:
        raise SeqtwinsError(f"{key}: low={low} must be < high={high}")
    if log and low <= 0:
        raise SeqtwinsError(f"{key}: log=true needs low > 0 (got {low})")
    cast = int if kind == "int" else float
    for v in (low, high):
        _check_value(cls, name, cast(v), key)
    return Param(path, kind, low=low, high=high, log=log)


def parse_space(space: Mapping[str, Any], key: str) -> list[Param]:
    """The searched settings of one objective, checked (``key`` e.g. ``tune.space.barlow``)."""
    if not isinstance(space, Mapping) or not space:
        raise SeqtwinsError(f"{key} must be a non-empty mapping: dotted path -> spec")
    return [parse_param(str(path), spec, key) for path, spec in space.items()]


@dataclass
class TuneSpec:
    """The ``tune:`` section of an experiment file: how ``seqtwins tune`` searches.

    Every objective gets the same budget (trials, timeout, epochs): a fairness rule."""

    trials: int = 24
    """Complete (finished) trials wanted per objective, in total (a rerun adds only the
    missing ones); pruned and failed trials do not count, so every objective ends with the
    same number of finished trials. ``--trials`` overrides it."""
    timeout: float | None = None
    """Seconds per objective for this call (a trial started in time runs to its end);
    ``None`` = no limit. ``--timeout`` overrides it."""
    epochs: int | None = None
    """Training epochs per trial (shorter than the real run to search more settings);
    ``None`` = the experiment's ``train.epochs``. The preset keeps the experiment's epochs."""
    seed: int = 0
    """Seed of the TPE sampler (offset by the trials already done, so a resumed study does
    not redraw its first settings)."""
    startup_trials: int = 10
    """Random trials before TPE starts modelling the space."""
    prune: bool = True
    """Stop a trial early when its validation score after an epoch is below the median of
    earlier trials at that epoch (Optuna's MedianPruner, after ``startup_trials / 2``
    finished trials, and not before ``prune_warmup`` of the epochs)."""
    prune_warmup: float = 0.4
    """Fraction of a trial's epochs before the pruner may stop it: its warm-up is
    ``ceil(prune_warmup * epochs)`` epochs (0-based steps), so a slow starter is not cut
    on its first epochs. In [0, 1]."""
    keep_runs: bool = False
    """Keep each trial's checkpoints (disk!); config.yaml, summary.json and metrics.jsonl
    are always kept."""
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Objective -> dotted PretrainConfig path -> ``{type, low, high, log, choices}``;
    objectives not listed get ``seqtwins.tune.DEFAULT_SPACES``."""

    def __post_init__(self) -> None:
        """Check the budget and every search space."""
        if self.trials < 1:
            raise ValueError(f"tune.trials={self.trials} must be >= 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"tune.timeout={self.timeout} must be > 0 seconds (or null)")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"tune.epochs={self.epochs} must be >= 1 (or null)")
        if not 0.0 <= self.prune_warmup <= 1.0:
            raise ValueError(f"tune.prune_warmup={self.prune_warmup} must be in [0, 1]")
        if self.startup_trials < 0:
            raise ValueError(f"tune.startup_trials={self.startup_trials} must be >= 0")
        for objective, space in self.space.items():
            parse_space(space, f"tune.space.{objective}")

    def check_objectives(self, objectives: Sequence[str]) -> None:
        """Every searched objective must be one of the experiment's ``objectives``."""
        for objective in self.space:
            if objective not in objectives:
                raise ValueError(
                    f"tune.space.{objective}: not an objective of this experiment "
                    f"({', '.join(objectives)}); remove it or add it under objectives"
                )

    def params(self, objective: str) -> list[Param]:
        """The searched settings of ``objective`` (its ``space`` entry or the default)."""
        if objective in self.space:
            return parse_space(self.space[objective], f"tune.space.{objective}")
        return parse_space(
            DEFAULT_SPACES[objective], f"seqtwins.tune.DEFAULT_SPACES[{objective!r}]"
        )


# --- running a search ---------------------------------------------------------------------
