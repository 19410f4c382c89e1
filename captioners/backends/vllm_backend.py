"""The ``vllm`` backend: vLLM's offline engine inside the step's actor (one engine per actor, on the
GPU Ray gives it: set ``resources.num_gpus``). vLLM is an optional extra (``pip install -e '.[vllm]'``)
and is imported only when this backend is built, so nothing else needs it to import or test.

Requests become ``LLM.chat`` conversations in OpenAI format (images as base64 data URLs, which vLLM
decodes with the model's own processor) with one ``SamplingParams`` each; vLLM batches them itself
(continuous batching), so a step batch is one ``chat`` call. CUDA out-of-memory fails the batch's
requests as transient.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from captioners.backends import ChatRequest, Completion
from captioners.backends.openai_backend import to_openai_messages

logger = logging.getLogger(__name__)


class VllmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="a local model folder (or a hub name where the machine can fetch it)")
    dtype: str = "auto"
    max_model_len: int = Field(default=4096, ge=256)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_images_per_prompt: int = Field(default=1, ge=1)
    seed: int = 0


def build_chat_inputs(requests: list[ChatRequest], seed: int = 0) -> tuple[list[list[dict]], list[dict[str, Any]]]:
    """(conversations, SamplingParams keyword arguments) for ``LLM.chat``: pure, testable without vLLM."""
    conversations = [to_openai_messages(r.messages) for r in requests]
    sampling = [{"max_tokens": r.max_tokens, "temperature": r.temperature, "seed": seed} for r in requests]
    return conversations, sampling


class VllmBackend:
    def __init__(self, params: VllmParams):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ValueError("backend.kind: 'vllm' needs vLLM: pip install -e '.[vllm]' (on a GPU machine)") from exc
        self.params = params
        self.model_name = params.model
        self.revision = params.model
        self.llm = LLM(
            model=params.model,
            dtype=params.dtype,
            max_model_len=params.max_model_len,
            gpu_memory_utilization=params.gpu_memory_utilization,
            tensor_parallel_size=params.tensor_parallel_size,
            limit_mm_per_prompt={"image": params.max_images_per_prompt},
            seed=params.seed,
        )

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        import torch
        from vllm import SamplingParams

        conversations, sampling = build_chat_inputs(requests, self.params.seed)
        t0 = time.perf_counter()
        try:
            outputs = self.llm.chat(
                conversations, sampling_params=[SamplingParams(**k) for k in sampling], use_tqdm=False
            )
        except torch.OutOfMemoryError as exc:
            return [Completion(None, error=f"OutOfMemoryError: {exc}", transient=True) for _ in requests]
        latency = time.perf_counter() - t0
        results = []
        for out in outputs:
            best = out.outputs[0]
            results.append(
                Completion(
                    text=best.text,
                    finish_reason=best.finish_reason,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(best.token_ids),
                    latency_s=latency,
                )
            )
        return results
