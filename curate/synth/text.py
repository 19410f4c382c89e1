"""Words on signs: a short common English word on a plate, on a share of scenes (``text_rate``).

The word is drawn in DejaVu Sans Bold, the TrueType font matplotlib ships (matplotlib comes with
ultralytics); nothing is downloaded. A sign is placed where it covers no shape (nor its shadow), so
the shapes' ground truth stays true; a scene with no free place for one gets no sign. Every draw comes
from the sample's own text stream, so a pool with ``text_rate=0`` is byte-identical to one made
before signs existed, and a scene with a sign has exactly the shapes and background it would have
without one.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import ImageDraw, ImageFont

from curate.synth.scene import Box, Rgb, Scene, TextSpec

# Common English words of signs and labels, 3-8 letters.
WORDS: tuple[str, ...] = (
    "open", "closed", "exit", "stop", "sale", "hotel", "taxi", "park", "menu", "books",
    "garden", "water", "music", "bakery", "pizza", "market", "school", "cinema", "museum", "library",
    "station", "welcome", "danger", "push", "pull", "police", "bank", "shop", "fresh", "free",
    "news", "games", "office", "north", "south", "coffee", "bread", "flowers", "toys", "sports",
    "beach", "island", "river", "forest", "city", "home", "kitchen", "studio",
)  # fmt: skip
CASINGS: tuple[tuple[str, float], ...] = (("upper", 0.5), ("title", 0.3), ("lower", 0.2))
FONT_FILE = "DejaVuSans-Bold.ttf"
# Font size as a share of the image's shorter side, and in pixels at least (smaller is not "clear").
FONT_SHARE = (0.075, 0.12)
MIN_FONT_PX = 16
_PLACEMENT_TRIES = 24


@lru_cache(maxsize=1)
def font_path() -> str:
    """DejaVu Sans Bold from matplotlib's bundled fonts."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib comes with ultralytics
        raise RuntimeError(f"text_rate > 0 needs matplotlib's bundled {FONT_FILE} (pip install matplotlib)") from exc
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", FONT_FILE)
    if not os.path.isfile(path):  # pragma: no cover
        raise RuntimeError(f"text_rate > 0 needs {path}, which this matplotlib does not ship")
    return path


@lru_cache(maxsize=64)
def font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(), px)


def _cased(word: str, casing: str) -> str:
    return {"upper": word.upper(), "title": word.title(), "lower": word.lower()}[casing]


def _tone(rng: np.random.Generator, lo: int, hi: int) -> Rgb:
    base = float(rng.uniform(lo, hi))
    return tuple(int(v) for v in np.clip(base + rng.uniform(-6, 6, size=3), 22, 236))  # type: ignore[return-value]


def _intersects(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def sample_text(rng: np.random.Generator, scene: Scene) -> TextSpec | None:
    """A sign with a random word at a free place of the scene, or None if none fits."""
    w, h = scene.canvas_w, scene.canvas_h
    word = WORDS[int(rng.integers(len(WORDS)))]
    names, probs = zip(*CASINGS, strict=True)
    word = _cased(word, names[int(rng.choice(len(names), p=np.asarray(probs) / sum(probs)))])
    px = max(MIN_FONT_PX, round(float(rng.uniform(*FONT_SHARE)) * min(w, h)))
    dark_plate = bool(rng.random() < 0.35)
    plate_rgb, ink_rgb = (
        (_tone(rng, 28, 60), _tone(rng, 215, 236)) if dark_plate else (_tone(rng, 205, 236), _tone(rng, 22, 50))
    )
    fnt = font(px)
    x0, y0, x1, y1 = fnt.getbbox(word, anchor="la")
    pad_x, pad_y = max(4, round(px * 0.45)), max(3, round(px * 0.3))
    plate_w, plate_h = (x1 - x0) + 2 * pad_x, (y1 - y0) + 2 * pad_y
    # Shapes with their shadows and the soft edges render_image blurs around them.
    shadow = max(1.0, 0.03 * min(w, h)) + 4
    keep_out = [
        (b[0] - 4, b[1] - 4, round(b[2] + shadow), round(b[3] + shadow)) for b in (s.bbox() for s in scene.shapes)
    ]
    margin = 2
    if plate_w > w - 2 * margin or plate_h > h - 2 * margin:
        return None
    for _ in range(_PLACEMENT_TRIES):
        px0 = int(rng.integers(margin, w - margin - plate_w + 1))
        py0 = int(rng.integers(margin, h - margin - plate_h + 1))
        plate = (px0, py0, px0 + plate_w, py0 + plate_h)
        if any(_intersects(plate, k) for k in keep_out):
            continue
        origin = (px0 + pad_x - x0, py0 + pad_y - y0)
        ink = (origin[0] + x0, origin[1] + y0, origin[0] + x1, origin[1] + y1)
        return TextSpec(word, px, origin, ink, plate, plate_rgb, ink_rgb, max(1, round(px / 12)))
    return None


def with_text(rng: np.random.Generator, scene: Scene) -> Scene:
    """The scene with a sign added (unchanged when no sign fits)."""
    spec = sample_text(rng, scene)
    if spec is None:
        return scene
    return Scene(**{**scene.__dict__, "text": spec})


def draw_text(draw: ImageDraw.ImageDraw, spec: TextSpec) -> None:
    """The sign: a rounded plate with a border in the ink colour, and the word."""
    radius = max(2, spec.font_px // 5)
    draw.rounded_rectangle(spec.plate, radius=radius, fill=spec.plate_rgb, outline=spec.ink_rgb, width=spec.border)
    draw.text(spec.origin, spec.word, font=font(spec.font_px), fill=spec.ink_rgb, anchor="la")
