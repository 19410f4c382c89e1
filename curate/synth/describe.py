"""Dense descriptions of a synthetic scene from its ground truth, and what a caption says about it.

``dense_description`` is the target the tiny MLLM learns (every shape with its size, colour, kind and
place, the background, the words on a sign); ``named_shapes`` reads back which colour + kind phrases
a caption names, so caption quality is measured against the ground truth as recall and precision.
Both work on the sample json an img2dataset-style shard carries (``width``, ``height``, ``gt``).
"""

from __future__ import annotations

import re

from curate.synth.vocab import COLORS, SHAPES

_PHRASE = re.compile(
    r"\b(" + "|".join(COLORS) + r")\s+(" + "|".join(SHAPES) + r")(?:e?s)?\b",
    re.IGNORECASE,
)
SIZE_WORDS = {"small": "small", "medium": "medium", "large": "large"}


def _place(box: list[float], width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    col = 0 if cx < 1 / 3 else (2 if cx > 2 / 3 else 1)
    row = 0 if cy < 1 / 3 else (2 if cy > 2 / 3 else 1)
    if (row, col) == (1, 1):
        return "in the center"
    vertical, horizontal = ("top", "", "bottom")[row], ("left", "", "right")[col]
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    return f"at the {vertical or horizontal}"


def _ordered(meta: dict) -> list[dict]:
    """Shapes largest first (area of the box), then left to right: the order descriptions use."""
    return sorted(
        meta["gt"]["shapes"],
        key=lambda s: (-(s["bbox"][2] - s["bbox"][0]) * (s["bbox"][3] - s["bbox"][1]), s["bbox"][0]),
    )


def dense_description(meta: dict) -> str:
    """Every shape with size, colour, kind and place; the background; the sign's word, if any."""
    w, h = meta["width"], meta["height"]
    sentences = [
        f"A {SIZE_WORDS[s['size']]} {s['color']} {s['label']} {_place(s['bbox'], w, h)}." for s in _ordered(meta)
    ]
    sentences.append(f"The background is {meta['gt']['background']}.")
    text = meta["gt"].get("text")
    if text:
        sentences.append(f'A sign reads "{text["word"]}".')
    return " ".join(sentences)


def short_caption(meta: dict) -> str:
    """The shapes' colours and kinds in one sentence."""
    names = [f"{s['color']} {s['label']}" for s in _ordered(meta)]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"A {listed}."


def named_shapes(text: str | None) -> set[str]:
    """The colour + kind phrases a text names ("red circle"), plurals folded."""
    return {f"{c.lower()} {k.lower()}" for c, k in _PHRASE.findall(text or "")}


def true_shapes(meta: dict) -> set[str]:
    return {f"{s['color']} {s['label']}" for s in meta["gt"]["shapes"]}
