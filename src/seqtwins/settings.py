"""The machinery of typed settings, without the models: dataclasses from (partial)
mappings, YAML files, ``--set key=value`` overrides, and :func:`build`.

:mod:`seqtwins.config` (the pretraining configs) re-exports all of it; commands that need no
model (``prepare``, ``synth``) import it from here, so that they do not load torch
(about a second and 200 MB of memory).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from seqtwins.errors import SeqtwinsError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where lossless (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except SeqtwinsError as e:
                errors.append(str(e))
        raise SeqtwinsError(f"{key}={value!r} must be {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in args:
            raise SeqtwinsError(f"{key}={value!r} must be one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise SeqtwinsError(f"{key}={value!r} must be a list")
        elem = args[0] if args else Any
        items = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise SeqtwinsError(f"{key} must be a mapping of settings, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise SeqtwinsError(f"{key}={value!r} must be a path")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise SeqtwinsError(f"{key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SeqtwinsError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise SeqtwinsError(f"{key}={value!r} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SeqtwinsError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):  # no setting means anything with NaN or infinity
            raise SeqtwinsError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SeqtwinsError(f"{key}={value!r} must be a string")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        key = f"{prefix}.{sorted(unknown)[0]}" if prefix else sorted(unknown)[0]
        raise SeqtwinsError(
            f"unknown setting {key!r}; known under {prefix or 'the top level'}: "
            f"{', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    obj = cls(**kwargs)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data (YAML/JSON-ready) form of a dataclass; tuples become lists. Mappings and
    lists are copied, so changing the result never changes ``obj``."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(obj)
    assert isinstance(out, dict)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is read as YAML."""
    if "=" not in text:
        raise SeqtwinsError(f"--set {text!r} must look like key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("a.b.c", 1)`` -> ``{"a": {"b": {"c": 1}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain PyYAML
    keeps the last one silently: a preset's setting would vanish)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """YAML text as plain data; a duplicated key is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: Path | str) -> dict[str, Any]:
    """A YAML config file as a mapping; one clear line for any problem with it."""
    path = Path(path)
    if not path.is_file():
        raise SeqtwinsError(f"config file {path} does not exist")
    try:
        data = read_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise SeqtwinsError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or e.__class__.__name__
        raise SeqtwinsError(f"{path}{where}: not valid YAML ({problem})") from e
    if not isinstance(data, dict):
        raise SeqtwinsError(f"{path}: a config must be a mapping of settings")
    return data


def build(
    cls: type[T],
    *layers: Mapping[str, Any],
    overrides: Iterable[str] = (),
    prefix: str = "",
) -> T:
    """Compose ``cls`` from defaults, mappings (e.g. YAML presets) and ``key=value`` overrides.

    The dataclasses validate themselves (``__post_init__``); their ``ValueError`` becomes a
    one-line :class:`SeqtwinsError` here, the one place that does so. ``prefix`` is where
    ``cls`` sits in a larger file (``data.prepare``): keys in messages are spelt from there."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = deep_merge(data, layer)
    for text in overrides:
        key, value = parse_override(text)
        data = deep_merge(data, nest(key, value))
    try:
        return from_dict(cls, data, prefix=prefix)
    except ValueError as e:
        message = str(e)
        if prefix and not message.startswith(f"{prefix}."):
            message = f"{prefix}.{message}"
        raise SeqtwinsError(message) from e
