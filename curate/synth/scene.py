"""Scene model of the shapes world and its random sampling.

Coordinates are pixels of the *stored* image (what is in the tar). As with DataComp's download
(img2dataset ``resize_mode="keep_ratio_largest"``, ``image_size=512``, ``resize_only_if_bigger``),
a scene has an "original" size (what the web server would have served) and a stored size whose
longest side is at most 512; only the stored image is ever rendered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from curate.synth.vocab import BACKGROUNDS, COLORS, SHAPES, SIZES

IMAGE_SIZE = 512  # DataComp's img2dataset image_size
Rgb = tuple[int, int, int]
Box = tuple[int, int, int, int]
# Every drawn colour stays in this range so that lighting and sensor noise never clip or wrap.
COLOR_MIN, COLOR_MAX = 22, 236

_POLY_SIDES = {"triangle": 3, "square": 4, "hexagon": 6, "star": 5}


def stored_size(orig_w: int, orig_h: int, image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """img2dataset keep_ratio_largest + resize_only_if_bigger (albumentations LongestMaxSize)."""
    longest = max(orig_w, orig_h)
    if longest <= image_size:
        return orig_w, orig_h
    scale = image_size / longest
    return max(1, round(orig_w * scale)), max(1, round(orig_h * scale))


@dataclass(frozen=True)
class ShapeSpec:
    label: str
    color: str
    size: str
    cx: float
    cy: float
    extent: float  # nominal diameter in pixels
    aspect: float  # width / height of the unrotated shape
    rotation: float  # degrees, polygons only
    rgb: Rgb

    def half_extents(self) -> tuple[float, float]:
        r = self.extent / 2
        if self.aspect >= 1:
            return r, r / self.aspect
        return r * self.aspect, r

    def polygon(self) -> list[tuple[float, float]] | None:
        """Vertices for polygonal shapes, None for circle and ellipse."""
        rx, ry = self.half_extents()
        if self.label in ("circle", "ellipse"):
            return None
        if self.label in ("rectangle", "diamond"):
            pts = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
            if self.label == "diamond":
                pts = [(0.0, -ry), (rx, 0.0), (0.0, ry), (-rx, 0.0)]
        else:
            n = _POLY_SIDES[self.label]
            start = -math.pi / 2 if self.label != "square" else -math.pi / 4
            radii = [rx] * n
            if self.label == "square":
                radii = [rx * math.sqrt(2)] * n
            if self.label == "star":
                n, radii = 10, [rx if k % 2 == 0 else rx * 0.45 for k in range(10)]
            pts = [
                (radii[k] * math.cos(start + 2 * math.pi * k / n), radii[k] * math.sin(start + 2 * math.pi * k / n))
                for k in range(n)
            ]
        t = math.radians(self.rotation)
        c, s = math.cos(t), math.sin(t)
        return [(self.cx + x * c - y * s, self.cy + x * s + y * c) for x, y in pts]

    def bbox(self) -> Box:
        pts = self.polygon()
        if pts is None:
            rx, ry = self.half_extents()
            x0, y0, x1, y1 = self.cx - rx, self.cy - ry, self.cx + rx, self.cy + ry
        else:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


@dataclass(frozen=True)
class TextSpec:
    """A short word on a sign (a plate with a border), in canvas pixels; see ``curate.synth.text``."""

    word: str  # exactly as drawn (casing included)
    font_px: int
    origin: tuple[int, int]  # where the word is drawn (PIL anchor "la": left, ascender)
    ink_box: Box  # the drawn word's bounding box
    plate: Box  # the sign behind it
    plate_rgb: Rgb
    ink_rgb: Rgb
    border: int  # border width in pixels, in the ink colour


@dataclass(frozen=True)
class Scene:
    canvas_w: int  # rendered size before any near-duplicate crop
    canvas_h: int
    orig_w: int  # "original" (pre-resize) size of the canvas
    orig_h: int
    background: str
    bg_colors: tuple[Rgb, Rgb]
    bg_period: int
    bg_orient: int
    shapes: tuple[ShapeSpec, ...]
    render_seed: int
    quality: int
    crop: Box | None = None  # near-duplicate perturbation, in canvas pixels
    brightness: float = 1.0
    relations: tuple[tuple[int, str, int], ...] = field(default=())
    text: TextSpec | None = None  # a word on a sign (make_pool's text_rate), drawn over the background

    @property
    def crop_size(self) -> tuple[int, int]:
        if self.crop is None:
            return self.canvas_w, self.canvas_h
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    @property
    def original_size(self) -> tuple[int, int]:
        """Size the web server would have served (before img2dataset's resize)."""
        if self.crop is None:
            return self.orig_w, self.orig_h
        w, h = self.crop_size
        return max(1, round(w * self.orig_w / self.canvas_w)), max(1, round(h * self.orig_h / self.canvas_h))

    @property
    def size(self) -> tuple[int, int]:
        """Stored size: what img2dataset's keep_ratio_largest resize makes of the original."""
        if self.crop is None:
            return self.canvas_w, self.canvas_h
        return stored_size(*self.original_size)

    def primary(self) -> int:
        """Index of the largest shape (the scene label)."""
        return max(range(len(self.shapes)), key=lambda i: (self.shapes[i].extent, -i))

    def to_stored(self, box: Box) -> Box:
        """A canvas-pixel box in stored-image pixels (after any crop and resize), clipped to the image."""
        ox, oy = (self.crop[0], self.crop[1]) if self.crop else (0, 0)
        (cw, ch), (w, h) = self.crop_size, self.size
        fx, fy = w / cw, h / ch
        x0, y0, x1, y1 = box
        return (
            max(0, math.floor((x0 - ox) * fx)),
            max(0, math.floor((y0 - oy) * fy)),
            min(w, math.ceil((x1 - ox) * fx)),
            min(h, math.ceil((y1 - oy) * fy)),
        )

    def shape_boxes(self) -> list[Box]:
        """Shape bboxes in stored-image pixels, clipped to the image."""
        return [self.to_stored(s.bbox()) for s in self.shapes]

    def text_box(self) -> Box | None:
        """The word's box in stored-image pixels (None without text)."""
        return None if self.text is None else self.to_stored(self.text.ink_box)


def compute_relations(shapes: tuple[ShapeSpec, ...]) -> tuple[tuple[int, str, int], ...]:
    """One spatial relation per ordered pair i < j, along the axis of larger separation."""
    rels = []
    for i in range(len(shapes)):
        for j in range(i + 1, len(shapes)):
            dx, dy = shapes[j].cx - shapes[i].cx, shapes[j].cy - shapes[i].cy
            if abs(dx) >= abs(dy):
                rels.append((i, "left of" if dx > 0 else "right of", j))
            else:
                rels.append((i, "above" if dy > 0 else "below", j))
    return tuple(rels)


_ASPECTS = (1.0, 1.0, 1.25, 1.333, 1.5, 1.6, 1.778, 2.0)


def sample_original_size(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    """Original (pre-download-resize) size: normal, tiny (min side < 200) or extreme aspect."""
    if kind == "tiny":
        short = int(rng.integers(48, 161))
        aspect = float(rng.uniform(1.0, 1.8))
    elif kind == "extreme":
        short = int(rng.integers(200, 401))
        aspect = float(rng.uniform(3.55, 5.95))
    else:
        short = int(rng.integers(224, 513))
        aspect = min(2.0, max(1.0, _ASPECTS[int(rng.integers(len(_ASPECTS)))] + float(rng.uniform(-0.03, 0.03))))
    long = round(short * aspect)
    return (long, short) if rng.random() < 0.65 else (short, long)


def _muted(rng: np.random.Generator) -> Rgb:
    base = rng.uniform(95, 205)
    tint = rng.uniform(-28, 28, size=3)
    return tuple(int(v) for v in np.clip(base + tint, COLOR_MIN, COLOR_MAX))  # type: ignore[return-value]


def _overlap(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(1, smaller)


def _sample_shape(rng: np.random.Generator, w: int, h: int, size: str) -> ShapeSpec:
    label = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    lo, hi = SIZES[size]
    extent = float(rng.uniform(lo, hi)) * min(w, h)
    aspect, rotation = 1.0, 0.0
    if label in ("rectangle", "ellipse"):
        aspect = float(rng.uniform(1.6, 2.3))
        if rng.random() < 0.4:
            aspect = 1 / aspect
    elif label == "diamond":
        aspect = float(rng.uniform(0.6, 0.8))
    if label in ("square", "triangle", "star", "hexagon", "rectangle"):
        rotation = float(rng.uniform(-15, 15))
    rx, ry = extent / 2, extent / 2
    margin_x, margin_y = rx * 1.05 + 1, ry * 1.05 + 1
    cx = float(rng.uniform(margin_x, max(margin_x + 1, w - margin_x)))
    cy = float(rng.uniform(margin_y, max(margin_y + 1, h - margin_y)))
    ref = np.array(COLORS[color], dtype=np.float64)
    rgb = tuple(int(v) for v in np.clip(ref + rng.uniform(-12, 12, size=3), COLOR_MIN, COLOR_MAX))
    return ShapeSpec(label, color, size, cx, cy, extent, aspect, rotation, rgb)  # type: ignore[arg-type]


def sample_scene(rng: np.random.Generator, orig_w: int, orig_h: int) -> Scene:
    """A random scene of 1-4 non-overlapping shapes on a textured background."""
    w, h = stored_size(orig_w, orig_h)
    n = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.22, 0.13]))
    sizes = sorted(
        (str(rng.choice(list(SIZES), p=[0.4, 0.35, 0.25])) for _ in range(n)),
        key=lambda s: -SIZES[s][0],
    )
    placed: list[ShapeSpec] = []
    for size in sizes:
        for _ in range(12):
            cand = _sample_shape(rng, w, h, size)
            if all(_overlap(cand.bbox(), p.bbox()) < 0.05 for p in placed):
                placed.append(cand)
                break
    order = rng.permutation(len(placed))
    shapes = tuple(placed[int(k)] for k in order)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c1 = _muted(rng)
    c2 = _muted(rng)
    period = int(rng.integers(8, 40))
    return Scene(
        canvas_w=w,
        canvas_h=h,
        orig_w=orig_w,
        orig_h=orig_h,
        background=background,
        bg_colors=(c1, c2),
        bg_period=period,
        bg_orient=int(rng.integers(4)),
        shapes=shapes,
        render_seed=int(rng.integers(2**31)),
        quality=int(rng.integers(82, 96)),
        relations=compute_relations(shapes),
    )


def with_repeats(rng: np.random.Generator, scene: Scene, rate: float) -> Scene:
    """The scene with each shape after the first made, at ``rate``, another of the first shape's colour
    and kind (its place and size kept), so that scenes hold several shapes of one phrase: the groups
    graph-based captions describe as compositions."""
    if len(scene.shapes) < 2:
        return scene
    first = scene.shapes[0]
    shapes = [first]
    for shape in scene.shapes[1:]:
        if rng.random() < rate:
            ref = np.array(COLORS[first.color], dtype=np.float64)
            rgb = tuple(int(v) for v in np.clip(ref + rng.uniform(-12, 12, size=3), COLOR_MIN, COLOR_MAX))
            shape = ShapeSpec(
                first.label,
                first.color,
                shape.size,
                shape.cx,
                shape.cy,
                shape.extent,
                first.aspect,
                first.rotation,
                rgb,  # type: ignore[arg-type]
            )
        shapes.append(shape)
    return Scene(**{**scene.__dict__, "shapes": tuple(shapes), "relations": compute_relations(tuple(shapes))})


def perturb_scene(rng: np.random.Generator, scene: Scene) -> Scene:
    """A near-duplicate: a slight crop, a brightness change and another JPEG quality."""
    w, h = scene.canvas_w, scene.canvas_h
    fx0, fy0, fx1, fy1 = (float(v) for v in rng.uniform(0.0, 0.05, size=4))
    crop = (round(w * fx0), round(h * fy0), w - round(w * fx1), h - round(h * fy1))
    factor = float(rng.uniform(0.85, 0.95) if rng.random() < 0.5 else rng.uniform(1.05, 1.15))
    quality = int(rng.integers(60, 80)) if scene.quality >= 80 else int(rng.integers(85, 96))
    return Scene(
        **{**scene.__dict__, "crop": crop, "brightness": factor, "quality": quality},
    )
