"""Shared k-means pieces: balanced assignment, spherical k-means checks, the fit sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cluster_helpers import sample_table, staged_connection, unit_rows

from filters.clustering import (
    CentroidIndex,
    balanced_assign,
    balanced_kmeans,
    check_cluster_count,
    fit_sample,
    priced_choice,
    size_spread,
    spherical_kmeans,
)


def _skewed(rng: np.random.Generator, n: int = 4000, dim: int = 32) -> np.ndarray:
    """Points around 10 topics, half of them in one topic (web data is heavy-tailed)."""
    centres = unit_rows(rng, 10, dim)
    topic = np.where(rng.random(n) < 0.5, 0, rng.integers(0, 10, n))
    x = centres[topic] + 0.05 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_balanced_assign_caps_every_cluster_and_prefers_near_centres():
    rng = np.random.default_rng(0)
    x = _skewed(rng)
    centroids = spherical_kmeans(x, 40, iterations=10, seed=0)
    assigned = balanced_assign(x, centroids, candidates=8)
    sizes = np.bincount(assigned, minlength=40)
    assert (assigned >= 0).all()
    assert sizes.max() <= math.ceil(len(x) / 40)
    # Most points still land in one of their 8 nearest centres.
    _, top = CentroidIndex(centroids).search(x, 8)
    assert (top == assigned[:, None]).any(axis=1).mean() > 0.8


def test_balanced_kmeans_evens_out_what_plain_kmeans_does_not():
    rng = np.random.default_rng(1)
    x = _skewed(rng)
    plain = np.bincount(CentroidIndex(spherical_kmeans(x, 40, iterations=20, seed=0)).nearest(x)[0], minlength=40)
    fit = balanced_kmeans(x, 40, iterations=20, balance_iterations=10, seed=0)
    assert size_spread(fit.balanced_sizes)["max"] <= math.ceil(len(x) / 40)
    assert size_spread(fit.balanced_sizes)["cv"] < 0.05
    assert size_spread(fit.nearest_sizes)["cv"] < size_spread(plain)["cv"]
    assert np.allclose(np.linalg.norm(fit.centroids, axis=1), 1.0, atol=1e-5)


def test_prices_keep_streaming_assignment_balanced_on_unseen_rows():
    rng = np.random.default_rng(2)
    x = _skewed(rng, n=12000)
    fit, held_out = balanced_kmeans(x[:6000], 40, iterations=20, balance_iterations=5, seed=0), x[6000:]
    sims, ids = CentroidIndex(fit.centroids).search(held_out, 16)
    priced = np.bincount(priced_choice(sims, ids, fit.prices)[0], minlength=40)
    nearest = np.bincount(ids[:, 0], minlength=40)
    assert size_spread(fit.priced_sizes)["cv"] < 0.5 * size_spread(fit.nearest_sizes)["cv"]
    assert size_spread(priced)["cv"] < 0.6 * size_spread(nearest)["cv"], (size_spread(priced), size_spread(nearest))
    # The price of balance: a row's centre is a little less similar than its nearest one.
    chosen_sims = priced_choice(sims, ids, fit.prices)[1]
    assert chosen_sims.mean() > sims[:, 0].mean() - 0.05


def test_fewer_points_than_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match=r"num_clusters: value 10 is more than the 5 embeddings"):
        spherical_kmeans(unit_rows(np.random.default_rng(0), 5, 8), 10, iterations=5, seed=0)
    with pytest.raises(ValueError, match="no embeddings to cluster"):
        check_cluster_count(0, 3)


def test_identical_points_leave_clusters_empty_without_a_crash():
    x = np.repeat(unit_rows(np.random.default_rng(0), 2, 8), 25, axis=0)
    centroids = spherical_kmeans(x, 6, iterations=5, seed=0)
    spread = size_spread(np.bincount(CentroidIndex(centroids).nearest(x)[0], minlength=6))
    assert spread["empty"] >= 4 and spread["max"] == 25
    fit = balanced_kmeans(x, 6, iterations=5, balance_iterations=3, seed=0)
    assert fit.balanced_sizes.sum() == 50 and fit.balanced_sizes.max() <= 9


def test_fit_sample_is_seeded_bounded_and_skips_non_finite_rows(tmp_path):
    x = unit_rows(np.random.default_rng(0), 200, 16)
    x[3, 0] = np.nan
    x[7, 5] = np.inf
    con = staged_connection(sample_table(x), tmp_path)
    a, skipped = fit_sample(con, "emb", seed=1, limit=500)
    assert a.shape == (198, 16) and skipped == 2
    b1, _ = fit_sample(con, "emb", seed=1, limit=50)
    b2, _ = fit_sample(con, "emb", seed=1, limit=50)
    c, _ = fit_sample(con, "emb", seed=2, limit=50)
    assert len(b1) <= 50 and np.array_equal(b1, b2) and not np.array_equal(b1, c)
    with pytest.raises(ValueError, match="embedding_column: value 'nope'"):
        fit_sample(con, "nope", seed=0, limit=10)
