"""The pretraining loop: ``seqtwins pretrain``.

Training reads as setup -> fit -> validate: :func:`setup` builds everything one run needs
(a :class:`Trainer`), :func:`fit` runs the epochs, :func:`validate` scores each epoch on
valid users. Where the run stands is a :class:`~seqtwins.checkpoint.TrainState`, which
is also the checkpoint's ``state.json``. The run folder itself (layout, lock, lineage)
belongs to :class:`seqtwins.run.Run`.

The validation proxy (embedding quality on valid users) is passed in as a factory
(``proxy``; the CLI passes :func:`seqtwins.evaluate.proxy.headline_proxy`); without
one, the best epoch is the one with the lowest validation loss.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from seqtwins.checkpoint import TrainState, load_checkpoint, save_checkpoint
from seqtwins.config import PretrainConfig, TrainConfig, build, to_dict
from seqtwins.data.batching import (
    NEEDS_MASKED,
    NEEDS_VIEWS,
    ItemMasking,
    PretrainBatches,
    batch_plan,
)
from seqtwins.data.dataset import SequenceDataset
from seqtwins.distributed import World, session
from seqtwins.errors import SeqtwinsError
from seqtwins.model_card import write_model_card
from seqtwins.models.encoder import SequenceEncoder, autocast, build_encoder, embed_users
from seqtwins.objectives import build_objective
from seqtwins.run import INCREMENTAL, Run

if TYPE_CHECKING:
    from seqtwins.incremental.config import IncrementalConfig
    from seqtwins.incremental.update import Update

VALID_EPOCH = 0xFFFF_FFFF  # seeds the fixed validation batches, apart from any real epoch
VALID_LOSS_USERS = 512
"""With a proxy, the validation loss (shown, not selected on) uses this many valid users."""

Proxy = Callable[[np.ndarray], float | None]
"""Embeddings (n, D) of the valid users -> score (higher is better) or None."""
ProxyFactory = Callable[[SequenceDataset, np.ndarray, int], Proxy | None]
"""``(dataset, valid users, seed)`` -> the proxy for those users, or None (no proxy)."""
Transform = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


# --- devices and precision ----------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SeqtwinsError(f"train.device={name!r} is not a device name") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SeqtwinsError(f"train.device={name!r} but CUDA is not available; use cpu or auto")
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matmul instructions (AVX512-BF16 or AMX). On our 2-core EPYC
    (AVX512-BF16, no AMX) bf16 autocast trained the default encoder ~1.5x faster than fp32
    (2,964 vs 1,953 users/s, 2 threads; benchmarks/results/train*.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``None`` = fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        # measured on an H200 with the default encoder (dim 64): bf16 autocast 11.8k vs fp32
        # 87.6k users/s (benchmarks/results/gpu.md); small matmuls gain nothing from bf16
        return None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """What a run records of its precision: ``fp32``, or ``bf16`` under bf16 autocast. Runs
    of one config on CPUs that autocast differently do not give the same numbers."""
    return "fp32" if amp_dtype is None else "bf16"


# --- building blocks ------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay only on weights with ``dim >= 2`` (matrices, embeddings), not on
    biases and normalisation parameters (as in nanoGPT and facebookresearch/barlowtwins)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def lr_lambda(total_steps: int, warmup_frac: float, min_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_frac)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_transform(
    cfg: PretrainConfig, ds: SequenceDataset, train_users: np.ndarray
) -> Transform | None:
    """The two-view augmentation of the objectives that need views (None otherwise)."""
    if cfg.objective not in NEEDS_VIEWS:
        return None
    from seqtwins.augment import TwoViewTransform

    return TwoViewTransform.for_dataset(cfg.augment, ds, train_users)


def item_masking(cfg: PretrainConfig, ds: SequenceDataset) -> ItemMasking | None:
    """The view masking of masked-item objectives (None for the others)."""
    return ItemMasking(cfg.mask.rate, ds.mask_token) if cfg.objective in NEEDS_MASKED else None


def history_mask(ds: SequenceDataset, users: np.ndarray) -> np.ndarray:
    """Boolean mask over interactions: True inside the histories of ``users``."""
    seqs = ds.sequences
    delta = np.zeros(seqs.num_interactions + 1, dtype=np.int64)
    np.add.at(delta, seqs.offsets[users], 1)
    np.add.at(delta, seqs.history_end[users], -1)
    return np.cumsum(delta[:-1]) > 0


def load_encoder(
    run_dir: Path | str, ds: SequenceDataset | None = None, which: str = "best"
) -> tuple[SequenceEncoder, PretrainConfig]:
    """The trained encoder of a run and its config (see :meth:`seqtwins.run.Run.encoder`)."""
    run = Run.open(run_dir)
    return run.encoder(which, ds), run.config


# --- metrics --------------------------------------------------------------------------------


@dataclass
class RunSummary:
    run_dir: Path
    epochs_done: int
    steps: int
    best_epoch: int
    best_score: float | None
    stopped_early: bool
    seconds: float


class MetricsLog:
    """Append-only JSON lines; on resume, truncated back to the checkpoint's position.

    ``enabled=False`` (ranks other than 0 of a distributed run) writes nothing."""

    def __init__(self, path: Path, truncate_to: int | None = None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if enabled and truncate_to is not None and path.exists():
            with path.open("r+b") as f:
                f.truncate(truncate_to)
        self.tensorboard: Any = None
        if enabled:
            try:  # TensorBoard is optional: mirrored there when it is installed
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                pass

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            prefix = "train" if "step" in record else str(record.get("event", "log"))
            x = record.get("step", record.get("epoch", 0))
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{prefix}/{key}", value, x)
            self.tensorboard.flush()

    def position(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


# --- setup ----------------------------------------------------------------------------------


@dataclass
class Trainer:
    """Everything one run's training needs, built once by :func:`setup`."""

    cfg: PretrainConfig
    ds: SequenceDataset
    run: Run
    world: World
    device: torch.device
    amp_dtype: torch.dtype | None
    train_users: np.ndarray
    valid_users: np.ndarray
    encoder: SequenceEncoder
    model: nn.Module
    step_model: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    transform: Transform | None
    proxy: Proxy | None
    total_steps: int
    epochs: int
    """``train.epochs``, raised by ``train.min_steps`` on a small dataset (:func:`budget`)."""
    patience: int
    """``train.patience``, grown in the same ratio as ``epochs``."""
    update: Update | None = None
    """An incremental update (``--init``): its lineage is written with the run."""


def _after_step(step: int) -> None:
    """Hook called after every optimizer step (tests use it to simulate a kill)."""


def pretrain(
    data_dir: Path | str,
    run_dir: Path | str,
    cfg: PretrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    proxy: ProxyFactory | None = None,
    verify: bool = True,
    init: Path | str | None = None,
    incremental: IncrementalConfig | None = None,
) -> RunSummary:
    """Pretrain an encoder on a dataset directory's training users and write a run folder.

    With ``resume`` the run continues from its last checkpoint with the saved config and
    reproduces the uninterrupted run (same seed, same batches, same RNG); a run killed
    before its first checkpoint starts again from scratch with its saved config (with a
    warning). ``overwrite`` replaces an earlier seqtwins run in ``run_dir``.

    ``proxy`` builds the validation proxy that selects the best epoch
    (:func:`seqtwins.evaluate.proxy.headline_proxy`, what the CLI uses); without one, or
    when it returns None, the score is minus the validation loss.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) or in an initialised process group it trains
    data-parallel: ``train.batch_size`` is the global batch, each process takes an equal
    share of every planned batch, the losses and batch norms use global-batch statistics,
    and rank 0 alone writes the run folder (``seqtwins.distributed``,
    ``docs/distributed.md``).

    ``on_epoch`` is called with each epoch's validation record (``epoch``, ``loss``,
    ``proxy``, ``score``) after that epoch's checkpoints are written; an exception it
    raises stops training there (``seqtwins tune`` prunes unpromising trials this way).

    ``verify=False`` skips recomputing the dataset's content hash (``--no-verify``).

    ``init`` (an earlier run) makes this an incremental update of it, with the settings
    ``incremental`` (:mod:`seqtwins.incremental`); a resumed update reads both back.
    """
    run = Run(run_dir)
    cfg = _saved_config(run, cfg) if resume else (cfg or build(PretrainConfig))
    threads = torch.get_num_threads()  # train.threads applies to this call only
    try:
        with session(cfg.train.backend, resolve_device(cfg.train.device)) as world:
            return _pretrain(data_dir, run, cfg, resume, progress, overwrite, world, on_epoch,
                             proxy, verify, (init, incremental))  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _saved_config(run: Run, cfg: PretrainConfig | None) -> PretrainConfig:
    saved = run.config
    if cfg is not None and to_dict(cfg) != to_dict(saved):
        raise SeqtwinsError(
            f"--resume continues {run.path} with its saved config.yaml; drop --config/--set"
        )
    return saved


def _pretrain(
    data_dir: Path | str,
    run: Run,
    cfg: PretrainConfig,
    resume: bool,
    progress: bool,
    overwrite: bool,
    world: World,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    proxy: ProxyFactory | None = None,
    verify: bool = True,
    init: tuple[Path | str | None, IncrementalConfig | None] = (None, None),
) -> RunSummary:
    """:func:`pretrain` in this process's place of the (possibly one-process) world."""
    ds = SequenceDataset.open(data_dir, verify=verify)
    was_update = resume and (run.path / INCREMENTAL).is_file()  # its lineage: read it back
    if resume:
        run.check_dataset(ds)
        if run.has_checkpoint("best") and not run.has_checkpoint("last"):
            raise SeqtwinsError(
                f"cannot resume {run.path}: checkpoints/best exists but checkpoints/last is "
                "missing; restore it, or start again with --overwrite"
            )
        if not run.has_checkpoint("last"):
            warnings.warn(
                f"{run.path} has no checkpoint yet (stopped before its first one): "
                "training it from scratch with its saved config",
                stacklevel=3,
            )
            resume, overwrite = False, True
    update = None
    if init[0] is not None or was_update:
        from seqtwins.incremental.update import start_update

        if world.size > 1:
            raise SeqtwinsError("--init (an incremental update) trains in one process; run it "
                                "without torchrun")  # fmt: skip
        update, ds = start_update(run, ds, cfg, init[0], init[1], was_update)
    cfg, train_users = _training_users(ds, cfg, world)
    with ExitStack() as held:
        # rank 0 holds the run folder's lock while it trains; its errors reach every rank
        world.on_main(lambda: _claim(held, run, resume, overwrite))
        t = setup(ds, run, cfg, world, train_users, proxy, update)
        world.barrier()  # every rank has passed its checks before rank 0 writes
        state, log = _start(t, resume, overwrite)
        bar = Progress(progress and world.is_main, t.total_steps, state.step, t.epochs)
        if t.epochs > cfg.train.epochs:
            bar.note(
                f"train.min_steps={cfg.train.min_steps}: {t.epochs} epochs, patience "
                f"{t.patience} on {len(train_users):,} training users (train.epochs="
                f"{cfg.train.epochs}); train.min_steps=0 trains exactly train.epochs"
            )
        try:
            fit(t, state, log, bar, on_epoch)
        finally:
            bar.close()
        return _finish(t, state, log)


def _claim(held: ExitStack, run: Run, resume: bool, overwrite: bool) -> None:
    """Lock the run folder and check it may be written (rank 0)."""
    try:
        held.enter_context(run.locked())
    except OSError as e:  # as a SeqtwinsError it reaches every rank (World.on_main)
        raise SeqtwinsError(
            f"cannot write the run folder {run.path}: {e.strerror or e}; choose another --out"
        ) from None
    if not resume:
        Run.check_new(run.path, overwrite)


def training_users(ds: SequenceDataset, objective: str) -> np.ndarray:
    """The train-split users an objective trains on: all of them for ``barlow``, those
    with at least two history items for the objectives that predict an item."""
    users = ds.split_users("train")
    if objective == "barlow":
        return users
    return users[ds.sequences.history_lengths()[users] >= 2]


def _training_users(
    ds: SequenceDataset, cfg: PretrainConfig, world: World
) -> tuple[PretrainConfig, np.ndarray]:
    """The users trained on, and the config with the batch size clipped to them."""
    tc = cfg.train
    train_users = training_users(ds, cfg.objective)
    if len(train_users) < 2:
        raise SeqtwinsError(f"{ds.path} has fewer than 2 usable training users")
    if tc.batch_size > len(train_users):
        clipped = len(train_users) - len(train_users) % world.size  # equal shares per rank
        warnings.warn(
            f"train.batch_size={tc.batch_size} > {len(train_users)} training users; "
            f"clipped to {clipped}",
            stacklevel=4,
        )
        cfg = replace(cfg, train=replace(tc, batch_size=clipped))
    if cfg.train.batch_size % world.size:
        raise SeqtwinsError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by the number of "
            f"processes ({world.size}): it is the global batch, split equally over them"
        )
    return cfg, train_users


def setup(
    ds: SequenceDataset,
    run: Run,
    cfg: PretrainConfig,
    world: World,
    train_users: np.ndarray,
    proxy: ProxyFactory | None = None,
    update: Update | None = None,
) -> Trainer:
    """Build the model, optimizer, schedule, augmentation and validation users; an
    ``update`` loads the old run's weights and adds its losses."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = world.device  # resolve_device(tc.device), cuda:LOCAL_RANK under torchrun
    torch.manual_seed(tc.seed)
    encoder = build_encoder(cfg.encoder, ds)
    popularity = np.bincount(
        ds.sequences.items[history_mask(ds, train_users)], minlength=ds.vocab_size
    ).astype(np.float64)
    # several processes: losses (and batch norms, world.prepare) over the global batch
    barlow_cfg = replace(cfg.barlow, distributed=cfg.barlow.distributed or world.active)
    dual_cfg = replace(cfg.dual, distributed=cfg.dual.distributed or world.active)
    model = world.prepare(build_objective(cfg.objective, encoder, barlow_cfg, dual_cfg, cfg.next,
                                          item_popularity=popularity,
                                          mask=cfg.mask)).to(device)  # fmt: skip
    if update is not None:
        update.attach(model, ds, device)
    transform = build_transform(cfg, ds, train_users)
    epochs, patience = budget(tc, len(train_users))
    total_steps = len(train_users) // tc.batch_size * epochs
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total_steps, tc.warmup_frac, tc.min_lr_ratio)
    )
    ddp = world.wrap(model)  # DistributedDataParallel with several processes
    # dynamic: batches are padded to their own longest sequence, so shapes vary
    step_model = torch.compile(ddp, dynamic=True) if tc.compile else ddp
    if update is not None:
        step_model = update.wrap(step_model, encoder, model, device)
    valid_users = ds.split_users("valid")
    if len(valid_users) > tc.valid_users:
        valid_users = np.random.default_rng(tc.seed).choice(
            valid_users, tc.valid_users, replace=False
        )
        valid_users.sort()
    valid_users = valid_users[ds.sequences.history_lengths()[valid_users] >= 2]
    scorer = proxy(ds, valid_users, tc.seed) if proxy is not None and len(valid_users) else None
    return Trainer(cfg, ds, run, world, device, resolve_precision(tc.precision, device),
                   train_users, valid_users, encoder, model, step_model, opt, sched,
                   transform, scorer, total_steps, epochs, patience, update)  # fmt: skip


def budget(tc: TrainConfig, n_train: int) -> tuple[int, int]:
    """Epochs and patience for ``n_train`` training users: ``train.epochs`` and
    ``train.patience``, unless ``train.min_steps`` needs more epochs on a small dataset;
    then ``ceil(min_steps / steps per epoch)`` epochs, and patience grown in that ratio."""
    per_epoch = max(1, n_train // tc.batch_size)
    epochs = max(tc.epochs, math.ceil(tc.min_steps / per_epoch))
    return epochs, math.ceil(tc.patience * epochs / tc.epochs)


def _start(t: Trainer, resume: bool, overwrite: bool) -> tuple[TrainState, MetricsLog]:
    """The state to start from (a new run, or the last checkpoint) and the metrics log."""
    main = t.world.is_main
    if resume:
        state = load_checkpoint(t.run.checkpoint("last"), t.model, t.opt, restore_rng=True)
        if state.scheduler is None:
            raise SeqtwinsError(f"{t.run.checkpoint('last')} has no scheduler state")
        t.sched.load_state_dict(state.scheduler)
        return state, MetricsLog(t.run.metrics_file, state.metrics_pos, main)
    if main:
        Run.create(t.run.path, t.cfg, t.ds, len(t.train_users), overwrite=overwrite)
        if t.update is not None:
            t.update.record(t.run)
    return TrainState(), MetricsLog(t.run.metrics_file, enabled=main)


def _finish(t: Trainer, state: TrainState, log: MetricsLog) -> RunSummary:
    summary = RunSummary(t.run.path, state.epoch, state.step, state.best_epoch,
                         state.best_score, state.stopped_early, state.seconds)  # fmt: skip
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}
    out["world_size"] = t.world.size
    out["device"] = t.device.type
    out["precision"] = precision_name(t.amp_dtype)
    log.write({"event": "done", **out})
    if t.world.is_main:
        t.run.write_summary(out)
        write_model_card(t.run.path)
    t.world.barrier()  # the run folder is complete when any rank returns
    return summary


# --- fit ------------------------------------------------------------------------------------


def fit(
    t: Trainer,
    state: TrainState,
    log: MetricsLog,
    bar: Progress,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Train epochs from ``state`` on; after each: validate, select on valid users,
    checkpoint (``best`` when improved, always ``last``)."""
    tc = t.cfg.train
    started = time.perf_counter() - state.seconds
    while state.epoch < t.epochs and not state.stopped_early:
        epoch = state.epoch
        t0 = time.perf_counter()
        users = _train_epoch(t, state, log, bar, started)
        t1 = time.perf_counter()
        record = validate(t, epoch)
        # end-to-end cost of the epoch: how much of it validation took (issue: <= 10 %)
        t2 = time.perf_counter()
        record.update(train_seconds=round(t1 - t0, 3), valid_seconds=round(t2 - t1, 3),
                      users_per_s=round(users / max(t2 - t0, 1e-9), 1))  # fmt: skip
        log.write(record)
        score = record["score"]
        if not math.isfinite(score):
            raise SeqtwinsError(_diverged(t, f"the validation score became {score}", epoch))
        eligible = epoch >= int(tc.select_from * t.epochs)
        improved = eligible and (state.best_score is None or score > state.best_score)
        state.epoch += 1
        state.batch = 0
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        elif eligible:
            state.bad_epochs += 1
            if t.patience and state.bad_epochs >= t.patience:
                state.stopped_early = True
        state.seconds = time.perf_counter() - started
        bar.epoch_done(record)
        if improved:
            _save(t, state, log, "best")
        _save(t, state, log, "last")
        if on_epoch is not None:
            on_epoch(record)


def _train_epoch(
    t: Trainer, state: TrainState, log: MetricsLog, bar: Progress, started: float
) -> int:
    """The rest of epoch ``state.epoch`` from batch ``state.batch`` on; returns the number
    of users it trained on (the global batch, all ranks)."""
    tc, world, epoch = t.cfg.train, t.world, state.epoch
    hist_len = t.ds.sequences.history_lengths()
    plan = batch_plan(t.train_users, hist_len, tc.batch_size, tc.seed, epoch,
                      tc.bucket_by_length)  # fmt: skip
    batches = PretrainBatches(t.ds.sequences, plan, t.cfg.objective, t.cfg.encoder.max_len,
                              tc.seed, epoch, t.transform, world.shard,
                              item_masking(t.cfg, t.ds))  # fmt: skip
    loader = DataLoader(
        batches, batch_size=None, sampler=range(state.batch, len(plan)),
        num_workers=tc.num_workers, pin_memory=t.device.type == "cuda",
        # its own generator: a loader must not draw from the global torch RNG,
        # or a resumed run (new loader mid-epoch) would shift dropout's stream
        generator=torch.Generator().manual_seed(tc.seed),
    )  # fmt: skip
    t.model.train()
    params = [p for p in t.model.parameters() if p.requires_grad]
    t_last, users_since, users_total = time.perf_counter(), 0, 0
    for batch in loader:
        batch = {k: v.to(t.device, non_blocking=True) for k, v in batch.items()}
        world.seed_step(tc.seed, epoch, state.batch)
        with autocast(t.device, t.amp_dtype):
            loss, logs = t.step_model(batch)
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), tc.grad_clip)
        t.opt.step()
        t.sched.step()
        _check_finite(t, state, loss, params)
        state.step += 1
        state.batch += 1
        n_users = len(batch[next(iter(batch))]) * world.size  # the global batch
        users_since += n_users
        users_total += n_users
        if state.step % tc.log_every == 0:
            now = time.perf_counter()
            rate = users_since / max(now - t_last, 1e-9)
            # the mean over ranks: the global batch's loss (a no-op in one process)
            loss_value, *values = world.mean([loss.item(), *logs.values()])
            log.write({"step": state.step, "epoch": epoch, "loss": loss_value,
                       "lr": t.sched.get_last_lr()[0], "users_per_s": rate,
                       **dict(zip(logs, values, strict=True))})  # fmt: skip
            t_last, users_since = now, 0
        bar.update(loss.item(), n_users, epoch)
        if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
            state.seconds = time.perf_counter() - started
            _save(t, state, log, "last")
        _after_step(state.step)
    return users_total


def _check_finite(
    t: Trainer, state: TrainState, loss: torch.Tensor, params: list[nn.Parameter]
) -> None:
    """Stop (every rank together) when the loss or the weights after a step are NaN or
    infinite: such a model must never become a checkpoint."""
    loss_ok = bool(torch.isfinite(loss.detach()))
    # a NaN or infinity anywhere makes the sum non-finite; one reduction per tensor costs
    # ~0.3 ms per step for the default model (an isfinite mask per tensor: ~2.8 ms)
    weights_ok = bool(torch.isfinite(torch.stack([p.detach().sum() for p in params]).sum()))
    if t.world.all_true(loss_ok and weights_ok):
        return
    if not loss_ok:
        what = f"loss became {loss.item()}"
    elif not weights_ok:
        what = f"weights became NaN or infinite (loss {loss.item():.4g})"
    else:
        what = "loss or weights became NaN or infinite on another rank"
    raise SeqtwinsError(_diverged(t, what, state.epoch, step=state.step + 1))


def _diverged(t: Trainer, what: str, epoch: int, step: int = 0) -> str:
    """The one-line message of a run stopped by NaN/Inf, naming the checkpoint kept."""
    at = f"at epoch {epoch} step {step}" if step else f"at epoch {epoch}"
    if t.run.has_checkpoint("last"):
        saved = t.run.state("last").step
        kept = f"the last finite checkpoint is {t.run.checkpoint('last')} (step {saved})"
    else:
        kept = "no checkpoint was written before it (nothing to go back to)"
    return (f"{what} {at}; {kept}. Try a lower train.lr, train.precision=fp32 or a smaller "
            "encoder")  # fmt: skip


def _save(t: Trainer, state: TrainState, log: MetricsLog, which: str) -> None:
    if not t.world.is_main:
        return
    state.metrics_pos = log.position()
    state.scheduler = t.sched.state_dict()  # JSON-ready: lambdas are stored as None
    save_checkpoint(t.run.checkpoint(which), t.model, t.opt, state)


# --- validate -------------------------------------------------------------------------------


@torch.no_grad()
def validate(t: Trainer, epoch: int) -> dict[str, Any]:
    """Validation loss on valid users (fixed augmentations) and the embedding proxy.

    ``score`` (higher is better) drives early stopping and the best checkpoint: the
    proxy when there is one, else minus the loss.

    With several processes each takes its share of every validation batch (the loss is
    the mean over ranks) and rank 0 alone computes the proxy, sent to all: every rank gets
    the same record, so all take the same early-stopping decision.
    """
    world, users, cfg = t.world, t.valid_users, t.cfg
    sampled = len(t.ds.split_users("valid")) > cfg.train.valid_users
    record: dict[str, Any] = {"event": "valid", "epoch": epoch, "users": int(len(users)),
                              "sampled": sampled}  # fmt: skip
    if len(users) < max(2, world.size):
        record.update(loss=None, proxy=None, score=-float(epoch))
        return record
    t.model.eval()
    # with a proxy the loss is only shown, not selected on: a fixed subset of users will do
    loss_users = users if t.proxy is None else users[:VALID_LOSS_USERS]
    bs = min(cfg.train.batch_size, len(loss_users))
    bs -= bs % world.size  # equal shares on every rank
    hist_len = t.ds.sequences.history_lengths()
    plan = batch_plan(loss_users, hist_len, bs, cfg.train.seed, VALID_EPOCH, bucket=False)
    batches = PretrainBatches(t.ds.sequences, plan, cfg.objective, cfg.encoder.max_len,
                              cfg.train.seed, VALID_EPOCH, t.transform, world.shard,
                              item_masking(cfg, t.ds))  # fmt: skip
    losses = []
    for i in range(len(batches)):
        batch = {k: v.to(t.device) for k, v in batches[i].items()}
        with autocast(t.device, t.amp_dtype):
            loss, _ = t.model(batch)
        losses.append(loss.item())
    record["loss"] = world.mean([float(np.mean(losses))])[0]
    proxy = None
    scorer = t.proxy
    if scorer is not None:

        def probe() -> float | None:
            emb = embed_users(t.encoder, t.ds, users, device=t.device, dtype=t.amp_dtype)
            return scorer(emb)

        t0 = time.perf_counter()
        proxy = world.on_main(probe)
        record["proxy_seconds"] = round(time.perf_counter() - t0, 3)
    record["proxy"] = proxy
    record["score"] = proxy if proxy is not None else -record["loss"]
    t.model.train()
    return record


# --- progress -------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s % 60:02d}s" if m else f"{s}s")


class Progress:
    """Training progress: a rich bar on a terminal, else plain lines (CI, nohup, a pipe)
    every ``interval`` seconds and after each epoch, e.g.
    ``pretrain epoch 2/10 step 340/1700 loss 12.3 2,950 users/s valid proxy 0.41 ETA 1m20s``.
    A no-op when disabled."""

    def __init__(
        self,
        enabled: bool,
        total: int,
        done: int,
        epochs: int,
        stream: IO[str] | None = None,
        interval: float = 10.0,
    ) -> None:
        self.enabled, self.total, self.step, self.epochs = enabled, total, done, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.first = interval, done
        self.t0 = self.t_print = time.perf_counter()
        self.users, self.loss, self.epoch, self.valid = 0, float("nan"), 0, ""
        self.bar: Any = None
        if enabled and is_terminal(self.stream):
            self._start_bar(done)

    def _start_bar(self, done: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} users/s"),
            TextColumn("{task.fields[valid]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=self.stream),
        )  # fmt: skip
        self.bar.start()
        self.task = self.bar.add_task(
            "pretrain", total=self.total, completed=done, loss="-", rate="-", valid=""
        )

    def rate(self) -> float:
        return self.users / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, loss: float, users: int, epoch: int) -> None:
        if not self.enabled:
            return
        self.users += users
        self.step += 1
        self.loss, self.epoch = loss, epoch
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=f"{loss:.4f}", rate=f"{self.rate():,.0f}")
        elif time.perf_counter() - self.t_print >= self.interval:
            self._line()

    def epoch_done(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = f"valid loss {record['loss']:.4f}" if record.get("loss") is not None else ""
        if record.get("proxy") is not None:
            text += f" proxy {record['proxy']:.3f}"
        self.valid = text.strip()
        if self.bar is not None:
            self.bar.update(self.task, valid=text)
        else:
            self._line()

    def _line(self) -> None:
        self.t_print = now = time.perf_counter()
        steps_per_s = (self.step - self.first) / max(now - self.t0, 1e-9)
        eta = (self.total - self.step) / steps_per_s if steps_per_s > 0 else 0.0
        parts = [f"pretrain epoch {self.epoch + 1}/{self.epochs}",
                 f"step {self.step}/{self.total}", f"loss {self.loss:.4g}",
                 f"{self.rate():,.0f} users/s", self.valid, f"ETA {_duration(eta)}"]  # fmt: skip
        print(" ".join(p for p in parts if p), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """One line above the bar (or among the plain lines)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a live progress bar), not a file or a pipe."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
