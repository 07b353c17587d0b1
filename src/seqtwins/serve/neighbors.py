"""Nearest users by cosine similarity of their embeddings, with FAISS.

Embeddings are L2-normalised, so inner product = cosine. Up to
:attr:`IndexConfig.ivf_above` users the index is exact (``IndexFlatIP``); above, an
inverted-file index (about sqrt(N) lists, as the FAISS guidelines suggest for N around a
million; vectors stored as float16 by default, :attr:`IndexConfig.storage`) whose
``nprobe`` is chosen at build time: it is doubled
until recall@k against exact search, measured on a sample of the users themselves,
reaches :attr:`IndexConfig.recall_target`, then narrowed by bisection. The measured
recall is kept and reported (``GET /info``, ``seqtwins neighbors``) with its k
(``recall_k``, 20 by default: the default k served); each query user is left out of its
own neighbours, as ``/neighbors`` does.

Used by ``seqtwins neighbors`` (:func:`seqtwins.serve.model.nearest_users`) and
``POST /neighbors``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

STORAGES = ("fp16", "float32")
"""How an IVF index stores the vectors (:attr:`IndexConfig.storage`)."""


@dataclass(frozen=True)
class IndexConfig:
    """How :class:`NeighborIndex` is built."""

    ivf_above: int = 1_000_000
    """Exact search (``IndexFlatIP``) up to this many users, IVF above."""
    nlist: int | None = None
    """IVF lists; default ``round(sqrt(N))`` (FAISS guideline: sqrt(N) to 16 sqrt(N))."""
    recall_target: float = 0.95
    """IVF only: ``nprobe`` is the smallest found (doubling, then 3 bisection steps) that
    reaches this recall@k on the calibration queries."""
    recall_k: int = 20
    """The k of the recall measured when choosing ``nprobe``."""
    calibration_queries: int = 500
    """Users sampled as queries to measure the IVF recall."""
    train_per_list: int = 64
    """IVF k-means training points per list (a random sample of the users)."""
    storage: str = "fp16"
    """IVF only: how the vectors are stored in the lists, ``fp16``
    (``IndexIVFScalarQuantizer``, half the memory and about 1.7x faster scans at the same
    recall; cosines within ~1e-3) or ``float32`` (``IndexIVFFlat``, exact cosines)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ivf_above", "recall_k", "calibration_queries", "train_per_list"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"index.{name}={value!r} must be a positive integer")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"index.nlist={self.nlist!r} must be a positive integer")
        if self.storage not in STORAGES:
            raise ValueError(f"index.storage={self.storage!r} must be one of {', '.join(STORAGES)}")
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"index.recall_target={self.recall_target!r} must be in (0, 1]")


def _faiss() -> Any:
    from seqtwins.serve import import_extra

    return import_extra("faiss")


def normalized(vectors: np.ndarray) -> np.ndarray:
    """A float32 copy of ``vectors`` (N, D) with rows of unit L2 norm (zero rows stay 0)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found_i ∩ exact_i| / k, for id arrays (Q, k)."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact, strict=True))
    return hits / exact.size


def without_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids (Q, k) of each row of ``found`` (Q, k + 1) other than the
    query's own row ``rows[i]`` (the last one is dropped where the query is absent)."""
    keep = found != rows[:, None]  # (Q, k + 1)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in order
    return np.take_along_axis(found, order, 1)


class NeighborIndex:
    """A FAISS index over L2-normalised user embeddings (row i = user row i)."""

    def __init__(self, index: Any, kind: str, size: int, dim: int) -> None:
        self.index, self.kind, self.size, self.dim = index, kind, size, dim
        self.storage = "float32"  # of the vectors in the index
        self.nprobe: int | None = None
        self.recall: float | None = None  # measured recall@k of IVF vs exact
        self.recall_k: int | None = None  # the k of that recall, self excluded

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: IndexConfig | None = None) -> NeighborIndex:
        """Exact index up to ``cfg.ivf_above`` rows, calibrated IVF above."""
        cfg = cfg or IndexConfig()
        faiss = _faiss()
        x = normalized(vectors)  # (N, D)
        n, d = x.shape
        if n <= cfg.ivf_above:
            flat = faiss.IndexFlatIP(d)
            flat.add(x)
            return cls(flat, "flat", n, d)
        nlist = cfg.nlist or max(1, round(math.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        if cfg.storage == "fp16":
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist,
                                                faiss.ScalarQuantizer.QT_fp16,
                                                faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        else:
            ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = cfg.seed
        rng = np.random.default_rng(cfg.seed)
        train = x[np.sort(rng.choice(n, min(n, cfg.train_per_list * nlist), replace=False))]
        ivf.train(train)
        ivf.add(x)
        out = cls(ivf, "ivf", n, d)
        out.storage = cfg.storage
        out._calibrate(x, cfg, rng)
        return out

    def _calibrate(self, x: np.ndarray, cfg: IndexConfig, rng: np.random.Generator) -> None:
        """Choose ``nprobe``: doubled until recall@k vs exact search reaches the target,
        then bisected (3 steps) between the last miss and the first hit.

        The calibration queries are indexed users, and ``/neighbors`` never returns a user
        as its own neighbour: both sides search k + 1 and drop the query itself, so the
        recall measured is the recall of what is served."""
        faiss = _faiss()
        k = min(cfg.recall_k, self.size - 1)
        self.recall_k = k
        if k < 1:
            self.index.nprobe, self.nprobe, self.recall = 1, 1, 1.0
            return
        rows = np.sort(
            rng.choice(self.size, min(self.size, cfg.calibration_queries), replace=False)
        )
        queries = x[rows]  # (Q, D)
        _, exact = faiss.knn(queries, x, k + 1, faiss.METRIC_INNER_PRODUCT)  # brute force
        exact = without_self(exact, rows, k)  # (Q, k)

        def recall(nprobe: int) -> float:
            self.index.nprobe = nprobe
            return recall_at_k(without_self(self.index.search(queries, k + 1)[1], rows, k), exact)

        nlist = int(self.index.nlist)
        miss, hit = 0, 1
        got = recall(hit)
        while got < cfg.recall_target and hit < nlist:
            miss, hit = hit, min(2 * hit, nlist)
            got = recall(hit)
        for _ in range(3):
            mid = (miss + hit) // 2
            if mid <= miss or got < cfg.recall_target:
                break
            r = recall(mid)
            if r >= cfg.recall_target:
                hit, got = mid, r
            else:
                miss = mid
        self.index.nprobe, self.nprobe, self.recall = hit, hit, got

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores and rows ``(Q, k)`` of the nearest users of each query (Q, D),
        best first; ``k`` is capped at the index size."""
        k = max(1, min(int(k), self.size))
        scores, rows = self.index.search(normalized(queries), k)
        return scores, rows

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "users": self.size}
        if self.kind == "ivf":
            out |= {
                "nlist": int(self.index.nlist),
                "storage": self.storage,
                "nprobe": self.nprobe,
                "recall": self.recall,
                "recall_k": self.recall_k,
            }
        return out


def neighbors_of_row(
    index: NeighborIndex, vectors: np.ndarray, row: int, k: int
) -> list[tuple[int, float]]:
    """The ``k`` nearest other users of user ``row`` (itself excluded): (row, cosine)."""
    scores, rows = index.search(vectors[row : row + 1], k + 1)
    found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
    return [x for x in found if x[0] != row][:k]
