"""DataComp's text-based filter: keep English captions that mention a concept of a vocabulary.

DataComp keeps a sample when a word of its caption maps (WordNet's first synset) to an
ImageNet-21k synset and fastText says the caption is English. We match the vocabulary's
concepts as whole words or phrases (``filters.text_match``): no WordNet at run time, and
multi-word concepts ("golden retriever") work; a vocabulary of the synsets' lemma names gives
the same kind of selection. The matched concepts are written as a column, so a user can
re-select on a narrower vocabulary with one DuckDB query (``list_has_any``) and no recompute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.registry import register_step
from filters.basic import detect_language
from filters.text_match import PhraseMatcher, read_entries

logger = logging.getLogger(__name__)


class TextBasedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocabulary: str | None = Field(
        default=None, description="file with one concept per line ('#' comments, blank lines ignored) or a JSON list"
    )
    concepts: list[str] | None = Field(default=None, description="the concepts inline, instead of a file")
    language: str | None = Field(default="en", description="required fastText language; null: any")
    lang_model: str = Field(default="lite", pattern="^(lite|full|auto)$")
    lowercase: bool = Field(default=True, description="match case-insensitively")

    @model_validator(mode="after")
    def _one_source(self) -> TextBasedParams:
        if (self.vocabulary is None) == (self.concepts is None):
            raise ValueError("give exactly one of vocabulary (a file) or concepts (a list)")
        if self.concepts is not None and not self.concepts:
            raise ValueError("concepts: the list is empty")
        # Local files are checked with the recipe, before any work; remote ones when the step is built.
        if self.vocabulary is not None and "://" not in self.vocabulary and not Path(self.vocabulary).is_file():
            raise ValueError(f"vocabulary: file {self.vocabulary!r} does not exist")
        return self


def _unique(concepts: list[str], lowercase: bool) -> list[str]:
    """Concepts in order, without repeats (as they would be matched), so each is reported once."""
    seen: set[str] = set()
    out = []
    for concept in concepts:
        text = " ".join(concept.split())
        key = text.lower() if lowercase else text
        if key and key not in seen:
            seen.add(key)
            out.append(text)
    return out


@register_step("text_based", params=TextBasedParams)
class TextBasedFilter:
    """DataComp text-based filtering: the caption mentions a vocabulary concept (and is English)."""

    def __init__(self, params: TextBasedParams):
        self.params = params
        if params.vocabulary is not None:
            source = f"vocabulary file {params.vocabulary!r}"
            raw = read_entries(params.vocabulary)
        else:
            source, raw = "concepts", list(params.concepts or [])
        self.concepts = _unique(raw, params.lowercase)
        if not self.concepts:
            raise ValueError(f"{source}: has no concepts once blank entries are removed")
        self.matcher = PhraseMatcher(self.concepts, case_insensitive=params.lowercase, source=source)
        logger.info("text_based: %d concepts from %s", len(self.concepts), source)
        if params.language is not None:
            detect_language(["warm up the language model"], params.lang_model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        p = self.params
        captions = [c or "" for c in batch["caption"].to_pylist()]
        hits = self.matcher.matches_batch(captions)
        # The language model only runs where it can still change the decision.
        langs: dict[int, str] = {}
        if p.language is not None:
            todo = [i for i, h in enumerate(hits) if h]
            detected = detect_language([captions[i] for i in todo], p.lang_model)
            langs = {i: lang for i, (lang, _) in zip(todo, detected, strict=True)}
        keep: list[bool] = []
        reasons: list[str | None] = []
        for i, h in enumerate(hits):
            reason = None
            if not h:
                reason = "no_concept_match"
            elif p.language is not None and langs[i] != p.language:
                reason = "non_english" if p.language == "en" else f"language_not_{p.language}"
            keep.append(reason is None)
            reasons.append(reason)
        columns = {
            "concept_matches": pa.array([[self.concepts[j] for j in h] for h in hits], pa.list_(pa.string())),
            "concept_count": pa.array([len(h) for h in hits], pa.int32()),
            "step_keep": pa.array(keep, pa.bool_()),
            "step_drop_reason": pa.array(reasons, pa.string()),
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch
