"""The pretraining loop: ``seqtwins pretrain``.

A run directory holds everything needed to use, resume or audit a run::

    config.yaml          the resolved PretrainConfig
    dataset.json         which dataset it was trained on (path, content hash, vocabulary)
    metrics.jsonl        one JSON line per logged step, per validation, and the final summary
    checkpoints/last/    the latest checkpoint (model, optimizer, RNG, counters)
    checkpoints/best/    the checkpoint with the best validation score (selected on valid users)
    summary.json         written when training ends
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from seqtwins.checkpoint import (
    load_checkpoint,
    load_model_tensors,
    load_state_dict_strict,
    save_checkpoint,
)
from seqtwins.config import PretrainConfig, build, load_yaml, to_dict
from seqtwins.data.batching import (
    NEEDS_VIEWS,
    PretrainBatches,
    batch_plan,
    iter_history_batches,
)
from seqtwins.data.dataset import SequenceDataset
from seqtwins.distributed import World, session
from seqtwins.errors import SeqtwinsError
from seqtwins.models.encoder import SequenceEncoder

LAST, BEST = "checkpoints/last", "checkpoints/best"
VALID_EPOCH = 0xFFFF_FFFF  # seeds the fixed validation batches, apart from any real epoch


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


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --- building blocks ------------------------------------------------------------------------


def build_encoder(cfg: PretrainConfig, ds: SequenceDataset) -> SequenceEncoder:
    categories = None
    if cfg.encoder.use_categories:
        if not ds.has_categories:
            raise SeqtwinsError(f"encoder.use_categories=true but {ds.path} has no item categories")
        categories = torch.from_numpy(ds.item_categories()[0])
    return SequenceEncoder(cfg.encoder, vocab_size=ds.vocab_size, item_categories=categories)


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


@torch.no_grad()
def embed_users(
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    users: np.ndarray,
    batch_size: int = 1024,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """User embeddings (len(users), D) from each user's most recent history items."""
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = np.zeros((len(users), encoder.cfg.dim), dtype=np.float32)
    pos = 0
    for chunk, items in iter_history_batches(ds.sequences, users, encoder.cfg.max_len, batch_size):
        with autocast(device, dtype):
            emb = encoder.embed(items.to(device))  # (B, D)
        out[pos : pos + len(chunk)] = emb.float().cpu().numpy()
        pos += len(chunk)
    encoder.train(was_training)
    return out


def proxy_labels(ds: SequenceDataset, users: np.ndarray) -> np.ndarray | None:
    """Favourite category of each user's future window (-1 = none), or None without
    categories. The validation proxy of embedding quality."""
    if not ds.has_categories:
        return None
    from seqtwins.evaluate.tasks import build_task

    return np.asarray(build_task(ds, "favorite_category").labels)[users]


def proxy_score(emb: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    """5-fold cross-validated accuracy of a logistic-regression probe on valid users.

    Uses valid users' labels only (never train or test). Five folds rather than two: with
    a few hundred valid users the 2-fold estimate was noisy enough to stop runs early on
    noise."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = labels >= 0
    x, y = emb[keep], labels[keep]
    classes, counts = np.unique(y, return_counts=True)
    common = np.isin(y, classes[counts >= 5])
    x, y = x[common], y[common]
    if len(np.unique(y)) < 2:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cross_val_score(probe, x, y, cv=cv).mean())


# --- run directory --------------------------------------------------------------------------


@dataclass
class RunSummary:
    run_dir: Path
    epochs_done: int
    steps: int
    best_epoch: int
    best_score: float | None
    stopped_early: bool
    seconds: float


def load_run_config(run_dir: Path) -> PretrainConfig:
    file = run_dir / "config.yaml"
    if not file.is_file():
        raise SeqtwinsError(f"{run_dir} is not a seqtwins run (no config.yaml)")
    return build(PretrainConfig, load_yaml(file))


def load_encoder(
    run_dir: Path | str, ds: SequenceDataset | None = None, which: str = "best"
) -> tuple[SequenceEncoder, PretrainConfig]:
    """The trained encoder of a run (``best`` on valid users, or ``last``), strictly loaded.

    With ``ds`` given, refuses a dataset other than the one the run was trained on.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    info_file = run_dir / "dataset.json"
    ckpt = run_dir / (BEST if which == "best" else LAST)
    if not (ckpt / "model.safetensors").is_file():
        raise SeqtwinsError(f"{run_dir} has no {which} checkpoint; train it with seqtwins pretrain")
    info = json.loads(info_file.read_text())
    if ds is not None and info["content_hash"] != ds.content_hash:
        raise SeqtwinsError(
            f"{run_dir} was trained on dataset {info['path']} (hash {info['content_hash'][:12]}), "
            f"not on {ds.path} (hash {ds.content_hash[:12]}); item vocabularies differ"
        )
    categories = None
    if cfg.encoder.use_categories:
        if ds is None:
            raise SeqtwinsError(f"{run_dir} uses item categories; pass its dataset")
        categories = torch.from_numpy(ds.item_categories()[0])
    encoder = SequenceEncoder(
        cfg.encoder, vocab_size=info["vocab_size"], item_categories=categories
    )
    tensors = load_model_tensors(ckpt / "model.safetensors")
    enc_sd = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    load_state_dict_strict(encoder, enc_sd, str(ckpt / "model.safetensors"))
    encoder.eval()
    return encoder, cfg


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


# --- the loop -------------------------------------------------------------------------------


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
) -> RunSummary:
    """Pretrain an encoder on a dataset directory's training users and write a run dir.

    With ``resume`` the run continues from ``run_dir/checkpoints/last`` with the saved
    config and reproduces the uninterrupted run (same seed, same batches, same RNG).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) or in an initialised process group it trains
    data-parallel: ``train.batch_size`` is the global batch, each process takes an equal
    share of every planned batch, the losses and batch norms use global-batch statistics,
    and rank 0 alone writes the run directory (``seqtwins.distributed``,
    ``docs/distributed.md``).

    ``on_epoch`` is called with each epoch's validation record (``epoch``, ``loss``,
    ``proxy``, ``score``) after that epoch's checkpoints are written; an exception it
    raises stops training there (``seqtwins tune`` prunes unpromising trials this way).
    """
    file = Path(run_dir) / "config.yaml"
    first = load_run_config(Path(run_dir)) if resume and file.is_file() else cfg
    tc = (first or build(PretrainConfig)).train
    with session(tc.backend, resolve_device(tc.device)) as world:
        return _pretrain(data_dir, run_dir, cfg, resume, progress, overwrite, world, on_epoch)


def _pretrain(
    data_dir: Path | str,
    run_dir: Path | str,
    cfg: PretrainConfig | None,
    resume: bool,
    progress: bool,
    overwrite: bool,
    world: World,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """:func:`pretrain` in this process's place of the (possibly one-process) world."""
    run_dir = Path(run_dir)
    ds = SequenceDataset.open(data_dir)
    if resume:
        if not (run_dir / LAST / "state.json").is_file():
            raise SeqtwinsError(f"cannot resume: {run_dir} has no checkpoint")
        saved = load_run_config(run_dir)
        if cfg is not None and to_dict(cfg) != to_dict(saved):
            raise SeqtwinsError(
                f"--resume continues {run_dir} with its saved config.yaml; drop --config/--set"
            )
        cfg = saved
        info = json.loads((run_dir / "dataset.json").read_text())
        if info["content_hash"] != ds.content_hash:
            raise SeqtwinsError(f"cannot resume {run_dir} on another dataset ({ds.path})")
    else:
        cfg = cfg or build(PretrainConfig)
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise SeqtwinsError(
                f"{run_dir} exists and is not empty; use --resume to continue it, "
                "another --out, or --overwrite"
            )
    tc = cfg.train

    train_users = ds.split_users("train")
    hist_len = ds.sequences.history_lengths()
    if cfg.objective != "barlow":
        train_users = train_users[hist_len[train_users] >= 2]
    if len(train_users) < 2:
        raise SeqtwinsError(f"{ds.path} has fewer than 2 usable training users")
    if tc.batch_size > len(train_users):
        clipped = len(train_users) - len(train_users) % world.size  # equal shares per rank
        warnings.warn(
            f"train.batch_size={tc.batch_size} > {len(train_users)} training users; "
            f"clipped to {clipped}",
            stacklevel=2,
        )
        tc = replace(tc, batch_size=clipped)
        cfg = replace(cfg, train=tc)
    if tc.batch_size % world.size:
        raise SeqtwinsError(
            f"train.batch_size={tc.batch_size} must be divisible by the number of processes "
            f"({world.size}): it is the global batch, split equally over them"
        )

    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = world.device  # resolve_device(tc.device), cuda:LOCAL_RANK under torchrun
    amp_dtype = resolve_precision(tc.precision, device)
    torch.manual_seed(tc.seed)

    encoder = build_encoder(cfg, ds)
    popularity = np.bincount(
        ds.sequences.items[_history_mask(ds, train_users)], minlength=ds.vocab_size
    ).astype(np.float64)
    from seqtwins.objectives import build_objective

    # several processes: losses (and batch norms, world.prepare) over the global batch
    barlow_cfg = replace(cfg.barlow, distributed=cfg.barlow.distributed or world.active)
    dual_cfg = replace(cfg.dual, distributed=cfg.dual.distributed or world.active)
    model = world.prepare(build_objective(cfg.objective, encoder, barlow_cfg, dual_cfg, cfg.next,
                                          item_popularity=popularity)).to(device)  # fmt: skip
    transform = _build_transform(cfg, ds, train_users)

    steps_per_epoch = len(train_users) // tc.batch_size
    total_steps = steps_per_epoch * tc.epochs
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total_steps, tc.warmup_frac, tc.min_lr_ratio)
    )
    step_model: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
    ddp = world.wrap(model)  # DistributedDataParallel with several processes
    # dynamic: batches are padded to their own longest sequence, so shapes vary
    step_model = torch.compile(ddp, dynamic=True) if tc.compile else ddp

    valid_users = ds.split_users("valid")
    if len(valid_users) > tc.valid_users:
        valid_users = np.random.default_rng(tc.seed).choice(
            valid_users, tc.valid_users, replace=False
        )
        valid_users.sort()
    valid_users = valid_users[hist_len[valid_users] >= 2]
    valid_labels = proxy_labels(ds, valid_users) if len(valid_users) else None

    world.barrier()  # every rank has passed its checks before rank 0 writes
    # -- state (fresh or resumed) --
    state: dict[str, Any] = {
        "epoch": 0, "batch": 0, "step": 0, "best_score": None, "best_epoch": -1,
        "bad_epochs": 0, "metrics_pos": 0, "stopped_early": False, "seconds": 0.0,
    }  # fmt: skip
    if resume:
        state = load_checkpoint(run_dir / LAST, model, opt, restore_rng=True)
        sched.load_state_dict(state["scheduler"])
        log = MetricsLog(run_dir / "metrics.jsonl", state["metrics_pos"], world.is_main)
    elif world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in ("metrics.jsonl", "summary.json"):
            (run_dir / old).unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        info = {
            "path": str(ds.path), "content_hash": ds.content_hash, "num_items": ds.num_items,
            "vocab_size": ds.vocab_size, "train_users": int(len(train_users)),
        }  # fmt: skip
        (run_dir / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        log = MetricsLog(run_dir / "metrics.jsonl")
    else:
        log = MetricsLog(run_dir / "metrics.jsonl", enabled=False)

    def checkpoint(where: str) -> None:
        if not world.is_main:
            return
        state["metrics_pos"] = log.position()
        state["scheduler"] = sched.state_dict()  # JSON-ready: lambdas are stored as None
        save_checkpoint(run_dir / where, model, opt, state)

    started = time.perf_counter() - state["seconds"]
    bar = _Progress(progress and world.is_main, total_steps, state["step"])
    try:
        while state["epoch"] < tc.epochs and not state["stopped_early"]:
            epoch = state["epoch"]
            plan = batch_plan(train_users, hist_len, tc.batch_size, tc.seed, epoch,
                              tc.bucket_by_length)  # fmt: skip
            batches = PretrainBatches(ds.sequences, plan, cfg.objective, cfg.encoder.max_len,
                                      tc.seed, epoch, transform, world.shard)  # fmt: skip
            loader = DataLoader(
                batches, batch_size=None, sampler=range(state["batch"], len(plan)),
                num_workers=tc.num_workers, pin_memory=device.type == "cuda",
                # its own generator: a loader must not draw from the global torch RNG,
                # or a resumed run (new loader mid-epoch) would shift dropout's stream
                generator=torch.Generator().manual_seed(tc.seed),
            )  # fmt: skip
            model.train()
            t_last, users_since = time.perf_counter(), 0
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                world.seed_step(tc.seed, epoch, state["batch"])
                with autocast(device, amp_dtype):
                    loss, logs = step_model(batch)
                if not world.all_true(bool(torch.isfinite(loss))):  # all ranks stop together
                    value = loss.item() if not torch.isfinite(loss) else "non-finite on a rank"
                    raise SeqtwinsError(
                        f"loss became {value} at epoch {epoch} step {state['step']}; "
                        f"the last good checkpoint is kept in {run_dir / LAST}. Try a lower "
                        "train.lr, train.precision=fp32 or a smaller encoder."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                sched.step()
                state["step"] += 1
                state["batch"] += 1
                n_users = len(batch[next(iter(batch))]) * world.size  # the global batch
                users_since += n_users
                if state["step"] % tc.log_every == 0:
                    now = time.perf_counter()
                    rate = users_since / max(now - t_last, 1e-9)
                    # the mean over ranks: the global batch's loss (a no-op in one process)
                    loss_value, *values = world.mean([loss.item(), *logs.values()])
                    logs = dict(zip(logs, values, strict=True))
                    log.write(
                        {
                            "step": state["step"],
                            "epoch": epoch,
                            "loss": loss_value,
                            "lr": sched.get_last_lr()[0],
                            "users_per_s": rate,
                            **logs,
                        }
                    )
                    t_last, users_since = now, 0
                bar.update(loss.item(), n_users)
                if tc.checkpoint_every and state["step"] % tc.checkpoint_every == 0:
                    state["seconds"] = time.perf_counter() - started
                    checkpoint(LAST)
                _after_step(state["step"])

            # -- end of epoch: validate, select on valid users, checkpoint --
            record = _validate(model, encoder, ds, cfg, valid_users, valid_labels, transform,
                               device, amp_dtype, epoch, world)  # fmt: skip
            log.write(record)
            score = record["score"]
            improved = state["best_score"] is None or score > state["best_score"]
            state["epoch"] += 1
            state["batch"] = 0
            if improved:
                state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch, 0
            else:
                state["bad_epochs"] += 1
                if tc.patience and state["bad_epochs"] >= tc.patience:
                    state["stopped_early"] = True
            state["seconds"] = time.perf_counter() - started
            bar.epoch_done(record)
            if improved:
                checkpoint(BEST)
            checkpoint(LAST)
            if on_epoch is not None:
                on_epoch(record)
    finally:
        bar.close()

    summary = RunSummary(run_dir, state["epoch"], state["step"], state["best_epoch"],
                         state["best_score"], state["stopped_early"], state["seconds"])  # fmt: skip
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}
    out["world_size"] = world.size
    log.write({"event": "done", **out})
    if world.is_main:
        (run_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    world.barrier()  # the run directory is complete when any rank returns
    return summary


def _history_mask(ds: SequenceDataset, users: np.ndarray) -> np.ndarray:
    """Boolean mask over interactions: True inside the histories of ``users``."""
    seqs = ds.sequences
    delta = np.zeros(seqs.num_interactions + 1, dtype=np.int64)
    np.add.at(delta, seqs.offsets[users], 1)
    np.add.at(delta, seqs.history_end[users], -1)
    return np.cumsum(delta[:-1]) > 0


def _build_transform(
    cfg: PretrainConfig, ds: SequenceDataset, train_users: np.ndarray
) -> Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None:
    if cfg.objective not in NEEDS_VIEWS:
        return None
    from seqtwins.augment import TwoViewTransform

    return TwoViewTransform.from_sequences(cfg.augment, ds.sequences, train_users, ds.num_items)


@torch.no_grad()
def _validate(
    model: torch.nn.Module,
    encoder: SequenceEncoder,
    ds: SequenceDataset,
    cfg: PretrainConfig,
    users: np.ndarray,
    labels: np.ndarray | None,
    transform: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    epoch: int,
    world: World | None = None,
) -> dict[str, Any]:
    """Validation loss on valid users (fixed augmentations) and the embedding proxy.

    ``score`` (higher is better) drives early stopping and the best checkpoint: the
    favourite-category probe accuracy when the dataset has categories, else minus the loss.

    With several processes each takes its share of every validation batch (the loss is
    the mean over ranks) and rank 0 alone computes the proxy, sent to all: every rank gets
    the same record, so all take the same early-stopping decision.
    """
    world = world or World(device=device)
    record: dict[str, Any] = {"event": "valid", "epoch": epoch}
    if len(users) < max(2, world.size):
        record.update(loss=None, proxy=None, score=-float(epoch))
        return record
    model.eval()
    bs = min(cfg.train.batch_size, len(users))
    bs -= bs % world.size  # equal shares on every rank
    hist_len = ds.sequences.history_lengths()
    plan = batch_plan(users, hist_len, bs, cfg.train.seed, VALID_EPOCH, bucket=False)
    batches = PretrainBatches(ds.sequences, plan, cfg.objective, cfg.encoder.max_len,
                              cfg.train.seed, VALID_EPOCH, transform, world.shard)  # fmt: skip
    losses = []
    for i in range(len(batches)):
        batch = {k: v.to(device) for k, v in batches[i].items()}
        with autocast(device, amp_dtype):
            loss, _ = model(batch)
        losses.append(loss.item())
    record["loss"] = world.mean([float(np.mean(losses))])[0]
    proxy = None
    if labels is not None:
        valid_labels = labels

        def probe() -> float | None:
            emb = embed_users(encoder, ds, users, device=device, dtype=amp_dtype)
            return proxy_score(emb, valid_labels, cfg.train.seed)

        proxy = world.on_main(probe)
    record["proxy"] = proxy
    record["score"] = proxy if proxy is not None else -record["loss"]
    model.train()
    return record


class _Progress:
    """A rich progress bar with loss, users/s and ETA; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} users/s"),
            TextColumn("{task.fields[valid]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(),
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task(
            "pretrain", total=total, completed=done, loss="-", rate="-", valid=""
        )
        self.t0, self.users = time.perf_counter(), 0

    def update(self, loss: float, users: int) -> None:
        if self.enabled:
            self.users += users
            rate = self.users / max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}", rate=f"{rate:,.0f}")

    def epoch_done(self, record: dict[str, Any]) -> None:
        if self.enabled:
            proxy = record.get("proxy")
            text = f"valid loss {record['loss']:.4f}" if record.get("loss") is not None else ""
            if proxy is not None:
                text += f" proxy {proxy:.3f}"
            self.progress.update(self.task, valid=text)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
