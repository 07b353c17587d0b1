"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a directory, written atomically::

    model.safetensors   the objective's state dict (encoder.*, projector.*, ...)
    optim.safetensors   optimizer tensors, flattened as ``state.<param index>.<name>``
    rng.safetensors     torch RNG state(s)
    state.json          progress counters, optimizer hyper-parameters, scalar state
                        (:class:`TrainState`, its schema)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from seqtwins.errors import SeqtwinsError
from seqtwins.files import atomic_dir


@dataclass
class TrainState:
    """Where a training run stands: the schema of a checkpoint's ``state.json``.

    Counters are those *after* the last completed step; ``batch`` is the position inside
    ``epoch`` (0 = the epoch has not started). ``metrics_pos`` is the size of
    metrics.jsonl when the checkpoint was written (a resumed run truncates it back).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_score: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    metrics_pos: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    scheduler: dict[str, Any] | None = None
    """``LRScheduler.state_dict()`` (JSON-ready: lambdas are stored as None)."""
    optimizer: dict[str, Any] | None = None
    """The optimizer's hyper-parameters and scalars (its tensors are in optim.safetensors)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> TrainState:
        """Validate a parsed state.json; anything else is a one-line :class:`SeqtwinsError`."""

        def bad(why: str) -> SeqtwinsError:
            return SeqtwinsError(
                f"{where} is not a valid checkpoint state ({why}); resume from another "
                "checkpoint or retrain with --overwrite"
            )

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data) - {"scheduler", "optimizer"})
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        for key in ("epoch", "batch", "step", "best_epoch", "bad_epochs", "metrics_pos"):
            value = data[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                raise bad(f"{key}={value!r} is not a count")
        for key in ("seconds", "best_score"):
            value = data[key]
            if value is None and key == "best_score":
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise bad(f"{key}={value!r} is not a number")
            if not math.isfinite(value):
                raise bad(f"{key}={value!r} is not finite")
        if not isinstance(data["stopped_early"], bool):
            raise bad(f"stopped_early={data['stopped_early']!r} is not true/false")
        for key in ("scheduler", "optimizer"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise bad(f"{key} is not a mapping")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls, file: Path) -> TrainState:
        """Read and validate ``file`` (a checkpoint's state.json)."""
        if not file.is_file():
            raise SeqtwinsError(f"{file.parent} holds no checkpoint (no state.json)")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise SeqtwinsError(
                f"{file} is not valid JSON ({e.__class__.__name__}); resume from another "
                "checkpoint or retrain with --overwrite"
            ) from None
        return cls.from_json(data, file)


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into safetensors-ready tensors and JSON-ready rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, extra in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
) -> None:
    """Write a checkpoint directory atomically (replacing an older one at ``path``)."""
    with atomic_dir(path, overwrite=True) as tmp:
        save_model(model, tmp / "model.safetensors")
        full_state = state.to_json()
        if optimizer is not None:
            tensors, rest = optimizer_to_flat(optimizer)
            save_file(tensors, str(tmp / "optim.safetensors"))
            full_state["optimizer"] = rest
        else:
            full_state.pop("optimizer")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(full_state, indent=2) + "\n")


def save_model(model: torch.nn.Module, file: Path) -> None:
    """Save a state dict; tensors shared under several names (an encoder used by two
    sub-objectives) are stored once and the other names recorded as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, torch.Size], str] = {}
    for key, value in model.state_dict().items():
        ident = (value.data_ptr(), value.shape)
        if value.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().cpu().contiguous()
    save_file(tensors, str(file), metadata={"aliases": json.dumps(aliases)})


def load_model_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The full state dict saved by :func:`save_model`, aliases expanded."""
    tensors = load_tensors(file)
    with safe_open(str(file), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for key, target in aliases.items():
        tensors[key] = tensors[target]
    return tensors


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str
) -> None:
    """``load_state_dict`` that names exactly which keys are missing or unexpected, or the
    first tensor whose shape differs (e.g. config.yaml edited after training)."""
    own = module.state_dict()
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise SeqtwinsError(
                f"{what} does not match the model: {key} has shape {tuple(value.shape)}, the "
                f"model (from config.yaml) expects {tuple(own[key].shape)}"
            )
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SeqtwinsError(
            f"{what} does not match the model: missing keys {sorted(result.missing_keys)}, "
            f"unexpected keys {sorted(result.unexpected_keys)}"
        )


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinite values."""
    return [
        k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise SeqtwinsError(f"{file} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise SeqtwinsError(f"{file} is corrupt ({e})") from e


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
) -> TrainState:
    """Load a checkpoint into ``model`` (strictly) and ``optimizer``; return its state."""
    state = TrainState.read(path / "state.json")
    load_state_dict_strict(model, load_model_tensors(path / "model.safetensors"), str(path))
    if optimizer is not None:
        if state.optimizer is None:
            raise SeqtwinsError(f"{path / 'state.json'} has no optimizer state; cannot resume")
        tensors = load_tensors(path / "optim.safetensors")
        try:
            optimizer.load_state_dict(optimizer_from_flat(tensors, state.optimizer))
        except (KeyError, ValueError, TypeError) as e:
            raise SeqtwinsError(
                f"{path}: the optimizer state does not match the model ({e}); retrain with "
                "--overwrite"
            ) from None
    if restore_rng:
        rng = load_tensors(path / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state
