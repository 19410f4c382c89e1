"""Graph-based captions (GBC, after apple/ml-gbc), built in rounds over a whole batch of images.

ml-gbc runs one action at a time from a queue, one model call per query. Here every round sends the
queries of all images of the batch to the backend in one ``generate`` call (batched ``generate``,
concurrent HTTP requests, vLLM's continuous batching) and runs the detector once over all crops:

1. **image query** on each image (with the experts' hints, as the dense captioner has them): a
   detailed caption, the top-level elements ``- [obj][single|multiple]``, a concise caption;
2. **detection** of each element on its parent's crop (the open-vocabulary detector told the
   phrases), then the reference's box selection (``captioners.gbc_geometry.select_boxes``); a
   phrase with several boxes becomes a composition vertex with one entity per box; an entity found
   again (same text, boxes overlapping ``merge_overlap`` both ways) joins the existing vertex;
3. **entity queries** on each new entity's crop: present or not (an absent one is removed), a
   description, its notable parts, which go to the next detection round (up to ``max_depth``);
4. **composition queries** (the crop with numbered boxes and spanning-tree hints, the hints kept as
   ``hardcode`` captions) and **relation queries** (vertices with two or more child groups; hints:
   where each pair is) for the vertices whose children are now known.

Rounds 2-4 repeat per depth level. Bounds: ``max_depth`` and ``max_vertices``. Each image is decoded
once; crops are cut from it.

Columns (``gbc`` is ``prefix``): ``gbc_graph`` (the graph as GBC10M JSON; the sample's json gets it
too), ``gbc_text`` (the training text, ``text``), ``gbc_vertices``, ``gbc_problems`` (what was not
used and why: malformed answers, rejected phrases, the budget), ``gbc_calls`` (MLLM requests for this
image), ``gbc_prompt_tokens``, ``gbc_completion_tokens``, ``gbc_model``, ``gbc_prompt_version``.
A row fails with ``failed_caption_unavailable`` when the backend could not answer one of its queries
(transient: the next run asks again), with ``failed_to_caption`` when the image query gave nothing
usable or the graph fails the validator (``schemas.gbc_validate``; the graph is kept in the column),
with ``failed_to_decode`` for an undecodable image.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from captioners.backends import ChatRequest, Completion
from captioners.backends.transformers_backend import TINY_LLAVA_GBC_NAME, TransformersParams
from captioners.dense import BackendParams, build_backend, expert_hints
from captioners.gbc_geometry import (
    BoxSelection,
    composition_hints,
    composition_view,
    crop_box,
    normalise,
    relation_hints,
    relation_pairs,
    select_boxes,
    to_pixels,
)
from captioners.gbc_graph import GraphBuilder, child_id, singular
from captioners.gbc_parse import (
    Phrase,
    parse_composition_answer,
    parse_entity_answer,
    parse_image_answer,
    parse_relation_answer,
)
from captioners.gbc_prompts import DEFAULT_PROMPTS, load_prompts
from captioners.gbc_text import TextFormat, Traversal, graph_text
from captioners.hints import HINT_KINDS
from curate.registry import register_step
from curate.stepkit import with_status
from filters.clip_embed import ClipEmbedParams, decode_image
from schemas.gbc_validate import validate
from schemas.tables import STATUS_CAPTION_UNAVAILABLE, STATUS_FAILED_CAPTION, STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)


class GbcDetectorParams(BaseModel):
    """The open-vocabulary detector that finds each phrase (``detect``'s params of the same names)."""

    model_config = ConfigDict(extra="forbid")
    weights: str = Field(default="curate-tiny-yolo-world", description="YOLO-World or YOLOE weights")
    text_model: str | None = None
    text_pretrained: str | None = None
    prompt_template: str = "{}"
    confidence: float = Field(default=0.05, ge=0.0, le=1.0, description="the detector's own floor, before selection")
    image_size: int | None = Field(default=None, ge=32)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    inference_batch_size: int = Field(default=32, ge=1)

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str) -> str:
        from captioners.detector import resolve_weights

        resolve_weights(value)
        return value


class SelectionParams(BaseModel):
    """The reference's box selection (``captioners.gbc_geometry.BoxSelection``)."""

    model_config = ConfigDict(extra="forbid")
    min_score: float = Field(default=0.35, ge=0.0, le=1.0)
    min_area_px: float = Field(default=5000.0, ge=0.0, description="in pixels of the image as decoded")
    max_relative_area: float = Field(default=0.8, gt=0.0, le=1.0)
    nms_single: float = Field(default=0.05, ge=0.0, le=1.0)
    nms_multiple: float = Field(default=0.2, ge=0.0, le=1.0)
    single_score_margin: float = Field(default=0.05, ge=0.0)
    max_boxes: int = Field(default=6, ge=1)


class GbcTextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat = "concat"
    traversal: Traversal = "bfs"
    clip_thresholds: dict[str, float] | None = Field(
        default=None, description="per full_label (detail-entity, ...): drop captions scoring below (needs clip)"
    )


class GbcParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: BackendParams = Field(default_factory=lambda: TransformersParams(model=TINY_LLAVA_GBC_NAME))
    detector: GbcDetectorParams = Field(default_factory=GbcDetectorParams)
    selection: SelectionParams = Field(default_factory=SelectionParams)
    prompts: dict[str, str] = Field(default_factory=dict, description="query kind -> prompt name or file")
    hints: list[Literal["detections", "text", "tags", "alt_text"]] = Field(
        default_factory=lambda: list(HINT_KINDS), description="the experts' findings in the image query"
    )
    detections_prefix: str = "det"
    ocr_prefix: str = "ocr"
    tags_column: str = "tags"
    alt_text_column: str = "caption"
    max_depth: int = Field(default=2, ge=1, description="levels of entities below the image")
    max_vertices: int = Field(default=40, ge=1)
    max_elements: int = Field(default=10, ge=1, description="top-level elements read from the image query")
    max_relations: int = Field(default=4, ge=1, description="relations asked per vertex")
    merge_overlap: float = Field(default=0.85, gt=0.0, le=1.0)
    crop_margin: float = Field(default=0.1, ge=0.0, description="crops grow by this share of the box")
    max_tokens: int = Field(default=320, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy, so a re-run asks and gets the same")
    image_size: int = Field(default=512, ge=32, description="images are decoded at most this large")
    clip: ClipEmbedParams | None = Field(
        default=None, description="score every node caption against its region with this CLIP (clip_scores)"
    )
    text: GbcTextParams = Field(default_factory=GbcTextParams)
    prefix: str = Field(default="gbc", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _thresholds_need_scores(self) -> GbcParams:
        if self.text.clip_thresholds and self.clip is None:
            raise ValueError("text.clip_thresholds: captions have no CLIP scores to compare; set clip: {model: ...}")
        return self

    @field_validator("prompts")
    @classmethod
    def _prompts_load(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(DEFAULT_PROMPTS))
        if unknown:
            raise ValueError(f"prompts: unknown query kind(s) {unknown}; allowed: {sorted(DEFAULT_PROMPTS)}")
        load_prompts(value)
        return value


@dataclass
class ImageWork:
    """One image's state across the rounds."""

    image: Image.Image
    builder: GraphBuilder
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: str | None = None  # transient: the backend could not answer
    detect: list[tuple[str, list[Phrase]]] = field(default_factory=list)  # (vertex id, phrases) to find
    settle: list[str] = field(default_factory=list)  # vertices whose children are known: compositions, relations


@dataclass(frozen=True)
class Query:
    row: int
    kind: str  # image | entity | composition | relation
    vertex: str
    request: ChatRequest
    context: tuple = ()


def _view_box(builder: GraphBuilder, vertex_id: str, width: int, height: int, margin: float) -> tuple[int, ...]:
    """The pixel box a vertex's queries and detections look at (the image vertex: all of it)."""
    if vertex_id == "":
        return 0, 0, width, height
    return crop_box(to_pixels(builder.nodes[vertex_id].box, width, height), width, height, margin)


def decode_view(data: bytes | None, size: int) -> Image.Image:
    """An image as every query of it sees it: decoded once, at most ``size`` px on its longest side."""
    image = decode_image(data, size)
    image.thumbnail((size, size))
    return image


def _one_per_singular(phrases: list[Phrase], problems: list[str]) -> list[Phrase]:
    """Phrases that name the same thing ("red star" and "red stars") once: the first, ``multiple`` if
    either is (the detector is told the singular, so both would find the same boxes)."""
    kept: dict[str, Phrase] = {}
    for phrase in phrases:
        key = singular(phrase.text)
        if key in kept:
            problems.append(f"phrase {phrase.text!r}: the same as {kept[key].text!r}")
            if phrase.multiple and not kept[key].multiple:
                kept[key] = Phrase(kept[key].text, True)
            continue
        kept[key] = phrase
    return list(kept.values())


@register_step("gbc_caption", params=GbcParams, needs_pixels=True, rows="kept")
class GbcCaptioner:
    """A graph of image, entity, composition and relation nodes with their captions, per image."""

    def __init__(self, params: GbcParams):
        from captioners.detector import DetectParams, YoloDetector

        self.params = params
        self.prompts = load_prompts(params.prompts)
        self.backend = build_backend(params.backend)
        d = params.detector
        detect = {k: v for k, v in d.model_dump().items() if v is not None}
        try:
            self.detector = YoloDetector(DetectParams(**detect, classes_column="phrases", iou=0.7, max_boxes=20))
        except ValueError as exc:  # e.g. closed-set weights: the phrases need an open-vocabulary detector
            raise ValueError(f"detector.weights: {exc}") from exc
        s = params.selection
        self.selection = BoxSelection(**s.model_dump())
        self.kinds = tuple(params.hints)
        self.clip = None
        if params.clip is not None:
            from filters.clip_embed import ClipEmbedder

            self.clip = ClipEmbedder(params.clip)
        versions = "|".join(f"{k}={t.version}" for k, t in sorted(self.prompts.items()))
        self.prompt_version = f"gbc@{hashlib.sha256(versions.encode()).hexdigest()[:12]}"

    # -- rounds --------------------------------------------------------------------------------------

    def _ask(self, works: dict[int, ImageWork], queries: list[Query]) -> list[tuple[Query, Completion]]:
        """One backend call for every query of the round; a transient failure marks its image."""
        queries = [q for q in queries if works[q.row].failure is None]
        if not queries:
            return []
        answers = self.backend.generate([q.request for q in queries])
        out = []
        for q, a in zip(queries, answers, strict=True):
            w = works[q.row]
            w.calls += 1
            w.prompt_tokens += a.prompt_tokens
            w.completion_tokens += a.completion_tokens
            if a.error and a.transient:
                w.failure = f"{q.kind} query: {a.error}"
                continue
            out.append((q, a))
        return out

    def _request(self, image: Image.Image, prompt: str) -> ChatRequest:
        message = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
        return ChatRequest([message], max_tokens=self.params.max_tokens, temperature=self.params.temperature)

    def _image_round(self, works: dict[int, ImageWork], hint_lines: dict[int, list[str]]) -> dict[int, str]:
        template = self.prompts["image"]
        queries = [
            Query(i, "image", "", self._request(w.image, template.render(hint_lines[i]))) for i, w in works.items()
        ]
        failed: dict[int, str] = {}
        for q, a in self._ask(works, queries):
            w = works[q.row]
            if a.error:
                failed[q.row] = f"image query: {a.error}"
                continue
            parsed = parse_image_answer(a.text or "", self.params.max_elements)
            w.builder.problems += [f"image query: {p}" for p in parsed.problems]
            if parsed.detail is None and parsed.short is None:
                failed[q.row] = f"image query: nothing usable in the answer {(a.text or '')[:120]!r}"
                continue
            w.builder.describe("", parsed.detail, "detail")
            w.builder.describe("", parsed.short, "short")
            elements = _one_per_singular(parsed.elements, w.builder.problems)
            if elements:
                w.detect.append(("", elements))
            w.settle.append("")
        return failed

    def _detect_round(self, works: dict[int, ImageWork]) -> list[tuple[int, str, str]]:
        """Find every pending phrase on its vertex's crop; returns the new entities (row, id, text)."""
        jobs = [(i, vertex, phrases) for i, w in works.items() if w.failure is None for vertex, phrases in w.detect]
        for w in works.values():
            w.detect = []
        if not jobs:
            return []
        crops, cuts = [], []
        for i, vertex, _ in jobs:
            w = works[i]
            cut = _view_box(w.builder, vertex, *w.image.size, self.params.crop_margin)
            crops.append(w.image.crop(cut))
            cuts.append(cut)
        # The detector is told each phrase in the singular ("tree" for "trees"), as detectors' class names are.
        names = [[singular(p.text) for p in phrases] for _, _, phrases in jobs]
        found = self.detector.detect(crops, names)
        new: list[tuple[int, str, str]] = []
        for (i, vertex, phrases), asked, cut, (boxes, labels, scores) in zip(jobs, names, cuts, found, strict=True):
            w = works[i]
            width, height = w.image.size
            cw, ch = cut[2] - cut[0], cut[3] - cut[1]
            for phrase, name in zip(phrases, asked, strict=True):
                mine = [k for k, label in enumerate(labels) if label == name]
                px = [(b[0] * cw, b[1] * ch, b[2] * cw, b[3] * ch) for b in boxes[mine].tolist()]
                keep = select_boxes(
                    px, scores[mine].tolist(), (cw, ch), phrase.multiple, vertex != "", rule=self.selection
                )
                if not keep:
                    w.builder.problems.append(f"phrase {phrase.text!r}: no box kept on {vertex or 'the image'!r}")
                    continue
                glob = [
                    normalise(
                        (px[k][0] + cut[0], px[k][1] + cut[1], px[k][2] + cut[0], px[k][3] + cut[1]), width, height
                    )
                    for k in keep
                ]
                conf = [float(scores[mine][k]) for k in keep]
                if len(glob) == 1:
                    made = w.builder.add_entity(vertex, phrase.text, child_id(vertex, phrase.text), glob[0], conf[0])
                    new += [(i, made, name)] if made else []
                else:
                    comp, members = w.builder.add_group(vertex, phrase.text, glob, conf)
                    new += [(i, m, name) for m in members]
                    if comp is not None:
                        w.settle.append(comp)
            if vertex != "":
                w.settle.append(vertex)
        return new

    def _entity_round(self, works: dict[int, ImageWork], new: list[tuple[int, str, str]]) -> None:
        template = self.prompts["entity"]
        queries = []
        for i, vertex, text in new:
            w = works[i]
            cut = _view_box(w.builder, vertex, *w.image.size, self.params.crop_margin)
            queries.append(
                Query(i, "entity", vertex, self._request(w.image.crop(cut), template.render([], entity=text)), (text,))
            )
        for q, a in self._ask(works, queries):
            b = works[q.row].builder
            if a.error:
                b.problems.append(f"entity {q.vertex!r}: {a.error}")
                b.drop(q.vertex)
                continue
            parsed = parse_entity_answer(a.text or "", q.context[0])
            b.problems += [f"entity {q.vertex!r}: {p}" for p in parsed.problems]
            if not parsed.present:
                b.drop(q.vertex)
                continue
            b.describe(q.vertex, parsed.detail, "detail")
            node = b.nodes[q.vertex]
            parts = _one_per_singular(parsed.parts, b.problems)
            if parts and node.depth < self.params.max_depth:
                works[q.row].detect.append((q.vertex, parts))

    def _settle_round(self, works: dict[int, ImageWork]) -> None:
        """Composition and relation queries of the vertices whose children are known."""
        queries = []
        for i, w in works.items():
            pending, w.settle = list(dict.fromkeys(w.settle)), []
            b = w.builder
            width, height = w.image.size
            for vertex in pending:
                node = b.nodes.get(vertex)
                if node is None:
                    continue
                if node.label == "composition":
                    members = [e for e in node.out_edges if e.target in b.nodes]
                    if len(members) < 2:
                        continue
                    names = [e.text for e in members]
                    boxes = [to_pixels(b.nodes[e.target].box, width, height) for e in members]
                    hints = composition_hints(names, boxes)
                    for line in hints:
                        b.describe(vertex, line, "hardcode")
                    view, _ = composition_view(w.image, boxes, self.params.crop_margin)
                    prompt = self.prompts["composition"].render(hints, entity=self._phrase_of(b, vertex))
                    queries.append(Query(i, "composition", vertex, self._request(view, prompt)))
                groups = b.child_groups(vertex)
                if len(groups) >= 2 and node.label != "composition":
                    elements = [
                        (t, to_pixels(b.nodes[c].box, width, height), b.nodes[c].label == "composition")
                        for t, c in groups
                    ]
                    pairs = relation_pairs(elements, self.params.max_relations)
                    prompt = self.prompts["relation"].render(
                        relation_hints(pairs),
                        count=str(self.params.max_relations),
                        elements=", ".join(f"[{t}]" for t, _ in groups),
                    )
                    view = w.image.crop(_view_box(b, vertex, width, height, self.params.crop_margin))
                    queries.append(Query(i, "relation", vertex, self._request(view, prompt), tuple(groups)))
        for q, a in self._ask(works, queries):
            b = works[q.row].builder
            if a.error:
                b.problems.append(f"{q.kind} of {q.vertex!r}: {a.error}")
                continue
            if q.kind == "composition":
                parsed = parse_composition_answer(a.text or "")
                b.problems += [f"composition {q.vertex!r}: {p}" for p in parsed.problems]
                b.describe(q.vertex, parsed.composition, "composition")
                for line in parsed.general:
                    b.describe(q.vertex, line, "short")
            else:
                # A child is named by its phrase or that phrase's singular ("red diamonds" / "red diamond").
                aliases: dict[str, str] = {}
                for text, child in q.context:
                    aliases.setdefault(text, child)
                    aliases.setdefault(singular(text), child)
                parsed = parse_relation_answer(a.text or "", list(aliases), self.params.max_relations)
                b.problems += [f"relations of {q.vertex!r}: {p}" for p in parsed.problems]
                for sentence, named in parsed.relations:
                    by_child = {aliases[t]: t for t in reversed(named)}
                    b.add_relation(q.vertex, sentence, [(t, c) for c, t in by_child.items()])

    @staticmethod
    def _phrase_of(builder: GraphBuilder, vertex: str) -> str:
        """The phrase that named a vertex (its first in-edge's text)."""
        node = builder.nodes[vertex]
        return node.in_edges[0].text if node.in_edges else node.text

    # -- the step ------------------------------------------------------------------------------------

    def __call__(self, batch: pa.Table) -> pa.Table:
        p, n = self.params, batch.num_rows
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        hints = expert_hints(batch, p, self.kinds)
        alt = batch[p.alt_text_column].to_pylist() if p.alt_text_column in batch.column_names else [None] * n
        works: dict[int, ImageWork] = {}
        for i, data in enumerate(batch["image"].to_pylist()):
            try:
                image = decode_view(data, p.image_size)
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                status[i], errors[i] = STATUS_FAILED_DECODE, f"{type(exc).__name__}: {exc}"
                continue
            works[i] = ImageWork(image, GraphBuilder(p.max_vertices, p.merge_overlap))
        hint_lines = {i: hints[i].lines(self.kinds) for i in works}
        unusable = self._image_round(works, hint_lines)
        live = {i: w for i, w in works.items() if i not in unusable}
        for i, w in live.items():
            w.builder.describe("", alt[i], "original")  # the alt-text, beside the model's captions
        for _ in range(p.max_depth):
            new = self._detect_round(live)
            if new:
                self._entity_round(live, new)
            self._settle_round(live)
        if self.clip is not None:
            from captioners.gbc_clip import score_captions

            built = [(w.image, w.builder) for i, w in live.items() if w.failure is None]
            score_captions(self.clip, p.clip.model, built)
        columns = self._columns(batch, works, unusable, alt, status, errors)
        batch = with_status(batch, status, errors)
        for name, values in columns.items():
            batch = batch.append_column(f"{p.prefix}_{name}", values)
        return batch

    def _columns(self, batch, works, unusable, alt, status, errors) -> dict[str, pa.Array]:
        n = batch.num_rows
        uids = batch["uid"].to_pylist() if "uid" in batch.column_names else [str(i) for i in range(n)]
        sizes = (
            list(zip(*(batch[c].to_pylist() for c in ("width", "height")), strict=True))
            if "width" in batch.column_names
            else [None] * n
        )
        out: dict[str, list] = {k: [None] * n for k in ("graph", "text", "vertices", "problems", "calls")}
        tokens: dict[str, list] = {"prompt_tokens": [None] * n, "completion_tokens": [None] * n}
        asked = [False] * n
        for i, w in works.items():
            asked[i] = True
            out["calls"][i] = w.calls
            tokens["prompt_tokens"][i], tokens["completion_tokens"][i] = w.prompt_tokens, w.completion_tokens
            if w.failure is not None:
                status[i], errors[i] = STATUS_CAPTION_UNAVAILABLE, w.failure
                continue
            if i in unusable:
                status[i], errors[i] = STATUS_FAILED_CAPTION, unusable[i]
                out["problems"][i] = w.builder.problems
                continue
            b = w.builder
            root = b.root
            short = next((d.text for d in root.descs if d.label == "short"), None)
            detail = next((d.text for d in root.descs if d.label == "detail"), None)
            graph = b.graph(
                original_caption=alt[i],
                short_caption=short,
                detail_caption=detail,
                img_size=list(sizes[i]) if sizes[i] and None not in sizes[i] else list(w.image.size),
            )
            invalid = validate(graph)
            out["graph"][i] = json.dumps(graph.to_json(), ensure_ascii=False)
            out["vertices"][i] = len(graph.vertices)
            out["problems"][i] = b.problems + [f"invalid graph: {x}" for x in invalid]
            if invalid:
                status[i], errors[i] = STATUS_FAILED_CAPTION, f"invalid graph: {invalid[0]}"
                continue
            t = self.params.text
            clip_model = self.params.clip.model if self.params.clip else None
            out["text"][i] = graph_text(graph, t.format, t.traversal, uids[i], t.clip_thresholds, clip_model)
        columns = {
            "graph": pa.array(out["graph"], pa.string()),
            "text": pa.array(out["text"], pa.string()),
            "vertices": pa.array(out["vertices"], pa.int32()),
            "problems": pa.array(out["problems"], pa.list_(pa.string())),
            "calls": pa.array(out["calls"], pa.int32()),
            "prompt_tokens": pa.array(tokens["prompt_tokens"], pa.int32()),
            "completion_tokens": pa.array(tokens["completion_tokens"], pa.int32()),
            "model": pa.array([self.backend.model_name if a else None for a in asked], pa.string()),
            "prompt_version": pa.array([self.prompt_version if a else None for a in asked], pa.string()),
        }
        return columns
