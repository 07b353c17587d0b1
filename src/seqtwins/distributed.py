"""Data-parallel pretraining with ``torch.distributed``: process group, ranks, DDP, helpers.

``seqtwins pretrain`` runs unchanged under ``torchrun`` (or any launcher that sets the
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` variables, or
that has already initialised the default process group, as Ray Train does)::

    torchrun --nproc_per_node 2 -m seqtwins pretrain DATA --out RUN

:func:`session` sets up the process group (``train.backend``: ``auto`` = nccl on GPU, gloo
on CPU) and returns a :class:`World`; the training loop asks it for its rank, its share of
each batch, DDP wrapping, and the few collectives it needs (agreeing on a non-finite loss,
averaging logged values, broadcasting the validation record). See ``docs/distributed.md``.

Two things make a DDP run compute the single-process gradient on the concatenated (global)
batch:

* the losses reduce over ranks with autograd-aware collectives (``barlow.distributed``,
  ``dual.distributed``; set automatically when the world has more than one process);
* batch normalisation inside the Barlow Twins projector uses global-batch statistics
  (:class:`GlobalBatchNorm1d`, what ``torch.nn.SyncBatchNorm`` does on GPU only;
  facebookresearch/barlowtwins converts its projector the same way).
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from seqtwins.config import BACKENDS
from seqtwins.errors import SeqtwinsError

T = TypeVar("T")


# --- ranks from the environment --------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SeqtwinsError(f"environment variable {name}={raw!r} must be an integer") from None


def env_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (``torchrun``
    sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``); ``(0, 1, 0)`` when unset."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise SeqtwinsError(
            f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} are inconsistent: need "
            "WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE (launch with torchrun)"
        )
    return rank, world, local


def get_rank() -> int:
    """This process's rank: from the process group when initialised, else ``RANK`` (0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return env_ranks()[0]


def get_world_size() -> int:
    """Number of processes: from the process group when initialised, else ``WORLD_SIZE``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env_ranks()[1]


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process): the one that writes and prints."""
    return get_rank() == 0


def resolve_backend(name: str, device: torch.device) -> str:
    """The process-group backend for ``train.backend``: ``auto`` is nccl on CUDA devices
    and gloo on CPU; nccl on a CPU device is refused."""
    if name not in BACKENDS:
        raise SeqtwinsError(f"train.backend={name!r} must be one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise SeqtwinsError(
            f"train.backend=nccl needs CUDA devices but training runs on {device}; "
            "use train.backend=gloo (or auto)"
        )
    return name


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; anything else is a one-line error."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not 0 <= int(m[1]) < int(m[2]):
        raise SeqtwinsError(
            f"--shard {text!r} must be i/n with 0 <= i < n (shard i of n), e.g. 0/4"
        )
    return int(m[1]), int(m[2])


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous block ``[start, stop)`` of ``range(n)`` for shard ``index`` of ``count``:
    sizes differ by at most one and the blocks, in order, tile ``range(n)``."""
    return n * index // count, n * (index + 1) // count


# --- global-batch batch normalisation --------------------------------------------------------


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the global batch of all ranks.

    Mean and (biased) variance are summed over ranks with the autograd-aware
    ``torch.distributed.nn.functional.all_reduce``, so gradients flow to every rank's
    inputs; the running statistics get the global values (unbiased variance, like
    ``BatchNorm1d``), so they stay identical on all ranks. Without an initialised process
    group of more than one process, or in eval mode, it is ``BatchNorm1d``. Works on CPU
    (gloo) and GPU, unlike ``torch.nn.SyncBatchNorm``; parameters and buffers have the
    same names, so checkpoints are interchangeable.
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, C) or (B, C, L) -> same
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        view = (1, -1) + (1,) * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)  # a count: no gradient needed
        n = float(count.item())
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()
            mean = all_reduce(x32.sum(dims), op=dist.ReduceOp.SUM) / n  # (C,)
            centred = x32 - mean.view(view)
            var = all_reduce(centred.square().sum(dims), op=dist.ReduceOp.SUM) / n  # (C,)
            y = centred * torch.rsqrt(var + self.eps).view(view)
            if self.affine:
                y = y * self.weight.view(view) + self.bias.view(view)
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                factor = 1.0 / float(self.num_batches_tracked) if m is None else m
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * unbiased)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d`` in ``module`` by a :class:`GlobalBatchNorm1d` that
    shares its parameters and buffers (like ``SyncBatchNorm.convert_sync_batchnorm``)."""
    if isinstance(module, nn.BatchNorm1d) and not isinstance(module, GlobalBatchNorm1d):
        new = GlobalBatchNorm1d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module


# --- the world of one run --------------------------------------------------------------------


@dataclass
class World:
    """This process's place in a (possibly one-process) data-parallel run.

    ``size == 1`` is a plain single process: every helper is then a no-op that returns its
    input, so the training loop has one code path.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, size)``: which rows of each planned batch this process takes."""
        return self.rank, self.size

    # -- models --

    def prepare(self, model: nn.Module) -> nn.Module:
        """Batch norms over the global batch (multi-process only); returns ``model``."""
        return convert_batchnorm(model) if self.active else model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` when several processes train, else ``model``.

        Buffers are not broadcast at each forward: the global batch norms already keep the
        running statistics identical on every rank, and the other buffers are constants.
        """
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # torch >= 2.13 renames broadcast_buffers (deprecated) to forward_sync_buffers
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        name = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        sync: dict[str, Any] = {name: False}
        return DistributedDataParallel(model, device_ids=ids, **sync)

    def seed_step(self, seed: int, epoch: int, batch: int) -> None:
        """Reseed torch's RNG (dropout, sampled negatives) from ``(seed, epoch, batch,
        rank)`` before a step (multi-process only): each rank draws its own noise, and a
        resumed run draws exactly what the uninterrupted one drew, for any world size."""
        if self.active:
            words = np.random.SeedSequence([seed, epoch, batch, self.rank, 0xD15]).generate_state(2)
            torch.manual_seed(int(words[0]) << 32 | int(words[1]))

    # -- collectives (no-ops for one process) --

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank (so all ranks take the same branch)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def mean(self, values: Sequence[float]) -> list[float]:
        """Average each value over ranks (every rank gets the same numbers)."""
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return (t / self.size).tolist()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.active:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result to every rank; a
        :class:`SeqtwinsError` it raises is raised on every rank (no rank left waiting)."""
        if not self.active:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except SeqtwinsError as e:
                outcome = ("error", str(e))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise SeqtwinsError(value)
        return value

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


@contextmanager
def session(backend: str, device: torch.device, timeout_s: float = 1800.0) -> Iterator[World]:
    """The :class:`World` of this process, with the default process group set up.

    * Already initialised (Ray Train, a test, a caller's own ``init_process_group``): used
      as it is and left alone at exit.
    * ``WORLD_SIZE`` > 1 in the environment (``torchrun``): initialised from the
      environment (``env://``) with the backend from :func:`resolve_backend`, and destroyed
      at exit.
    * Otherwise: a single process, no process group.

    On CUDA each process takes ``cuda:LOCAL_RANK`` modulo the visible GPUs (``LOCAL_RANK``
    defaults to the rank), unless ``device`` names an index.
    """
    if not dist.is_available():
        if env_ranks()[1] > 1:
            raise SeqtwinsError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        yield World(device=device)
        return
    owns = False
    if dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", rank)
        name: str | None = str(dist.get_backend())
    else:
        rank, size, local = env_ranks()
        name = None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        name = resolve_backend(backend, device)
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise SeqtwinsError(
                    f"WORLD_SIZE={size} but {var} is not set; launch with torchrun "
                    "(it sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"
                )
        dist.init_process_group(
            name, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s),
            device_id=device if name == "nccl" else None,
        )  # fmt: skip
        owns = True
    world = World(rank, size, local, device, name if size > 1 else None, owns)
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates torch.distributed.nn.functional (used by the losses and
            # GlobalBatchNorm1d) in favour of the private _functional_collectives, whose
            # backward is the same; one warning per step and rank is noise, not news.
            warnings.filterwarnings(
                "ignore", r"torch\.distributed\.nn\.functional\.\w+ is deprecated", FutureWarning
            )
            if world.active:
                world.barrier()  # every rank has joined before any rank goes on
            yield world
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()
