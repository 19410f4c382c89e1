"""MoDE data experts (Ma et al. 2024, "MoDE: CLIP Data Experts via Clustering"): two-level
clustering of caption text embeddings; each coarse cluster is the training set of one expert.

Global step. ``global_state`` fits on a bounded, seeded sample of the pool:
- fine level: balanced spherical k-means into ``fine_clusters`` (1024) clusters, equal-capacity
  assignment while the centres train, so that no fine cluster dominates (``filters.clustering``);
- coarse level: spherical k-means of the fine centres into ``coarse_clusters`` (4) experts; each
  fine centre maps to one expert.
Then per-centre prices are fitted so that the streaming assignment, ``argmax(similarity -
price)`` over a sample's ``candidates`` nearest centres, keeps the fine clusters about equal
(``assignment: balanced``; ``nearest`` is the plain nearest centre, which lets the clusters of
frequent topics grow again). The centres, prices and the fine-to-expert map are saved under
``artifacts/<step id>/`` and stay after the run: ``curate mode-weights`` turns them into
ensemble weights for a task's class names.

``decide`` then streams over the pool shard by shard: each sample gets its fine centre
(``{prefix}_fine``), that centre's expert (``{prefix}_expert``), the cosine distance to the centre
(``{prefix}_distance``) and the experts whose training set it is in (``{prefix}_experts``: its own
and, each with probability ``out_of_cluster_share``, every other one, drawn from the uid and seed
so the draw is the same on every attempt). ``output.split`` on that column writes one shard set
per expert. MoDE never drops a sample: the step only annotates.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.identity import seeded_uniform
from curate.registry import register_step
from curate.stepkit import load_npy
from filters.clustering import (
    CentroidIndex,
    balanced_kmeans,
    fit_sample,
    fit_sample_columns,
    priced_choice,
    size_spread,
    spherical_kmeans,
)
from filters.embeddings import column_to_matrix, normalize_rows

logger = logging.getLogger(__name__)

ARTIFACT_FILES = ("fine_centroids.npy", "fine_prices.npy", "coarse_centroids.npy", "fine_to_expert.npy", "mode.json")


class ModeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_column: str = Field(default="text_emb", description="caption text embeddings (text_embed writes them)")
    fine_clusters: int = Field(default=1024, ge=1, description="fine level: balanced k-means clusters")
    coarse_clusters: int = Field(default=4, ge=1, description="coarse level: data experts (2..32 in the paper)")
    iterations: int = Field(default=20, ge=1, description="plain k-means rounds that start the fine level")
    balance_iterations: int = Field(default=10, ge=0, description="equal-capacity rounds after those")
    candidates: int = Field(default=16, ge=2, description="nearest centres a point may be balanced into")
    assignment: Literal["balanced", "nearest"] = Field(
        default="balanced",
        description="balanced: argmax(similarity - price) over the candidates, keeping fine clusters about "
        "equal in the streaming pass too; nearest: the plain nearest centre",
    )
    coarse_iterations: int = Field(default=50, ge=1)
    max_fit_samples: int = Field(default=262_144, ge=1, description="the fit uses a seeded sample this big")
    out_of_cluster_share: float = Field(default=0.02, ge=0.0, le=1.0, description="of other experts' samples")
    seed: int = 0
    prefix: str = Field(default="mode", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _levels(self) -> ModeParams:
        if self.coarse_clusters > self.fine_clusters:
            raise ValueError(
                f"coarse_clusters: value {self.coarse_clusters} is more than fine_clusters ({self.fine_clusters}); "
                "each expert is a group of fine clusters"
            )
        return self


def _load_model(folder: str) -> tuple[CentroidIndex, np.ndarray, np.ndarray]:
    index = CentroidIndex(load_npy(f"{folder}/fine_centroids.npy"))
    return index, load_npy(f"{folder}/fine_prices.npy"), load_npy(f"{folder}/fine_to_expert.npy")


def expert_memberships(uids: list[str], experts: np.ndarray, num_experts: int, share: float, seed: int) -> list:
    """Experts whose training set holds each sample: its own, plus each other one with prob. ``share``."""
    if num_experts == 1 or share == 0 or not len(uids):
        return [[int(e)] for e in experts]
    draws = np.stack([seeded_uniform(uids, seed, salt=e) for e in range(num_experts)], axis=1)
    member = draws < share
    member[np.arange(len(uids)), experts] = True
    return [np.flatnonzero(row).tolist() for row in member]


@register_step("mode", params=ModeParams, global_decision=True, rows="kept")
class MoDEClusterer:
    """MoDE: balanced fine clusters of caption embeddings grouped into data experts (annotates only)."""

    def __init__(self, params: ModeParams):
        self.params = params
        # Loaded once per step object (one run), never across runs that reuse a folder path.
        self._model: tuple[str, tuple[CentroidIndex, np.ndarray, np.ndarray]] | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch  # assigns in decide(), once the centres exist

    @staticmethod
    def state_columns(params: ModeParams) -> tuple[str, ...]:
        return fit_sample_columns(params.embedding_column)

    def global_state(self, con: duckdb.DuckDBPyConnection, artifacts: Path) -> dict:
        p = self.params
        vectors, skipped = fit_sample(
            con, p.embedding_column, seed=p.seed, limit=p.max_fit_samples, where="status = 'success' AND keep"
        )
        fit = balanced_kmeans(
            vectors,
            p.fine_clusters,
            iterations=p.iterations,
            balance_iterations=p.balance_iterations,
            seed=p.seed,
            candidates=p.candidates,
            field="fine_clusters",
        )
        coarse = spherical_kmeans(fit.centroids, p.coarse_clusters, iterations=p.coarse_iterations, seed=p.seed)
        fine_to_expert, _ = CentroidIndex(coarse).nearest(fit.centroids)
        sample_sizes = fit.priced_sizes if p.assignment == "balanced" else fit.nearest_sizes
        artifacts.mkdir(parents=True, exist_ok=True)
        np.save(artifacts / "fine_centroids.npy", fit.centroids)
        np.save(artifacts / "fine_prices.npy", fit.prices if p.assignment == "balanced" else np.zeros_like(fit.prices))
        np.save(artifacts / "coarse_centroids.npy", coarse)
        np.save(artifacts / "fine_to_expert.npy", fine_to_expert.astype(np.int32))
        state = {
            "artifacts": str(artifacts),
            "embedding_column": p.embedding_column,
            "fine_clusters": p.fine_clusters,
            "coarse_clusters": p.coarse_clusters,
            "fit_samples": len(vectors),
            "fit_skipped_non_finite": skipped,
            "assignment": p.assignment,
            # Spread of fine-cluster sizes on the fit sample: under the capacity assignment the centres
            # were trained with, under the priced assignment (what "balanced" streams) and the nearest.
            "fine_sizes_capacity": size_spread(fit.balanced_sizes),
            "fine_sizes_priced": size_spread(fit.priced_sizes),
            "fine_sizes_nearest": size_spread(fit.nearest_sizes),
            "fine_clusters_per_expert": np.bincount(fine_to_expert, minlength=p.coarse_clusters).tolist(),
            "fit_samples_per_expert": np.bincount(fine_to_expert, weights=sample_sizes, minlength=p.coarse_clusters)
            .astype(int)
            .tolist(),
        }
        (artifacts / "mode.json").write_text(json.dumps(state, indent=2))
        return state

    def decide(self, batch: pa.Table, state: dict) -> pa.Table:
        p = self.params
        if self._model is None or self._model[0] != state["artifacts"]:
            self._model = (state["artifacts"], _load_model(state["artifacts"]))
        index, prices, fine_to_expert = self._model[1]
        vectors = normalize_rows(column_to_matrix(batch[p.embedding_column], p.embedding_column))
        if p.assignment == "nearest" or not len(vectors):
            fine, sims = index.nearest(vectors)
        else:
            fine, sims = priced_choice(*index.search(vectors, min(p.candidates, len(prices))), prices)
        experts = fine_to_expert[fine]
        members = expert_memberships(
            batch["uid"].to_pylist(), experts, state["coarse_clusters"], p.out_of_cluster_share, p.seed
        )
        columns = {
            f"{p.prefix}_fine": pa.array(fine, pa.int32()),
            f"{p.prefix}_expert": pa.array(experts, pa.int32()),
            f"{p.prefix}_distance": pa.array(1.0 - sims, pa.float32()),
            f"{p.prefix}_experts": pa.array(members, pa.list_(pa.int32())),
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch


def expert_weights(
    class_embeddings: np.ndarray,
    fine_centroids: np.ndarray,
    fine_to_expert: np.ndarray,
    *,
    num_experts: int,
    temperature: float,
) -> np.ndarray:
    """Ensemble weights (C, E) of each class name over the experts: a softmax over the fine centres
    of the cosine similarity / ``temperature``, summed per expert (the class's soft assignment to
    the fine clusters, gathered into their experts). Rows sum to 1; average them for a task."""
    if temperature <= 0:
        raise ValueError(f"temperature: value {temperature} must be > 0")
    sims = normalize_rows(class_embeddings) @ fine_centroids.T / temperature
    sims -= sims.max(axis=1, keepdims=True)
    probs = np.exp(sims)
    probs /= probs.sum(axis=1, keepdims=True)
    weights = np.zeros((len(class_embeddings), num_experts))
    for expert in range(num_experts):
        weights[:, expert] = probs[:, fine_to_expert == expert].sum(axis=1)
    return weights
