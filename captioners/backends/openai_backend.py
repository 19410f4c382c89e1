"""The ``openai`` backend: any OpenAI-compatible chat completions endpoint (``vllm serve``, SGLang,
``transformers serve``, llama.cpp's server, hosted APIs) through the official ``openai`` client.

Images go as base64 data URLs (JPEG by default). Requests run concurrently on one ``AsyncOpenAI``
client, at most ``concurrency`` at a time. Timeouts and retries are the client's own
(``timeout_s`` per attempt, ``max_retries`` with its exponential backoff on connection errors, 408,
409, 429 and 5xx), so a request is bounded in time: about ``timeout_s * (max_retries + 1)`` plus the
backoff. What still fails after the retries is a transient failure of that request (the next run
retries it); a 4xx other than those is a failure of the request itself; a wrong model name or key
(404, 401, 403) fails the run, naming the field. An endpoint that is down or hung does not cost
every request its full timeout: once ``give_up_after`` requests in a row have failed transiently,
the rest of the batch is not sent (its rows fail as transient, for the next run to retry), and each
later batch first sends one request to see whether the endpoint is back. While requests are failing,
no new one is sent until those in flight have answered, so how many are sent before giving up does
not depend on which timeout fires first. The API key is read from
the environment variable ``api_key_env`` and is never logged or written; local servers that want no
key get ``"EMPTY"``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from captioners.backends import ChatRequest, Completion
from curate.stepkit import StepInputError

logger = logging.getLogger(__name__)


class OpenAIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the model name the server knows")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the key")
    timeout_s: float = Field(default=60.0, gt=0, description="per attempt")
    max_retries: int = Field(default=2, ge=0, description="the client's retries of transient errors")
    concurrency: int = Field(default=8, ge=1, description="requests in flight at once")
    give_up_after: int = Field(
        default=8, ge=1, description="transient failures in a row after which the rest of a batch is not sent"
    )
    image_format: Literal["jpeg", "png"] = "jpeg"
    image_quality: int = Field(default=90, ge=1, le=100)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields for the server")


def data_url(image: Any, fmt: str, quality: int) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt.upper(), quality=quality)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode()}"


def to_openai_messages(messages: list[dict], fmt: str = "jpeg", quality: int = 90) -> list[dict]:
    """Our messages (image parts hold PIL images) as OpenAI chat messages (image_url data URLs)."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image_url", "image_url": {"url": data_url(part["image"], fmt, quality)}}
                if part.get("type") == "image"
                else part
                for part in content
            ]
        out.append({"role": message["role"], "content": content})
    return out


def _said(exc: Any) -> str:
    """What the server said: the client's message, and the body when the message does not carry it
    (servers that answer FastAPI's ``{"detail": ...}`` rather than OpenAI's ``{"error": ...}``)."""
    text = (exc.response.text or "").strip() if getattr(exc, "response", None) is not None else ""
    if text and text[:200] not in exc.message:
        return f"{exc.message}: {text[:300]}"
    return exc.message


class OpenAIBackend:
    def __init__(self, params: OpenAIParams):
        import openai

        self.params = params
        self.model_name = params.model
        self.revision = params.base_url  # the server decides the weights; the URL says which server
        self._openai = openai
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        self._failing = 0  # transient failures in a row; any answer resets it
        self._in_flight = 0
        self._settled: asyncio.Condition | None = None  # notified when a request in flight answers
        self._last_error = ""
        key_set = bool(os.environ.get(params.api_key_env))
        logger.info(
            "openai backend: %s at %s (key from $%s: %s)",
            params.model,
            params.base_url,
            params.api_key_env,
            "set" if key_set else "unset, sending EMPTY",
        )

    def _make_client(self) -> Any:
        return self._openai.AsyncOpenAI(
            base_url=self.params.base_url,
            api_key=os.environ.get(self.params.api_key_env) or "EMPTY",
            timeout=self.params.timeout_s,
            max_retries=self.params.max_retries,
        )

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        return self._loop.run_until_complete(self._generate_all(requests))

    async def _generate_all(self, requests: list[ChatRequest]) -> list[Completion]:
        if self._client is None:
            self._client = self._make_client()  # bound to this backend's own event loop
            self._settled = asyncio.Condition()
        if self._given_up() and requests:
            # The endpoint was failing: one request first, to see whether it is back.
            first = await self._counted(requests[0])
            if self._given_up():
                return [first, *(self._not_sent() for _ in requests[1:])]
            return [first, *(await self._generate_all(requests[1:]))]
        gate = asyncio.Semaphore(self.params.concurrency)

        async def one(request: ChatRequest) -> Completion:
            async with gate:
                async with self._settled:
                    # After a failure, wait for the answers in flight before sending more: they may
                    # complete the streak that gives up.
                    await self._settled.wait_for(lambda: self._failing == 0 or self._in_flight == 0)
                return self._not_sent() if self._given_up() else await self._counted(request)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def _given_up(self) -> bool:
        return self._failing >= self.params.give_up_after

    def _not_sent(self) -> Completion:
        return Completion(
            None,
            error=f"not sent: {self._failing} requests in a row failed (last: {self._last_error})",
            transient=True,
        )

    async def _counted(self, request: ChatRequest) -> Completion:
        self._in_flight += 1
        try:
            answer = await self._generate_one(request)
            if answer.transient:
                self._failing += 1
                self._last_error = answer.error or ""
            else:
                self._failing = 0
            return answer
        finally:
            self._in_flight -= 1
            async with self._settled:
                self._settled.notify_all()

    async def _generate_one(self, request: ChatRequest) -> Completion:
        openai, p = self._openai, self.params
        messages = to_openai_messages(request.messages, p.image_format, p.image_quality)
        t0 = time.perf_counter()
        try:
            response = await self._client.chat.completions.create(
                model=p.model,
                messages=messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                extra_body=p.extra_body or None,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
            field = "model" if isinstance(exc, openai.NotFoundError) else "api_key_env"
            raise StepInputError(f"backend.{field}: {p.base_url} answered {exc.status_code}: {_said(exc)}") from exc
        except (
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.RateLimitError,
            openai.InternalServerError,
        ) as exc:
            return Completion(
                None, error=f"{type(exc).__name__}: {exc}", transient=True, latency_s=time.perf_counter() - t0
            )
        except openai.APIStatusError as exc:
            transient = exc.status_code >= 500 or exc.status_code in (408, 409, 429)
            return Completion(
                None,
                error=f"HTTP {exc.status_code}: {_said(exc)}",
                transient=transient,
                latency_s=time.perf_counter() - t0,
            )
        latency = time.perf_counter() - t0
        if not response.choices:
            return Completion(None, error="the server returned no choices", latency_s=latency)
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content,
            finish_reason=choice.finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            latency_s=latency,
        )
