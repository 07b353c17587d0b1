"""Tiny trained runs shared by the explain tests (one epoch; seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqtwins.config import PretrainConfig, build
from seqtwins.train import pretrain
from tests.helpers import tiny_dataset
from tests.test_train import TINY


@pytest.fixture(scope="session")
def explain_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``data``: a tiny dataset; ``barlow`` (no item vectors) and ``dual`` (an item tower)
    runs trained on it for one epoch."""
    root = tmp_path_factory.mktemp("explain")
    out = {"data": tiny_dataset(root / "ds", users=200)}
    for objective in ("barlow", "dual"):
        cfg = build(PretrainConfig, {"objective": objective},
                    overrides=[*TINY, "train.epochs=1", "dual.logq_correction=false"])  # fmt: skip
        pretrain(out["data"], root / objective, cfg, progress=False)
        out[objective] = root / objective
    return out
