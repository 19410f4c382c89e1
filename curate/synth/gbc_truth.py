"""Graph-based captions of a synthetic scene from its ground truth: the answers a perfect MLLM gives to
the four GBC queries (what the tiny GBC model learns, ``scripts/train_tiny_llava_gbc.py``), and the
scores of a built graph against the truth (what ``tests/test_gbc_caption.py`` and the model card
report).

Elements are colour + kind phrases ("red circle"); shapes of one phrase form a ``multiple`` group
("blue squares") whose boxes a composition describes. Work on the sample json an img2dataset-style
shard carries (``width``, ``height``, ``gt``); boxes are stored-image pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from captioners.gbc_geometry import BoxT, iou, union_box
from captioners.gbc_graph import singular
from curate.synth.describe import _ordered, dense_description

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
ABSENT_ANSWER = "Object Present: No"


@dataclass(frozen=True)
class Group:
    phrase: str  # singular: "blue square"
    shapes: tuple[dict, ...]  # ground-truth shapes, largest first

    @property
    def multiple(self) -> bool:
        return len(self.shapes) > 1

    @property
    def text(self) -> str:
        """How the image caption names it: the plural for a group."""
        return f"{self.phrase}s" if self.multiple else self.phrase

    @property
    def boxes(self) -> list[BoxT]:
        return [tuple(s["bbox"]) for s in self.shapes]

    @property
    def box(self) -> BoxT:
        return union_box(self.boxes)


def phrase_of(shape: dict) -> str:
    return f"{shape['color']} {shape['label']}"


def groups(meta: dict) -> list[Group]:
    """The scene's elements in the order descriptions name shapes (largest first)."""
    by_phrase: dict[str, list[dict]] = {}
    for shape in _ordered(meta):
        by_phrase.setdefault(phrase_of(shape), []).append(shape)
    return [Group(p, tuple(s)) for p, s in by_phrase.items()]


def article(phrase: str, before: str | None = None) -> str:
    """``an orange star``; ``before`` is written after the article instead of the phrase itself."""
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase if before is None else before}"


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def image_answer(meta: dict) -> str:
    elements = groups(meta)
    marks = [f"[{g.text}][{'multiple' if g.multiple else 'single'}]" for g in elements]
    counted = [
        f"{COUNT_WORDS.get(len(g.shapes), str(len(g.shapes)))} {m}" if g.multiple else article(g.text, m)
        for g, m in zip(elements, marks, strict=True)
    ]
    concise = f"{_listed(counted)} on a {meta['gt']['background']} background."
    return "\n".join(
        [
            f"Detailed Caption: {dense_description(meta)}",
            "Top-Level Element Identification:",
            *(f"- {m}" for m in marks),
            f"Concise Formatted Caption: {concise[0].upper()}{concise[1:]}",
        ]
    )


def entity_answer(meta: dict, shape: dict) -> str:
    return "\n".join(
        [
            "Object Present: Yes",
            f"Detailed Caption: {article(phrase_of(shape)).capitalize()} on a {meta['gt']['background']} background.",
            "Prominent Features: No",
        ]
    )


def composition_answer(group: Group) -> str:
    sizes = [s["size"] for s in group.shapes]
    n = len(sizes)
    count = COUNT_WORDS.get(n, str(n)).capitalize()
    if len(set(sizes)) == 1:
        how = f"all {sizes[0]}" if n > 2 else f"both {sizes[0]}"
    else:
        how = _listed(
            [f"{COUNT_WORDS.get(sizes.count(size), sizes.count(size))} {size}" for size in dict.fromkeys(sizes)]
        )
    return "\n".join(
        [f"Composition: {count} {group.text}, {how}.", "General descriptions:", f"- Each is {article(group.phrase)}."]
    )


def relation_answer(pairs: list[tuple[str, str, str, bool]]) -> str:
    """The pairs as bullet sentences with the elements bracketed (what the model learns to write)."""
    return "\n".join(f"- The [{a}] {'are' if many else 'is'} {where} the [{b}]." for a, where, b, many in pairs)


# -- scores of built graphs against the truth ----------------------------------------------------------

_DIRECTION_PARTS = {
    "to the left of": ("left of",),
    "to the right of": ("right of",),
    "above": ("above",),
    "below": ("below",),
    "above and to the left of": ("above", "left of"),
    "above and to the right of": ("above", "right of"),
    "below and to the left of": ("below", "left of"),
    "below and to the right of": ("below", "right of"),
}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_RELATION = re.compile(
    r"the (.+?) (?:is|are) (" + "|".join(sorted(_DIRECTION_PARTS, key=len, reverse=True)) + r") the (.+?)\.?$"
)


def read_relation(sentence: str) -> tuple[str, tuple[str, ...], str] | None:
    """(subject phrase, relation parts, object phrase) of "The red circle is to the left of the blue
    squares.", phrases singular; None if the sentence is not of that form."""
    match = _RELATION.search(sentence.strip().lower())
    if not match:
        return None
    return singular(match.group(1)), _DIRECTION_PARTS[match.group(2)], singular(match.group(3))


def _box(v: dict, width: int, height: int) -> BoxT:
    b = v["bbox"]
    return b["left"] * width, b["top"] * height, b["right"] * width, b["bottom"] * height


def _texts(v: dict) -> str:
    return " ".join([d["text"] for d in v["descs"]] + [e["text"] for e in v["in_edges"]]).lower()


def score_graph(graph: dict, meta: dict) -> dict[str, int]:
    """Counts for one graph (a ``Graph.to_json()`` record) against its scene:

    - entities: an entity vertex matches a true shape when their boxes overlap at IoU >= 0.5 and the
      vertex's texts (captions, and the phrases naming it) contain the shape's colour + kind;
    - relations: a relation caption "The A is <direction> the B." is correct when some shape of A and
      some shape of B have a true relation (along the axis of larger separation) that the direction
      includes; the truth is every pair of elements;
    - compositions: a composition vertex is correct when a true group of that phrase exists with as
      many shapes as the vertex has children; the truth is the scene's groups of several shapes.
    """
    w, h = meta["width"], meta["height"]
    shapes = meta["gt"]["shapes"]
    vertices = graph["vertices"]
    out = dict.fromkeys(
        (
            "entities",
            "entities_correct",
            "shapes",
            "shapes_found",
            "relations",
            "relations_correct",
            "pairs",
            "pairs_found",
            "compositions",
            "compositions_correct",
            "groups",
            "groups_found",
        ),
        0,
    )
    out["shapes"] = len(shapes)
    found_shapes: set[int] = set()
    for v in (v for v in vertices if v["label"] == "entity"):
        out["entities"] += 1
        box, texts = _box(v, w, h), _texts(v)
        hits = [i for i, s in enumerate(shapes) if iou(box, tuple(s["bbox"])) >= 0.5 and phrase_of(s) in texts]
        out["entities_correct"] += bool(hits)
        found_shapes.update(hits)
    out["shapes_found"] = len(found_shapes)

    truth: dict[tuple[str, str], set[str]] = {}
    for r in meta["gt"]["relations"]:
        a, b = phrase_of(shapes[r["subject"]]), phrase_of(shapes[r["object"]])
        if a != b:
            truth.setdefault((a, b), set()).add(r["relation"])
            truth.setdefault((b, a), set()).add(_INVERSE[r["relation"]])
    out["pairs"] = len({frozenset(k) for k in truth})
    found_pairs: set[frozenset] = set()
    for v in (v for v in vertices if v["label"] == "relation"):
        for d in v["descs"]:
            out["relations"] += 1
            read = read_relation(d["text"])
            if read is None:
                continue
            subject, parts, target = read
            if truth.get((subject, target), set()) & set(parts):
                out["relations_correct"] += 1
                found_pairs.add(frozenset((subject, target)))
    out["pairs_found"] = len(found_pairs)

    true_groups = {g.phrase: len(g.shapes) for g in groups(meta) if g.multiple}
    out["groups"] = len(true_groups)
    found_groups: set[str] = set()
    for v in (v for v in vertices if v["label"] == "composition"):
        out["compositions"] += 1
        phrase = singular(v["vertex_id"].rsplit("_", 1)[-1]).lower()
        if true_groups.get(phrase) == len(v["out_edges"]):
            out["compositions_correct"] += 1
            found_groups.add(phrase)
    out["groups_found"] = len(found_groups)
    return out


def summarise(counts: list[dict[str, int]]) -> dict[str, float | int]:
    """Precision and recall of entities, relations and compositions over many graphs."""
    total = {k: sum(c[k] for c in counts) for k in counts[0]} if counts else {}

    def ratio(a: str, b: str) -> float | None:
        return total[a] / total[b] if total.get(b) else None

    return {
        **total,
        "entity_precision": ratio("entities_correct", "entities"),
        "entity_recall": ratio("shapes_found", "shapes"),
        "relation_precision": ratio("relations_correct", "relations"),
        "relation_recall": ratio("pairs_found", "pairs"),
        "composition_precision": ratio("compositions_correct", "compositions"),
        "composition_recall": ratio("groups_found", "groups"),
    }
