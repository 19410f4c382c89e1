"""Decode every image once to prove it is an image; record what it really is.

A corrupt or truncated image never reaches the output shards: its row gets
``status=failed_to_decode`` with the decoder's message. JPEGs are decoded in draft mode (DCT
scaling), which still reads all the entropy-coded data, so truncation is caught at a fraction
of the cost of a full decode.
"""

from __future__ import annotations

import io
import logging
import warnings

import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from curate.registry import register_step
from schemas.tables import STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)


class ImageCheckParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    draft_size: int = Field(default=128, ge=1, description="JPEG draft decode target (px)")
    max_pixels: int = Field(default=178_956_970, ge=1, description="larger images fail (decompression bombs)")


def decode_check(data: bytes | None, params: ImageCheckParams) -> tuple[int, int, str] | str:
    """Return (width, height, format) of a decodable image, else the reason it is not one."""
    if not data:
        return "no image bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > params.max_pixels:
                    return f"image has {width * height} pixels, more than max_pixels={params.max_pixels}"
                fmt = (img.format or "").lower()
                if fmt == "jpeg":
                    img.draft("RGB", (params.draft_size, params.draft_size))
                img.load()
                return width, height, fmt
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        return f"{type(exc).__name__}: {exc}"


@register_step("image_check", params=ImageCheckParams, needs_pixels=True, modifies=("width", "height"))
class ImageChecker:
    """Decode each image (draft mode); fail rows whose bytes are not a readable image."""

    def __init__(self, params: ImageCheckParams):
        self.params = params
        Image.MAX_IMAGE_PIXELS = None  # our own max_pixels check reports the size instead

    def __call__(self, batch: pa.Table) -> pa.Table:
        widths = batch["width"].to_pylist()
        heights = batch["height"].to_pylist()
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        formats: list[str | None] = []
        for i, data in enumerate(batch["image"].to_pylist()):
            result = decode_check(data, self.params)
            if isinstance(result, str):
                status[i], errors[i] = STATUS_FAILED_DECODE, result
                formats.append(None)
            else:
                widths[i], heights[i], fmt = result
                formats.append(fmt)
        for name, values, typ in (
            ("width", widths, pa.int32()),
            ("height", heights, pa.int32()),
            ("status", status, pa.string()),
            ("error_message", errors, pa.string()),
        ):
            batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, type=typ))
        return batch.append_column("image_format", pa.array(formats, type=pa.string()))
