"""Render a Scene to photo-like JPEG bytes with PIL and numpy (no per-pixel Python loops)."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from curate.synth.scene import COLOR_MAX, COLOR_MIN, Rgb, Scene, ShapeSpec
from curate.synth.text import draw_text

_TILE = 640  # > the largest stored side (512) so every image can take a shifted window
_NOISE_MAX = 14  # COLOR_MIN * 185 / 255 >= _NOISE_MAX and (highlighted) COLOR_MAX + _NOISE_MAX <= 255
_N_LIGHTS = 12


@lru_cache(maxsize=1)
def _noise_tile() -> Image.Image:
    """Sensor-like noise in [-_NOISE_MAX, _NOISE_MAX] stored modulo 256 (added with add_modulo).

    Fixed seed, so every process renders the same pixels.
    """
    rng = np.random.default_rng(20240607)
    noise = np.clip(np.rint(rng.normal(0.0, 5.0, size=(_TILE, _TILE, 3))), -_NOISE_MAX, _NOISE_MAX)
    return Image.fromarray((noise.astype(np.int16) % 256).astype(np.uint8), "RGB")


@lru_cache(maxsize=1)
def _light_tiles() -> tuple[Image.Image, ...]:
    """Smooth illumination fields in [185, 255] (multiplied in); fixed seed like the noise."""
    rng = np.random.default_rng(20240608)
    tiles = []
    for _ in range(_N_LIGHTS):
        k = int(rng.integers(2, 5))
        small = Image.fromarray(rng.integers(185, 256, size=(k, k), dtype=np.uint8), "L")
        big = np.asarray(small.resize((_TILE, _TILE), Image.Resampling.BICUBIC, reducing_gap=None))
        tiles.append(Image.fromarray(np.clip(big, 185, 255), "L").convert("RGB"))  # no bicubic undershoot
    return tuple(tiles)


_BG_CLAMP = [min(COLOR_MAX, max(COLOR_MIN + 20, i)) for i in range(256)] * 3


def _solid(w: int, h: int, c: Rgb) -> Image.Image:
    return Image.new("RGB", (w, h), c)


def _mask_composite(w: int, h: int, c1: Rgb, c2: Rgb, mask: np.ndarray) -> Image.Image:
    m = Image.fromarray((mask.astype(np.uint8) * 255), "L")
    return Image.composite(_solid(w, h, c2), _solid(w, h, c1), m)


def _stripe_index(w: int, h: int, orient: int) -> np.ndarray:
    ys, xs = np.arange(h, dtype=np.int32), np.arange(w, dtype=np.int32)
    if orient == 0:
        return np.broadcast_to(xs[None, :], (h, w))
    if orient == 1:
        return np.broadcast_to(ys[:, None], (h, w))
    if orient == 2:
        return np.add.outer(ys, xs)
    return np.add.outer(ys, w - xs)


def background(scene: Scene, rng: np.random.Generator) -> Image.Image:
    w, h = scene.canvas_w, scene.canvas_h
    c1, c2 = scene.bg_colors
    p, orient, kind = scene.bg_period, scene.bg_orient, scene.background
    if kind == "plain":
        return _solid(w, h, c1)
    if kind == "gradient":
        corners = np.array([[c1, c2], [c2, c1]] if orient >= 2 else [[c1, c2], [c1, c2]], dtype=np.uint8)
        if orient == 1:
            corners = corners.transpose(1, 0, 2)
        small = Image.fromarray(np.ascontiguousarray(corners), "RGB")
        return small.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
    if kind == "striped":
        return _mask_composite(w, h, c1, c2, (_stripe_index(w, h, orient) // max(2, p // 2)) % 2 == 1)
    if kind == "checkered":
        ys, xs = np.arange(h) // p, np.arange(w) // p
        return _mask_composite(w, h, c1, c2, np.bitwise_xor.outer(ys, xs) % 2 == 1)
    if kind == "grid":
        t = max(1, p // 7)
        ys, xs = np.arange(h) % p < t, np.arange(w) % p < t
        return _mask_composite(w, h, c1, c2, np.logical_or.outer(ys, xs))
    if kind == "wavy":
        amp, q = float(rng.uniform(3, 12)), float(rng.uniform(8, 30))
        if orient % 2 == 0:  # vertical stripes that wave left and right
            idx = np.add.outer((amp * np.sin(np.arange(h) / q)).astype(np.int32), np.arange(w, dtype=np.int32))
        else:  # horizontal stripes that wave up and down
            idx = np.add.outer(np.arange(h, dtype=np.int32), (amp * np.sin(np.arange(w) / q)).astype(np.int32))
        return _mask_composite(w, h, c1, c2, (idx // max(2, p // 2)) % 2 == 1)
    if kind == "noisy":
        cell = int(rng.integers(2, 4))
        sh, sw = h // cell + 1, w // cell + 1
        small = np.asarray(c1, dtype=np.float32) + rng.normal(0.0, 18.0, size=(sh, sw, 1)).astype(np.float32)
        small = small + rng.normal(0.0, 6.0, size=(sh, sw, 3)).astype(np.float32)
        img = Image.fromarray(np.clip(small, COLOR_MIN + 20, COLOR_MAX).astype(np.uint8), "RGB")  # room for shadows
        return img.resize((w, h), Image.Resampling.NEAREST)
    # blotchy: a few blurred blobs mixing the two colours
    k = int(rng.integers(3, 7))
    t = rng.random((k, k, 1)).astype(np.float32)
    jitter = rng.normal(0.0, 10.0, size=(k, k, 3)).astype(np.float32)
    small = np.asarray(c1, np.float32) * (1 - t) + np.asarray(c2, np.float32) * t + jitter
    img = Image.fromarray(np.clip(small, COLOR_MIN + 20, COLOR_MAX - 20).astype(np.uint8), "RGB")
    return img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None).point(_BG_CLAMP)  # bicubic overshoots


def _draw_shape(draw: ImageDraw.ImageDraw, s: ShapeSpec, dx: float, dy: float, fill: object) -> None:
    pts = s.polygon()
    if pts is None:
        rx, ry = s.half_extents()
        draw.ellipse((s.cx - rx + dx, s.cy - ry + dy, s.cx + rx + dx, s.cy + ry + dy), fill=fill)  # type: ignore[arg-type]
    else:
        draw.polygon([(x + dx, y + dy) for x, y in pts], fill=fill)  # type: ignore[arg-type]


def render_image(scene: Scene) -> Image.Image:
    """The stored image for a scene (near-duplicate perturbations included)."""
    rng = np.random.default_rng(scene.render_seed)
    img = background(scene, rng)
    w, h = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    shadow = rng.random() < 0.6
    offset = max(1.0, 0.03 * min(w, h))
    if shadow:  # all shadows first: they fall on the background only (and never darken below range)
        for s in scene.shapes:
            _draw_shape(draw, s, offset, offset, (0, 0, 0, 70))
    for s in scene.shapes:
        _draw_shape(draw, s, 0.0, 0.0, s.rgb)
        # a soft highlight up-left makes it read as a lit object rather than a flat glyph
        inner = ShapeSpec(
            **{**s.__dict__, "extent": s.extent * 0.55, "cx": s.cx - s.extent * 0.08, "cy": s.cy - s.extent * 0.08}
        )
        _draw_shape(draw, inner, 0.0, 0.0, (255, 255, 255, 28))
    if scene.text is not None:  # lit, noised and compressed with the rest of the photo
        draw_text(draw, scene.text)
    del draw
    for s in scene.shapes:  # soften the aliased edges where they are, not over the whole frame
        x0, y0, x1, y1 = s.bbox()
        pad = int(offset) + 3 if shadow else 3
        box = (max(0, x0 - 3), max(0, y0 - 3), min(w, x1 + pad), min(h, y1 + pad))
        if box[2] - box[0] > 4 and box[3] - box[1] > 4:
            img.paste(img.crop(box).filter(ImageFilter.BoxBlur(1)), box[:2])
    light = _light_tiles()[int(rng.integers(_N_LIGHTS))]
    ox, oy = int(rng.integers(0, _TILE - w + 1)), int(rng.integers(0, _TILE - h + 1))
    img = ImageChops.multiply(img, light.crop((ox, oy, ox + w, oy + h)))
    ox, oy = int(rng.integers(0, _TILE - w + 1)), int(rng.integers(0, _TILE - h + 1))
    img = ImageChops.add_modulo(img, _noise_tile().crop((ox, oy, ox + w, oy + h)))
    if scene.brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(scene.brightness)
    if scene.crop is not None:
        img = img.crop(scene.crop)
        if img.size != scene.size:
            img = img.resize(scene.size, Image.Resampling.BICUBIC)
    return img


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_jpeg(scene: Scene) -> bytes:
    return encode_jpeg(render_image(scene), scene.quality)


def corrupt_bytes(rng: np.random.Generator, jpeg: bytes) -> bytes:
    """Undecodable payload: half the time a truncated JPEG (30-60%), half random bytes."""
    if rng.random() < 0.5:
        cut = int(len(jpeg) * float(rng.uniform(0.30, 0.60)))
        return jpeg[:cut]
    n = int(len(jpeg) * float(rng.uniform(0.3, 1.0))) + 64
    while True:
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        if not _decodes(data):
            return data


def damage_scan(rng: np.random.Generator, jpeg: bytes, attempts: int = 64) -> bytes:
    """Overwrite 16-63 bytes inside the entropy-coded scan, in its first half, keeping the headers and
    the end marker: a JPEG that PIL decodes without an error, into wrong pixels from there on (what a
    flipped disk block or a bad proxy does). Draws again until PIL decodes it."""
    sos = jpeg.find(b"\xff\xda")
    if sos < 0 or not jpeg.endswith(b"\xff\xd9"):
        raise ValueError("damage_scan needs a baseline JPEG with a scan and an end marker")
    start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    end = len(jpeg) - 2
    for _ in range(attempts):
        pos = int(rng.integers(start, start + max(1, (end - start) // 2)))
        n = min(int(rng.integers(16, 64)), end - pos)
        damaged = jpeg[:pos] + rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() + jpeg[pos + n :]
        if damaged != jpeg and _decodes(damaged):
            return damaged
    raise ValueError(f"no damage PIL decodes in {attempts} draws")


def _decodes(data: bytes) -> bool:
    """Guard against random bytes that some lenient PIL plugin would accept."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not decodable", which is what we want
        return False
