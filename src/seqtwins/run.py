"""A training run on disk: the one module that knows a run folder's layout.

::

    .seqtwins.json       ownership marker, kind "run"
    .lock                exists while a process trains into the folder (it holds a flock on it)
    config.yaml          the resolved PretrainConfig
    dataset.json         lineage: the dataset's path, content hash, vocabulary, seqtwins version
    metrics.jsonl        one JSON line per logged step, per validation, and the final summary
    checkpoints/last/    the latest checkpoint (model, optimizer, RNG, TrainState)
    checkpoints/best/    the checkpoint with the best validation score (selected on valid users)
    summary.json         written when training ends: epochs, steps, best epoch and score,
                         seconds, world size, device and precision (bf16 autocast or fp32)
    model_card.md        written when training ends, rewritten by evaluate (rendered by
                         :mod:`seqtwins.model_card`, written by :meth:`Run.write_model_card`)
    incremental.json     an update (``pretrain --init OLD``): lineage (parent run, parent and
                         new data hashes), its settings and the item table's growth
    replay.parquet       an update: the replay reservoir it continued (seqtwins.incremental)

Everything else asks :class:`Run`: training creates and locks it, ``embed`` /
``evaluate`` / ``run`` / ``tune`` open it and ask for its config, checkpoints and encoder.
From Python::

    from seqtwins.run import Run

    run = Run.open("out/run")
    vectors = run.embed([["i1", "i7", "i3"], ["i2"]])  # (2, D) float32, original item ids
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from torch import nn

from seqtwins.checkpoint import (
    TrainState,
    load_model_tensors,
    load_state_dict_strict,
    non_finite,
)
from seqtwins.config import PretrainConfig, build, load_yaml, read_yaml, to_dict
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.files import (
    MARKER,
    Lock,
    atomic_write,
    check_replaceable,
    clean_stale,
    marker_kind,
    write_json,
    write_marker,
)
from seqtwins.models.encoder import (
    SequenceEncoder,
    build_encoder,
    embed_item_lists,
    load_encoder_tensors,
)

KIND = "run"
CONFIG = "config.yaml"
DATASET = "dataset.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
MODEL_CARD = "model_card.md"
LOCK = ".lock"
INCREMENTAL = "incremental.json"
REPLAY = "replay.parquet"
INCREMENTAL_PREFIX = "incremental."
"""State-dict keys of what only an update trains (the distillation predictor): not part
of the objective, left out when a run's objective is loaded."""
CHECKPOINTS = {"last": "checkpoints/last", "best": "checkpoints/best"}
"""The checkpoints a run keeps: name -> folder inside the run."""


def check_checkpoint(which: str, setting: str = "--checkpoint") -> str:
    """``which`` when it names a checkpoint a run keeps (:data:`CHECKPOINTS`), else the
    one-line error naming ``setting``."""
    if which not in CHECKPOINTS:
        raise SeqtwinsError(f"{setting} {which!r} must be one of {', '.join(sorted(CHECKPOINTS))}")
    return which


_OWNED = (CONFIG, DATASET, METRICS, SUMMARY, MODEL_CARD, INCREMENTAL, REPLAY, "checkpoints",
          "tensorboard")  # fmt: skip
"""What a new run replaces in a folder it may reuse (nothing else is touched)."""


@dataclass(frozen=True)
class Lineage:
    """Which dataset a run was trained on (``dataset.json``)."""

    path: str
    content_hash: str
    num_items: int
    vocab_size: int
    train_users: int
    seqtwins_version: str | None = None
    """None for runs written before seqtwins recorded its version."""

    @classmethod
    def from_json(cls, data: Any, where: Path) -> Lineage:
        if not isinstance(data, dict):
            raise SeqtwinsError(f"{where} is not a JSON object; retrain the run")
        try:
            lineage = cls(
                path=str(data["path"]), content_hash=str(data["content_hash"]),
                num_items=int(data["num_items"]), vocab_size=int(data["vocab_size"]),
                train_users=int(data["train_users"]),
                seqtwins_version=data.get("seqtwins_version"),
            )  # fmt: skip
        except KeyError as e:
            raise SeqtwinsError(f"{where} lacks {e.args[0]!r}; retrain the run") from None
        except (TypeError, ValueError) as e:
            raise SeqtwinsError(f"{where} has a bad value ({e}); retrain the run") from None
        if lineage.vocab_size < 3:
            raise SeqtwinsError(f"{where}: vocab_size={lineage.vocab_size} is too small")
        return lineage


def seqtwins_version() -> str | None:
    """The installed seqtwins version (None when running from an uninstalled source tree)."""
    try:
        return version("seqtwins")
    except PackageNotFoundError:
        return None


def is_legacy_run(path: Path) -> bool:
    """A run folder written before ownership markers: a config.yaml that is a pretraining
    config and a dataset.json that records a content hash (another tool's project with
    files of those names is not a run)."""
    try:
        cfg = read_yaml((path / CONFIG).read_text(encoding="utf-8"))
        info = json.loads((path / DATASET).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (
        isinstance(cfg, dict)
        and {"objective", "encoder", "train"} <= set(cfg)
        and isinstance(info, dict)
        and "content_hash" in info
    )


def _only_lock(path: Path) -> bool:
    return path.is_dir() and {p.name for p in path.iterdir()} <= {LOCK, MARKER}


def _read_json(file: Path, what: str) -> Any:
    if not file.is_file():
        raise SeqtwinsError(f"{file.parent} has no {file.name}; {what}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SeqtwinsError(f"{file} is not valid JSON ({e.__class__.__name__}); {what}") from None


def out_folder(out: Path | str) -> Path:
    """``--out`` of a command that writes a folder tree (a run, run, tune): not an existing
    file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SeqtwinsError(f"--out {out} is a file; give a folder")
    return out


def item_index(ds: SequenceDataset) -> dict[str, int]:
    """Original item id (as text) -> item index of ``ds``."""
    ids = ds.items["item_id"].cast(pl.String).to_list()
    return dict(zip(ids, ds.items["item_idx"].to_list(), strict=True))


def map_items(
    lookup: dict[str, int], sequences: Sequence[Sequence[Any]]
) -> tuple[list[np.ndarray], list[list[Any]]]:
    """Original item ids (matched as text: 7 and "7" are one id) -> index arrays (ids
    unknown to the dataset dropped), and each row's dropped ids as given."""
    mapped, unknown = [], []
    for seq in sequences:
        found = [lookup.get(str(x)) for x in seq]
        mapped.append(np.array([i for i in found if i is not None], np.int64))
        unknown.append([x for x, i in zip(seq, found, strict=True) if i is None])
    return mapped, unknown


class Run:
    """A run folder. :meth:`create` starts one, :meth:`open` reads one."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._config: PretrainConfig | None = None
        self._lineage: Lineage | None = None
        self._embedders: dict[str, tuple[SequenceDataset, SequenceEncoder]] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- creating and opening --

    @staticmethod
    def check_new(path: Path | str, overwrite: bool = False) -> None:
        """Raise unless a new run may be written to ``path``: absent or empty, a seqtwins
        run that stopped before its first checkpoint, or (with ``overwrite``) any folder
        that seqtwins wrote as a run."""
        path = out_folder(path)
        if not path.exists() or _only_lock(path):
            return
        run = Run(path)
        no_checkpoint = not any(run.has_checkpoint(w) for w in CHECKPOINTS)
        if not overwrite and run.is_ours() and not run.finished and no_checkpoint:
            return  # stopped before its first checkpoint: nothing to lose, start again
        if not overwrite:
            raise SeqtwinsError(
                f"{path} exists and is not empty; use --resume to continue it, "
                "another --out, or --overwrite"
            )
        owned = lambda p: is_legacy_run(p) or _only_lock(p)  # noqa: E731
        check_replaceable(path, "--out", owned=owned, kinds=(KIND,))

    @classmethod
    def create(
        cls,
        path: Path | str,
        cfg: PretrainConfig,
        ds: SequenceDataset,
        train_users: int | None = None,
        overwrite: bool = False,
    ) -> Run:
        """Start a run in ``path``: write its marker, dataset.json and config.yaml.

        A non-empty ``path`` is refused unless ``overwrite`` and it is a seqtwins run (its
        previous config, metrics, summary and checkpoints are then removed; nothing else
        in the folder is touched). ``train_users`` (recorded in dataset.json) defaults to
        the dataset's training split. Hold :meth:`locked` while calling this."""
        run = cls(path)
        path = run.path
        cls.check_new(path, overwrite)
        for name in _OWNED:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path, KIND)
        users = len(ds.split_users("train")) if train_users is None else int(train_users)
        # absolute: the model card and `Run.dataset` find it from any working directory
        lineage = Lineage(os.path.abspath(ds.path), ds.content_hash, ds.num_items, ds.vocab_size,
                          users, seqtwins_version())  # fmt: skip
        # dataset.json first: a folder with config.yaml always has its lineage too
        write_json(path / DATASET, asdict(lineage))
        atomic_write(path / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        run._config, run._lineage = cfg, lineage
        return run

    @classmethod
    def open(cls, path: Path | str) -> Run:
        """An existing run; its config.yaml and dataset.json are read and checked now."""
        run = cls(path)
        if not run.path.is_dir():
            raise SeqtwinsError(f"{run.path} is not a seqtwins run (no such folder)")
        _ = run.config, run.lineage
        return run

    # -- what is in it --

    @property
    def config(self) -> PretrainConfig:
        """The run's resolved PretrainConfig (config.yaml)."""
        if self._config is None:
            file = self.path / CONFIG
            if not file.is_file():
                raise SeqtwinsError(f"{self.path} is not a seqtwins run (no {CONFIG})")
            self._config = build(PretrainConfig, load_yaml(file))
        return self._config

    def trained_with(self, cfg: PretrainConfig) -> bool:
        """Whether config.yaml records exactly ``cfg``, every setting written out. A run
        written before a setting existed lacks its key: it was trained without it, even
        where the setting's default reads back equal."""
        written = load_yaml(self.path / CONFIG) if (self.path / CONFIG).is_file() else None
        return written == yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    @property
    def lineage(self) -> Lineage:
        """Which dataset the run was trained on (dataset.json)."""
        if self._lineage is None:
            file = self.path / DATASET
            data = _read_json(file, "it is not a complete seqtwins run; retrain it")
            self._lineage = Lineage.from_json(data, file)
        return self._lineage

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def finished(self) -> bool:
        """True when training ended (summary.json was written)."""
        return self.summary_file.is_file()

    def summary(self) -> dict[str, Any]:
        """The summary.json of a finished run."""
        data = _read_json(self.summary_file, "the run has not finished")
        if not isinstance(data, dict):
            raise SeqtwinsError(f"{self.summary_file} is not a JSON object")
        return data

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def write_model_card(self, text: str) -> Path:
        """Write ``model_card.md`` (atomically: a reader sees the old card or the new one),
        only into a folder seqtwins wrote as a run. Training writes it under its lock when
        it ends; ``evaluate`` rewrites it with its metrics."""
        if not self.is_ours():
            raise SeqtwinsError(
                f"{self.path} is not a seqtwins run; its {MODEL_CARD} is left alone"
            )
        path = self.path / MODEL_CARD
        atomic_write(path, text)
        return path

    def checkpoint(self, which: str = "best") -> Path:
        """The folder of checkpoint ``which`` (``best`` or ``last``); it may not exist."""
        return self.path / CHECKPOINTS[check_checkpoint(which, "checkpoint")]

    def has_checkpoint(self, which: str = "last") -> bool:
        return (self.checkpoint(which) / "state.json").is_file()

    def state(self, which: str = "last") -> TrainState:
        """The :class:`TrainState` of checkpoint ``which``."""
        return TrainState.read(self.checkpoint(which) / "state.json")

    def remove_checkpoints(self) -> None:
        """Delete the checkpoints (keeping config, lineage, metrics and summary)."""
        shutil.rmtree(self.path / "checkpoints", ignore_errors=True)

    def lock(self) -> Lock:
        """The lock of this run folder (acquire it, or use it as a context manager): a
        second process that trains into the same folder fails with one line."""
        return Lock(out_folder(self.path) / LOCK, f"run {self.path}", remove=True)

    @contextmanager
    def locked(self) -> Iterator[Run]:
        """Hold :meth:`lock` (released on exit; a run folder that taking it created and
        that stayed empty, because setup failed, is removed again)."""
        with self.lock():
            for which in CHECKPOINTS:  # temp folders of a checkpoint write that was killed
                clean_stale(self.checkpoint(which))
            yield self

    def is_ours(self) -> bool:
        return marker_kind(self.path) == KIND or is_legacy_run(self.path)

    # -- datasets and models --

    def check_dataset(self, ds: SequenceDataset) -> None:
        """Refuse a dataset other than the one the run was trained on."""
        info = self.lineage
        if info.content_hash != ds.content_hash:
            raise SeqtwinsError(
                f"{self.path} was trained on dataset {info.path} (hash {info.content_hash[:12]}), "
                f"not on {ds.path} (hash {ds.content_hash[:12]}); item vocabularies differ"
            )

    def dataset(self, verify: bool = True) -> SequenceDataset:
        """The dataset recorded in dataset.json (it must still be at that path)."""
        ds = SequenceDataset.open(self.lineage.path, verify=verify)
        self.check_dataset(ds)
        return ds

    def _new_encoder(self, ds: SequenceDataset | None) -> SequenceEncoder:
        cfg = self.config
        if ds is not None:
            self.check_dataset(ds)
        elif cfg.encoder.use_categories:
            ds = self.dataset()
        if ds is None:
            return SequenceEncoder(cfg.encoder, vocab_size=self.lineage.vocab_size)
        return build_encoder(cfg.encoder, ds, vocab_size=self.lineage.vocab_size)

    def _model_file(self, which: str) -> Path:
        file = self.checkpoint(which) / "model.safetensors"
        if not file.is_file():
            raise SeqtwinsError(
                f"{self.path} has no {which} checkpoint; train it with seqtwins pretrain"
            )
        return file

    def model_digest(self, which: str = "best") -> str:
        """SHA-256 (hex) of checkpoint ``which``'s weights file: names exactly the encoder
        that made a file of embeddings (:mod:`seqtwins.embed` records it)."""
        digest = hashlib.sha256()
        with open(self._model_file(which), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def encoder(self, which: str = "best", ds: SequenceDataset | None = None) -> SequenceEncoder:
        """The trained encoder (checkpoint ``which``), strictly loaded, in eval mode.

        ``ds`` (when given) must be the run's dataset; a run trained with
        ``encoder.use_categories`` reads its category table from ``ds`` or, without it,
        from the recorded dataset. NaN or infinite weights are refused."""
        file = self._model_file(which)
        encoder = self._new_encoder(ds)
        return load_encoder_tensors(encoder, load_model_tensors(file), str(file))

    def objective(self, which: str = "best", ds: SequenceDataset | None = None) -> nn.Module:
        """The whole trained objective (encoder and heads), strictly loaded, in eval mode."""
        from seqtwins.objectives import build_objective

        file = self._model_file(which)
        cfg = self.config
        model = build_objective(cfg.objective, self._new_encoder(ds), cfg.barlow, cfg.dual,
                                cfg.next)  # fmt: skip
        tensors = load_model_tensors(file)
        load_state_dict_strict(
            model,
            {k: v for k, v in tensors.items() if not k.startswith(INCREMENTAL_PREFIX)},
            str(self.checkpoint(which)),
        )
        bad = non_finite(dict(model.state_dict()))
        if bad:
            raise SeqtwinsError(f"{file} holds NaN or infinite weights; retrain the run")
        return model.eval()

    def embed(
        self,
        sequences: Sequence[Sequence[Any]],
        ds: SequenceDataset | None = None,
        which: str = "best",
        batch_size: int = 1024,
        verify: bool = True,
    ) -> np.ndarray:
        """Embeddings ``(len(sequences), D)`` float32 of item sequences given as lists of
        original item ids (oldest first), mapped through the run's dataset (default: the
        recorded one, its content hash checked unless ``verify=False``). Unknown ids are
        dropped with a warning; a sequence with no known item is an error."""
        if isinstance(sequences, str | bytes) or not all(
            isinstance(s, Sequence) and not isinstance(s, str | bytes) for s in sequences
        ):
            raise SeqtwinsError("sequences must be a list of lists of item ids")
        if ds is None and which in self._embedders:  # repeated calls: opened once
            ds, encoder = self._embedders[which]
        else:
            ds = ds if ds is not None else self.dataset(verify)
            encoder = self.encoder(which, ds)
            self._embedders[which] = (ds, encoder)
        mapped, dropped = map_items(item_index(ds), sequences)
        unknown = sum(len(d) for d in dropped)
        empty = [i for i, m in enumerate(mapped) if not len(m)]
        if empty:
            raise SeqtwinsError(
                f"sequence {empty[0]} has no item known to the run's dataset {ds.path} "
                f"({len(empty)} such sequences); remove them or add known items"
            )
        if unknown:
            warnings.warn(f"dropped {unknown} unknown item ids", stacklevel=2)
        return embed_item_lists(encoder, mapped, batch_size)
