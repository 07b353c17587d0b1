from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.baselines import tfidf_svd_embeddings
from seqtwins.evaluate.protocol import evaluate_embeddings, save_results
from seqtwins.evaluate.report import plot_cross_correlation, plot_embedding_map, write_report
from seqtwins.evaluate.tasks import build_task

PNG = b"\x89PNG\r\n\x1a\n"


def _eval_json(ds: SequenceDataset, good: np.ndarray, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    methods = {
        "barlow": good,
        "dual": good + rng.normal(scale=3.0, size=good.shape).astype(np.float32),
        "random-init": rng.normal(size=good.shape).astype(np.float32),
        "tfidf-svd": tfidf_svd_embeddings(ds, dim=4),
    }
    res = evaluate_embeddings(
        ds, methods, tasks=["kind", "favorite_category"], fractions=(0.005, 0.1, 1.0), seeds=2
    )
    folder.mkdir(parents=True)
    test = ds.split_users("test")
    np.save(folder / "xc.npy", np.eye(8) * 0.9 + rng.normal(scale=0.05, size=(8, 8)))
    np.save(folder / "labels.npy", build_task(ds, "favorite_category").labels[test])
    np.save(folder / "emb_barlow.npy", good[test])
    res["artifacts"] = {
        "cross_correlation": {"method": "barlow", "path": "xc.npy"},
        "embedding_map": {
            "task": "favorite_category",
            "class_names": build_task(ds, "favorite_category").class_names,
            "labels": "labels.npy",
            "embeddings": {"barlow": "emb_barlow.npy"},
        },
    }
    return save_results(res, folder / "eval.json")


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_report_command_writes_markdown_and_plots(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    path = _eval_json(ds, kind_embeddings["good"], tmp_path / "run")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "report.md") in result.output
    md = (out / "report.md").read_text()
    for png in ("kind.png", "favorite_category.png", "cross_correlation_barlow.png",
                "embedding_map_barlow.png"):  # fmt: skip
        assert _png(out / png), png
        assert f"]({png})" in md
    assert "| method | 0.5% (n=1) | 10% (n=" in md
    assert "| **barlow vs dual** |" in md
    for floor in ("majority", "random-init", "tfidf-svd"):
        assert f"| *{floor} (floor)* |" in md
    assert "n/a [1]" in md and "[1] only 1 class among the 1 labelled train users" in md
    assert "± " in md and "**auc**" in md and "**macro_f1**" in md


def test_two_eval_files_and_bad_inputs(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    a = _eval_json(ds, kind_embeddings["good"], tmp_path / "a")
    b = _eval_json(ds, kind_embeddings["noise"], tmp_path / "b")
    md = write_report([a, b], tmp_path / "both").read_text()
    assert "](1-kind.png)" in md and "](2-kind.png)" in md
    assert _png(tmp_path / "both" / "2-embedding_map_barlow.png")

    (tmp_path / "a" / "xc.npy").unlink()
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(a), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "xc.npy" in res.output
    assert not (tmp_path / "r2").exists()  # inputs checked before anything is written
    res = runner.invoke(app, ["report", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_plot_functions_validate_and_draw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    assert _png(plot_cross_correlation(np.corrcoef(rng.normal(size=(6, 50))), tmp_path / "c.png"))
    emb = rng.normal(size=(300, 5)).astype(np.float32)
    labels = rng.integers(-1, 12, 300)  # more classes than colours, some without a label
    names = [f"cat{i}" for i in range(12)]
    assert _png(plot_embedding_map(emb, labels, names, tmp_path / "m.png", max_points=200))
    with pytest.raises(SeqtwinsError, match="need \\(P, P\\)"):
        plot_cross_correlation(np.zeros((2, 3)), tmp_path / "bad.png")
    with pytest.raises(SeqtwinsError, match="embedding map needs"):
        plot_embedding_map(emb, labels[:5], names, tmp_path / "bad.png")


def test_report_never_writes_into_a_folder_it_does_not_own(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    from seqtwins.errors import SeqtwinsError
    from seqtwins.evaluate.report import write_report

    eval_json = _eval_json(ds, kind_embeddings["good"], tmp_path / "run")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "report.md").write_text("# my own report\n")
    with pytest.raises(SeqtwinsError, match="seqtwins did not write"):
        write_report([eval_json], foreign)
    assert (foreign / "report.md").read_text() == "# my own report\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["report.md"]
    ours = tmp_path / "ours"
    write_report([eval_json], ours)
    write_report([eval_json], ours)  # its own folder: rewritten in place
    assert (ours / "report.md").read_text().startswith("# seqtwins evaluation report")


def test_report_shows_headline_set_tasks_first(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    from seqtwins.evaluate.probe import Prediction

    def native(task, users):  # type: ignore[no-untyped-def]
        if task.name != "future_items":
            return None
        return Prediction.full(np.random.default_rng(0).normal(size=(len(users), task.num_classes)))

    res = evaluate_embeddings(
        ds, {"barlow": kind_embeddings["good"], "dual": kind_embeddings["noise"]},
        tasks=["kind", "future_items", "future_categories"], fractions=(0.1, 1.0), seeds=2,
        scorers={"dual:native": native},
    )  # fmt: skip
    folder = tmp_path / "run"
    folder.mkdir()
    md = write_report([save_results(res, folder / "eval.json")], tmp_path / "r").read_text()
    heads = [line for line in md.splitlines() if line.startswith("### `")]
    assert heads[0].startswith("### `future_items` ★ headline")
    assert heads[1].startswith("### `future_categories` ★ headline")
    assert heads[2].startswith("### `kind` —")  # single-label tasks follow, unmarked
    assert md.count("**Too small to compare:**") == 3 and "60 labelled test users (fewer" in md
    assert "root categories left out: `extra`" in md
    for metric in ("**map**", "**recall@5**", "**recall@10**", "**recall@20**", "**ndcg@10**"):
        assert metric in md
    assert "| *history (floor)* |" in md and "| dual:native |" in md
    section = md[md.index("### `future_categories`") : md.index("### `kind`")]
    assert "dual:native" not in section  # the scorer does not apply there: no row
    assert "| method | 10% (n=" in section  # n = the labelled subset, not a label-free run's 0
    assert _png(tmp_path / "r" / "future_items.png")


def test_task_without_any_score_gets_no_plot(
    ds: SequenceDataset, kind_embeddings: dict, tmp_path: Path
) -> None:
    # e.g. a first-listed category task where every item's first category is the root:
    # one class, every cell n/a; an empty figure (and matplotlib's legend warning) helps no one
    res = evaluate_embeddings(
        ds, {"barlow": kind_embeddings["good"], "dual": kind_embeddings["noise"]},
        tasks=["kind", "favorite_category"], fractions=(0.1, 1.0), seeds=1,
    )  # fmt: skip
    folder, out = tmp_path / "run", tmp_path / "r"
    folder.mkdir()
    write_report([save_results(res, folder / "eval.json")], out)
    assert _png(out / "kind.png")  # scored: plotted
    for c in res["cells"]:
        if c["task"] == "kind":
            c["mean"] = dict.fromkeys(c["mean"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = write_report([save_results(res, folder / "eval.json")], out).read_text()
    assert "### `kind`" in md and "![kind]" not in md
    assert not (out / "kind.png").exists()  # the earlier report's plot would mislead
    assert "![favorite_category](favorite_category.png)" in md
    assert _png(out / "favorite_category.png")
