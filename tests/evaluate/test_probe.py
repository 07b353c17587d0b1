from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate.probe import (
    Prediction,
    ProbeConfig,
    binary_auc,
    fit_probe,
    macro_f1,
    positive_ranks,
    score,
    score_users,
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


def test_lazy_single_label_metrics_read_each_row_once() -> None:
    rng = np.random.default_rng(1)
    classes = np.array([1, 3, 4, 7, 8])
    scores = rng.integers(0, 3, size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    read: list[tuple[int, int]] = []

    def rows(a: int, b: int) -> np.ndarray:
        read.append((a, b))
        return scores[a:b]

    lazy = Prediction.lazy(40, classes, rows)
    assert lazy.ranks(y, chunk=7).tolist() == Prediction(scores, classes).ranks(y).tolist()
    assert sum(b - a for a, b in read) <= 40  # chunks without a listed class are skipped
    read.clear()
    np.testing.assert_array_equal(lazy.top1(chunk=9), Prediction(scores, classes).top1())
    assert sum(b - a for a, b in read) == 40
    read.clear()
    metrics = ("accuracy", "hr@3", "ndcg@3")
    assert score(lazy, y, metrics) == score(Prediction(scores, classes), y, metrics)
    assert sum(b - a for a, b in read) <= 80  # top-1 once, ranks once


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


# --- set metrics and the multi-label probe -----------------------------------------------


def _multi_hot(rng: np.random.Generator, n: int, c: int, p: float) -> np.ndarray:
    t = rng.random((n, c)) < p
    t[np.arange(n), rng.integers(0, c, n)] = True  # every user has a target
    return t


def test_average_precision_matches_scikit_learn_per_user() -> None:
    rng = np.random.default_rng(0)
    n, c = 60, 25
    s = rng.normal(size=(n, c)).astype(np.float32)  # no ties: sklearn's convention agrees
    t = _multi_hot(rng, n, c, 0.2)
    metrics, values = score_users(Prediction.full(s), sp.csr_matrix(t), ("map", "recall@5"))
    ref = [average_precision_score(t[i], s[i]) for i in range(n)]
    np.testing.assert_allclose(values["map"], ref, rtol=1e-12)
    assert metrics["map"] == pytest.approx(np.mean(ref))
    top5 = np.argsort(-s, axis=1)[:, :5]
    hits = t[np.arange(n)[:, None], top5].sum(1)
    np.testing.assert_allclose(values["recall@5"], hits / np.minimum(5, t.sum(1)))


def test_ndcg_and_recall_with_several_positives_by_hand() -> None:
    # one user, classes 0..5 ranked 5, 4, 3, 2, 1, 0; targets {4, 1, 0} -> ranks 1, 4, 5
    pred = Prediction(np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]], np.float32), np.arange(6))
    truth = sp.csr_matrix(np.array([[1, 1, 0, 0, 1, 0]]))
    m = score(pred, truth, ("ndcg@3", "ndcg@6", "recall@3", "recall@2", "map"))
    ideal3 = 1 + 1 / np.log2(3) + 1 / np.log2(4)  # min(K, 3 positives) = 3
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3)) / ideal3)
    assert m["ndcg@6"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(6) + 1 / np.log2(7)) / ideal3)
    assert m["recall@3"] == pytest.approx(1 / 3) and m["recall@2"] == pytest.approx(1 / 2)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 5 + 3 / 6) / 3)


def test_set_ranks_exclusion_ties_unlisted_classes_and_chunks() -> None:
    rng = np.random.default_rng(3)
    n, c = 30, 12
    classes = np.array([0, 2, 3, 5, 8, 9])  # the rest is unlisted: after these, by code
    s = rng.integers(0, 3, (n, len(classes))).astype(np.float32)  # many ties
    t = _multi_hot(rng, n, c, 0.2)
    ex = (rng.random((n, c)) < 0.3) & ~t
    pred = Prediction(s, classes)
    ranks, kept = positive_ranks(pred, sp.csr_matrix(t), sp.csr_matrix(ex))
    expect = []
    for u in range(n):
        full = {int(k): float(v) for k, v in zip(classes, s[u], strict=True)}
        order = [k for k in sorted(range(c), key=lambda k: (-full.get(k, -np.inf), k))
                 if not ex[u, k]]  # fmt: skip
        expect += [order.index(k) for k in np.flatnonzero(t[u])]
    assert ranks.tolist() == expect and kept.nnz == t.sum()
    lazy = Prediction.lazy(n, classes, lambda a, b: s[a:b])
    small, _ = positive_ranks(lazy, sp.csr_matrix(t), sp.csr_matrix(ex), chunk_bytes=1)
    assert small.tolist() == expect  # one user per chunk: same answer
    for cap in (1, 3, 7):  # top-K metrics: exact below the cap, the cap beyond it
        capped, _ = positive_ranks(lazy, sp.csr_matrix(t), sp.csr_matrix(ex), cap=cap)
        assert capped.tolist() == np.minimum(expect, cap).tolist()
    cont = Prediction(rng.normal(size=(n, len(classes))).astype(np.float32), classes)
    exact, _ = positive_ranks(cont, sp.csr_matrix(t), sp.csr_matrix(ex))
    capped, _ = positive_ranks(cont, sp.csr_matrix(t), sp.csr_matrix(ex), cap=4)
    assert capped.tolist() == np.minimum(exact, 4).tolist()
    # an excluded class is never a target, and excluding a class changes no other rank order
    m_ex = score(pred, sp.csr_matrix(t | ex), ("map",), exclude=sp.csr_matrix(ex))
    assert m_ex["map"] == pytest.approx(
        score(pred, sp.csr_matrix(t), ("map",), sp.csr_matrix(ex))["map"]
    )


def test_ridge_multilabel_fit_matches_numpy_lstsq() -> None:
    rng = np.random.default_rng(4)
    n, d, c, alpha = 200, 6, 9, 0.3
    x = rng.normal(size=(n, d)).astype(np.float32) * 3 + 1
    t = _multi_hot(rng, n, c, 0.25)
    t[:, 7] = False  # a class without a positive is not learned
    cfg = ProbeConfig(solver="ridge", ridge_alphas=(alpha,))
    probe = fit_probe(x, sp.csr_matrix(t), x[:50], sp.csr_matrix(t[:50]), "map", cfg)
    assert probe.classes.tolist() == [0, 1, 2, 3, 4, 5, 6, 8]
    # reference: mean ||z W + b - Y||^2 + alpha ||W||^2 on the standardised z, by lstsq
    z = probe.transform(x).astype(np.float64)
    y = t[:, probe.classes].astype(np.float64)
    zc, yc = z - z.mean(0), y - y.mean(0)
    a = np.vstack([zc, np.sqrt(n * alpha) * np.eye(d)])
    w = np.linalg.lstsq(a, np.vstack([yc, np.zeros((d, y.shape[1]))]), rcond=None)[0]
    b = y.mean(0) - z.mean(0) @ w
    np.testing.assert_allclose(probe.predict(x).scores, z @ w + b, atol=1e-4)
    lazy = probe.predict(x, lazy=True)
    np.testing.assert_array_equal(lazy.rows(10, 20), probe.predict(x).scores[10:20])


def test_multilabel_probes_recover_planted_sets() -> None:
    rng = np.random.default_rng(5)
    n, d, c = 900, 8, 10
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, c))
    t = (x @ w) > 1.0
    t[np.arange(n), np.argmax(x @ w, axis=1)] = True
    truth = sp.csr_matrix(t)
    tr, va, te = slice(0, 500), slice(500, 700), slice(700, 900)
    noise = rng.normal(size=x.shape).astype(np.float32)
    for cfg in (ProbeConfig(solver="ridge"), ProbeConfig(solver="logistic", max_evals=8)):
        probe = fit_probe(x[tr], truth[tr], x[va], truth[va], "map", cfg)
        good = score(probe.predict(x[te], lazy=True), truth[te], ("map",))["map"]
        probe = fit_probe(noise[tr], truth[tr], noise[va], truth[va], "map", cfg)
        bad = score(probe.predict(noise[te], lazy=True), truth[te], ("map",))["map"]
        assert good is not None and bad is not None and good > bad + 0.2, cfg.solver
        assert probe.selection["solver"] == cfg.solver
    # auto takes ridge for multi-label tasks whatever their size
    assert ProbeConfig().for_task(10, 2, multilabel=True).solver == "ridge"
    assert ProbeConfig().for_task(10, 2).solver == "logistic"


def test_lazy_prediction_checks_its_rows() -> None:
    lazy = Prediction.lazy(3, np.array([0, 1]), lambda a, b: np.zeros((b - a, 3), np.float32))
    with pytest.raises(ValueError, match="lazy rows 0:3 have shape"):
        lazy.rows(0, 3)
    nan = Prediction.lazy(2, np.array([0, 1]), lambda a, b: np.full((b - a, 2), np.nan))
    with pytest.raises(SeqtwinsError, match="NaN"):
        _ = nan.scores
