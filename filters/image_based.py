"""DataComp's image-based filter: keep samples whose image lands in a cluster that reference
images (ImageNet in the paper) also land in.

Global: k-means (faiss, spherical, ``iterations`` rounds) of the pool's image embeddings, fitted
on up to ``max_fit_samples`` of them (a seeded hash sample, so memory is bounded); each
reference embedding picks its nearest centroid; a sample is kept when its own nearest centroid
is one of those. As in DataComp, a caption sanity filter comes first: English by fastText,
more than one word, more than 5 characters. The centroids are saved under the run's
``artifacts/<step id>/`` so that assignments can be reproduced.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.registry import register_step
from curate.stepkit import load_npy
from filters.basic import detect_language
from filters.clustering import CentroidIndex, fit_sample, fit_sample_columns, spherical_kmeans
from filters.embeddings import column_to_matrix, load_reference_embeddings, normalize_rows

logger = logging.getLogger(__name__)


class ImageBasedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_column: str = Field(default="clip_image_emb", description="image embeddings (l14_img on DataComp)")
    num_clusters: int = Field(default=1000, ge=1, description="k-means clusters (DataComp: 100k at full scale)")
    iterations: int = Field(default=20, ge=1)
    max_fit_samples: int = Field(default=1_000_000, ge=1, description="k-means is fitted on a sample this big")
    seed: int = 0
    reference_embeddings: str | None = Field(default=None, description=".npy (N, D) or .parquet 'embedding'")
    reference_prompts: list[str] | None = Field(default=None, description="texts encoded by the CLIP text tower")
    clip_model: str = "curate-tiny-clip"
    clip_pretrained: str | None = None
    caption_filter: bool = True

    @model_validator(mode="after")
    def _one_reference(self) -> ImageBasedParams:
        if (self.reference_embeddings is None) == (self.reference_prompts is None):
            raise ValueError("give exactly one of reference_embeddings (a file) or reference_prompts (texts)")
        if self.reference_embeddings is not None and not Path(self.reference_embeddings).is_file():
            raise ValueError(f"reference_embeddings: value {self.reference_embeddings!r} is not a file")
        if self.reference_prompts is not None and not self.reference_prompts:
            raise ValueError("reference_prompts: the list is empty")
        return self


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the most similar centroid (inner product on normalised vectors), as DataComp does."""
    return CentroidIndex(centroids).nearest(embeddings)[0]


def caption_ok(captions: list[str | None]) -> list[str | None]:
    """DataComp's caption filter for the image-based baseline; the reason a caption fails, else None."""
    texts = [c or "" for c in captions]
    langs = detect_language(texts, "lite")
    reasons = []
    for text, (lang, _) in zip(texts, langs, strict=True):
        if len(text.split()) <= 1 or len(text) <= 5:
            reasons.append("caption_too_short")
        elif lang != "en":
            reasons.append("non_english")
        else:
            reasons.append(None)
    return reasons


@register_step("image_based", params=ImageBasedParams, global_decision=True)
class ImageBasedFilter:
    """Keep samples whose nearest image cluster is the nearest cluster of some reference."""

    def __init__(self, params: ImageBasedParams):
        self.params = params
        self._index: tuple[str, CentroidIndex] | None = None  # loaded once per step object (one run)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch  # decides in decide(), once the pool's clusters exist

    def _references(self) -> np.ndarray:
        p = self.params
        if p.reference_embeddings is not None:
            return load_reference_embeddings(p.reference_embeddings)
        from filters.clip_embed import ClipEmbedder, ClipEmbedParams

        embedder = ClipEmbedder(ClipEmbedParams(model=p.clip_model, pretrained=p.clip_pretrained))
        return np.asarray(embedder.encode_texts(list(p.reference_prompts or [])), np.float32)

    @staticmethod
    def state_columns(params: ImageBasedParams) -> tuple[str, ...]:
        return fit_sample_columns(params.embedding_column)

    @staticmethod
    def decide_columns(params: ImageBasedParams) -> tuple[str, ...]:
        return (params.embedding_column, *(("caption",) if params.caption_filter else ()))

    def global_state(self, con: duckdb.DuckDBPyConnection, artifacts: Path) -> dict:
        p = self.params
        vectors, skipped = fit_sample(con, p.embedding_column, seed=p.seed, limit=p.max_fit_samples)
        centroids = spherical_kmeans(vectors, p.num_clusters, iterations=p.iterations, seed=p.seed)
        references = normalize_rows(self._references())
        if references.shape[1] != vectors.shape[1]:
            raise ValueError(
                f"reference embeddings have {references.shape[1]} dimensions, the pool's {p.embedding_column} "
                f"has {vectors.shape[1]}: they must come from the same model"
            )
        targets = sorted({int(i) for i in nearest_centroid(references, centroids)})
        artifacts.mkdir(parents=True, exist_ok=True)
        centroids_path = artifacts / "centroids.npy"
        np.save(centroids_path, centroids)
        return {
            "centroids": str(centroids_path),
            "target_clusters": targets,
            "fit_samples": len(vectors),
            "fit_skipped_non_finite": skipped,
            "references": len(references),
            "num_clusters": p.num_clusters,
        }

    def decide(self, batch: pa.Table, state: dict) -> pa.Table:
        p = self.params
        n = batch.num_rows
        if n == 0:
            clusters = np.zeros(0, np.int64)
        else:
            if self._index is None or self._index[0] != state["centroids"]:
                self._index = (state["centroids"], CentroidIndex(load_npy(state["centroids"])))
            clusters = self._index[1].nearest(
                normalize_rows(column_to_matrix(batch[p.embedding_column], p.embedding_column))
            )[0]
        targets = set(state["target_clusters"])
        caption_reasons = caption_ok(batch["caption"].to_pylist()) if p.caption_filter else [None] * n
        reasons = [
            cap or (None if int(c) in targets else "not_near_reference")
            for cap, c in zip(caption_reasons, clusters, strict=True)
        ]
        batch = batch.append_column("image_cluster", pa.array(clusters, pa.int32()))
        batch = batch.append_column("step_keep", pa.array([r is None for r in reasons], pa.bool_()))
        return batch.append_column("step_drop_reason", pa.array(reasons, pa.string()))
