"""The ``transformers`` backend: a local image-text-to-text model, batched ``generate`` on CPU or GPU.

``model`` is ``curate-tiny-llava`` (the committed shapes-world LLaVA, ``scripts/train_tiny_llava.py``)
or a local folder saved with ``save_pretrained`` (any ``AutoModelForImageTextToText`` with an
``AutoProcessor`` and a chat template: LLaVA, Qwen2-VL, ...). Nothing is downloaded: loading is
``local_files_only``. Requests are grouped ``batch_size`` at a time, padded on the left, and decoded
greedily (``temperature`` 0) or sampled; each answer's tokens stop at the tokenizer's end token.
A CUDA out-of-memory during a batch is a transient failure of that batch's requests.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

import curate.models
from captioners.backends import ChatRequest, Completion
from curate.stepkit import resolve_device

logger = logging.getLogger(__name__)

TINY_LLAVA_NAME = "curate-tiny-llava"
TINY_LLAVA_DIR = Path(curate.models.__file__).resolve().parent / "tiny_llava"
TINY_LLAVA_GBC_NAME = "curate-tiny-llava-gbc"  # fine-tuned for the GBC queries (captioners/gbc.py)
TINY_LLAVA_GBC_DIR = TINY_LLAVA_DIR.with_name("tiny_llava_gbc")
COMMITTED_MODELS = {
    TINY_LLAVA_NAME: (TINY_LLAVA_DIR, "train_tiny_llava.py"),
    TINY_LLAVA_GBC_NAME: (TINY_LLAVA_GBC_DIR, "train_tiny_llava_gbc.py"),
}


def resolve_model_dir(value: str) -> Path:
    if value in COMMITTED_MODELS:
        folder, script = COMMITTED_MODELS[value]
        if not (folder / "config.json").is_file():
            raise ValueError(f"model: {folder} has no model; run scripts/{script}")
        return folder
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model: value {value!r} is none of {sorted(COMMITTED_MODELS)} nor a local model folder with a config.json "
            f"(nothing is downloaded: fetch it with `huggingface-cli download ORG/NAME --local-dir DIR` first)"
        )
    return path


class TransformersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["transformers"] = "transformers"
    model: str = Field(default=TINY_LLAVA_NAME, description=f"{TINY_LLAVA_NAME!r} or a local model folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on cuda, float32 on cpu"
    )
    batch_size: int = Field(default=16, ge=1, description="requests per generate call")

    @field_validator("model")
    @classmethod
    def _exists(cls, value: str) -> str:
        resolve_model_dir(value)
        return value


def _weights_digest(folder: Path) -> str:
    """A short content hash of the weights: the model's revision in the metadata."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # the header and first MiB: cheap, and changes with any retraining
    return h.hexdigest()[:12]


class TransformersBackend:
    def __init__(self, params: TransformersParams):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.params = params
        folder = resolve_model_dir(params.model)
        self.device = resolve_device(params.device)
        dtype = {
            "auto": torch.bfloat16 if self.device == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[params.dtype]
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
        self.model.to(self.device).eval()
        self.model_name = params.model
        self.revision = _weights_digest(folder)
        tok = self.processor.tokenizer
        self.stop_ids = {
            i for i in (tok.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)) if i
        }
        logger.info("transformers backend: %s (%s) on %s, %s", params.model, self.revision, self.device, dtype)

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.params.batch_size):
            out.extend(self._generate_batch(requests[start : start + self.params.batch_size]))
        return out

    def _generate_batch(self, batch: list[ChatRequest]) -> list[Completion]:
        import torch

        t0 = time.perf_counter()
        try:
            texts = [
                self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
                for r in batch
            ]
            images = [img for r in batch for img in r.images]
            inputs = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
            inputs = inputs.to(self.device)
            sample = any(r.temperature > 0 for r in batch)
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=max(r.max_tokens for r in batch),
                    do_sample=sample,
                    temperature=max(r.temperature for r in batch) if sample else None,
                    pad_token_id=self.processor.tokenizer.pad_token_id,
                )
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            return [Completion(None, error=f"OutOfMemoryError: {exc}", transient=True) for _ in batch]
        latency = time.perf_counter() - t0
        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for r, row, n_prompt in zip(batch, generated[:, prompt_len:].tolist(), prompt_tokens, strict=True):
            stop = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            tokens = row[: stop if stop is not None else len(row)][: r.max_tokens]
            finish = "stop" if stop is not None and stop <= r.max_tokens else "length"
            text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(
                Completion(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=int(n_prompt),
                    completion_tokens=len(tokens) + (finish == "stop"),
                    latency_s=latency,
                )
            )
        return results
