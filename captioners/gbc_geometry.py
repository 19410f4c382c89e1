"""Box geometry of graph-based captioning: the reference's box selection, crops, the direction words
of relations, the spanning-tree arrangement hints of composition queries, and numbered boxes drawn on
a crop.

Boxes are ``(left, top, right, bottom)`` tuples. Selection and crops work in pixels of the image being
queried; graph boxes are normalised to the whole image. The same functions write the tiny GBC model's
training answers (``curate.synth.gbc_truth``) and drive the captioner (``captioners.gbc``), so the
model sees at inference the hints it learnt on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

BoxT = tuple[float, float, float, float]


def area(box: BoxT) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: BoxT, b: BoxT) -> float:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: BoxT, b: BoxT) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def union_box(boxes: Sequence[BoxT]) -> BoxT:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def center(box: BoxT) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def contains(outer: BoxT, inner: BoxT, tolerance: float = 0.0) -> bool:
    return (
        inner[0] >= outer[0] - tolerance
        and inner[1] >= outer[1] - tolerance
        and inner[2] <= outer[2] + tolerance
        and inner[3] <= outer[3] + tolerance
    )


def overlaps_both_ways(a: BoxT, b: BoxT, threshold: float) -> bool:
    """The merge test: the intersection covers at least ``threshold`` of each box."""
    inter = intersection(a, b)
    return area(a) > 0 and area(b) > 0 and inter / area(a) >= threshold and inter / area(b) >= threshold


@dataclass(frozen=True)
class BoxSelection:
    """The reference's filters on a phrase's detections, in the order it applies them."""

    min_score: float = 0.35
    min_area_px: float = 5000.0  # absolute, in pixels of the image the crop was cut from
    max_relative_area: float = 0.8  # of the crop, inside an entity (a part is not the whole)
    nms_single: float = 0.05
    nms_multiple: float = 0.2
    single_score_margin: float = 0.05  # for "single": boxes within this of the best score
    max_boxes: int = 6


def _nms(boxes: list[BoxT], scores: list[float], threshold: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def select_boxes(
    boxes: Sequence[BoxT],
    scores: Sequence[float],
    crop_size: tuple[float, float],
    multiple: bool,
    inside_entity: bool,
    scale: float = 1.0,
    rule: BoxSelection = BoxSelection(),
) -> list[int]:
    """Indices of the detections kept for one phrase, best first. ``boxes`` are in the crop's pixels;
    ``scale`` converts a crop pixel to original-image pixels (crops are resized for the detector)."""
    crop_area = crop_size[0] * crop_size[1]
    keep = [
        i
        for i, (b, s) in enumerate(zip(boxes, scores, strict=True))
        if s > rule.min_score
        and area(b) * scale * scale > rule.min_area_px
        and not (inside_entity and crop_area > 0 and area(b) / crop_area >= rule.max_relative_area)
    ]
    if not keep:
        return []
    sub_boxes = [tuple(boxes[i]) for i in keep]
    sub_scores = [scores[i] for i in keep]
    kept = [keep[k] for k in _nms(sub_boxes, sub_scores, rule.nms_multiple if multiple else rule.nms_single)]
    # A box that contains another kept box is a group of them, not one object.
    kept = [i for i in kept if not any(j != i and contains(boxes[i], boxes[j]) for j in kept)]
    if not multiple and kept:
        best = max(scores[i] for i in kept)
        kept = [i for i in kept if scores[i] >= best - rule.single_score_margin]
    return kept[: rule.max_boxes]


def normalise(box: BoxT, width: int, height: int) -> BoxT:
    return (
        min(1.0, max(0.0, box[0] / width)),
        min(1.0, max(0.0, box[1] / height)),
        min(1.0, max(0.0, box[2] / width)),
        min(1.0, max(0.0, box[3] / height)),
    )


def to_pixels(box: BoxT, width: int, height: int) -> BoxT:
    return box[0] * width, box[1] * height, box[2] * width, box[3] * height


def crop_box(box: BoxT, width: int, height: int, margin: float = 0.1) -> tuple[int, int, int, int]:
    """A pixel box around ``box`` (pixels), grown by ``margin`` of its size, clipped to the image."""
    dx, dy = (box[2] - box[0]) * margin, (box[3] - box[1]) * margin
    left, top = max(0, math.floor(box[0] - dx)), max(0, math.floor(box[1] - dy))
    right, bottom = min(width, math.ceil(box[2] + dx)), min(height, math.ceil(box[3] + dy))
    return left, top, max(right, left + 1), max(bottom, top + 1)


# -- words for where boxes are ------------------------------------------------------------------------

_SECTORS = (
    "to the right of",
    "below and to the right of",
    "below",
    "below and to the left of",
    "to the left of",
    "above and to the left of",
    "above",
    "above and to the right of",
)


def direction(subject: BoxT, anchor: BoxT) -> str:
    """Where ``subject`` is seen from ``anchor``, in one of 8 sectors of 45 degrees (image y down)."""
    (sx, sy), (ax, ay) = center(subject), center(anchor)
    angle = math.degrees(math.atan2(sy - ay, sx - ax)) % 360
    return _SECTORS[int(((angle + 22.5) % 360) // 45)]


def place_in(box: BoxT, frame: BoxT) -> str | None:
    """Where ``box`` sits in ``frame`` (thirds of each side), None in the middle."""
    cx, cy = center(box)
    fx = (cx - frame[0]) / max(1e-9, frame[2] - frame[0])
    fy = (cy - frame[1]) / max(1e-9, frame[3] - frame[1])
    col = 0 if fx < 1 / 3 else (2 if fx > 2 / 3 else 1)
    row = 0 if fy < 1 / 3 else (2 if fy > 2 / 3 else 1)
    vertical, horizontal = ("top", "", "bottom")[row], ("left", "", "right")[col]
    if vertical and horizontal:
        return f"in the {vertical} {horizontal} corner"
    if horizontal:
        return f"on the {horizontal} side"
    if vertical:
        return f"at the {vertical}"
    return None


def spanning_tree(boxes: Sequence[BoxT]) -> list[tuple[int, int]]:
    """(parent, child) edges of the Euclidean minimum spanning tree of the box centres, walked depth
    first from the leftmost box (ties: the topmost), so the hints read in a stable order."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    n = len(boxes)
    if n < 2:
        return []
    centres = np.array([center(b) for b in boxes])
    # A tiny offset keeps coincident centres connected (a zero weight is "no edge" to scipy).
    tree = minimum_spanning_tree(cdist(centres, centres) + 1e-9).toarray()
    tree = np.maximum(tree, tree.T)
    root = min(range(n), key=lambda i: (centres[i][0], centres[i][1]))
    edges, seen = [], {root}

    def walk(i: int) -> None:
        for j in range(n):
            if tree[i, j] > 0 and j not in seen:
                seen.add(j)
                edges.append((i, j))
                walk(j)

    walk(root)
    return edges


def composition_hints(names: Sequence[str], boxes: Sequence[BoxT]) -> list[str]:
    """The arrangement of several boxes of one phrase, as the composition query's hints and the graph's
    ``hardcode`` descriptions: where each box is in the group, then one line per spanning-tree edge."""
    frame = union_box(boxes)
    lines = []
    for name, box in zip(names, boxes, strict=True):
        where = place_in(box, frame)
        if where:
            lines.append(f"{name} is {where} of the composition")
    for parent, child in spanning_tree(boxes):
        lines.append(f"{names[child]} is {direction(boxes[child], boxes[parent])} {names[parent]}.")
    return lines


def relation_pairs(elements: list[tuple[str, BoxT, bool]], limit: int) -> list[tuple[str, str, str, bool]]:
    """(subject, direction, object, subject is several) of each pair of elements ``(text, box,
    multiple)`` in order (first with second, first with third, ...), at most ``limit``."""
    pairs = []
    for i in range(len(elements)):
        for j in range(i + 1, len(elements)):
            (a, box_a, many), (b, box_b, _) = elements[i], elements[j]
            pairs.append((a, direction(box_a, box_b), b, many))
    return pairs[:limit]


def relation_hints(pairs: list[tuple[str, str, str, bool]]) -> list[str]:
    """The relation query's hints: where each pair is, from the elements' boxes."""
    return [f"{a} {'are' if many else 'is'} {where} {b}" for a, where, b, many in pairs]


def draw_numbered_boxes(image: Image.Image, boxes: Sequence[BoxT]) -> Image.Image:
    """A copy of ``image`` with each box outlined and numbered from 1 (the composition query's view)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 100))
    palette = ((255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200))
    for k, box in enumerate(boxes):
        colour = palette[k % len(palette)]
        draw.rectangle([round(v) for v in box], outline=colour, width=width)
        draw.text((box[0] + width + 1, box[1] + width + 1), str(k + 1), fill=colour)
    return out


# -- what each query shows the model -------------------------------------------------------------------


def entity_view(image: Image.Image, box: BoxT, margin: float = 0.1) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The crop an entity query looks at (``box`` in the image's pixels) and where it was cut."""
    cut = crop_box(box, *image.size, margin=margin)
    return image.crop(cut), cut


def composition_view(
    image: Image.Image, boxes: Sequence[BoxT], margin: float = 0.1
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The crop around a group's boxes with each box numbered from 1, and where it was cut."""
    cut = crop_box(union_box(boxes), *image.size, margin=margin)
    shifted = [(b[0] - cut[0], b[1] - cut[1], b[2] - cut[0], b[3] - cut[1]) for b in boxes]
    return draw_numbered_boxes(image.crop(cut), shifted), cut
