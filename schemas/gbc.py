"""Graph-based captions (GBC), as GBC10M and apple/ml-gbc write them: an image as a graph of image,
entity, composition and relation vertices, each with its own captions, linked by the phrases that
name the children. ``Graph.from_json`` / ``to_json`` read and write such records without loss:
``to_json`` gives back exactly the fields a record had (``exclude_unset``), and a field the schema
does not know fails loudly, naming it, instead of being dropped.

Ids (``../shared/DESIGN.md`` section 4): the image vertex is ``""`` with the full box; an entity
child's id is its parent's id and its text joined by ``_`` (a root child: the text alone), with
``_i`` suffixes when a phrase has several boxes; a relation vertex is ``[`` + its sorted child ids
joined by ``|`` + ``]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VertexLabel = Literal["image", "entity", "composition", "relation"]
CaptionLabel = Literal["short", "detail", "relation", "composition", "original", "hardcode", "bagofwords"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Box(_Strict):
    """Normalised to [0, 1] of the image; ``confidence`` is the detector's, None for the image."""

    left: float
    top: float
    right: float
    bottom: float
    confidence: float | None = None


class CaptionStatistics(_Strict):
    n_words: int
    n_tokens: int


class ClipScores(_Strict):
    scores: dict[str, float] | None = None  # by CLIP model name
    truncation: bool = False  # whether a sentence was cut to fit the text encoder


class NodeCaption(_Strict):
    """One caption of a vertex. ``full_label`` is ``label-vertex label`` (``detail-entity``)."""

    text: str
    label: CaptionLabel
    full_label: str | None = None
    statistics: CaptionStatistics | None = None
    clip_scores: ClipScores = Field(default_factory=ClipScores)
    toxicity_scores: dict[str, float] | None = None


class Edge(_Strict):
    source: str  # vertex ids
    text: str  # the phrase of the source's captions that names the target
    target: str


class Vertex(_Strict):
    vertex_id: str
    bbox: Box
    label: VertexLabel
    descs: list[NodeCaption] = Field(default_factory=list)
    in_edges: list[Edge] = Field(default_factory=list)
    out_edges: list[Edge] = Field(default_factory=list)
    sub_masks: list[str] | None = None
    super_masks: list[str] | None = None


class Graph(_Strict):
    vertices: list[Vertex]
    img_url: str | None = None
    img_path: str | None = None
    original_caption: str | None = None
    short_caption: str | None = None
    detail_caption: str | None = None
    img_size: list[int] | None = None  # width, height in pixels
    mask_inside_threshold: float | None = None

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Graph:
        return cls.model_validate(record)

    def to_json(self) -> dict[str, Any]:
        """The record as it was read: the fields it had, and no others."""
        return self.model_dump(mode="json", exclude_unset=True)
