"""Baseline for bench_mode_kmeans: Sinkhorn-balanced assignment and Sinkhorn-balanced k-means.

The textbook way to balance an assignment is entropic optimal transport (Cuturi 2013; SwAV's
equipartition, Caron et al. 2020): send mass 1/n from each point to the centres so that each centre
receives 1/k, at cost -similarity, by Sinkhorn-Knopp scaling of K = exp(similarity / eps). Its column
scalings are dual prices: the plan's row argmax is argmax_j(s_ij - price_j), price_j = -eps log v_j.
So prices fitted on the sample assign every other row one at a time with the rule of
MoDEClusterer's streaming pass (filters/clustering.py), with no capacity bookkeeping either: a
like-for-like rival to ours (capacity-constrained Lloyd rounds, then prices by damped ascent).

Two things make it strong rather than a strawman. The row argmax of the plan is only balanced when
eps is small next to the similarity gaps between a point's best centres, and plain Sinkhorn at a
small eps underflows and converges slowly; so eps is annealed (geometrically, at most halving a
step, from ``EPS_START`` to ``EPS_END``) and the scalings are absorbed into the prices after each
stage (log-domain stabilisation, Schmitzer 2019). And, as ours does, centres are re-fitted:
``sinkhorn_kmeans`` runs Lloyd rounds whose assignment is the Sinkhorn one, each warm-started from
the previous prices.
"""

from __future__ import annotations

import math
import time

import numpy as np

from filters.clustering import cluster_sums
from filters.embeddings import normalize_rows

CHUNK = 65_536  # rows per block when similarities are computed or scanned
EPS_START = 0.05  # similarity units; SwAV's eps
EPS_END = 0.0015  # well below the median gap between a point's two best centres (~0.02 on the bench's data)
STAGE_ITERATIONS = 30
WARM_STAGES = 2  # a round after the first starts from the last prices: only the smallest eps values
TOL = 1e-3  # L1 error of the rows' marginals (total mass 1)


def eps_schedule(start: float = EPS_START, end: float = EPS_END) -> list[float]:
    """Geometric steps from ``start`` to ``end``, each at most a halving."""
    return np.geomspace(start, end, math.ceil(math.log2(start / end)) + 1).tolist()


def similarities(sample: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = np.empty((len(sample), len(centroids)), np.float32)
    for lo in range(0, len(sample), CHUNK):
        np.matmul(sample[lo : lo + CHUNK], centroids.T, out=out[lo : lo + CHUNK])
    return out


def _kernel(sims: np.ndarray, prices: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = exp((s - price - row max) / eps), block by block: entries in (0, 1], nothing overflows."""
    for lo in range(0, len(sims), CHUNK):
        block = out[lo : lo + CHUNK]
        np.subtract(sims[lo : lo + CHUNK], prices, out=block)
        block -= block.max(axis=1, keepdims=True)
        block *= np.float32(1.0 / eps)
        np.exp(block, out=block)


def sinkhorn_prices(sims: np.ndarray, prices: np.ndarray, schedule: list[float]) -> tuple[np.ndarray, int, float]:
    """Prices (k,) of the balanced transport for similarities ``sims`` (n, k), started from ``prices``,
    one Sinkhorn stage per eps of ``schedule``; also the iterations run and the last row error."""
    n, k = sims.shape
    kern = np.empty_like(sims)
    row_mass, col_mass = np.float32(1.0 / n), np.float32(1.0 / k)
    prices = prices.astype(np.float64)
    total, error = 0, float("inf")
    for eps in schedule:
        _kernel(sims, prices.astype(np.float32), eps, kern)
        v = np.ones(k, np.float32)
        kv = kern @ v
        for _ in range(STAGE_ITERATIONS):
            u = row_mass / np.maximum(kv, 1e-30)
            v = col_mass / np.maximum(kern.T @ u, 1e-30)
            kv = kern @ v
            total += 1
            # Columns are exact after the v update; the rows' mass under the new v is what is left.
            error = float(np.abs(u * kv - row_mass).sum())
            if error < TOL:
                break
        prices -= eps * np.log(v.astype(np.float64))  # absorb the scaling: the next kernel starts at v = 1
        prices -= prices.min()
    return prices.astype(np.float32), total, error


def sinkhorn_kmeans(sample: np.ndarray, centroids: np.ndarray, *, rounds: int) -> dict:
    """From ``centroids`` (k, D): Sinkhorn prices over them (``first``), then ``rounds`` Lloyd rounds
    whose assignment is the Sinkhorn plan's row argmax (a centre left empty keeps its place), each
    followed by prices for the new centres (``final``). Each holds centroids, prices, the Sinkhorn
    iterations and row error of its last solve and the seconds since the start; ``final`` also the
    sample's labels."""
    start = time.perf_counter()
    k = len(centroids)
    sims = similarities(sample, centroids)
    prices, iterations, error = sinkhorn_prices(sims, np.zeros(k, np.float32), eps_schedule())
    first = final = {"centroids": centroids, "prices": prices, "iterations": iterations, "row_error": error}
    first["seconds"] = time.perf_counter() - start
    for _ in range(rounds):
        labels = np.argmax(sims - final["prices"], axis=1)
        sums = cluster_sums(sample, labels, k)
        filled = np.linalg.norm(sums, axis=1) > 0
        centroids = np.where(filled[:, None], normalize_rows(sums), final["centroids"]).astype(np.float32)
        sims = similarities(sample, centroids)
        prices, iterations, error = sinkhorn_prices(sims, final["prices"], eps_schedule()[-WARM_STAGES:])
        final = {"centroids": centroids, "prices": prices, "iterations": iterations, "row_error": error}
    final["sample_labels"] = np.argmax(sims - final["prices"], axis=1)
    final["seconds"] = time.perf_counter() - start
    return {"first": first, "final": final}


def priced_assign(vectors: np.ndarray, centroids: np.ndarray, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, similarity to the label's centre) of argmax_j(s_ij - price_j) over all centres, in blocks."""
    labels = np.empty(len(vectors), np.int64)
    sims = np.empty(len(vectors), np.float32)
    for lo in range(0, len(vectors), CHUNK):
        s = vectors[lo : lo + CHUNK] @ centroids.T
        best = np.argmax(s - prices, axis=1)
        labels[lo : lo + len(s)] = best
        sims[lo : lo + len(s)] = s[np.arange(len(s)), best]
    return labels, sims
