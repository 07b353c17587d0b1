"""Paired bootstrap over seeds and test users: is method ``a`` better than ``b`` on a cell?

``seqtwins evaluate`` keeps, per (task, method, fraction, seed), the value of the task's
primary metric for every labelled test user (average precision, recall@10, a 0/1 hit;
docs/evaluation.md), saved as ``<out stem>_artifacts/per_user.npz``. Two methods scored on
the same test users are *paired*: a user who is hard for one is usually hard for the other,
so resampling users jointly gives a much tighter interval for the difference than two
separate intervals would (Efron & Tibshirani 1993, ch. 16; the usual test for IR metrics,
Sakai 2006 "Evaluating evaluation metrics based on the bootstrap"). Each seed is one
labelled subset, and at 1-10 % of the labels which subset was drawn is often the largest
source of noise, so the seeds are resampled too (a two-level bootstrap: seeds, then users).

The procedure (:func:`paired_bootstrap`), for S seeds and n users, in each of ``n_boot``
replicates:

1. draw S seeds with replacement, the same for both methods, and average each user's
   value over the drawn seeds (the multinomial counts over the S seeds / S are the
   weights). Seed indices: ``numpy.random.default_rng([SEED_SALT, seed]).integers(0, S,
   size=(n_boot, S))``;
2. draw n users with replacement, the same for both methods: indices
   ``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))``;
3. compute the mean difference ``a - b`` over the drawn users and the relative gain
   ``mean(a) / mean(b) - 1``.

Both index arrays are drawn in row chunks, which is the same stream (each row of the
(B, S) weight matrix times the (S, n) values, then the users gathered). With one seed
step 1 changes nothing: it is the bootstrap over users alone. Intervals are the
percentile intervals of the replicates; a difference is *significant* when its interval
excludes 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqtwins.errors import SeqtwinsError

N_BOOT = 2000
"""Default number of bootstrap samples (enough for stable 2.5 / 97.5 % percentiles)."""
MAX_CELLS = 2_000_000
"""Resampled values held at once (replicates x users); bounds the memory to ~16 MB of
indices plus the gathered values."""
SEED_SALT = 0x5EED
"""First word of the seed-draw RNG's seed, so seed draws and user draws are two streams
(the user stream is the same with one seed or many)."""


@dataclass(frozen=True)
class PairedBootstrap:
    """The comparison of method ``a`` with method ``b`` on the same test users."""

    mean_a: float
    mean_b: float
    diff: float
    """``mean(a) - mean(b)`` over users (each user's value averaged over all seeds)."""
    diff_low: float
    diff_high: float
    gain: float | None
    """``mean(a) / mean(b) - 1``; None when ``mean(b)`` is 0."""
    gain_low: float | None
    gain_high: float | None
    significant: bool
    """True when the difference interval excludes 0."""
    n_users: int
    n_seeds: int
    n_boot: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _as_seed_user(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SeqtwinsError(f"{name} must be a (seeds, users) array of values; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SeqtwinsError(f"{name} holds NaN or infinite per-user values")
    return arr


def resampled_means(values: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, k)`` means of ``values`` (S, n, k) over ``n_boot`` two-level samples:
    S seeds drawn with replacement, then n users drawn with replacement (the module
    docstring gives both index streams). A 2-D ``values`` (n, k) is one seed: users are
    resampled alone. Computed in chunks of at most :data:`MAX_CELLS` resampled users."""
    x = values[None] if values.ndim == 2 else values  # (S, n, k)
    n_seeds, n, k = x.shape
    flat = x.reshape(n_seeds, n * k)  # (S, n * k)
    user_rng = np.random.default_rng(seed)
    seed_rng = np.random.default_rng([SEED_SALT, seed])
    rows = max(1, MAX_CELLS // max(n, 1))
    out = np.empty((n_boot, k), dtype=np.float64)
    for start in range(0, n_boot, rows):
        b = min(n_boot, start + rows) - start
        drawn = seed_rng.integers(0, n_seeds, size=(b, n_seeds))  # (b, S) seeds drawn
        counts = np.bincount(
            (np.arange(b)[:, None] * n_seeds + drawn).ravel(), minlength=b * n_seeds
        ).reshape(b, n_seeds)  # (b, S) multinomial counts
        weighted = (counts / n_seeds) @ flat  # (b, n * k) seed-averaged values
        idx = user_rng.integers(0, n, size=(b, n))  # (b, n) users of each sample
        per = weighted.reshape(b, n, k)[np.arange(b)[:, None], idx]  # (b, n, k)
        out[start : start + b] = per.mean(axis=1)
    return out


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> PairedBootstrap:
    """Paired bootstrap of ``a - b`` over seeds and users (see the module docstring).

    ``a`` and ``b`` are ``(S, n)`` per-user values of two methods (S seeds, n test users,
    the same seeds and users in the same order; a 1-D array is one seed). Each of
    ``n_boot`` replicates (RNG ``seed``) draws S seeds and then n users with replacement,
    the same draws for both methods. Returns the mean difference and relative gain (over
    all seeds and users) with their ``level`` percentile intervals.
    """
    if not isinstance(n_boot, int) or n_boot < 1:
        raise SeqtwinsError(f"n_boot={n_boot!r} must be a positive integer")
    if not 0.0 < level < 1.0:
        raise SeqtwinsError(f"level={level!r} must lie in (0, 1)")
    xa, xb = _as_seed_user(a, "a"), _as_seed_user(b, "b")
    if xa.shape != xb.shape:
        raise SeqtwinsError(
            f"a {xa.shape} and b {xb.shape} must be aligned: the same seeds and test users"
        )
    reps = resampled_means(np.stack([xa, xb], axis=2), n_boot, seed)  # (S, n, 2) -> (B, 2)
    tails = [50.0 * (1.0 - level), 100.0 - 50.0 * (1.0 - level)]
    mean_a, mean_b = float(xa.mean(axis=0).mean()), float(xb.mean(axis=0).mean())
    d_low, d_high = (float(v) for v in np.percentile(reps[:, 0] - reps[:, 1], tails))
    gain = g_low = g_high = None
    if mean_b != 0.0 and np.all(reps[:, 1] != 0.0):
        gain = mean_a / mean_b - 1.0
        g_low, g_high = (float(v) for v in np.percentile(reps[:, 0] / reps[:, 1] - 1.0, tails))
    return PairedBootstrap(
        mean_a=mean_a, mean_b=mean_b, diff=mean_a - mean_b, diff_low=d_low, diff_high=d_high,
        gain=gain, gain_low=g_low, gain_high=g_high, significant=bool(d_low > 0 or d_high < 0),
        n_users=int(xa.shape[1]), n_seeds=int(xa.shape[0]), n_boot=n_boot, level=level,
    )  # fmt: skip


# --- per_user.npz: its keys, writer and reader ----------------------------------------------


def value_key(method: str, fraction: float, seed: int) -> str:
    """The key of one run's per-user values: ``"<method>|<fraction:g>|<seed>"``."""
    return f"{method}|{fraction:g}|{seed}"


def per_user_arrays(per_user: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``results["per_user"]`` flattened to the ``per_user.npz`` keys:
    ``"<task>/users"`` (int64) and ``"<task>/<method>|<fraction:g>|<seed>"`` (float32)."""
    out: dict[str, np.ndarray] = {}
    for task, entry in per_user.items():
        out[f"{task}/users"] = np.asarray(entry["users"], dtype=np.int64)
        for key, values in entry["values"].items():
            out[f"{task}/{key}"] = np.asarray(values, dtype=np.float32)
    return out


def save_per_user(per_user: Mapping[str, Any], path: Path | str) -> Path:
    """Write the per-user values (``results["per_user"]``) as an ``.npz`` (plain arrays,
    no pickles: read it with ``np.load(path, allow_pickle=False)`` or
    :func:`load_per_user`)."""
    path = Path(path)
    with path.open("wb") as fh:
        np.savez(fh, **per_user_arrays(per_user))  # type: ignore[arg-type]
    return path


def load_per_user(path: Path | str) -> dict[str, dict[str, Any]]:
    """Read ``per_user.npz`` (keys ``"<task>/users"`` and ``"<task>/<method>|<fraction:g>|
    <seed>"``) into the form ``results["per_user"]`` has: ``{task: {"users": int64 (n,),
    "values": {"<method>|<fraction:g>|<seed>": float32 (n,)}}}``."""
    path = Path(path)
    if not path.is_file():
        raise SeqtwinsError(f"{path} does not exist; `seqtwins evaluate` writes per_user.npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise SeqtwinsError(f"{path} is not a readable per_user.npz ({e})") from e
    out: dict[str, dict[str, Any]] = {}
    for key, arr in arrays.items():
        task, sep, rest = key.partition("/")
        if not sep or not task or not rest:
            raise SeqtwinsError(f"{path}: key {key!r} is not '<task>/users' or '<task>/<run>'")
        entry = out.setdefault(task, {"users": None, "values": {}})
        if rest == "users":
            entry["users"] = np.asarray(arr, dtype=np.int64)
        else:
            entry["values"][rest] = np.asarray(arr, dtype=np.float32)
    for task, entry in out.items():
        if entry["users"] is None:
            raise SeqtwinsError(f"{path}: task {task} has values but no '{task}/users'")
        n = len(entry["users"])
        bad = [k for k, v in entry["values"].items() if v.shape != (n,)]
        if bad:
            raise SeqtwinsError(f"{path}: {task}/{bad[0]} is not aligned with its {n} test users")
    return out


def _seed_rows(
    values: Mapping[str, np.ndarray], method: str, fraction: float, seeds: Iterable[int]
) -> list[np.ndarray]:
    return [values[value_key(method, fraction, s)] for s in seeds]


def available_seeds(values: Mapping[str, np.ndarray], method: str, fraction: float) -> list[int]:
    """Seeds with per-user values for ``method`` at ``fraction``, ascending."""
    prefix = f"{method}|{fraction:g}|"
    return sorted(int(k[len(prefix) :]) for k in values if k.startswith(prefix))


def compare(
    per_user: Mapping[str, Mapping[str, Any]],
    task: str,
    a: str,
    b: str,
    fraction: float,
    seeds: Iterable[int] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> PairedBootstrap:
    """Paired bootstrap of method ``a`` against method ``b`` on one (task, fraction).

    ``per_user`` is ``results["per_user"]`` or :func:`load_per_user`'s answer. ``seeds``
    default to every seed both methods have values for; named seeds must exist for both.
    """
    if task not in per_user:
        raise SeqtwinsError(f"no per-user values for task {task!r}; have {sorted(per_user)}")
    values = per_user[task]["values"]
    if seeds is None:
        common = sorted(
            set(available_seeds(values, a, fraction)) & set(available_seeds(values, b, fraction))
        )
    else:
        common = sorted(set(seeds))
        missing = [
            value_key(m, fraction, s) for m in (a, b) for s in common
            if value_key(m, fraction, s) not in values
        ]  # fmt: skip
        if missing:
            raise SeqtwinsError(f"task {task}: no per-user values for {missing[0]}")
    if not common:
        raise SeqtwinsError(
            f"task {task}: {a} and {b} share no seed with per-user values at fraction {fraction:g}"
        )
    xa = np.stack(_seed_rows(values, a, fraction, common))  # (S, n)
    xb = np.stack(_seed_rows(values, b, fraction, common))  # (S, n)
    return paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed, level=level)
