"""k-means on normalised embeddings, shared by the clustering steps (image_based, mode, semdedup).

- ``fit_sample``: a bounded, deterministic sample of a staged embedding column (the rows with the
  smallest seeded hash of their uid; DuckDB keeps only that many rows while it scans), so fitting
  costs the same memory however big the pool grows.
- ``spherical_kmeans``: faiss k-means on the unit sphere, after checks that turn faiss's own
  failure modes (fewer points than clusters, NaNs) into errors that name the parameter.
- ``balanced_kmeans``: MoDE's fine level. Lloyd rounds whose assignment step gives every cluster
  the same capacity (``ceil(n / k)``), so no cluster dominates. The assignment is greedy deferred
  acceptance over each point's ``candidates`` nearest centres: in each round every unassigned
  point proposes to its next-best centre, and a centre accepts its most similar proposers up to
  its remaining room. It is the vectorised cousin of the auction algorithm the MoDE reference
  uses: not an exact optimum, but every point lands in one of its few nearest clusters and sizes
  are equal by construction.
- ``fit_prices``: after training, per-centre prices (the dual variables of the balanced
  assignment, as an auction computes them) so that streaming assignment, one row at a time,
  ``argmax(similarity - price)`` over a row's nearest candidates, keeps clusters about equal.
- ``CentroidIndex``: nearest centre (inner product) for streaming assignment.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import duckdb
import numpy as np

from curate.stepkit import quote_identifier
from filters.embeddings import column_to_matrix, normalize_rows

logger = logging.getLogger(__name__)


def fit_sample_columns(column: str) -> tuple[str, ...]:
    """The columns of ``staged`` that ``fit_sample`` reads besides the bookkeeping in ``where``: a
    global step fitting on ``column`` declares them (its ``state_columns``)."""
    return ("uid", column)


def fit_sample(
    con: duckdb.DuckDBPyConnection, column: str, *, seed: int, limit: int, where: str = "TRUE"
) -> tuple[np.ndarray, int]:
    """Up to ``limit`` L2-normalised rows of ``column`` from the view ``staged``, chosen by a seeded
    hash of uid, and how many rows with non-finite values (NaN, inf) were left out of the sample."""
    col = quote_identifier(column)
    try:
        table = con.sql(
            f"SELECT {col} AS e FROM staged WHERE {col} IS NOT NULL AND ({where}) "
            f"ORDER BY hash(uid, {int(seed)}), uid LIMIT {int(limit)}"
        ).to_arrow_table()
    except duckdb.BinderException as exc:
        raise ValueError(f"embedding_column: value {column!r} is not a column of the pool: {exc}") from None
    matrix = column_to_matrix(table["e"], column, allow_non_finite=True)
    finite = np.isfinite(matrix).all(axis=1) if len(matrix) else np.zeros(0, bool)
    skipped = int((~finite).sum())
    if skipped:
        logger.warning("%s: %d rows with NaN or infinite values are left out of the fit", column, skipped)
    return normalize_rows(matrix[finite]), skipped


def check_cluster_count(n_points: int, num_clusters: int, field: str = "num_clusters") -> None:
    if n_points == 0:
        raise ValueError(f"{field}: there are no embeddings to cluster (every row failed or was dropped before)")
    if num_clusters > n_points:
        raise ValueError(
            f"{field}: value {num_clusters} is more than the {n_points} embeddings available to fit on; "
            f"allowed: 1..{n_points} (k-means needs a point per cluster, ideally 40 or more)"
        )


def spherical_kmeans(
    vectors: np.ndarray, num_clusters: int, *, iterations: int, seed: int, field: str = "num_clusters"
) -> np.ndarray:
    """Unit-norm centroids of faiss's spherical k-means on unit vectors (N, D) float32; ``field``
    names the parameter in errors."""
    import faiss

    check_cluster_count(len(vectors), num_clusters, field)
    if not np.isfinite(vectors).all():
        raise ValueError("cannot cluster embeddings with NaN or infinite values")
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        num_clusters,
        niter=iterations,
        seed=seed,
        spherical=True,
        # faiss subsamples to 256 points per centroid by default; the caller already chose the sample.
        max_points_per_centroid=max(256, math.ceil(len(vectors) / num_clusters)),
        min_points_per_centroid=1,
    )
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return normalize_rows(np.asarray(kmeans.centroids, dtype=np.float32))


class CentroidIndex:
    """Nearest centroid by inner product (cosine on unit vectors), faiss flat search."""

    def __init__(self, centroids: np.ndarray):
        import faiss

        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._index = faiss.IndexFlatIP(self.centroids.shape[1])
        self._index.add(self.centroids)

    def search(self, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (N, k), best first."""
        if vectors.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"embeddings have {vectors.shape[1]} dimensions, the centroids {self.centroids.shape[1]}: "
                "they must come from the same model"
            )
        sims, ids = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return sims, ids

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, similarities), each (N,)."""
        if len(vectors) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sims, ids = self.search(vectors, 1)
        return ids[:, 0], sims[:, 0]


def balanced_assign(vectors: np.ndarray, centroids: np.ndarray, *, candidates: int = 16) -> np.ndarray:
    """Assign each vector to a centre so that no centre gets more than ``ceil(n / k)`` vectors,
    preferring each vector's most similar centres (greedy deferred acceptance, see the module doc)."""
    n, k = len(vectors), len(centroids)
    capacity = math.ceil(n / k)
    room = np.full(k, capacity, dtype=np.int64)
    assigned = np.full(n, -1, dtype=np.int64)
    index = CentroidIndex(centroids)
    pending = np.arange(n)
    pool = np.arange(k)  # centres that may still have room
    while len(pending):
        m = min(candidates, len(pool))
        if len(pool) == k:
            sims, cand = index.search(vectors[pending], m)
        else:
            sims, local = CentroidIndex(centroids[pool]).search(vectors[pending], m)
            cand = pool[local]
        for r in range(m):
            todo = np.flatnonzero(assigned[pending] < 0)
            if not len(todo):
                break
            who, where, sim = pending[todo], cand[todo, r], sims[todo, r]
            # Each centre accepts its most similar proposers of this round, up to its room.
            order = np.lexsort((-sim, where))
            where_sorted = where[order]
            first = np.searchsorted(where_sorted, where_sorted, side="left")
            rank = np.arange(len(order)) - first
            accept = rank < room[where_sorted]
            assigned[who[order[accept]]] = where_sorted[accept]
            room -= np.bincount(where_sorted[accept], minlength=k)
        pending = np.flatnonzero(assigned < 0)
        pool = np.flatnonzero(room > 0)
    return assigned


def cluster_sums(vectors: np.ndarray, assigned: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per-cluster sums of the vectors (torch's index_add_: ~20x faster than numpy's add.at)."""
    import torch

    sums = torch.zeros((num_clusters, vectors.shape[1]), dtype=torch.float32)
    sums.index_add_(0, torch.from_numpy(np.ascontiguousarray(assigned, np.int64)), torch.from_numpy(vectors))
    return sums.numpy()


def fit_prices(sims: np.ndarray, ids: np.ndarray, num_clusters: int, *, iterations: int = 300) -> np.ndarray:
    """Per-centre prices that make ``argmax(similarity - price)`` over each point's candidate centres
    (``ids``, with ``sims``; both (N, m)) give clusters of about equal size: the dual variables of
    the balanced assignment, as the auction algorithm computes them. Found by damped ascent: an
    oversized cluster's price rises by the log of its excess, scaled to the typical similarity
    gap between a point's two best centres. Streaming assignment then stays balanced, one row at a
    time, with no capacity bookkeeping across workers."""
    n = len(ids)
    prices = np.zeros(num_clusters, np.float32)
    if n == 0 or ids.shape[1] < 2:
        return prices
    target = n / num_clusters
    gap = max(float(np.median(sims[:, 0] - sims[:, 1])), 1e-4)
    rows = np.arange(n)
    for it in range(iterations):
        chosen = ids[rows, np.argmax(sims - prices[ids], axis=1)]
        sizes = np.bincount(chosen, minlength=num_clusters)
        excess = np.clip(np.log(np.maximum(sizes, 1) / target), -1.0, 1.0)
        prices += np.float32(0.5 * gap * 0.995**it) * excess.astype(np.float32)
    return prices


def priced_choice(sims: np.ndarray, ids: np.ndarray, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre ids, their similarities) of ``argmax(similarity - price)`` among each row's candidates."""
    best = np.argmax(sims - prices[ids], axis=1)
    rows = np.arange(len(ids))
    return ids[rows, best], sims[rows, best]


@dataclass(frozen=True)
class BalancedFit:
    centroids: np.ndarray  # (k, D) unit rows
    prices: np.ndarray  # (k,) see fit_prices
    nearest_sizes: np.ndarray  # cluster sizes when the fit sample is assigned to its nearest centre
    priced_sizes: np.ndarray  # ... to argmax(similarity - price), as the streaming pass does
    balanced_sizes: np.ndarray  # cluster sizes of the last balanced (capacity) assignment


def balanced_kmeans(
    vectors: np.ndarray,
    num_clusters: int,
    *,
    iterations: int,
    balance_iterations: int,
    seed: int,
    candidates: int = 16,
    field: str = "num_clusters",
) -> BalancedFit:
    """Spherical k-means (``iterations`` faiss rounds), then ``balance_iterations`` Lloyd rounds
    whose assignment is ``balanced_assign`` (a centre that ends a round empty keeps its place),
    then the prices that keep a one-row-at-a-time assignment balanced (``fit_prices``)."""
    centroids = spherical_kmeans(vectors, num_clusters, iterations=iterations, seed=seed, field=field)
    assigned = np.zeros(0, np.int64)
    for round_ in range(balance_iterations):
        assigned = balanced_assign(vectors, centroids, candidates=candidates)
        sums = cluster_sums(vectors, assigned, num_clusters)
        filled = np.linalg.norm(sums, axis=1) > 0
        centroids = np.where(filled[:, None], normalize_rows(sums), centroids).astype(np.float32)
        logger.debug("balanced k-means round %d of %d", round_ + 1, balance_iterations)
    sims, ids = CentroidIndex(centroids).search(vectors, min(candidates, num_clusters))
    prices = fit_prices(sims, ids, num_clusters)
    priced, _ = priced_choice(sims, ids, prices)
    return BalancedFit(
        centroids=centroids,
        prices=prices,
        nearest_sizes=np.bincount(ids[:, 0], minlength=num_clusters),
        priced_sizes=np.bincount(priced, minlength=num_clusters),
        balanced_sizes=np.bincount(assigned, minlength=num_clusters) if len(assigned) else np.zeros(0, np.int64),
    )


def size_spread(sizes: np.ndarray) -> dict:
    """How even cluster sizes are: min, max, max/mean, coefficient of variation, empty clusters."""
    sizes = np.asarray(sizes)
    if sizes.size == 0:
        return {}
    mean = float(sizes.mean())
    return {
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "mean": round(mean, 2),
        "max_over_mean": round(float(sizes.max()) / mean, 3) if mean else None,
        "cv": round(float(sizes.std()) / mean, 4) if mean else None,
        "empty": int((sizes == 0).sum()),
    }
