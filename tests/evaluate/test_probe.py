from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import (
    Prediction,
    ProbeConfig,
    binary_auc,
    fit_probe,
    macro_f1,
    score,
)


def _brute_ranks(scores: np.ndarray, classes: np.ndarray, y: np.ndarray, n_classes: int) -> list:
    """Rank by sorting all classes on (-score, class code); unlisted classes score -inf."""
    out = []
    for row, target in zip(scores, y, strict=True):
        full = {int(c): float(s) for c, s in zip(classes, row, strict=True)}
        order = sorted(range(n_classes), key=lambda c: (-full.get(c, -np.inf), c))
        out.append(order.index(int(target)))
    return out


def test_ranks_match_a_full_sort_with_ties_and_unlisted_classes() -> None:
    rng = np.random.default_rng(0)
    classes = np.array([1, 3, 4, 7, 8])
    scores = rng.integers(0, 3, size=(40, 5)).astype(np.float32)  # many ties
    y = rng.integers(0, 10, 40)  # includes classes the prediction does not list
    pred = Prediction(scores, classes)
    assert pred.ranks(y, chunk=7).tolist() == _brute_ranks(scores, classes, y, 10)
    m = score(pred, y, ("accuracy@1", "hr@1", "hr@3", "ndcg@3"))
    ranks = np.array(_brute_ranks(scores, classes, y, 10))
    assert m["accuracy@1"] == m["hr@1"] == pytest.approx(np.mean(ranks == 0))
    assert m["hr@3"] == pytest.approx(np.mean(ranks < 3))
    assert m["ndcg@3"] == pytest.approx(np.mean(np.where(ranks < 3, 1 / np.log2(ranks + 2), 0)))


def test_macro_f1_and_auc_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 6, 200), rng.integers(1, 8, 200)  # classes only in y or in p
    assert macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    yb = rng.integers(0, 2, 300)
    s = rng.integers(0, 5, 300).astype(np.float64)  # ties count half
    assert binary_auc(yb, s) == pytest.approx(roc_auc_score(yb, s))
    assert binary_auc(np.ones(5, int), np.arange(5.0)) is None
    pred = Prediction(np.stack([-s, s], 1).astype(np.float32), np.array([0, 1]))
    assert score(pred, yb, ("auc",))["auc"] == pytest.approx(roc_auc_score(yb, s))


def _planted(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.1, 10, d).astype(np.float32)
    w = rng.normal(size=(d, k))
    return x, np.argmax((x / x.std(0)) @ w, axis=1)


@pytest.mark.parametrize(
    ("kind", "solver", "floor"), [("linear", "ridge", 0.85), ("linear", "logistic", 0.9),
                                  ("mlp", "logistic", 0.85)],
)  # fmt: skip
def test_probe_recovers_a_planted_linear_label(kind: str, solver: str, floor: float) -> None:
    x, y = _planted(1500, 12, 4, seed=0)
    tr, va, te = slice(0, 900), slice(900, 1200), slice(1200, 1500)
    cfg = ProbeConfig(kind=kind, solver=solver, hidden=32, max_evals=15)
    probe = fit_probe(x[tr], y[tr], x[va], y[va], "accuracy", cfg, seed=0)
    acc = score(probe.predict(x[te]), y[te], ("accuracy",))["accuracy"]
    assert acc is not None and acc > floor
    # features independent of the label: near chance (4 balanced-ish classes)
    noise = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    probe = fit_probe(noise[tr], y[tr], noise[va], y[va], "accuracy", cfg, seed=0)
    acc = score(probe.predict(noise[te]), y[te], ("accuracy",))["accuracy"]
    assert acc is not None and acc < 0.45
    assert probe.selection["metric"] == "accuracy" and probe.selection["solver"] == (
        "mlp" if kind == "mlp" else solver
    )


def test_ridge_is_deterministic_and_learns_only_seen_classes() -> None:
    x, y = _planted(400, 6, 5, seed=2)
    y[y == 3] = 4  # class 3 never appears in training
    ridge = ProbeConfig(solver="ridge")
    a = fit_probe(x[:300], y[:300], x[300:], y[300:], "accuracy", ridge, seed=0)
    b = fit_probe(x[:300], y[:300], x[300:], y[300:], "accuracy", ridge, seed=99)
    pa, pb = a.predict(x[300:]), b.predict(x[300:])
    np.testing.assert_array_equal(pa.scores, pb.scores)
    assert pa.classes.tolist() == [0, 1, 2, 4]
    assert a.selection["alpha"] in ProbeConfig().ridge_alphas
    with pytest.raises(ValueError, match="two classes"):
        fit_probe(x[:10], np.zeros(10, int), x[10:20], y[10:20], "accuracy")


def test_auto_solver_is_resolved_by_task_size() -> None:
    cfg = ProbeConfig(solver="auto", auto_logistic_max=1000)
    assert cfg.for_task(100, 10).solver == "logistic"
    assert cfg.for_task(100, 11).solver == "ridge"
    assert ProbeConfig().for_task(10**6, 10**4).solver == "ridge"
    assert ProbeConfig(solver="ridge").deterministic
    assert not ProbeConfig(solver="logistic").deterministic
    assert ProbeConfig().solver == "auto"  # logistic regression where it is affordable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "svm"}, "probe kind"), ({"solver": "sgd"}, "probe solver"),
     ({"ridge_alphas": ()}, "ridge_alphas"), ({"weight_decays": (-1.0,)}, "weight_decays"),
     ({"hidden": 0}, "hidden=0"), ({"lr": 0.0}, "lr=0")],
)  # fmt: skip
def test_bad_probe_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(SeqtwinsError, match=match):
        ProbeConfig(**kwargs)


def test_prediction_refuses_nan_and_bad_shapes() -> None:
    with pytest.raises(SeqtwinsError, match="NaN"):
        Prediction(np.array([[np.nan, 1.0]], np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="must be"):
        Prediction(np.zeros((2, 3), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="ascending"):
        Prediction(np.zeros((2, 2), np.float32), np.array([1, 0]))


def test_fitting_restores_the_thread_count() -> None:
    import torch

    before = torch.get_num_threads()
    x, y = _planted(200, 4, 3, seed=3)
    fit_probe(x[:150], y[:150], x[150:], y[150:], "accuracy", ProbeConfig(threads=1))
    assert torch.get_num_threads() == before
    with pytest.raises(SeqtwinsError, match="threads=0"):
        ProbeConfig(threads=0)


def test_logistic_probe_starts_at_the_class_prior():
    """With a learning rate too small to move anything, the logistic probe predicts the
    majority class: its biases start at the log class prior. (From zero biases, Adam at the
    default lr was still far from the prior when early stopping ended a fit over Yelp's 661
    unbalanced categories, and the probe scored well below the majority class.)"""
    rng = np.random.default_rng(0)
    k, majority = 600, 5
    p = np.full(k, 0.7 / (k - 1))
    p[majority] = 0.3

    def draw(n):
        return rng.normal(size=(n, 16)).astype(np.float32), rng.choice(k, size=n, p=p)

    (xt, yt), (xv, yv), (xs, _) = draw(2400), draw(500), draw(500)
    cfg = ProbeConfig(solver="logistic", lr=1e-9, max_evals=1)
    probe = fit_probe(xt, yt, xv, yv, "accuracy", cfg, seed=0)
    assert np.all(
        np.argmax(probe.predict(xs).scores, axis=1)
        == np.searchsorted(probe.predict(xs).classes, majority)
    )
