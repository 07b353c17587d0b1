"""The deletion test on planted examples whose answer is known, and on a tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqtwins.errors import SeqtwinsError
from seqtwins.explain.faithfulness import compare, curve_summary, deletion_drops, faithfulness

SIGNAL = 100  # item ids >= SIGNAL carry the prediction


def planted(n_users: int = 400, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Windows of 20 items, 5 of them signal items at random places, and the order an
    oracle attribution gives (signal positions first)."""
    rng = np.random.default_rng(seed)
    windows, orders = [], []
    for _ in range(n_users):
        w = rng.integers(1, SIGNAL, 20)
        where = rng.choice(20, 5, replace=False)
        w[where] = rng.integers(SIGNAL, 2 * SIGNAL, 5)
        windows.append(w)
        orders.append(np.argsort(-(w >= SIGNAL).astype(int), kind="stable"))
    return windows, orders


def signal_count(ws: list[np.ndarray]) -> np.ndarray:
    """Confidence = 0.1 x the number of signal items left: removing one signal item drops
    it by exactly 0.1, removing a random one by 0.1 x 5/20 in expectation."""
    return np.array([0.1 * np.sum(w >= SIGNAL) for w in ws])


def test_oracle_attribution_drops_exactly_the_planted_amount() -> None:
    windows, orders = planted()
    drops = deletion_drops(windows, orders, signal_count)
    np.testing.assert_allclose(drops, np.tile(0.1 * np.arange(1, 6), (len(windows), 1)))


def test_random_removal_drops_the_expected_amount_and_the_ratio_is_four() -> None:
    """Random removal of k of 20 items takes k/4 signal items on average: drop 0.025 k, so
    the oracle's area is 4x random's."""
    windows, orders = planted()
    res = compare(windows, {"oracle": orders}, signal_count, draws=20)
    np.testing.assert_allclose(res["random"]["drop"], 0.025 * np.arange(1, 6), rtol=0.08)
    assert res["methods"]["oracle"]["auc"] == pytest.approx(0.1 * 12.5)
    assert res["methods"]["oracle"]["auc_ratio"] == pytest.approx(4.0, rel=0.08)
    assert res["methods"]["oracle"]["drop_ratio_at_k"] == pytest.approx(4.0, rel=0.08)


def test_an_uninformative_attribution_scores_like_random() -> None:
    """An order unrelated to the signal is no better than random: ratio near 1."""
    windows, _ = planted()
    rng = np.random.default_rng(7)
    shuffled = [rng.permutation(len(w)) for w in windows]
    res = compare(windows, {"blind": shuffled}, signal_count, draws=20)
    assert res["methods"]["blind"]["auc_ratio"] == pytest.approx(1.0, abs=0.15)


def test_curve_area_is_the_trapezoid_from_the_origin() -> None:
    drops = np.array([[1.0, 2.0, 2.0], [3.0, 2.0, 4.0]])  # mean 2, 2, 3
    s = curve_summary(drops, ks=(1, 2, 3))
    assert s["drop"] == [2.0, 2.0, 3.0]
    assert s["auc"] == pytest.approx(1.0 + 2.0 + 2.5)


def test_faithfulness_on_a_tiny_run(explain_runs: dict[str, Path]) -> None:
    res = faithfulness(explain_runs["barlow"], explain_runs["data"], "favorite_category",
                       users=10, draws=2)  # fmt: skip
    assert res["users"] == min(10, res["eligible_test_users"]) > 0
    assert res["ks"] == [1, 2, 3, 4, 5] and set(res["methods"]) == {"ig", "occlusion"}
    for s in res["methods"].values():
        assert len(s["drop"]) == 5 and np.isfinite(s["auc"])
    with pytest.raises(SeqtwinsError, match="unknown attribution method"):
        faithfulness(explain_runs["barlow"], explain_runs["data"], "favorite_category",
                     methods=("saliency",))  # fmt: skip
