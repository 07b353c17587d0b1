"""The public Python API: pretrain -> Run.open(...).embed -> evaluate, as in a notebook."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import seqtwins
from seqtwins.api import Run, evaluate, pretrain
from seqtwins.config import PretrainConfig, build
from tests.helpers import tiny_dataset
from tests.test_train import TINY


def test_pretrain_embed_evaluate(tmp_path):
    data = tiny_dataset(tmp_path / "ds")
    cfg = build(PretrainConfig, overrides=[*TINY, "train.epochs=2"])
    summary = pretrain(data, tmp_path / "run", cfg, progress=False)
    run = Run.open(tmp_path / "run")
    valid = [json.loads(x) for x in run.metrics_file.read_text().splitlines()]
    valid = [r for r in valid if r.get("event") == "valid"]
    # selected like the CLI: on the favourite-category probe of valid users
    assert all(r["proxy"] is not None and r["score"] == r["proxy"] for r in valid)
    assert summary.best_score == max(r["score"] for r in valid)
    emb = run.embed([["it1", "it2", "it3"], ["it4"]])
    assert emb.shape == (2, 16) and np.isfinite(emb).all()
    res = evaluate([run.path], data, tmp_path / "eval.json", tasks=["favorite_category"],
                   fractions=[1.0], seeds=1, baselines=["majority"], progress=False)  # fmt: skip
    assert set(res["methods"]) == {"barlow", "majority"}


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    block = re.search(r"### Python API.*?```python\n(.*?)```", text, re.S)
    assert block, "README.md has no Python API example"
    return block.group(1)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)  # noqa: S102
    vectors = scope["vectors"]
    assert isinstance(vectors, np.ndarray) and vectors.shape == (2, 32)
    assert np.isfinite(vectors).all()
    assert (tmp_path / "out/report/report.md").is_file()
    run = seqtwins.Run.open(tmp_path / "runs/barlow")
    assert run.config.encoder.dim == 32 and run.config.train.epochs == 2
    again = run.embed([scope["ids"][:3]])  # type: ignore[index]
    np.testing.assert_allclose(again[0], vectors[0], rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(seqtwins.SeqtwinsError, match="users"):
        seqtwins.synth(tmp_path / "d", users="many")
    with pytest.raises(seqtwins.SeqtwinsError, match="train.epochs=0"):
        seqtwins.pretrain_config(overrides=["train.epochs=0"])
    with pytest.raises(seqtwins.SeqtwinsError, match="does not exist"):
        seqtwins.prepare(tmp_path / "missing.csv", tmp_path / "out")


def test_names_are_public_and_lazy() -> None:
    assert set(seqtwins.__all__) >= {"prepare", "pretrain", "evaluate", "Run", "SeqtwinsError"}
    with pytest.raises(AttributeError):
        seqtwins.no_such_name  # noqa: B018
    code = "import sys, seqtwins; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # `import seqtwins` alone does not load torch


def test_evaluate_is_callable_and_still_a_package() -> None:
    """``seqtwins.evaluate`` names both the API function and the subpackage."""
    from seqtwins.evaluate.runs import evaluate_runs

    assert callable(seqtwins.evaluate)
    assert seqtwins.evaluate.runs.evaluate_runs is evaluate_runs
    code = (
        "import seqtwins; f = seqtwins.evaluate; import seqtwins.evaluate.runs; "
        "print(callable(seqtwins.evaluate), seqtwins.evaluate is f)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
