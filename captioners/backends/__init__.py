"""MLLM backends behind one interface: chat messages with images in, text plus token counts and
latency out.

A request's ``messages`` are OpenAI-style chat messages whose content parts are
``{"type": "text", "text": ...}`` or ``{"type": "image", "image": PIL.Image}``; each backend turns
them into what its engine takes (a processor's chat template, base64 data URLs, vLLM's multimodal
prompts). ``generate`` never raises for one bad request: each answer carries its own ``error`` and
whether the failure is ``transient`` (a server error, a timeout, out of memory: worth a retry on the
next run) or not (the input itself).

Backends: ``transformers`` (``captioners.backends.transformers_backend``), a local model, batched
``generate``; ``openai`` (``captioners.backends.openai_backend``), any OpenAI-compatible endpoint;
``vllm`` (``captioners.backends.vllm_backend``), vLLM's offline engine on a GPU (optional extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    max_tokens: int = 256
    temperature: float = 0.0

    @property
    def images(self) -> list[Image.Image]:
        return [
            part["image"]
            for message in self.messages
            if not isinstance(message["content"], str)
            for part in message["content"]
            if part.get("type") == "image"
        ]


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None = None  # "stop", "length", or None when it failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    transient: bool = False  # a failure the next run should retry
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    model_name: str
    revision: str

    def generate(self, requests: list[ChatRequest]) -> list[Completion]: ...
