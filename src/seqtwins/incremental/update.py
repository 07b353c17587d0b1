"""An incremental update: ``seqtwins pretrain NEW_DATA --init OLD_RUN --out NEW_RUN``.

Training calls three functions, in order, and stays as it is otherwise:

- :func:`start_update` (before setup): opens the old run, checks that the new config
  keeps its encoder's shape, maps the new item indices to the old ones (by original id),
  continues the old lineage's replay reservoir and, with ``replay``, adds its sequences to
  the training users;
- :meth:`Update.attach` (after the model is built): loads the old weights into it
  (strictly: the only missing keys allowed are listed in :data:`EXPECTED_MISSING`), grows
  the item table (:mod:`seqtwins.incremental.growth`) and adds the distillation
  predictor; :meth:`Update.wrap` adds the distillation and compatibility losses to each
  step;
- :meth:`Update.record` (when the run folder is created): writes the lineage
  (``incremental.json``: parent run, parent and new data hashes, settings, growth) and the
  reservoir (``replay.parquet``).

A resumed update (``--resume``) reads its settings and reservoir back from the run folder,
so it continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqtwins.checkpoint import load_model_tensors, load_state_dict_strict
from seqtwins.config import PretrainConfig, build, to_dict
from seqtwins.data.dataset import PAD, SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.files import write_json
from seqtwins.incremental.config import IncrementalConfig
from seqtwins.incremental.growth import grow_item_table, presence, vocab_map
from seqtwins.incremental.losses import Predictor, compat_loss, distill_loss
from seqtwins.incremental.replay import Reservoir, histories, with_replay
from seqtwins.models.encoder import SequenceEncoder
from seqtwins.run import INCREMENTAL, INCREMENTAL_PREFIX, REPLAY, Run

SHAPE_KEYS = ("dim", "layers", "heads", "ff_dim", "max_len", "pooling", "use_categories")
"""Encoder settings an update must keep: they fix the shapes of the old weights."""
EXPECTED_MISSING = ("encoder.item_cat_codes",)
"""Keys of a new model that the old checkpoint may lack: the category codes come from the
new dataset (suffixes; the predictor under ``incremental.`` is new as well)."""


def check_compatible(old: PretrainConfig, new: PretrainConfig, init: Path) -> None:
    """One line naming the first setting that makes the old weights unusable."""
    if old.objective != new.objective:
        raise SeqtwinsError(
            f"--init {init}: objective={new.objective!r} differs from the old run's "
            f"{old.objective!r}; an update keeps the objective (drop the setting, or train "
            "from scratch)"
        )
    for key in SHAPE_KEYS:
        a, b = getattr(old.encoder, key), getattr(new.encoder, key)
        if a != b:
            raise SeqtwinsError(
                f"--init {init}: encoder.{key}={b} differs from the old run's encoder.{key}={a}; "
                "an update keeps the encoder's shape (drop the setting, or train from scratch)"
            )
    if old.barlow.projector != new.barlow.projector:
        raise SeqtwinsError(
            f"--init {init}: barlow.projector={list(new.barlow.projector)} differs from the "
            f"old run's {list(old.barlow.projector)}; an update keeps the projector's shape"
        )


def update_config(
    init: Path | str, layers: list[dict[str, Any]], overrides: list[str]
) -> PretrainConfig:
    """The config of an update: the old run's config, then ``layers`` and ``overrides``."""
    return build(PretrainConfig, to_dict(Run.open(init).config), *layers, overrides=overrides)


def read_record(run: Run) -> dict[str, Any] | None:
    """The ``incremental.json`` of ``run``; ``None`` for a run trained from scratch."""
    file = run.path / INCREMENTAL
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        raise SeqtwinsError(f"{file} is not valid JSON; retrain the update") from None
    if not isinstance(data, dict) or "parent_run" not in data:
        raise SeqtwinsError(f"{file} lacks parent_run; retrain the update")
    return data


@dataclass
class Update:
    """What an update adds to training (module docstring)."""

    parent: Run
    inc: IncrementalConfig
    new_to_old: np.ndarray
    """(new vocab,) old item index of each new one, 0 where the old table lacks it."""
    reservoir: Reservoir
    replayed: int
    """Reservoir sequences added to this update's training users."""
    data: SequenceDataset
    growth: dict[str, int] = field(default_factory=dict)
    old_encoder: SequenceEncoder | None = None

    def attach(self, model: nn.Module, train_ds: SequenceDataset, device: torch.device) -> None:
        """Load the old weights into ``model`` (item table grown), add the predictor."""
        file = self.parent.checkpoint(self.inc.which) / "model.safetensors"
        if not file.is_file():
            raise SeqtwinsError(
                f"--init {self.parent.path} has no {self.inc.which} checkpoint; finish training "
                "it, or set incremental.which"
            )
        old = {k: v for k, v in load_model_tensors(file).items()
               if not k.startswith(INCREMENTAL_PREFIX)}  # fmt: skip
        if self.inc.distill:
            model.add_module(INCREMENTAL_PREFIX.rstrip("."), nn.ModuleDict(
                {"predictor": Predictor(encoder_dim(model))}))  # fmt: skip
        own = model.state_dict()
        table = None  # the key of the first item table, grown once
        for key in own:
            if key.endswith("item_emb.weight") and key in old:
                if table is None:
                    users = train_ds.split_users("train")
                    held = presence(train_ds.sequences, users, len(self.new_to_old))
                    gen = torch.Generator().manual_seed(self.inc.seed)
                    old[key], self.growth = grow_item_table(old[key], self.new_to_old, held, gen)
                    table = key
                else:  # an alias of the same table (an encoder shared by two objectives)
                    old[key] = old[table]
            elif key.startswith(INCREMENTAL_PREFIX) or key.endswith(EXPECTED_MISSING):
                old[key] = own[key]  # new: the predictor, the new dataset's category codes
            elif key.endswith("cat_emb.weight") and key in old and old[key].shape != own[key].shape:
                n = min(len(old[key]), len(own[key]))  # categories grew: keep the common rows
                old[key] = torch.cat([old[key][:n], own[key][n:]])
        load_state_dict_strict(model, old, f"--init {file}")
        model.to(device)
        if self.inc.needs_old_encoder:
            enc = self.parent.encoder(self.inc.which).to(device)
            self.old_encoder = enc.requires_grad_(False).eval()

    def wrap(
        self, step: Any, encoder: SequenceEncoder, model: nn.Module, device: torch.device
    ) -> Any:
        """The training step with the distillation and compatibility losses added."""
        if self.old_encoder is None:
            return step
        predictor = (
            model.get_submodule(f"{INCREMENTAL_PREFIX}predictor") if self.inc.distill else None
        )
        lut = torch.from_numpy(self.new_to_old).to(device)
        return UpdateStep(step, encoder, self.old_encoder, predictor, lut, self.inc)

    def record(self, run: Run) -> None:
        """Write the lineage and the reservoir into the new run folder."""
        self.reservoir.write(run.path / REPLAY)
        lineage = self.parent.lineage
        write_json(run.path / INCREMENTAL, {
            "parent_run": str(self.parent.path),
            "parent_checkpoint": self.inc.which,
            "parent_data": {"path": lineage.path, "content_hash": lineage.content_hash,
                            "num_items": lineage.num_items},
            "data": {"path": str(self.data.path), "content_hash": self.data.content_hash,
                     "num_items": self.data.num_items},
            "incremental": asdict(self.inc),
            "items": self.growth,
            "replay": {"seen": self.reservoir.seen, "size": self.reservoir.frame.height,
                       "mixed_in": self.replayed},
        })  # fmt: skip


def start_update(
    run: Run,
    ds: SequenceDataset,
    cfg: PretrainConfig,
    init: Path | str | None,
    inc: IncrementalConfig | None,
    resume: bool,
) -> tuple[Update, SequenceDataset]:
    """The :class:`Update` of ``run`` and the dataset to train on (with replay: ``ds`` plus
    the reservoir's sequences). With ``resume`` everything is read back from ``run``."""
    record = read_record(run) if resume else None
    if record is not None:
        init = record["parent_run"]
        inc = build(IncrementalConfig, record["incremental"])
    assert init is not None
    inc = inc or IncrementalConfig()
    parent = Run.open(init)
    check_compatible(parent.config, cfg, Path(init))
    parent_ds = parent.dataset(verify=False)  # its item ids and its training sequences
    new_to_old = vocab_map(parent_ds.items["item_id"], ds.items["item_id"])
    if record is not None:
        reservoir = Reservoir.read(run.path / REPLAY, int(record["replay"]["seen"]))
    else:
        prior = read_record(parent)
        reservoir = Reservoir.empty() if prior is None else Reservoir.read(
            parent.path / REPLAY, int(prior["replay"]["seen"]))  # fmt: skip
        capacity = inc.reservoir_size(len(ds.split_users("train")))
        stream = histories(parent_ds, cfg.encoder.max_len)
        reservoir = reservoir.add(stream, capacity, np.random.default_rng(inc.seed))
    train_ds, replayed = with_replay(ds, reservoir) if inc.replay else (ds, 0)
    return Update(parent, inc, new_to_old, reservoir, replayed, ds), train_ds


def encoder_dim(model: nn.Module) -> int:
    """The embedding width of an objective's encoder."""
    encoder = model.get_submodule("encoder")
    assert isinstance(encoder, SequenceEncoder)
    return encoder.dim


def left_pack(items: Tensor) -> Tensor:
    """Move the non-padding entries of each row of ``(B, T)`` to its front, in order (the
    encoder reads right-padded rows); items the old table lacks became padding."""
    order = torch.argsort((items == PAD).to(torch.int8), dim=1, stable=True)
    return items.gather(1, order)  # (B, T)


class UpdateStep:
    """A training step plus ``distill_weight * distill + compat_weight * compat`` on the
    first view (or the context) of each batch, against the frozen old encoder.

    The new embedding of that view is the one the training step itself computed (read with
    :meth:`SequenceEncoder.tap`: every objective's first embedding pass starts with the
    first view or the context), so the update adds no second pass of the new encoder: the
    distillation and compatibility losses see the very features the objective trains on,
    as CaSSLe distils them. The old encoder runs once per batch on that same view, without
    gradients."""

    def __init__(
        self,
        step: Any,
        encoder: SequenceEncoder,
        old: SequenceEncoder,
        predictor: nn.Module | None,
        new_to_old: Tensor,
        inc: IncrementalConfig,
    ) -> None:
        self.step, self.encoder, self.old = step, encoder, old
        self.predictor, self.new_to_old, self.inc = predictor, new_to_old, inc

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        view = batch["view_a"] if "view_a" in batch else batch["context"]  # (B, T)
        with self.encoder.tap() as taps:
            loss, logs = self.step(batch)
        with torch.no_grad():
            old_view = left_pack(self.new_to_old[view])
            seen = (old_view != PAD).any(1)  # rows with at least one known item
            if not bool(seen.any()):
                return loss, logs
            z_old = self.old.embed(old_view[seen])  # (B', D)
        z_new = first_view(taps, view)
        if z_new is None:  # the step's pass was not recorded (e.g. compiled away): encode
            z_new = self.encoder.embed(view)
        z_new = z_new[seen]  # (B', D)
        inc = self.inc
        if self.predictor is not None and inc.distill_weight > 0:
            d = distill_loss(self.predictor(z_new), z_old, inc.distill_loss)
            loss = loss + inc.distill_weight * d
            logs = {**logs, "distill": float(d.detach())}
        if inc.compat and inc.compat_weight > 0:
            c = compat_loss(z_new, z_old)
            loss = loss + inc.compat_weight * c
            logs = {**logs, "compat": float(c.detach())}
        return loss, logs


def first_view(taps: list[Tensor], view: Tensor) -> Tensor | None:
    """The ``(B, D)`` embeddings of ``view`` (B, T) among a training step's recorded passes:
    the first ``B`` rows of its first pass (the objectives stack the first view first);
    ``None`` when nothing usable was recorded."""
    if not taps or taps[0].dim() != 2 or taps[0].shape[0] < view.shape[0]:
        return None
    return taps[0][: view.shape[0]]
