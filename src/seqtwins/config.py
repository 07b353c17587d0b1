"""Typed configuration: nested dataclasses, YAML presets and ``--set key=value`` overrides.

Each component owns its defaults (a dataclass next to the code that uses it, with a
docstring per field); :class:`PretrainConfig` composes them.

One convention for every config dataclass: it validates itself in ``__post_init__`` and
raises ``ValueError`` whose message names the dotted key (``encoder.dim=70 must be
divisible by encoder.heads=4``), so a config built in Python fails at construction.
:func:`build` alone turns that into a one-line :class:`SeqtwinsError` for the CLI.
Settings that must agree are derived, not repeated (``augment.max_len`` is
``encoder.max_len``).
"""

from __future__ import annotations

import dataclasses
import math

from seqtwins.augment import AugmentConfig
from seqtwins.models.encoder import EncoderConfig
from seqtwins.objectives import OBJECTIVES, BarlowConfig, DualConfig, MaskConfig, NextItemConfig
from seqtwins.settings import (  # the generic machinery, re-exported (torch-free there)
    build,
    deep_merge,
    from_dict,
    load_yaml,
    nest,
    parse_override,
    read_yaml,
    to_dict,
)

__all__ = [
    "BACKENDS",
    "OBJECTIVES",
    "PRECISIONS",
    "PretrainConfig",
    "TrainConfig",
    "build",
    "deep_merge",
    "from_dict",
    "load_yaml",
    "nest",
    "parse_override",
    "read_yaml",
    "to_dict",
]

# --- the pretraining stage ----------------------------------------------------------------

PRECISIONS = ("auto", "bf16", "fp32")
BACKENDS = ("auto", "gloo", "nccl")  # see seqtwins.distributed.resolve_backend


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping of ``seqtwins pretrain``."""

    epochs: int = 20
    """Passes over the training users (each user once per epoch)."""
    min_steps: int = 0
    """Train at least this many optimiser steps: a dataset with few training users gets
    ``ceil(min_steps / steps per epoch)`` epochs when that is more than ``epochs``, and
    ``patience`` grows in the same ratio (0 = ``epochs`` as given). Epochs are a poor
    budget across dataset sizes: ML-1M (2,099 training users, 8 steps per epoch) stopped
    after ~100 steps where Beauty takes ~1,400 (benchmarks/results/spike_min_steps.md)."""
    batch_size: int = 256
    """Users per step. Barlow Twins works at small batches (arXiv:2505.00953); the dual
    encoder's negatives are the other users' items, so its quality depends on this."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (after warm-up)."""
    weight_decay: float = 0.01
    """AdamW weight decay, applied only to weights with ``dim >= 2`` (not biases/norms)."""
    warmup_frac: float = 0.05
    """Fraction of all steps with linear warm-up; cosine decay to ``min_lr_ratio`` after."""
    min_lr_ratio: float = 0.01
    """Final learning rate as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    precision: str = "auto"
    """``bf16`` autocast, ``fp32``, or ``auto``: bf16 on CPUs with native bf16 matmul
    (AVX512-BF16 / AMX; ~1.5x faster there for the default encoder), fp32 on CUDA (bf16
    was 7x slower than fp32 for the default small encoder on an H200; choose ``bf16`` for
    large encoders) and on other CPUs."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: bool = False
    """Wrap the model in ``torch.compile`` (dynamic shapes; slow first steps). Pair it with
    ``encoder.pack_threshold=1.0``: the packed token path has data-dependent shapes that
    break the compiled graph."""
    num_workers: int = 0
    """DataLoader worker processes for augmentation and collation (0 = in the main process)."""
    seed: int = 0
    """Seed of initialisation, batch order, augmentations and dropout."""
    bucket_by_length: bool = True
    """Group users of similar history length into batches (less padding)."""
    patience: int = 3
    """Early stopping: epochs without improvement of the validation score (0 = never stop);
    grown with the epochs when ``min_steps`` raises them."""
    select_from: float = 0.25
    """Selection starts after this fraction of ``epochs`` (as raised by ``min_steps``): the
    epochs before ``floor(select_from * epochs)`` are validated and logged, but are never
    the ``best`` checkpoint and do not count towards ``patience``. On few valid users the
    proxy is noisy enough to crown an epoch-0 checkpoint and stop there (0 = select from the
    first epoch)."""
    valid_users: int = 5000
    """Validation uses every valid user up to this many, else a seeded sample of this many
    (the ``valid`` record of metrics.jsonl says how many it used). The proxy's probes are
    closed form, so 5,000 users cost a fraction of a second per epoch."""
    log_every: int = 20
    """Write a metrics line every this many steps."""
    checkpoint_every: int = 0
    """Also checkpoint every this many steps inside an epoch (0 = only at epoch ends)."""
    threads: int = 0
    """torch intra-op threads on CPU (0 = leave torch's default)."""
    backend: str = "auto"
    """``torch.distributed`` backend when launched with several processes (``torchrun``):
    ``auto`` (nccl on CUDA, gloo on CPU), ``gloo`` or ``nccl``. Unused in one process.
    ``batch_size`` stays the global batch, split equally over the processes
    (``docs/distributed.md``)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.batch_size < 2:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be >= 2: Barlow Twins standardises "
                "over the batch and the dual encoder's negatives are the other users"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr={self.lr} must be a finite number > 0")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"train.warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not 0 <= self.select_from < 1:
            raise ValueError(f"train.select_from={self.select_from} must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision={self.precision!r} must be one of {PRECISIONS}")
        for name in (
            "weight_decay",
            "grad_clip",
            "num_workers",
            "patience",
            "min_steps",
            "checkpoint_every",
            "threads",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.{name}={value} must be a finite number >= 0")
        if self.valid_users < 2:
            raise ValueError(f"train.valid_users={self.valid_users} must be >= 2")
        if self.backend not in BACKENDS:
            raise ValueError(f"train.backend={self.backend!r} must be one of {BACKENDS}")


@dataclasses.dataclass
class PretrainConfig:
    """Everything ``seqtwins pretrain`` needs; each part owns its defaults.

    All objectives share one encoder architecture and training budget, so that their
    comparison is fair (docs/evidence.md, "Fairness rules").
    """

    objective: str = "barlow"
    """``barlow``, ``dual``, ``barlow+next`` or ``barlow+mask``."""
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    barlow: BarlowConfig = dataclasses.field(default_factory=BarlowConfig)
    dual: DualConfig = dataclasses.field(default_factory=DualConfig)
    next: NextItemConfig = dataclasses.field(default_factory=NextItemConfig)
    mask: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective={self.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}"
            )
        if self.augment.max_len is None:  # derived: the views are what the encoder reads
            self.augment = dataclasses.replace(self.augment, max_len=self.encoder.max_len)
        elif self.augment.max_len != self.encoder.max_len:
            raise ValueError(
                f"augment.max_len={self.augment.max_len} must equal "
                f"encoder.max_len={self.encoder.max_len}; leave augment.max_len unset, it "
                "follows encoder.max_len"
            )
