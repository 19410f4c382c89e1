"""Decode every image once to prove it is an image; record what it really is.

A corrupt or truncated image never reaches the output shards: its row gets
``status=failed_to_decode`` with the decoder's message. JPEGs are decoded by libjpeg-turbo
(simplejpeg) at about ``draft_size`` px (DCT scaling), which still reads all the entropy-coded
data, so truncation is caught at a fraction of the cost of a full decode.

A damaged JPEG (bytes overwritten inside its scan) is one PIL decodes without an error, into wrong
pixels. libjpeg notices some of them and says so in a warning that PIL drops ("Corrupt JPEG data:
38 extraneous bytes before marker 0xd9"). Decoded strictly, that warning becomes the row's
``image_warning``; with ``damaged_jpeg: fail`` (the default) the row also fails to decode, with
``keep`` it goes on. Damage libjpeg does not notice decodes as an image in every decoder, and
passes: on the synthetic pool's ``damaged_jpeg`` fault 652 of 1000 are caught (seed 3).
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Literal

import pyarrow as pa
import simplejpeg
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from curate.registry import register_step
from schemas.tables import STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)


class ImageCheckParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    draft_size: int = Field(default=128, ge=1, description="JPEG draft decode target (px)")
    max_pixels: int = Field(default=178_956_970, ge=1, description="larger images fail (decompression bombs)")
    damaged_jpeg: Literal["fail", "keep"] = Field(
        default="fail", description="a JPEG libjpeg decodes with a warning: fail it, or keep it (the warning is kept)"
    )


def jpeg_warning(data: bytes, size: int) -> tuple[bool, str | None]:
    """(decoded, libjpeg's warning): (True, None) for a clean JPEG, (True, warning) for one libjpeg
    decodes only by recovering from bad data, (False, None) for one simplejpeg cannot decode at all
    (truncated, arithmetic-coded, ...): PIL then decides, and names the error."""
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False, None
    target = "CMYK" if colorspace in ("CMYK", "YCCK") else "GRAY" if colorspace == "Gray" else "RGB"
    try:
        simplejpeg.decode_jpeg(data, target, min_height=size, min_width=size)
        return True, None
    except ValueError as strict_error:
        try:
            simplejpeg.decode_jpeg(data, target, min_height=size, min_width=size, strict=False)
        except ValueError:
            return False, None
        return True, str(strict_error)


def decode_check(data: bytes | None, params: ImageCheckParams) -> tuple[int, int, str, str | None] | str:
    """Return (width, height, format, libjpeg's warning or None) of a decodable image, else the
    reason it is not one."""
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
                decoded, warning = jpeg_warning(data, params.draft_size) if fmt == "jpeg" else (False, None)
                if not decoded:
                    if fmt == "jpeg":
                        img.draft("RGB", (params.draft_size, params.draft_size))
                    img.load()
                return width, height, fmt, warning
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        return f"{type(exc).__name__}: {exc}"


@register_step("image_check", params=ImageCheckParams, needs_pixels=True, modifies=("width", "height"))
class ImageChecker:
    """Decode each image (DCT-scaled); fail rows whose bytes are not a readable image, and damaged
    JPEGs unless ``damaged_jpeg: keep``."""

    def __init__(self, params: ImageCheckParams):
        self.params = params
        Image.MAX_IMAGE_PIXELS = None  # our own max_pixels check reports the size instead

    def __call__(self, batch: pa.Table) -> pa.Table:
        widths = batch["width"].to_pylist()
        heights = batch["height"].to_pylist()
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        formats: list[str | None] = []
        image_warnings: list[str | None] = []
        for i, data in enumerate(batch["image"].to_pylist()):
            result = decode_check(data, self.params)
            if isinstance(result, str):
                status[i], errors[i] = STATUS_FAILED_DECODE, result
                formats.append(None)
                image_warnings.append(None)
                continue
            widths[i], heights[i], fmt, warning = result
            formats.append(fmt)
            image_warnings.append(warning)
            if warning is not None and self.params.damaged_jpeg == "fail":
                status[i], errors[i] = STATUS_FAILED_DECODE, f"damaged JPEG data: {warning}"
        for name, values, typ in (
            ("width", widths, pa.int32()),
            ("height", heights, pa.int32()),
            ("status", status, pa.string()),
            ("error_message", errors, pa.string()),
        ):
            batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, type=typ))
        batch = batch.append_column("image_format", pa.array(formats, type=pa.string()))
        return batch.append_column("image_warning", pa.array(image_warnings, type=pa.string()))
