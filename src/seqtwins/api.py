"""The public Python API of training and evaluation, as the CLI runs them.

``seqtwins pretrain`` / ``embed`` / ``evaluate`` are thin wrappers over these::

    from seqtwins.api import Run, evaluate, pretrain

    summary = pretrain("data/ml-1m", "runs/barlow")        # -> RunSummary
    vectors = Run.open("runs/barlow").embed([["1193", "661", "914"]])  # (1, D) float32
    results = evaluate(["runs/barlow"], "data/ml-1m", "eval.json")

:func:`pretrain` is :func:`seqtwins.train.pretrain` with the validation proxy the CLI uses
(:func:`seqtwins.evaluate.proxy.category_proxy`: the favourite-category probe on valid
users, or minus the validation loss on a dataset without item categories).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqtwins.config import PretrainConfig
from seqtwins.evaluate.proxy import category_proxy
from seqtwins.evaluate.runs import evaluate_runs as evaluate
from seqtwins.run import Run
from seqtwins.train import RunSummary
from seqtwins.train import pretrain as train_pretrain

__all__ = ["Run", "RunSummary", "evaluate", "pretrain"]


def pretrain(
    data_dir: Path | str,
    run_dir: Path | str,
    cfg: PretrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    verify: bool = True,
) -> RunSummary:
    """Pretrain an encoder on ``data_dir`` into the run folder ``run_dir``, selecting the
    best epoch on valid users as ``seqtwins pretrain`` does. ``cfg`` defaults to
    ``PretrainConfig()``; see :func:`seqtwins.train.pretrain` for the other arguments."""
    return train_pretrain(data_dir, run_dir, cfg, resume=resume, progress=progress,
                          overwrite=overwrite, on_epoch=on_epoch, proxy=category_proxy,
                          verify=verify)  # fmt: skip
