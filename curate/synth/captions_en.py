"""English captions of a scene (true captions), and the too-short / empty caption faults."""

from __future__ import annotations

import numpy as np

from curate.synth.scene import Scene, ShapeSpec
from curate.synth.vocab import BACKGROUND_EN

REL_EN = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
NUMBERS_EN = {2: "two", 3: "three", 4: "four"}
SIZE_EN = {"small": "small", "medium": "moderately sized", "large": "large"}


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def noun_phrase(s: ShapeSpec, with_size: bool = True) -> str:
    words = ([SIZE_EN[s.size]] if with_size else []) + [s.color, s.label]
    return f"{article(words[0])} {' '.join(words)}"


def short_name(s: ShapeSpec) -> str:
    return f"the {s.color} {s.label}"


def _bg(scene: Scene, rng: np.random.Generator) -> str:
    return _pick(rng, BACKGROUND_EN[scene.background])


def _position(scene: Scene, s: ShapeSpec) -> str:
    w, h = scene.canvas_w, scene.canvas_h
    col = 0 if s.cx < w / 3 else (2 if s.cx > 2 * w / 3 else 1)
    row = 0 if s.cy < h / 3 else (2 if s.cy > 2 * h / 3 else 1)
    if (row, col) == (1, 1):
        return "in the center"
    vert = ("top", "", "bottom")[row]
    horiz = ("left", "", "right")[col]
    if vert and horiz:
        return f"in the {vert} {horiz} corner"
    if vert:
        return f"near the {vert}"
    return f"on the {horiz} side"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_en(scene: Scene, rng: np.random.Generator) -> str:
    """A natural English description of the scene with some template variety."""
    shapes = scene.shapes
    sized = rng.random() < 0.85
    nps = [noun_phrase(s, sized) for s in shapes]
    bg = _bg(scene, rng)
    if len(shapes) == 1:
        s = shapes[0]
        pos = _position(scene, s)
        text = _pick(
            rng,
            (
                f"{nps[0]} on {bg}",
                f"this is a photo of {nps[0]} on {bg}",
                f"{nps[0]} in front of {bg}",
                f"close-up photo of {nps[0]} against {bg}",
                f"{nps[0]} {pos}, on {bg}",
                f"a picture showing {nps[0]} {pos} of the frame, on {bg}",
                f"an image of {nps[0]} lying on {bg}",
            ),
        )
    else:
        i, rel, j = scene.relations[int(rng.integers(len(scene.relations)))]
        r = REL_EN[rel]
        others = [nps[k] for k in range(len(shapes)) if k not in (i, j)]
        clause = f"{short_name(shapes[i])} is {r} {short_name(shapes[j])}"
        if len(shapes) == 2:
            text = _pick(
                rng,
                (
                    f"{nps[i]} is {r} {nps[j]} on {bg}",
                    f"this is a photo of {nps[i]} {r} {nps[j]}, on {bg}",
                    f"{nps[0]} and {nps[1]} are shown on {bg}; {clause}",
                    f"there are two shapes on {bg}: {nps[0]} and {nps[1]}",
                    f"there is {nps[i]} {r} {nps[j]} on {bg}",
                ),
            )
        else:
            count = NUMBERS_EN[len(shapes)]
            are = "is" if len(others) == 1 else "are"
            text = _pick(
                rng,
                (
                    f"there are {count} shapes in this picture: {_join(nps)}, all on {bg}",
                    f"{nps[i]} is {r} {nps[j]}, and {_join(others)} {are} nearby, on {bg}",
                    f"this is a photo of {_join(nps)} on {bg}",
                    f"this picture shows {count} shapes on {bg}: {_join(nps)}; {clause}",
                    f"there is an arrangement of {count} shapes on {bg}: {_join(nps)}",
                ),
            )
    style = rng.random()
    if style < 0.35:
        text = text[0].upper() + text[1:] + "."
    elif style < 0.45:
        text = text[0].upper() + text[1:]
    return text


_GENERIC_SHORT = ("shapes", "image", "photo", "geometry", "untitled", "IMG_2041", "thumbnail", "pic")


def caption_too_short(scene: Scene, rng: np.random.Generator) -> str:
    """One or two words, e.g. "shapes" or "red circle"."""
    s = scene.shapes[scene.primary()]
    u = rng.random()
    if u < 0.45:
        return f"{s.color} {s.label}"
    if u < 0.75:
        return s.label
    return _pick(rng, _GENERIC_SHORT)


def caption_empty(rng: np.random.Generator) -> str:
    return _pick(rng, ("", "", " ", "  ", "\n", "\t", " \n "))


_VAGUE = (
    "colorful abstract art",
    "a nice picture",
    "geometric pattern wallpaper",
    "my new design, what do you think",
    "shapes",
    "modern art print for the living room",
)


def caption_largest_only(scene: Scene, rng: np.random.Generator) -> str:
    """Web alt-text that names only the most prominent shape."""
    s = scene.shapes[scene.primary()]
    return _pick(rng, (f"{noun_phrase(s)}", f"{noun_phrase(s)} on {_bg(scene, rng)}", f"photo of {noun_phrase(s)}"))


def caption_vague(rng: np.random.Generator) -> str:
    """Web alt-text that names no shape at all."""
    return _pick(rng, _VAGUE)


def caption_filename(rng: np.random.Generator) -> str:
    """A camera or upload file name as alt-text."""
    n = int(rng.integers(1000, 9999))
    return _pick(rng, (f"IMG_{n}.JPG", f"DSC0{n}.jpg", f"image ({n % 20}).png", f"{n}_final_v2.jpg"))
