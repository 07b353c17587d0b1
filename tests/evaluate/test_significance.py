from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqtwins.errors import SeqtwinsError
from seqtwins.evaluate import significance
from seqtwins.evaluate.significance import (
    compare,
    load_per_user,
    paired_bootstrap,
    resampled_means,
    value_key,
)


def _values(seed: int = 0, seeds: int = 3, users: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hard = rng.random(users)  # a user hard for one method is hard for the other
    a = np.clip(hard + rng.normal(0, 0.1, (seeds, users)), 0, 1)
    b = np.clip(hard + rng.normal(0, 0.1, (seeds, users)), 0, 1)
    return a, b


def _loop_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The plain two-level formula, one sample at a time, on the documented index streams:
    S seeds drawn with replacement, then n users; the mean over the drawn users of each
    user's mean over the drawn seeds."""
    n_seeds, n = a.shape
    drawn = np.random.default_rng([significance.SEED_SALT, seed]).integers(
        0, n_seeds, size=(n_boot, n_seeds)
    )
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    diffs = []
    for k in range(n_boot):
        total = 0.0
        for u in idx[k]:
            total += sum(a[s, u] - b[s, u] for s in drawn[k]) / n_seeds
        diffs.append(total / n)
    return np.array(diffs)


def test_matches_a_loop_based_bootstrap_on_the_same_indices() -> None:
    a, b = _values(users=60)
    res = paired_bootstrap(a, b, n_boot=300, seed=7)
    ref = _loop_bootstrap(a, b, 300, seed=7)
    low, high = np.percentile(ref, [2.5, 97.5])
    assert res.diff_low == pytest.approx(low, abs=1e-12)
    assert res.diff_high == pytest.approx(high, abs=1e-12)
    assert res.diff == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert res.n_users == 60 and res.n_seeds == 3 and res.n_boot == 300


def test_one_seed_is_the_bootstrap_over_users_alone() -> None:
    a, b = _values(users=60, seeds=1)
    res = paired_bootstrap(a[0], b[0], n_boot=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 60, size=(300, 60))
    low, high = np.percentile((a[0][idx] - b[0][idx]).mean(axis=1), [2.5, 97.5])
    assert res.diff_low == pytest.approx(low, abs=1e-12)
    assert res.diff_high == pytest.approx(high, abs=1e-12)
    assert res.n_seeds == 1
    assert res == paired_bootstrap(a, b, n_boot=300, seed=7)  # (1, n) is the same


def test_seed_noise_widens_the_interval() -> None:
    """A per-seed offset common to all users (which labelled subset was drawn) cancels in
    no user's difference: resampling seeds shows it, users alone do not."""
    a, b = _values(users=400, seeds=4)
    offset = np.array([0.08, -0.08, 0.05, -0.05])[:, None]  # (S, 1), mean 0
    users_only = paired_bootstrap(a.mean(axis=0), b.mean(axis=0), n_boot=500, seed=3)
    both = paired_bootstrap(a + offset, b, n_boot=500, seed=3)
    assert both.diff == pytest.approx(users_only.diff, abs=1e-12)
    width = lambda r: r.diff_high - r.diff_low  # noqa: E731
    assert width(both) > 3 * width(users_only)


def test_chunking_keeps_the_index_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(3).random((3, 50, 2))  # (S, n, k)
    whole = resampled_means(x, 97, seed=4)
    monkeypatch.setattr(significance, "MAX_CELLS", 50 * 8)  # 8 samples per chunk
    np.testing.assert_allclose(resampled_means(x, 97, seed=4), whole, rtol=0, atol=1e-15)


def test_adding_a_constant_to_a_shifts_the_difference_interval_by_it() -> None:
    a, b = _values()
    base = paired_bootstrap(a, b, n_boot=500, seed=1)
    shifted = paired_bootstrap(a + 0.25, b, n_boot=500, seed=1)
    assert shifted.diff == pytest.approx(base.diff + 0.25, abs=1e-12)
    assert shifted.diff_low == pytest.approx(base.diff_low + 0.25, abs=1e-12)
    assert shifted.diff_high == pytest.approx(base.diff_high + 0.25, abs=1e-12)


def test_identical_methods_give_a_zero_interval_and_no_significance() -> None:
    a, _ = _values()
    res = paired_bootstrap(a, a.copy(), n_boot=200)
    assert (res.diff, res.diff_low, res.diff_high) == (0.0, 0.0, 0.0)
    assert (res.gain, res.gain_low, res.gain_high) == (0.0, 0.0, 0.0)
    assert not res.significant


def test_a_clear_gain_is_significant_and_a_noisy_one_is_not() -> None:
    a, b = _values()
    big = paired_bootstrap(np.clip(a + 0.1, 0, 2), b)
    assert big.significant and big.diff_low > 0
    assert big.gain is not None and big.gain_low is not None and big.gain_low > 0
    assert big.gain == pytest.approx(big.mean_a / big.mean_b - 1)
    worse = paired_bootstrap(b, np.clip(a + 0.1, 0, 2))
    assert worse.significant and worse.diff_high < 0
    # per-user differences of +-0.1 that cancel exactly: no claim
    flip = np.random.default_rng(2).permutation(np.resize([0.1, -0.1], a.shape[1]))
    noise = paired_bootstrap(a + flip, a)
    assert noise.diff == pytest.approx(0.0, abs=1e-12)
    assert not noise.significant and noise.diff_low < 0 < noise.diff_high


def test_pairing_is_what_makes_a_small_gain_visible() -> None:
    """Per-user difficulty cancels in the paired difference: a 0.02 gain on users whose
    values spread over [0, 1] is significant paired, though the two means' own intervals
    overlap widely."""
    rng = np.random.default_rng(0)
    hard = rng.random(2000)
    res = paired_bootstrap(hard + 0.02 + rng.normal(0, 0.02, 2000), hard)
    assert res.significant
    assert res.diff_high - res.diff_low < 0.01


def test_bad_inputs_are_one_line_errors() -> None:
    a, b = _values()
    with pytest.raises(SeqtwinsError, match="aligned"):
        paired_bootstrap(a, b[:, :-1])
    with pytest.raises(SeqtwinsError, match="NaN"):
        paired_bootstrap(np.where(a > 0.5, np.nan, a), b)
    with pytest.raises(SeqtwinsError, match="n_boot"):
        paired_bootstrap(a, b, n_boot=0)
    with pytest.raises(SeqtwinsError, match="level"):
        paired_bootstrap(a, b, level=1.0)


def _write_npz(path: Path, users: np.ndarray, runs: dict[str, np.ndarray]) -> Path:
    arrays = {"future_items/users": users}
    arrays |= {f"future_items/{k}": v.astype(np.float32) for k, v in runs.items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_load_per_user_and_compare(tmp_path: Path) -> None:
    a, b = _values(users=120)
    users = np.arange(500, 620, dtype=np.int64)
    runs = {value_key("barlow", 0.1, s): a[s] for s in range(3)}
    runs |= {value_key("dual:native", 0.1, s): b[s] for s in range(2)}  # one seed fewer
    per_user = load_per_user(_write_npz(tmp_path / "per_user.npz", users, runs))
    assert list(per_user) == ["future_items"]
    np.testing.assert_array_equal(per_user["future_items"]["users"], users)
    assert value_key("barlow", 0.1, 0) == "barlow|0.1|0"

    res = compare(per_user, "future_items", "barlow", "dual:native", 0.1, n_boot=300)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    ref = paired_bootstrap(a32[:2], b32[:2], n_boot=300)  # the seeds both have
    assert res == ref and res.n_seeds == 2
    with pytest.raises(SeqtwinsError, match="dual:native|0.1|2"):
        compare(per_user, "future_items", "barlow", "dual:native", 0.1, seeds=[0, 2])
    with pytest.raises(SeqtwinsError, match="share no seed"):
        compare(per_user, "future_items", "barlow", "dual:native", 0.5)
    with pytest.raises(SeqtwinsError, match="no per-user values for task"):
        compare(per_user, "gender", "barlow", "dual:native", 0.1)


def test_load_per_user_refuses_broken_files(tmp_path: Path) -> None:
    users = np.arange(5, dtype=np.int64)
    bad = _write_npz(tmp_path / "bad.npz", users, {"barlow|1|0": np.zeros(4)})
    with pytest.raises(SeqtwinsError, match="not aligned"):
        load_per_user(bad)
    np.savez(tmp_path / "nousers.npz", **{"t/barlow|1|0": np.zeros(3)})  # type: ignore[arg-type]
    with pytest.raises(SeqtwinsError, match="no 't/users'"):
        load_per_user(tmp_path / "nousers.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(SeqtwinsError, match="not a readable"):
        load_per_user(tmp_path / "junk.npz")
    with pytest.raises(SeqtwinsError, match="does not exist"):
        load_per_user(tmp_path / "missing.npz")
