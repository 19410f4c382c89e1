"""Thumbnails and GBC drawings as data: URIs, so the report stays one self-contained file."""

from __future__ import annotations

import base64
import io

from PIL import Image

THUMB_PX = 128


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def open_image(data: bytes | None) -> Image.Image | None:
    """The decoded image, or None for bytes that do not decode (a corrupt sample is shown as such)."""
    if not data:
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at a fraction of full size
        return image.convert("RGB")
    except Exception:  # any decoder error: PIL raises many kinds for broken files
        return None


def thumbnail(data: bytes | None, px: int = THUMB_PX) -> str | None:
    image = open_image(data)
    if image is None:
        return None
    image.thumbnail((px, px))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=78)
    return data_uri(buf.getvalue(), "image/jpeg")


def draw_graph(data: bytes | None, graph: dict, px: int = 320) -> str | None:
    """The image with each GBC vertex's box and label, and an edge from each parent's box centre to
    its child's, as a PNG data URI."""
    from curate.reporting.plots import png_bytes

    image = open_image(data)
    if image is None:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image.thumbnail((px, px))
    w, h = image.size
    fig, ax = plt.subplots(figsize=(w / 80, h / 80))
    ax.imshow(image)
    ax.set_axis_off()
    centres = {}
    colours = plt.get_cmap("tab10")
    for i, vertex in enumerate(graph.get("vertices", [])):
        box = vertex.get("bbox") or {}
        left, top = box.get("left", 0) * w, box.get("top", 0) * h
        right, bottom = box.get("right", 1) * w, box.get("bottom", 1) * h
        centres[vertex["vertex_id"]] = ((left + right) / 2, (top + bottom) / 2)
        if vertex.get("label") == "image":
            continue
        colour = colours(i % 10)
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=colour, linewidth=1.5))
        ax.text(
            left,
            top,
            vertex["vertex_id"],
            color="white",
            fontsize=6,
            va="bottom",
            bbox={"facecolor": colour, "pad": 1, "linewidth": 0},
        )
    for vertex in graph.get("vertices", []):
        for edge in vertex.get("out_edges", []):
            a, b = centres.get(edge.get("source")), centres.get(edge.get("target"))
            if a and b and a != b:
                ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1})
    return data_uri(png_bytes(fig, dpi=80), "image/png")
