"""seqtwins: Barlow Twins self-supervised user representations from behaviour logs.

See arXiv:2505.00953 (Liu et al., 2025) for the method this package implements. The
public API (:mod:`seqtwins.api`)::

    import seqtwins

    seqtwins.synth("data/demo", users=2000, items=800)
    seqtwins.pretrain("data/demo", "runs/barlow", overrides=["train.epochs=3"])
    vectors = seqtwins.Run.open("runs/barlow").embed([["i0001", "i0042"], ["i0007"]])
    seqtwins.evaluate(["runs/barlow"], "data/demo", "eval.json")

Names are imported on first use, so ``import seqtwins`` (and the CLI's start) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seqtwins.errors import SeqtwinsError

if TYPE_CHECKING:
    from seqtwins.api import (
        RunSummary,
        embed,
        prepare,
        pretrain,
        pretrain_config,
        report,
        synth,
    )
    from seqtwins.config import PretrainConfig
    from seqtwins.data.dataset import SequenceDataset
    from seqtwins.run import Run

__version__ = "0.1.0"

_LAZY = {
    "prepare": "seqtwins.api",
    "synth": "seqtwins.api",
    "pretrain": "seqtwins.api",
    "pretrain_config": "seqtwins.api",
    "embed": "seqtwins.api",
    "evaluate": "seqtwins.evaluate",  # the subpackage, callable (see its docstring)
    "report": "seqtwins.api",
    "RunSummary": "seqtwins.api",
    "Run": "seqtwins.run",
    "SequenceDataset": "seqtwins.data.dataset",
    "PretrainConfig": "seqtwins.config",
}
__all__ = [
    "PretrainConfig",
    "Run",
    "RunSummary",
    "SeqtwinsError",
    "SequenceDataset",
    "__version__",
    "embed",
    "evaluate",
    "prepare",
    "pretrain",
    "pretrain_config",
    "report",
    "synth",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'seqtwins' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"seqtwins.{name}" else getattr(module, name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
