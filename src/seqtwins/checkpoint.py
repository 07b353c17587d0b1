"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a directory, written atomically::

    model.safetensors   the objective's state dict (encoder.*, projector.*, ...)
    optim.safetensors   optimizer tensors, flattened as ``state.<param index>.<name>``
    rng.safetensors     torch RNG state(s)
    state.json          progress counters, optimizer hyper-parameters, scalar state
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from seqtwins.errors import SeqtwinsError
from seqtwins.files import atomic_dir


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
    state: dict[str, Any],
) -> None:
    """Write a checkpoint directory atomically (replacing an older one at ``path``)."""
    with atomic_dir(path, overwrite=True) as tmp:
        save_model(model, tmp / "model.safetensors")
        full_state = dict(state)
        if optimizer is not None:
            tensors, rest = optimizer_to_flat(optimizer)
            save_file(tensors, str(tmp / "optim.safetensors"))
            full_state["optimizer"] = rest
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
    """``load_state_dict`` that names exactly which keys are missing or unexpected."""
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SeqtwinsError(
            f"{what} does not match the model: missing keys {sorted(result.missing_keys)}, "
            f"unexpected keys {sorted(result.unexpected_keys)}"
        )


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
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (strictly) and ``optimizer``; return its state."""
    state_file = path / "state.json"
    if not state_file.is_file():
        raise SeqtwinsError(f"{path} holds no checkpoint (no state.json)")
    state: dict[str, Any] = json.loads(state_file.read_text())
    load_state_dict_strict(model, load_model_tensors(path / "model.safetensors"), str(path))
    if optimizer is not None:
        tensors = load_tensors(path / "optim.safetensors")
        optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
    if restore_rng:
        rng = load_tensors(path / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state
