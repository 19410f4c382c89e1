"""Zero-shot image tags with the recipe's CLIP: the vocabulary entries closest to each image.

A perception expert for dense captioning (DenseFusion's "Image Tagging" hint). Each vocabulary
entry becomes a prompt (``template``, e.g. ``"a photo of a {}"``; several templates are averaged,
CLIP's prompt ensembling), embedded once when the step is built. A row's image embedding is taken
from ``{prefix}_image_emb`` when the batch already has it (a ``clip_embed`` step ran before with the
same model: give this step the same ``model`` and ``pretrained``), else the step embeds the image
itself (decoded once at the model's size, as ``clip_embed`` does).

Columns (null for rows that failed to decode): ``tags`` (list<string>, best first, at most
``top_k``, only those scoring at least ``min_score``) and ``tag_scores`` (list<float32>): the cosine
similarity of image and prompt (``score: cosine``) or the softmax over the whole vocabulary at the
model's logit scale (``score: softmax``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from curate.registry import register_step
from curate.stepkit import StepInputError, resolve_data_path, with_status
from filters.clip_embed import ClipEmbedder, ClipEmbedParams, decode_image
from schemas.tables import STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)

TAGS_TYPE = pa.list_(pa.string())
SCORES_TYPE = pa.list_(pa.float32())


def read_vocabulary(value: str | list[str]) -> list[str]:
    """Entries of a vocabulary list, or of a file with one per line (``#`` starts a comment); order
    kept, duplicates and blanks dropped."""
    if isinstance(value, str):
        path = Path(resolve_data_path(value))
        if not path.is_file():
            raise ValueError(f"vocabulary: file {value!r} does not exist (give a file or a list of tags)")
        items = [line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        items = list(value)
    out = list(dict.fromkeys(t.strip() for t in items if t and t.strip()))
    if not out:
        raise ValueError(f"vocabulary: {value!r} has no entries")
    return out


class TagParams(ClipEmbedParams):
    vocabulary: str | list[str] = Field(description="a file with one tag per line, or a list of tags")
    top_k: int = Field(default=5, ge=1, description="at most this many tags per image")
    template: str | list[str] = Field(
        default="a photo of a {}", description='prompt template(s) with "{}" for the tag; several are averaged'
    )
    min_score: float | None = Field(default=None, description="drop tags scoring below this")
    score: Literal["cosine", "softmax"] = "cosine"
    prefix: str = Field(
        default="clip",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="reuse the column {prefix}_image_emb when the batch has it (clip_embed's prefix)",
    )

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str | list[str]) -> str | list[str]:
        templates = [value] if isinstance(value, str) else value
        if not templates:
            raise ValueError("template: give at least one template")
        for t in templates:
            if t.count("{}") != 1:
                raise ValueError(f'template: value {t!r} must contain "{{}}" exactly once (where the tag goes)')
        return value

    @model_validator(mode="after")
    def _vocabulary_reads(self) -> TagParams:
        read_vocabulary(self.vocabulary)
        return self


@register_step("tags", params=TagParams, needs_pixels=True, rows="kept")
class ClipTagger:
    """Zero-shot tags from a vocabulary with CLIP (reusing clip_embed's image embeddings when present)."""

    def __init__(self, params: TagParams):
        import torch

        self.params = params
        clip_fields = set(ClipEmbedParams.model_fields)
        self.clip = ClipEmbedder(ClipEmbedParams(**params.model_dump(include=clip_fields)))
        self.vocabulary = read_vocabulary(params.vocabulary)
        templates = [params.template] if isinstance(params.template, str) else list(params.template)
        prompts = self.clip.encode_texts([t.format(tag) for tag in self.vocabulary for t in templates])
        prompts = prompts.reshape(len(self.vocabulary), len(templates), -1).mean(axis=1)
        self.prompts = (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).astype(np.float32)
        with torch.inference_mode():
            scale = getattr(self.clip.model, "logit_scale", None)
            self.logit_scale = float(scale.exp()) if scale is not None else 100.0
        self.emb_column = f"{params.prefix}_image_emb"
        logger.info("tags: %d entries x %d template(s), %s", len(self.vocabulary), len(templates), params.model)

    def _embed(self, images: list[bytes | None], rows: list[int], out: np.ndarray, failed: dict[int, str]) -> None:
        """Embed ``images`` (those of ``rows``) into ``out[rows]`` (L2-normalised); record undecodable ones."""
        import torch
        import torch.nn.functional as F

        clip, bs = self.clip, self.params.inference_batch_size
        for start in range(0, len(rows), bs):
            ok, pixels = [], []
            for i, data in zip(rows[start : start + bs], images[start : start + bs], strict=True):
                try:
                    pixels.append(clip.preprocess(decode_image(data, clip.image_size)))
                    ok.append(i)
                except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                    failed[i] = f"{type(exc).__name__}: {exc}"
            if ok:
                with torch.inference_mode():
                    x = torch.stack(pixels).to(clip.device, dtype=clip.input_dtype)
                    out[ok] = F.normalize(clip.model.encode_image(x).float(), dim=-1).cpu().numpy()

    def _stored_embeddings(self, batch: pa.Table, emb: np.ndarray) -> np.ndarray:
        """Copy the valid rows of ``{prefix}_image_emb`` into ``emb``; return which rows had one."""
        col = batch[self.emb_column].combine_chunks()
        n, dim = len(col), emb.shape[1]
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(col.type):
            if col.type.list_size != dim:
                raise StepInputError(
                    f"{self.emb_column} has {col.type.list_size} dimensions, model {self.params.model!r} has "
                    f"{dim}: give the tags step the model that clip_embed used"
                )
            values = col.values.to_numpy(zero_copy_only=False)  # null rows keep their slots in values
            emb[valid] = values[col.offset * dim : (col.offset + n) * dim].reshape(n, dim)[valid]
        else:
            for i in np.flatnonzero(valid):
                vec = np.asarray(col[int(i)].as_py(), np.float32)
                if vec.shape != (dim,):
                    raise ValueError(f"{self.emb_column} row {i} has {vec.shape[0]} dimensions, the model {dim}")
                emb[i] = vec
        return valid

    def image_embeddings(self, batch: pa.Table) -> tuple[np.ndarray, dict[int, str]]:
        """(n, dim) float32 image embeddings of the batch, and the rows that failed to decode."""
        n, dim = batch.num_rows, self.prompts.shape[1]
        emb = np.zeros((n, dim), np.float32)
        todo = list(range(n))
        if self.emb_column in batch.column_names:
            valid = self._stored_embeddings(batch, emb)
            todo = [i for i in range(n) if not valid[i]]
        failed: dict[int, str] = {}
        if todo:
            images = (
                batch["image"].take(pa.array(todo, pa.int64())).to_pylist()
                if "image" in batch.column_names
                else [None] * len(todo)
            )
            self._embed(images, todo, emb, failed)
        return emb, failed

    def __call__(self, batch: pa.Table) -> pa.Table:
        emb, failed = self.image_embeddings(batch)
        sims = emb @ self.prompts.T  # (n, vocabulary)
        if self.params.score == "softmax":
            logits = sims * self.logit_scale
            logits -= logits.max(axis=1, keepdims=True)
            scores = np.exp(logits)
            scores /= scores.sum(axis=1, keepdims=True)
        else:
            scores = sims
        k = min(self.params.top_k, len(self.vocabulary))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        tags: list[list[str] | None] = []
        tag_scores: list[list[float] | None] = []
        floor = self.params.min_score
        for i in range(batch.num_rows):
            if i in failed:
                status[i], errors[i] = STATUS_FAILED_DECODE, failed[i]
                tags.append(None)
                tag_scores.append(None)
                continue
            picked = [(self.vocabulary[j], float(scores[i, j])) for j in order[i]]
            if floor is not None:
                picked = [(t, s) for t, s in picked if s >= floor]
            tags.append([t for t, _ in picked])
            tag_scores.append([s for _, s in picked])
        batch = with_status(batch, status, errors)
        batch = batch.append_column("tags", pa.array(tags, TAGS_TYPE))
        return batch.append_column("tag_scores", pa.array(tag_scores, SCORES_TYPE))
