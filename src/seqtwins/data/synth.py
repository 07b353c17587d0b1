"""The embedded default: a seeded synthetic behaviour log with known structure.

The generative story (docs/synth.md has the long form and the measured signal):

1. **Items.** ``items`` items, each with a primary category (every category gets at least
   one item; sizes follow a Dirichlet draw) and, with probability
   ``secondary_category_prob``, a different secondary category. Popularity is Zipf:
   the item of popularity rank ``r`` (a random permutation, so ``item_idx`` carries no
   information) has weight ``r ** -zipf_exponent``.
2. **Taste clusters.** ``clusters`` latent clusters; cluster ``k`` puts ``cluster_focus``
   of its mass on its ``cluster_core`` core categories and the rest on a
   ``Dirichlet(cluster_concentration)`` background over all categories: ``phi`` (K, C).
3. **Users and drift.** Each user has a mixture over clusters ``theta0 ~
   Dirichlet(user_concentration)`` and a *new interest*: one cluster ``k1`` drawn
   uniformly. At relative position ``f`` in [0, 1] of the sequence the user's category
   preference is ``(1 - drift f) theta0 @ phi + drift f phi[k1]``: tastes drift, so the
   recent past predicts the held-out future better than the distant past.
4. **Sequences.** Lengths are lognormal (median ``length_median``, ``length_sigma``),
   clipped to ``[min_length, max_length]``. At each step after the first, with
   probability ``successor_prob`` the next item is one of the ``successors`` fixed
   successor items of the previous item (mostly from its category): short-term
   item-to-item transitions. Otherwise a category is drawn from the current preference
   and an item within it by popularity: with probability ``secondary_share`` among the
   items whose *secondary* category it is, else among its primary items.
5. **User attributes.** ``age_group`` is drawn from ``theta0 @ A`` and ``segment`` from
   ``S[k1]``, where each cluster has its own distribution over the attribute's values
   (``Dirichlet(attribute_concentration)``): age follows the long-run taste, segment the
   new interest.
6. **Ratings** (1..5) rise with the user's current preference for the item's primary
   category, plus a user bias, an item quality and noise. **Timestamps** start uniformly
   in ``[start_time, start_time + time_span_days]`` and advance by lognormal gaps
   (strictly increasing per user).
7. **Holdout and split** follow ``prepare``: the last ``holdout`` items are the future
   window, shortened so that at least ``min_history`` remain; users are split
   train/valid/test by prepare's own rule (a seeded permutation cut into valid
   ``round(valid_frac U)``, test ``round(test_frac U)`` and train the rest).

Everything is vectorised with numpy; the only Python loop runs over time steps (at most
``max_length``), each step handling every still-active user at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from seqtwins.data.dataset import Sequences, check_out, output_lock, write_dataset
from seqtwins.data.steps import assign_splits  # one split rule for prepare and synth

MAX_USERS = 50_000_000
"""Largest ``users``: the generator holds the whole dataset in memory (a larger log is a
job for ``prepare --memory-budget``)."""
MAX_ITEMS = 10_000_000
"""Largest ``items``."""
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55+")
"""Values of the ``age_group`` user attribute."""
SEGMENTS = ("A", "B", "C", "D")
"""Values of the ``segment`` user attribute."""


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic generator (``seqtwins synth``); see the module docstring."""

    users: int = 5000
    """Number of users (all of them are kept: every sequence has >= ``min_length`` items)."""
    items: int = 2000
    """Number of items in the catalogue. Items nobody interacted with are dropped, so the
    written dataset can have slightly fewer (never with the defaults in practice)."""
    seed: int = 0
    """Seed of every random draw: the same config writes the same dataset (same hash)."""
    categories: int = 20
    """Number of item categories (names ``cat00``, ``cat01``, ...; zero-padded so that
    name order is code order)."""
    secondary_category_prob: float = 0.3
    """Probability that an item also has a (different) secondary category."""
    secondary_share: float = 0.2
    """Probability that a draw of category ``c`` picks (by popularity) among the items whose
    secondary category is ``c`` rather than among those whose primary category it is.
    Bounding this share keeps large categories from leaking into small ones."""
    category_size_concentration: float = 2.0
    """Dirichlet concentration of the category sizes (large = equal-sized categories)."""
    zipf_exponent: float = 1.0
    """Exponent ``a`` of Zipf popularity ``rank ** -a`` (0 = uniform)."""
    clusters: int = 20
    """Number of latent taste clusters."""
    cluster_core: int = 1
    """Core categories per cluster; cores are dealt round-robin over a random order of the
    categories, so every category is the core of some cluster when
    ``clusters * cluster_core >= categories``."""
    cluster_focus: float = 0.85
    """Share of a cluster's mass spread evenly over its core categories; the rest follows
    a ``Dirichlet(cluster_concentration)`` background over all categories."""
    cluster_concentration: float = 0.5
    """Dirichlet concentration of each cluster's background category distribution."""
    user_concentration: float = 0.08
    """Dirichlet concentration of each user's mixture over clusters (small = users are
    dominated by one or two clusters)."""
    drift: float = 0.6
    """Weight of the new interest at the end of the sequence; it grows linearly from 0 at
    the first item (0 = no drift, 1 = only the new interest at the end)."""
    successors: int = 3
    """Number of fixed successor items per item (short-term transitions)."""
    successor_prob: float = 0.3
    """Probability that the next item is a successor of the previous one."""
    successor_same_category: float = 0.8
    """Probability that a successor shares the item's primary category."""
    length_median: float = 20.0
    """Median sequence length (lognormal)."""
    length_sigma: float = 0.8
    """Log-space standard deviation of the sequence length."""
    min_length: int = 5
    """Shortest sequence (lengths are clipped up to this)."""
    max_length: int = 200
    """Longest sequence (lengths are clipped down to this)."""
    attribute_concentration: float = 0.15
    """Dirichlet concentration of each cluster's distribution over attribute values
    (small = attributes depend strongly on tastes)."""
    rating_affinity: float = 1.0
    """How strongly ratings follow the user's current affinity for the item's category."""
    rating_noise: float = 0.7
    """Standard deviation of the per-interaction rating noise (before rounding)."""
    start_time: int = 1_420_070_400
    """Earliest possible first interaction, epoch seconds (2015-01-01 UTC)."""
    time_span_days: float = 1095.0
    """Users' first interactions are spread uniformly over this many days."""
    gap_median_hours: float = 12.0
    """Median time between consecutive interactions of a user (lognormal gaps)."""
    holdout: int = 5
    """Size of the held-out future window (as ``prepare --holdout``)."""
    min_history: int = 3
    """Items that always remain as history (as ``prepare --min-history``)."""
    valid_frac: float = 0.1
    """Fraction of users in the valid split."""
    test_frac: float = 0.1
    """Fraction of users in the test split (the rest are train)."""
    split_seed: int | None = None
    """Seed of the user split; ``None`` uses ``seed``."""

    def __post_init__(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting."""
        for name in (
            "users",
            "items",
            "categories",
            "clusters",
            "cluster_core",
            "successors",
            "min_length",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name, most in (("users", MAX_USERS), ("items", MAX_ITEMS)):
            if getattr(self, name) > most:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be <= {most:,} (the generator holds "
                    "the whole dataset in memory)"
                )
        if self.items < self.categories:
            raise ValueError(f"items={self.items} must be >= categories={self.categories}")
        if self.categories < 2 and self.secondary_category_prob > 0:
            raise ValueError("secondary_category_prob must be 0 when categories=1")
        if self.cluster_core > self.categories:
            raise ValueError(
                f"cluster_core={self.cluster_core} must be <= categories={self.categories}"
            )
        for name in (
            "secondary_category_prob",
            "secondary_share",
            "cluster_focus",
            "drift",
            "successor_prob",
            "successor_same_category",
            "valid_frac",
            "test_frac",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} must be in [0, 1]")
        if self.valid_frac + self.test_frac >= 1.0:
            raise ValueError(
                f"valid_frac + test_frac = {self.valid_frac + self.test_frac} "
                "must be < 1 (train needs users)"
            )
        for name in (
            "category_size_concentration",
            "cluster_concentration",
            "user_concentration",
            "attribute_concentration",
            "length_median",
            "gap_median_hours",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        for name in (
            "zipf_exponent",
            "length_sigma",
            "rating_affinity",
            "rating_noise",
            "time_span_days",
            "start_time",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.holdout < 0:
            raise ValueError(f"holdout={self.holdout} must be >= 0")
        for name in ("seed", "split_seed"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.min_history < 1:
            raise ValueError(f"min_history={self.min_history} must be >= 1")
        if self.min_length < self.min_history + 1:
            raise ValueError(
                f"min_length={self.min_length} must be >= min_history + 1 = "
                f"{self.min_history + 1} (every user needs a history and a future item)"
            )
        if self.max_length < self.min_length:
            raise ValueError(
                f"max_length={self.max_length} must be >= min_length={self.min_length}"
            )


@dataclass(frozen=True)
class SynthTruth:
    """The latent quantities behind a generated dataset (for tests and analyses).

    Item arrays are indexed by ``item_idx`` (row 0 = padding, unused); user arrays by
    ``user_idx``.
    """

    primary_category: np.ndarray
    """(N+1,) int64 primary category code of each item (-1 at padding)."""
    successors: np.ndarray
    """(N+1, S) int64 successor ``item_idx`` of each item (0 at padding)."""
    cluster_categories: np.ndarray
    """(K, C) float64 each cluster's distribution over categories."""
    theta_start: np.ndarray
    """(U, K) float64 users' cluster mixtures at the start of their sequence."""
    theta_end: np.ndarray
    """(U, K) float64 one-hot: the new interest (cluster) each user drifts towards."""
    from_successor: np.ndarray
    """(I,) bool whether each interaction was drawn as a successor of the previous one."""


@dataclass(frozen=True)
class SynthData:
    """A generated dataset, before it is written: the arguments of ``write_dataset``."""

    sequences: Sequences
    items: pl.DataFrame
    users: pl.DataFrame
    truth: SynthTruth


def _dirichlet(rng: np.random.Generator, alpha: float, size: tuple[int, int]) -> np.ndarray:
    """Rows of a symmetric Dirichlet; gamma draws kept away from 0 so rows always sum > 0."""
    g = rng.gamma(alpha, 1.0, size=size) + 1e-12
    return g / g.sum(axis=1, keepdims=True)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (n, C) -> (n,) int64 codes."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


class _CategorySampler:
    """Draw an item of a given category with probability proportional to its weight.

    Memberships (category, item, weight) are sorted by category; ``key`` holds
    ``category + within-category CDF`` so one ``searchsorted`` of ``c + u`` (u in [0, 1))
    finds the item for any number of (c, u) pairs at once.
    """

    def __init__(
        self, cats: np.ndarray, items: np.ndarray, weights: np.ndarray, n_categories: int
    ) -> None:
        order = np.lexsort((items, cats))
        cats, self.items, weights = cats[order], items[order], weights[order]
        totals = np.bincount(cats, weights=weights, minlength=n_categories)
        self.has_members = totals > 0
        starts = np.searchsorted(cats, np.arange(n_categories))
        csum = np.cumsum(weights)
        before = np.where(starts > 0, csum[np.maximum(starts - 1, 0)], 0.0)
        cdf = (csum - before[cats]) / totals[cats]
        last = np.r_[cats[1:] != cats[:-1], True]
        cdf[last] = 1.0  # exact 1.0 at each category's end: no float spill into the next
        self.key = cats + cdf

    def sample(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        """(n,) items for (n,) categories; meaningless where ``has_members[cat]`` is False."""
        pos = np.searchsorted(self.key, cats + rng.random(len(cats)), side="left")
        return np.asarray(self.items[np.minimum(pos, len(self.items) - 1)])


def holdout_ends(offsets: np.ndarray, holdout: int, min_history: int) -> np.ndarray:
    """``history_end`` for CSR ``offsets``: the last ``holdout`` items of each user are the
    future window, shortened so that at least ``min_history`` items remain as history
    (the rule of ``prepare``; users must have at least ``min_history`` items)."""
    lens = np.diff(offsets)
    future = np.clip(np.minimum(holdout, lens - min_history), 0, None)
    return np.asarray(offsets[1:] - future, dtype=np.int64)


@dataclass
class _ItemWorld:
    """The items of the story: categories, popularity, successors, and how to draw them."""

    primary: np.ndarray  # (N,) primary category code
    second: np.ndarray  # (N,) secondary category code or -1
    successors: np.ndarray  # (N, successors) generator item indices
    draw: Callable[[np.ndarray], np.ndarray]  # (n,) category codes -> (n,) items


def _item_world(rng: np.random.Generator, cfg: SynthConfig) -> _ItemWorld:
    """Items: categories and Zipf popularity (generator index 0..N-1), and successors."""
    n_items, n_cat = cfg.items, cfg.categories
    cat_sizes = _dirichlet(rng, cfg.category_size_concentration, (1, n_cat))[0]
    primary = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, size=n_items - n_cat, p=cat_sizes)]
    )
    primary = rng.permutation(primary)
    has_second = rng.random(n_items) < cfg.secondary_category_prob
    second = (primary + 1 + rng.integers(0, max(n_cat - 1, 1), size=n_items)) % n_cat
    second = np.where(has_second, second, -1)
    popularity = (rng.permutation(n_items) + 1.0) ** -cfg.zipf_exponent

    by_primary = _CategorySampler(primary, np.arange(n_items), popularity, n_cat)
    sec_items = np.flatnonzero(second >= 0)
    by_secondary = _CategorySampler(second[sec_items], sec_items, popularity[sec_items], n_cat)

    def draw(cats: np.ndarray) -> np.ndarray:
        """(n,) generator item indices for (n,) category codes."""
        item = by_primary.sample(rng, cats)
        if len(sec_items) == 0:
            return item
        use_secondary = rng.random(len(cats)) < cfg.secondary_share
        use_secondary &= by_secondary.has_members[cats]
        return np.where(use_secondary, by_secondary.sample(rng, cats), item)

    # Successors: mostly the same primary category, else a uniformly drawn one.
    same = rng.random((n_items, cfg.successors)) < cfg.successor_same_category
    succ_cat = np.where(same, primary[:, None], rng.integers(0, n_cat, (n_items, cfg.successors)))
    successors = draw(succ_cat.ravel()).reshape(n_items, cfg.successors)
    return _ItemWorld(primary, second, successors, draw)


def _tastes(
    rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster tastes phi (K, C), each user's start mixture theta0 (U, K) and the one
    cluster each user drifts to, theta1 (U, K) one-hot."""
    n_cat, n_clu = cfg.categories, cfg.clusters
    core = rng.permutation(n_cat)[
        (np.arange(n_clu)[:, None] * cfg.cluster_core + np.arange(cfg.cluster_core)) % n_cat
    ]  # (K, core) category codes
    focus = np.zeros((n_clu, n_cat))
    np.add.at(focus, (np.arange(n_clu)[:, None], core), 1.0 / cfg.cluster_core)
    background = _dirichlet(rng, cfg.cluster_concentration, (n_clu, n_cat))
    phi = cfg.cluster_focus * focus + (1.0 - cfg.cluster_focus) * background  # (K, C)
    theta0 = _dirichlet(rng, cfg.user_concentration, (cfg.users, n_clu))  # (U, K)
    theta1 = np.eye(n_clu)[rng.integers(0, n_clu, cfg.users)]  # (U, K) one-hot
    return phi, theta0, theta1


def _walk(
    rng: np.random.Generator,
    cfg: SynthConfig,
    world: _ItemWorld,
    lens: np.ndarray,
    offsets: np.ndarray,
    pref0: np.ndarray,
    pref1: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sequences, one vectorised step per position: generator item of each
    interaction, the user's preference for its primary category then, and whether it was
    a successor jump."""
    n_inter = int(offsets[-1])
    seq = np.zeros(n_inter, dtype=np.int64)  # generator item index 0..N-1
    affinity = np.zeros(n_inter, dtype=np.float64)  # current preference for the primary cat
    from_succ = np.zeros(n_inter, dtype=bool)
    by_len = np.argsort(-lens, kind="stable")  # active users at step t are a prefix
    n_active = np.searchsorted(-lens[by_len], -np.arange(cfg.max_length), side="left")
    for t in range(int(lens.max())):
        users = by_len[: n_active[t]]
        pos = offsets[users] + t
        frac = (t / np.maximum(lens[users] - 1, 1))[:, None] * cfg.drift  # (n, 1)
        pref = (1.0 - frac) * pref0[users] + frac * pref1[users]  # (n, C)
        item = world.draw(_sample_rows(rng, pref))
        if t > 0:
            jump = rng.random(len(users)) < cfg.successor_prob
            pick = rng.integers(0, cfg.successors, len(users))
            item = np.where(jump, world.successors[seq[pos - 1], pick], item)
            from_succ[pos] = jump
        seq[pos] = item
        affinity[pos] = pref[np.arange(len(users)), world.primary[item]]
    return seq, affinity, from_succ


def _ratings_and_times(
    rng: np.random.Generator,
    cfg: SynthConfig,
    lens: np.ndarray,
    offsets: np.ndarray,
    seq: np.ndarray,
    affinity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Ratings (higher where the user likes the item's category) and timestamps."""
    n_users, n_inter = cfg.users, len(seq)
    user_of = np.repeat(np.arange(n_users), lens)
    user_bias = rng.normal(0.0, 0.4, n_users)
    item_quality = rng.normal(0.0, 0.3, cfg.items)
    lift = np.tanh(np.log(np.maximum(affinity * cfg.categories, 1e-6)))  # 0 at average
    score = (
        3.3
        + cfg.rating_affinity * lift
        + user_bias[user_of]
        + item_quality[seq]
        + rng.normal(0.0, cfg.rating_noise, n_inter)
    )
    ratings = np.clip(np.rint(score), 1, 5).astype(np.float32)

    gaps = 1 + np.floor(
        np.exp(rng.normal(np.log(cfg.gap_median_hours * 3600.0), 1.2, n_inter))
    ).astype(np.int64)
    start = cfg.start_time + np.floor(rng.random(n_users) * cfg.time_span_days * 86400.0).astype(
        np.int64
    )
    csum = np.cumsum(gaps)
    before_row = csum[offsets[:-1]] - gaps[offsets[:-1]]  # gaps of earlier users
    times = start[user_of] + csum - before_row[user_of]
    return ratings, times.astype(np.int64)


def _tables(
    cfg: SynthConfig, world: _ItemWorld, kept: np.ndarray, age: np.ndarray, segment: np.ndarray
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The item table of the ``kept`` generator items and the user table. Zero-padded ids:
    generator order = ascending id order, as prepare orders its tables."""
    n_items, n_users, n_cat = cfg.items, cfg.users, cfg.categories
    item_w, user_w = len(str(n_items)), len(str(n_users))
    cat_w = max(2, len(str(n_cat - 1)))
    names = np.asarray([f"cat{c:0{cat_w}d}" for c in range(n_cat)])
    cats = [
        [names[p]] if s < 0 else [names[p], names[s]]
        for p, s in zip(world.primary[kept].tolist(), world.second[kept].tolist(), strict=True)
    ]
    items_df = pl.DataFrame(
        {"item_id": [f"i{j + 1:0{item_w}d}" for j in kept.tolist()], "categories": cats},
        schema={"item_id": pl.String, "categories": pl.List(pl.String)},
    )
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    fractions = (1.0 - cfg.valid_frac - cfg.test_frac, cfg.valid_frac, cfg.test_frac)
    users_df = pl.DataFrame(
        {
            "user_id": [f"u{u + 1:0{user_w}d}" for u in range(n_users)],
            "split": assign_splits(n_users, fractions, split_seed).tolist(),
            "age_group": age.tolist(),
            "segment": segment.tolist(),
        }
    )
    return items_df, users_df


def generate(cfg: SynthConfig) -> SynthData:
    """Run the generative story of the module docstring; deterministic given ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    world = _item_world(rng, cfg)
    phi, theta0, theta1 = _tastes(rng, cfg)
    pref0, pref1 = theta0 @ phi, theta1 @ phi  # (U, C) category preference at f=0 / f=1

    # attributes, correlated with tastes
    age_table = _dirichlet(rng, cfg.attribute_concentration, (cfg.clusters, len(AGE_GROUPS)))
    seg_table = _dirichlet(rng, cfg.attribute_concentration, (cfg.clusters, len(SEGMENTS)))
    age = np.asarray(AGE_GROUPS)[_sample_rows(rng, theta0 @ age_table)]
    segment = np.asarray(SEGMENTS)[_sample_rows(rng, theta1 @ seg_table)]

    # sequence lengths -> CSR
    raw_len = np.exp(rng.normal(np.log(cfg.length_median), cfg.length_sigma, cfg.users))
    lens = np.clip(np.rint(raw_len), cfg.min_length, cfg.max_length).astype(np.int64)
    offsets = np.zeros(cfg.users + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])

    seq, affinity, from_succ = _walk(rng, cfg, world, lens, offsets, pref0, pref1)
    ratings, times = _ratings_and_times(rng, cfg, lens, offsets, seq, affinity)

    # keep interacted items, renumbered to item_idx 1..N' in generator order
    used = np.bincount(seq, minlength=cfg.items) > 0
    new_idx = np.cumsum(used)  # generator index -> item_idx (valid where used)
    kept = np.flatnonzero(used)
    items_df, users_df = _tables(cfg, world, kept, age, segment)
    sequences = Sequences(
        offsets=offsets,
        items=new_idx[seq].astype(np.int32),
        history_end=holdout_ends(offsets, cfg.holdout, cfg.min_history),
        times=times,
        ratings=ratings,
    )

    # A successor that was never drawn was dropped with the unused items: it maps to 0.
    successors = world.successors
    succ_idx = np.where(used[successors], new_idx[successors], 0)
    truth = SynthTruth(
        primary_category=np.r_[-1, world.primary[kept]].astype(np.int64),
        successors=np.vstack([np.zeros((1, cfg.successors), np.int64), succ_idx[kept]]),
        cluster_categories=phi,
        theta_start=theta0,
        theta_end=theta1,
        from_successor=from_succ,
    )
    return SynthData(sequences=sequences, items=items_df, users=users_df, truth=truth)


def synthesize(out: Path | str, cfg: SynthConfig | None = None, *, overwrite: bool = False) -> Path:
    """Generate the synthetic dataset of ``cfg`` and write it to ``out`` atomically.

    The directory has the format ``prepare`` writes (``source="synth"``, ``params`` = the
    config), with item ``categories`` (``cat00``...; primary first), user attributes
    ``age_group`` and ``segment``, timestamps and 1..5 ratings.
    """
    cfg = cfg or SynthConfig()
    check_out(Path(out), overwrite)  # before the work: a folder it may not replace, stale temps
    with output_lock(Path(out)):  # a second prepare / synth into the same --out is refused
        data = generate(cfg)
        return write_dataset(
            out,
            sequences=data.sequences,
            items=data.items,
            users=data.users,
            source="synth",
            params=dataclasses.asdict(cfg),
            overwrite=overwrite,
        )
