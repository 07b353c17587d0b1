"""Native scoring through an objective's item tower, checked against its own training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqtwins.config import PretrainConfig, build
from seqtwins.data.batching import collate, histories
from seqtwins.data.dataset import SequenceDataset
from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.native import NATIVE_OBJECTIVES, ItemTower, has_item_tower, native_scorer
from seqtwins.evaluate.protocol import load_results
from seqtwins.evaluate.runs import (
    BARLOW_OBJECTIVES,
    evaluate_runs,
    method_names,
    native_scorers,
    per_user_file,
)
from seqtwins.evaluate.tasks import build_task
from seqtwins.models.encoder import embed_users
from seqtwins.objectives import OBJECTIVES, BarlowObjective
from seqtwins.run import Run
from seqtwins.train import pretrain
from tests.helpers import tiny_dataset
from tests.test_train import TINY

# no logQ so that the loaded objective's forward runs without the item counts; the
# correction only shifts training logits per candidate, never the scored ranking
NO_LOGQ = ["train.epochs=1", "dual.logq_correction=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SequenceDataset, dict[str, Run]]:
    root = tmp_path_factory.mktemp("native")
    data = tiny_dataset(root / "ds")
    runs = {}
    for objective in ("dual", "barlow+next", "barlow", "barlow+mask"):
        cfg = build(PretrainConfig, {"objective": objective}, overrides=[*TINY, *NO_LOGQ])
        folder = root / objective.replace("+", "_")
        pretrain(data, folder, cfg, progress=False)
        runs[objective] = Run.open(folder)
    return SequenceDataset.open(data), runs


def _batch(ds: SequenceDataset, objective: str, max_len: int) -> dict[str, torch.Tensor]:
    """A training batch of train users whose next items are all different (so the loss
    masks no false negative)."""
    users = ds.split_users("train")
    batch = collate(histories(ds.sequences, users), "dual", max_len, np.random.default_rng(0))
    _, first = np.unique(batch["target"].numpy(), return_index=True)
    keep = torch.from_numpy(np.sort(first)[:24])
    return {k: v[keep] for k, v in batch.items()}


@pytest.mark.parametrize("objective", ["dual", "barlow+next"])
def test_native_logits_are_the_training_logits(trained, objective: str) -> None:
    ds, runs = trained
    model = runs[objective].objective("best", ds)
    batch = _batch(ds, objective, model.encoder.cfg.max_len)
    tower = ItemTower(model)
    with torch.no_grad():
        emb = model.encoder.embed(batch["context"])  # (B, D)
        logits = tower.logits(emb)  # (B, N) over every item
        in_batch = logits[:, batch["target"] - 1]  # (B, B): the training candidates
        expected = F.cross_entropy(in_batch, torch.arange(len(in_batch)))
        if objective == "dual":
            loss = float(model(batch)[0])
        else:  # barlow+next logs its next-item term apart
            batch["view_a"] = batch["view_b"] = batch["context"]
            loss = model(batch)[1]["next_item"]
    assert float(expected) == pytest.approx(loss, rel=1e-5)
    assert tower.items.shape == (ds.num_items, model.encoder.dim)


def test_masked_item_logits_are_the_training_logits(trained) -> None:
    """``barlow+mask``'s tower scores a vector as its masked-item loss does: the same
    logits give the same cross-entropy over every item."""
    ds, runs = trained
    model = runs["barlow+mask"].objective("best", ds)
    assert model.head.full  # the exact softmax on a tiny item set
    tower = ItemTower(model)
    states = torch.randn(9, model.encoder.dim, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(1, 10) % ds.num_items + 1  # item ids
    model.eval()
    with torch.no_grad():
        loss = model.head.loss(model.encoder, states, targets)
        expected = F.cross_entropy(tower.logits(states), targets - 1)
    assert float(expected) == pytest.approx(float(loss), rel=1e-5)
    assert tower.items.shape == (ds.num_items, model.encoder.dim)
    assert tower.scale == 1.0


def test_explain_lists_the_masked_item_heads_nearest_items(trained) -> None:
    """``seqtwins explain`` on a ``barlow+mask`` run shows the items its head ranks
    highest, with the native scores."""
    from seqtwins.explain.user import Explainer

    ds, runs = trained
    explainer = Explainer.load(runs["barlow+mask"].path, ds.path)
    user = str(ds.users["user_id"][0])
    items = explainer.explain(user, k=3).items
    assert items is not None and len(items) == 3
    model = runs["barlow+mask"].objective("best", ds)
    emb = embed_users(model.encoder, ds, np.array([0]))
    logits = ItemTower(model).logits(torch.from_numpy(emb))[0].numpy()
    assert items["score"].to_numpy() == pytest.approx(np.sort(logits)[::-1][:3], abs=1e-4)


def test_scorer_ranks_every_item_for_test_users_in_chunks(trained) -> None:
    ds, runs = trained
    run = runs["dual"]
    model = run.objective("best", ds)
    emb = embed_users(run.encoder("best", ds), ds, np.arange(ds.num_users))
    task = build_task(ds, "next_item")
    test = task.labelled(ds.split_users("test"))
    pred = native_scorer(model, emb)(task, test)
    assert pred is not None
    np.testing.assert_array_equal(pred.classes, np.arange(ds.num_items))
    assert pred.scores.shape == (len(test), ds.num_items) and pred.scores.dtype == np.float32
    with torch.no_grad():
        direct = ItemTower(model).logits(torch.from_numpy(emb[test])).numpy()
    np.testing.assert_allclose(pred.scores, direct, rtol=1e-6, atol=1e-6)
    chunked = native_scorer(model, emb, chunk=7)(task, test)
    assert chunked is not None
    np.testing.assert_allclose(chunked.scores, pred.scores, rtol=1e-6, atol=1e-6)
    # scores are cosines over the temperature
    assert np.abs(pred.scores).max() <= 1.0 / model.head.cfg.temperature + 1e-4
    # not an item ranking: no answer
    assert native_scorer(model, emb)(build_task(ds, "favorite_category"), test) is None


def test_retrieval_scores_are_lazy_and_match_the_full_ones(trained) -> None:
    ds, runs = trained
    run = runs["dual"]
    model = run.objective("best", ds)
    emb = embed_users(run.encoder("best", ds), ds, np.arange(ds.num_users))
    task = build_task(ds, "future_items")
    test = task.labelled(ds.split_users("test"))
    assert len(test) > 3
    pred = native_scorer(model, emb, chunk=5)(task, test)
    assert pred is not None and pred._scores is None  # never the (users x items) matrix
    assert pred.num_rows == len(test)
    with torch.no_grad():
        direct = ItemTower(model).logits(torch.from_numpy(emb[test])).numpy()
    np.testing.assert_allclose(pred.rows(1, 4), direct[1:4], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pred.scores, direct, rtol=1e-6, atol=1e-6)


def test_objective_lists_match_the_models(trained) -> None:
    ds, runs = trained
    assert sorted(runs) == sorted(OBJECTIVES)
    for objective, run in runs.items():
        model = run.objective("best", ds)
        assert isinstance(model, BarlowObjective) == (objective in BARLOW_OBJECTIVES)
        assert has_item_tower(model) == (objective in NATIVE_OBJECTIVES)


def test_only_objectives_with_an_item_tower_are_scored(trained, monkeypatch) -> None:
    ds, runs = trained
    barlow = runs["barlow"].objective("best", ds)
    assert not has_item_tower(barlow)
    assert has_item_tower(runs["dual"].objective("best", ds))
    with pytest.raises(SeqtwinsError, match="no item tower"):
        ItemTower(barlow)
    order = ["barlow", "dual", "barlow+next"]
    names = method_names([runs[o].path for o in order], order)
    methods = {n: embed_users(runs[o].encoder("last", ds), ds, np.arange(ds.num_users))
               for n, o in zip(names, order, strict=True)}  # fmt: skip
    loaded: list[str] = []
    real = Run.objective

    def objective(self: Run, *args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(self.config.objective)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Run, "objective", objective)
    scorers = native_scorers([runs[o] for o in order], names, ds, methods, checkpoint="last")
    assert sorted(scorers) == ["barlow+next:native", "dual:native"]
    assert loaded == ["dual", "barlow+next"]  # barlow's objective is never loaded
    with pytest.raises(SeqtwinsError, match="width"):
        native_scorer(runs["dual"].objective("best", ds), methods["dual"][:, :3])


def test_evaluate_writes_native_cells_and_per_user_values(trained, tmp_path) -> None:
    """End to end: ``seqtwins evaluate`` on a dual run scores ``dual:native`` on
    ``future_items`` with no labels, and the cross-correlation plot comes from the first
    Barlow objective (here ``barlow+mask``)."""
    ds, runs = trained
    out = tmp_path / "eval.json"
    evaluate_runs([runs["barlow+mask"].path, runs["dual"].path], ds.path, out,
                  tasks=["future_items"], fractions=[1.0], seeds=1, baselines=["majority"],
                  progress=False)  # fmt: skip
    res = load_results(out)
    cells = [c for c in res["cells"] if c["method"] == "dual:native"]
    assert len(cells) == 1 and cells[0]["task"] == "future_items"
    assert cells[0]["protocol"] == "native" and cells[0]["status"] == "ok"
    assert all(r["n_train"] == 0 and r["label_free"] for r in cells[0]["runs"])
    assert cells[0]["mean"]["recall@10"] is not None
    assert {"dual:native", "barlow+mask:native"} <= set(res["methods"])
    assert "barlow+mask:native" in {c["method"] for c in res["cells"]}
    with np.load(per_user_file(out), allow_pickle=False) as npz:
        assert "future_items/dual:native|1|0" in npz.files
        values, users = npz["future_items/dual:native|1|0"], npz["future_items/users"]
    assert values.shape == users.shape
    assert float(values.mean()) == pytest.approx(cells[0]["mean"]["recall@10"], abs=1e-6)
    xc = res["artifacts"]["cross_correlation"]
    assert xc["method"] == "barlow+mask" and (out.parent / xc["path"]).is_file()
