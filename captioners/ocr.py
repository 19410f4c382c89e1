"""OCR: the text in each image, with its boxes and confidences (RapidOCR, PP-OCRv4 on onnxruntime).

A perception expert for dense captioning (DenseFusion's "Text Information" hint). The model is
``rapidocr-onnxruntime``: PP-OCRv4 text detection (DB), the direction classifier and PP-OCRv4
recognition (Chinese and English characters), all three ONNX files inside the wheel, so the step runs
offline and never downloads. Each image is decoded once, at full size (text needs every pixel).

Columns (null for rows that failed to decode): ``{prefix}_texts`` (list<string>, reading order: top
to bottom, then left to right), ``{prefix}_boxes`` (list of ``[x1, y1, x2, y2]``: the axis-aligned
box of each detected quadrilateral, normalised to 0..1 by the image's width and height, float32
rounded to 3 decimals), ``{prefix}_scores`` (list<float32>, recognition confidence). An image with
no text gets empty lists.

``latin_only`` keeps only results made of Latin letters, digits and punctuation: the recogniser's
Chinese alphabet reads some plain shapes as glyphs (a square as "口"), which an English-only pool
does not want as hints. ``threads`` caps onnxruntime's threads per actor (default: the actor's
``OMP_NUM_THREADS``, which Ray sets from ``num_cpus``; else onnxruntime's own default).
"""

from __future__ import annotations

import io
import logging
import os
import re

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from curate.registry import register_step
from curate.stepkit import with_status
from schemas.tables import STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)

BOX_TYPE = pa.list_(pa.list_(pa.float32(), 4))
TEXT_TYPE = pa.list_(pa.string())
SCORE_TYPE = pa.list_(pa.float32())
_LATIN = re.compile(r"^[\x20-\x7e\u00a0-\u024f]*[A-Za-z0-9\u00c0-\u024f][\x20-\x7e\u00a0-\u024f]*$")


class OcrParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="drop results recognised below this")
    box_threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="detector box score threshold")
    det_limit_side_len: int = Field(
        default=736, ge=32, description="detector input: the shorter side is scaled up to at least this"
    )
    use_angle_cls: bool = Field(default=True, description="run the 0/180 degree direction classifier")
    latin_only: bool = Field(default=False, description="keep only Latin-script results")
    threads: int | None = Field(default=None, ge=1, description="onnxruntime threads (default OMP_NUM_THREADS)")
    prefix: str = Field(default="ocr", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="column name prefix")


def _threads(params: OcrParams) -> int:
    if params.threads is not None:
        return params.threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return -1  # onnxruntime's default: every core


def build_engine(params: OcrParams):
    """The RapidOCR engine for these params (also used by bench/baseline_ocr_loop.py)."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise ValueError("the ocr step needs rapidocr-onnxruntime (pip install -e .)") from exc
    n = _threads(params)
    return RapidOCR(
        intra_op_num_threads=n,
        inter_op_num_threads=1 if n > 0 else -1,
        text_score=params.min_score,
        det_limit_side_len=params.det_limit_side_len,
        det_box_thresh=params.box_threshold,
        use_cls=params.use_angle_cls,
    )


def decode_full(data: bytes | None) -> Image.Image:
    if not data:
        raise ValueError("no image bytes")
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")  # decodes now: truncated or corrupt data raises here


def is_latin(text: str) -> bool:
    return bool(_LATIN.match(text))


def read_text(engine, image: Image.Image, params: OcrParams) -> tuple[list[str], list[list[float]], list[float]]:
    """(texts, normalised xyxy boxes, scores) of one image, in the engine's reading order."""
    result, _ = engine(image)
    w, h = image.size
    texts, boxes, scores = [], [], []
    for quad, text, score in result or ():
        text = str(text).strip()
        if not text or (params.latin_only and not is_latin(text)):
            continue
        pts = np.asarray(quad, dtype=np.float64)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        box = [x0 / w, y0 / h, x1 / w, y1 / h]
        boxes.append([round(float(min(1.0, max(0.0, v))), 3) for v in box])
        texts.append(text)
        scores.append(float(score))
    return texts, boxes, scores


@register_step("ocr", params=OcrParams, needs_pixels=True, rows="kept")
class OcrReader:
    """Text in the image (RapidOCR PP-OCRv4): texts, normalised boxes and scores per sample."""

    def __init__(self, params: OcrParams):
        self.params = params
        self.engine = build_engine(params)
        logger.info("ocr: rapidocr-onnxruntime PP-OCRv4, %d thread(s)", _threads(params))

    def __call__(self, batch: pa.Table) -> pa.Table:
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        texts: list[list[str] | None] = []
        boxes: list[list[list[float]] | None] = []
        scores: list[list[float] | None] = []
        for i, data in enumerate(batch["image"].to_pylist()):
            try:
                image = decode_full(data)
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                status[i], errors[i] = STATUS_FAILED_DECODE, f"{type(exc).__name__}: {exc}"
                texts.append(None)
                boxes.append(None)
                scores.append(None)
                continue
            t, b, s = read_text(self.engine, image, self.params)
            texts.append(t)
            boxes.append(b)
            scores.append(s)
        p = self.params.prefix
        batch = with_status(batch, status, errors)
        batch = batch.append_column(f"{p}_texts", pa.array(texts, TEXT_TYPE))
        batch = batch.append_column(f"{p}_boxes", pa.array(boxes, BOX_TYPE))
        return batch.append_column(f"{p}_scores", pa.array(scores, SCORE_TYPE))
