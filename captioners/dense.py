"""Dense captions with perception hints (DenseFusion-style perceptual fusion).

The experts ran before, as steps of their own (``detect``, ``ocr``, ``tags``); this step reads their
columns, serialises their findings as hints (``captioners.hints``: ``Detection Information``, ``Text
Information``, ``Image Tags``, and the alt-text as ``World Knowledge``), asks the MLLM of ``backend``
for one thorough description and one short caption (``prompt``: a template file with a version), and
keeps the hints with the result so that what the model was told can be audited.

Columns (``dense`` is ``prefix``): ``dense_description``, ``dense_caption``, ``dense_hints`` (the hint
lines given), ``dense_answer`` (the raw answer), ``dense_model``, ``dense_revision``,
``dense_prompt_version``, ``dense_prompt_tokens``, ``dense_completion_tokens``, ``dense_latency_s``,
``dense_finish_reason``. A row fails with ``failed_to_caption`` when the answer is empty, lacks a
line, is cut at ``max_tokens`` or is a refusal (the answer is kept in ``dense_answer``), and with
``failed_caption_unavailable`` when the backend could not answer at all (a transient failure).
Undecodable images fail with ``failed_to_decode``.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from captioners.backends import ChatRequest, Completion
from captioners.backends.openai_backend import OpenAIParams
from captioners.backends.transformers_backend import TransformersParams
from captioners.backends.vllm_backend import VllmParams
from captioners.hints import HINT_KINDS, Hints, PromptTemplate, parse_answer
from curate.registry import register_step
from curate.stepkit import StepInputError, with_status
from filters.clip_embed import decode_image
from schemas.tables import STATUS_CAPTION_UNAVAILABLE, STATUS_FAILED_CAPTION, STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)

_REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|i can(?:'|no)t|i am unable|as an ai)\b", re.IGNORECASE)
BackendParams = Annotated[TransformersParams | OpenAIParams | VllmParams, Field(discriminator="kind")]


class DenseCaptionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: BackendParams = Field(default_factory=TransformersParams)
    prompt: str = Field(default="dense_caption", description="built-in prompt name or a template file")
    hints: list[Literal["detections", "text", "tags", "alt_text"]] = Field(
        default_factory=lambda: list(HINT_KINDS), description="which experts' findings go into the prompt"
    )
    detections_prefix: str = Field(default="det", description="the detect step's prefix ({p}_labels, {p}_boxes)")
    ocr_prefix: str = Field(default="ocr", description="the ocr step's prefix ({p}_texts)")
    tags_column: str = "tags"
    alt_text_column: str = "caption"
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    image_size: int = Field(default=512, ge=32, description="images are decoded at most this large")
    max_hint_boxes: int = Field(default=10, ge=1)
    prefix: str = Field(default="dense", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("prompt")
    @classmethod
    def _prompt_loads(cls, value: str) -> str:
        PromptTemplate.load(value)
        return value


def _column(batch: pa.Table, name: str, field: str, kinds: tuple[str, ...]) -> list:
    if name not in batch.column_names:
        raise StepInputError(
            f"{field}: column {name!r} is not in the batch; run the expert before this step or drop its kind "
            f"from hints (now {list(kinds)})"
        )
    return batch[name].to_pylist()


def expert_hints(batch: pa.Table, p: DenseCaptionParams, kinds: tuple[str, ...]) -> list[Hints]:
    """What the experts found in each row, from their columns (``p``: any params with the dense
    captioner's column fields); the columns of kinds not asked for are not read."""
    n = batch.num_rows
    none = [None] * n
    boxes = labels = texts = tags = alt = none
    if "detections" in kinds:
        labels = _column(batch, f"{p.detections_prefix}_labels", "detections_prefix", kinds)
        boxes = _column(batch, f"{p.detections_prefix}_boxes", "detections_prefix", kinds)
    if "text" in kinds:
        texts = _column(batch, f"{p.ocr_prefix}_texts", "ocr_prefix", kinds)
    if "tags" in kinds:
        tags = _column(batch, p.tags_column, "tags_column", kinds)
    if "alt_text" in kinds:
        alt = _column(batch, p.alt_text_column, "alt_text_column", kinds)
    return [Hints(*row) for row in zip(boxes, labels, texts, tags, alt, strict=True)]


def build_backend(params: BackendParams):
    if params.kind == "transformers":
        from captioners.backends.transformers_backend import TransformersBackend

        return TransformersBackend(params)
    if params.kind == "openai":
        from captioners.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(params)
    if params.kind == "vllm":
        from captioners.backends.vllm_backend import VllmBackend

        return VllmBackend(params)
    raise ValueError(f"backend.kind: value {params.kind!r} is not supported")  # pragma: no cover - validated


def judge(answer: Completion) -> tuple[str | None, str | None, str | None]:
    """(description, caption, failure reason or None) of one answer."""
    if answer.error:
        return None, None, answer.error
    text = (answer.text or "").strip()
    if not text:
        return None, None, "empty answer"
    if _REFUSAL.match(text):
        return None, None, f"refusal: {text[:80]!r}"
    if answer.finish_reason == "length":
        return None, None, f"answer cut at the token limit ({answer.completion_tokens} tokens)"
    description, caption = parse_answer(text)
    if description is None or caption is None:
        missing = " and ".join(n for n, v in (("Description", description), ("Caption", caption)) if v is None)
        return None, None, f"malformed answer: no {missing} line"
    return description, caption, None


@register_step("dense_caption", params=DenseCaptionParams, needs_pixels=True, rows="kept")
class DenseCaptioner:
    """One thorough description and one short caption per image from an MLLM told what the experts found."""

    def __init__(self, params: DenseCaptionParams):
        self.params = params
        self.template = PromptTemplate.load(params.prompt)
        self.backend = build_backend(params.backend)
        self.kinds = tuple(params.hints)

    def __call__(self, batch: pa.Table) -> pa.Table:
        p, n = self.params, batch.num_rows
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        hint_lines = [h.lines(self.kinds, p.max_hint_boxes) for h in expert_hints(batch, p, self.kinds)]
        rows, requests = [], []
        for i, data in enumerate(batch["image"].to_pylist()):
            try:
                image = decode_image(data, p.image_size)
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                status[i], errors[i] = STATUS_FAILED_DECODE, f"{type(exc).__name__}: {exc}"
                continue
            prompt = self.template.render(hint_lines[i])
            message = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
            requests.append(ChatRequest([message], max_tokens=p.max_tokens, temperature=p.temperature))
            rows.append(i)
        answers: list[Completion | None] = [None] * n
        for i, answer in zip(rows, self.backend.generate(requests) if requests else [], strict=True):
            answers[i] = answer
        cols: dict[str, list] = {k: [None] * n for k in ("description", "caption", "answer", "finish_reason")}
        numbers: dict[str, list] = {k: [None] * n for k in ("prompt_tokens", "completion_tokens", "latency_s")}
        for i, answer in enumerate(answers):
            if answer is None:
                continue
            description, caption, failure = judge(answer)
            cols["description"][i], cols["caption"][i] = description, caption
            cols["answer"][i], cols["finish_reason"][i] = answer.text, answer.finish_reason
            numbers["prompt_tokens"][i], numbers["completion_tokens"][i] = (
                answer.prompt_tokens,
                answer.completion_tokens,
            )
            numbers["latency_s"][i] = answer.latency_s
            if failure is not None:
                status[i] = STATUS_CAPTION_UNAVAILABLE if answer.transient else STATUS_FAILED_CAPTION
                errors[i] = failure
        asked = [answers[i] is not None for i in range(n)]
        batch = with_status(batch, status, errors)
        out = {f"{p.prefix}_{k}": pa.array(v, pa.string()) for k, v in cols.items()}
        out[f"{p.prefix}_hints"] = pa.array(
            [hint_lines[i] if asked[i] else None for i in range(n)], pa.list_(pa.string())
        )
        for key, value in (
            ("model", self.backend.model_name),
            ("revision", self.backend.revision),
            ("prompt_version", self.template.version),
        ):
            out[f"{p.prefix}_{key}"] = pa.array([value if a else None for a in asked], pa.string())
        out[f"{p.prefix}_prompt_tokens"] = pa.array(numbers["prompt_tokens"], pa.int32())
        out[f"{p.prefix}_completion_tokens"] = pa.array(numbers["completion_tokens"], pa.int32())
        out[f"{p.prefix}_latency_s"] = pa.array(numbers["latency_s"], pa.float32())
        for name, values in out.items():
            batch = batch.append_column(name, values)
        return batch
