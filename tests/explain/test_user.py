"""explain_user and ``seqtwins explain``: content, JSON schema, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from seqtwins.cli import app
from seqtwins.data.batching import histories
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.protocol import evaluate_embeddings
from seqtwins.evaluate.tasks import build_task
from seqtwins.explain import SCHEMA, Explainer, explain_user
from seqtwins.explain.probe import fit_task_probe
from seqtwins.models.encoder import embed_users
from seqtwins.run import Run

runner = CliRunner()
USER = "user7"


def test_explanation_of_a_dual_run(explain_runs: dict[str, Path]) -> None:
    ex = explain_user(explain_runs["dual"], explain_runs["data"], USER, task="favorite_category",
                      k=4)  # fmt: skip
    ds = SequenceDataset.open(explain_runs["data"])
    u = int(np.flatnonzero(ds.users["user_id"].to_numpy() == USER)[0])
    window = histories(ds.sequences, [u], Run.open(explain_runs["dual"]).config.encoder.max_len)[0]
    table = ex.table()
    assert isinstance(table, pl.DataFrame) and len(table) == len(window)
    assert table.columns == ["position", "item_id", "category", "ig_embedding",
                             "occlusion_embedding", "ig_task", "occlusion_task"]  # fmt: skip
    ids = ds.items["item_id"].to_list()
    assert table["item_id"].to_list() == [ids[i - 1] for i in window]
    for col, key in (("ig_embedding", "embedding"), ("ig_task", "task")):
        t = ex.targets[key]
        assert table[col].sum() == pytest.approx(t["ig_sum"])
        assert abs(t["ig_gap"]) < 1e-3 * max(1.0, abs(t["ig_sum"]))
    # nearest users: cosine recomputed from the run's own embeddings, shared items exact
    emb = embed_users(
        Run.open(explain_runs["dual"]).encoder("best", ds), ds, np.arange(ds.num_users)
    )
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit[u]
    nb = ex.neighbours
    assert len(nb) == 4 and USER not in nb["user_id"].to_list()
    assert nb["cosine"].to_list() == pytest.approx(sorted(np.delete(cos, u))[::-1][:4], abs=1e-5)
    first = int(np.flatnonzero(ds.users["user_id"].to_numpy() == nb["user_id"][0])[0])
    own, theirs = histories(ds.sequences, [u, first])
    assert sorted(nb["shared_items"][0]) == sorted(ids[i - 1] for i in set(own) & set(theirs))
    assert ex.items is not None and len(ex.items) == 4
    assert ex.items["score"].is_sorted(descending=True)


def test_probe_is_the_one_evaluate_fits(explain_runs: dict[str, Path]) -> None:
    """Fraction 1.0, seed 0: the same labelled subset and the same selection as evaluate."""
    ds = SequenceDataset.open(explain_runs["data"])
    emb = embed_users(Run.open(explain_runs["barlow"]).encoder("best", ds), ds,
                      np.arange(ds.num_users))  # fmt: skip
    tp = fit_task_probe(ds, build_task(ds, "favorite_category"), emb)
    res = evaluate_embeddings(ds, {"m": emb}, tasks=["favorite_category"], fractions=[1.0],
                              seeds=[0], include_majority=False, include_history=False)  # fmt: skip
    run = next(c for c in res["cells"] if c["method"] == "m")["runs"][0]
    assert run["n_train"] == tp.n_train
    assert run["selection"] == tp.probe.selection


def test_cli_table_and_json(explain_runs: dict[str, Path]) -> None:
    base = ["explain", str(explain_runs["barlow"]), "--data", str(explain_runs["data"]),
            "--user", USER, "-k", "3"]  # fmt: skip
    shown = runner.invoke(app, base)
    assert shown.exit_code == 0, shown.output
    assert "nearest users" in shown.output and "integrated gradients" in shown.output
    assert "nearest items" not in shown.output  # barlow has no item vectors
    out = runner.invoke(app, [*base, "--json", "--task", "segment"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["schema"] == SCHEMA
    assert set(doc) == {"schema", "run", "dataset", "checkpoint", "user", "targets",
                        "history", "neighbours", "items", "notes", "seconds"}  # fmt: skip
    assert doc["user"]["id"] == USER and doc["items"] is None and doc["checkpoint"] == "best"
    assert set(doc["targets"]) == {"embedding", "task"}
    assert set(doc["targets"]["task"]) >= {"task", "predicted", "confidence", "score", "probe"}
    assert 0.0 <= doc["targets"]["task"]["confidence"] <= 1.0  # a logistic probe: a softmax
    row = doc["history"][0]
    assert set(row) == {"position", "item_id", "category", "ig_embedding",
                        "occlusion_embedding", "ig_task", "occlusion_task"}  # fmt: skip
    assert all(isinstance(row[k], float) for k in row if k.startswith(("ig_", "occlusion_")))
    assert len(doc["neighbours"]) == 3
    assert set(doc["neighbours"][0]) == {"rank", "user_id", "cosine", "shared", "shared_items"}
    dual = runner.invoke(app, ["explain", str(explain_runs["dual"]), "--data",
                               str(explain_runs["data"]), "--user", USER, "--json"])  # fmt: skip
    items = json.loads(dual.output)["items"]
    assert len(items) == 10 and set(items[0]) == {"rank", "item_id", "category", "score",
                                                  "in_history"}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--user", "nobody"], "user 'nobody' is not in dataset"),
        (["--user", USER, "--items"], "has no item vectors"),
        (["--user", USER, "--task", "nope"], "unknown task 'nope'"),
        (["--user", USER, "-k", "0"], "-k 0 must be >= 1"),
        (["--user", USER, "--checkpoint", "middle"], "must be one of best, last"),
    ],
)
def test_cli_bad_input_is_one_line(
    explain_runs: dict[str, Path], extra: list[str], message: str
) -> None:
    res = runner.invoke(app, ["explain", str(explain_runs["barlow"]), "--data",
                              str(explain_runs["data"]), *extra])  # fmt: skip
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_embeddings_file_gives_the_same_answer(
    explain_runs: dict[str, Path], tmp_path: Path
) -> None:
    """--embeddings reads `seqtwins embed`'s export instead of embedding every user: the same
    neighbours and the same task attributions; a file of another checkpoint is one line."""
    from seqtwins.embed import export_embeddings

    run, data = explain_runs["dual"], explain_runs["data"]
    emb = tmp_path / "users.parquet"
    export_embeddings(run, data, emb)
    a = explain_user(run, data, USER, task="favorite_category", k=4)
    b = explain_user(run, data, USER, task="favorite_category", k=4, embeddings=emb)
    assert a.neighbours["user_id"].to_list() == b.neighbours["user_id"].to_list()
    np.testing.assert_allclose(b.neighbours["cosine"], a.neighbours["cosine"], atol=1e-5)
    np.testing.assert_allclose(b.table()["ig_task"], a.table()["ig_task"], atol=1e-4)
    export_embeddings(run, data, tmp_path / "last.parquet", which="last")
    result = runner.invoke(app, ["explain", str(run), "--data", str(data), "--user", USER,
                                 "--embeddings", str(tmp_path / "last.parquet")])  # fmt: skip
    assert result.exit_code == 2 and "checkpoint" in result.output


def _answer(ex_dict: dict[str, object]) -> dict[str, object]:
    """An explanation's JSON without its timing."""
    return {k: v for k, v in ex_dict.items() if k != "seconds"}


def test_explainer_reused_answers_as_explain_user(explain_runs: dict[str, Path]) -> None:
    """One Explainer answers many users without loading again: each answer equals
    explain_user's, asking twice gives the same answer, and a task's probe is fitted once."""
    run, data = explain_runs["dual"], explain_runs["data"]
    explainer = Explainer.load(run, data)
    first = explainer.explain(USER, task="favorite_category", k=4)
    probe = explainer.probe("favorite_category")
    again = explainer.explain(USER, task="favorite_category", k=4)
    assert explainer.probe("favorite_category") is probe  # cached, not refitted
    assert _answer(again.to_dict()) == _answer(first.to_dict())
    once = explain_user(run, data, USER, task="favorite_category", k=4)
    assert _answer(once.to_dict()) == _answer(first.to_dict())
    assert _answer(explainer.explain("user12", k=3).to_dict()) == _answer(
        explain_user(run, data, "user12", k=3).to_dict()
    )
    # items=False leaves the nearest items out of one answer; the explainer still has them
    assert explainer.explain(USER, k=2, items=False).items is None
    assert explainer.explain(USER, k=2).items is not None


def test_explainer_bad_input(explain_runs: dict[str, Path]) -> None:
    explainer = Explainer.load(explain_runs["barlow"], explain_runs["data"])
    with pytest.raises(SeqtwinsError, match="has no item vectors"):
        explainer.explain(USER, items=True)
    with pytest.raises(SeqtwinsError, match="user 'nobody' is not in dataset"):
        explainer.explain("nobody")
    with pytest.raises(SeqtwinsError, match="unknown task 'nope'"):
        explainer.explain(USER, task="nope")
    with pytest.raises(SeqtwinsError, match="-k 0 must be >= 1"):
        explainer.explain(USER, k=0)
    assert explainer.explain(USER, k=1).items is None  # barlow: no item vectors
    with pytest.raises(SeqtwinsError, match=r"embeddings of shape \(3, 4\) are not"):
        Explainer.load(explain_runs["barlow"], explain_runs["data"], embeddings=np.zeros((3, 4)))


def test_explain_imports_no_scikit_learn() -> None:
    """`seqtwins explain` and the service's explainer do not pay for scikit-learn, scipy.stats
    or pandas at start (the evaluation package's names are imported on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, seqtwins.cli, seqtwins.explain.user, seqtwins.explain.render, "
        "seqtwins.evaluate; from seqtwins.evaluate import build_task, ProbeConfig; "
        "print(sorted(m for m in ('sklearn', 'scipy.stats', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"
    # the lazy names still resolve, and the package is still callable
    import seqtwins.evaluate as evaluate

    assert callable(evaluate) and evaluate.tfidf_svd_embeddings.__name__ == "tfidf_svd_embeddings"


def test_more_neighbours_asked_than_users(explain_runs: dict[str, Path]) -> None:
    """k past the number of users lists every other user, never the user itself, and the
    JSON stays finite."""
    run, data = explain_runs["barlow"], explain_runs["data"]
    n = SequenceDataset.open(data).num_users
    ex = Explainer.load(run, data).explain(USER, k=n + 50)
    assert len(ex.neighbours) == n - 1 and USER not in ex.neighbours["user_id"].to_list()
    assert np.isfinite(ex.neighbours["cosine"].to_numpy()).all()
    json.loads(ex.to_json())


def test_embeddings_file_types_and_broken_values(
    explain_runs: dict[str, Path], tmp_path: Path
) -> None:
    """An export rewritten as float64 reads as the same float32 rows; one with a NaN, or a
    missing value, is one line (never served or searched as if it were fine)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqtwins.embed import export_embeddings, read_user_embeddings

    run_dir, data = explain_runs["barlow"], explain_runs["data"]
    path = tmp_path / "users.parquet"
    export_embeddings(run_dir, data, path)
    run, ds = Run.open(run_dir), SequenceDataset.open(data)
    want = read_user_embeddings(path, run, "best", ds)
    table = pq.read_table(path)
    col = table.schema.get_field_index("embedding")

    def rewrite(values: pa.Array, name: str) -> Path:
        out = tmp_path / name
        dim = table.column("embedding").type.list_size
        emb = pa.FixedSizeListArray.from_arrays(values, dim)
        pq.write_table(table.set_column(col, "embedding", emb), out)
        return out

    flat = table.column("embedding").combine_chunks().flatten().to_numpy()
    wide = rewrite(pa.array(flat.astype(np.float64)), "f64.parquet")
    np.testing.assert_array_equal(read_user_embeddings(wide, run, "best", ds), want)
    nan = flat.copy()
    nan[5] = np.nan
    with pytest.raises(SeqtwinsError, match="embeddings of 1 users are not finite"):
        read_user_embeddings(rewrite(pa.array(nan), "nan.parquet"), run, "best", ds)
    hole = pa.array([None if i == 5 else float(v) for i, v in enumerate(flat)], pa.float32())
    with pytest.raises(SeqtwinsError, match="1 missing values"):
        read_user_embeddings(rewrite(hole, "hole.parquet"), run, "best", ds)


def test_reading_an_export_imports_no_pandas(explain_runs: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    from seqtwins.embed import export_embeddings

    run, data = explain_runs["barlow"], explain_runs["data"]
    export_embeddings(run, data, tmp_path / "users.parquet")
    code = (
        "import sys; from seqtwins.embed import read_user_embeddings; "
        "from seqtwins.run import Run; from seqtwins.data.dataset import SequenceDataset; "
        f"read_user_embeddings({str(tmp_path / 'users.parquet')!r}, Run.open({str(run)!r}), "
        f"'best', SequenceDataset.open({str(data)!r})); print('pandas' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.strip() == "False"
