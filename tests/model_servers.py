"""Model servers the tests start on 127.0.0.1: a real OpenAI-compatible one (``transformers serve``
with the committed tiny LLaVA) and deliberately broken ones (errors, hangs, resets) for fault cases."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from run_helpers import HANG_GUARD_S


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model_dir: Path, timeout_s: float = HANG_GUARD_S) -> Iterator[str]:
    """``transformers serve MODEL`` on a free port; yields the base URL (``.../v1``)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = Path(sys.executable).with_name("transformers")
    cmd = [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    # Its log goes to a file: a pipe nobody reads fills up after a few hundred requests' warnings, and
    # the server then blocks on writing to it and answers nothing more.
    log = tempfile.NamedTemporaryFile(prefix="transformers-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"transformers serve exited {proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"transformers serve did not answer on {url} in {timeout_s:.0f} s") from None
                time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)


class _Broken(http.server.BaseHTTPRequestHandler):
    mode = "error"
    calls = 0

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        type(self).calls += 1
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.mode == "error":
            self._json(503, b'{"error": {"message": "the model fell over", "type": "server_error"}}')
        elif self.mode == "hang" or (self.mode == "error_then_hang" and type(self).calls > 1):
            time.sleep(30)
        elif self.mode == "error_then_hang":
            self._json(503, b'{"error": {"message": "the model fell over", "type": "server_error"}}')
        elif self.mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
        elif self.mode == "not_found":
            self._json(404, b'{"error": {"message": "The model `m` does not exist.", "type": "NotFoundError"}}')
        elif self.mode == "bad_request":
            self._json(400, b'{"error": {"message": "image is not valid", "type": "invalid_request_error"}}')
        elif self.mode == "pinned":  # FastAPI's error shape, as transformers serve answers
            self._json(400, b"{\"detail\": \"Server is pinned to 'm'; requested 'other'.\"}")

    def _json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def broken_server(mode: str) -> Iterator[tuple[str, type[_Broken]]]:
    """A server that answers every request badly (``error``: 503, ``hang``: never, ``error_then_hang``:
    503 to the first request and never to the others, ``reset``: closes the connection, ``bad_request``:
    400, ``pinned``: 400 in FastAPI's shape, ``not_found``: 404, a model the server does not have);
    yields (base URL, handler class with its call count)."""
    handler = type(f"Broken_{mode}", (_Broken,), {"mode": mode, "calls": 0})
    with _serving(handler) as url:
        yield url, handler


@contextlib.contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free port of 127.0.0.1 from a thread; yields the base URL (``.../v1``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False  # a hanging handler must not hold the test up at close
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class FlakyProxy:
    """An OpenAI-compatible front to a real server that answers 503 for some images while ``flaky``
    (those whose data URL hash is divisible by ``every``), forwards every other request, and records
    each call by image: ``forwarded`` and ``refused`` (image key -> count)."""

    def __init__(self, upstream: str, every: int = 3):
        self.upstream = upstream.rstrip("/")
        self.every = every
        self.flaky = True
        self.forwarded: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()
        self.last_call = time.monotonic()

    def fails(self, key: str) -> bool:
        return self.flaky and int(key, 16) % self.every == 0

    def reset_counts(self) -> None:
        with self.lock:
            self.forwarded.clear()
            self.refused.clear()

    def wait_quiet(self, seconds: float = 3.0, timeout_s: float = 60.0) -> None:
        """Until no call came for ``seconds``: the workers of a killed run are gone."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self.last_call < seconds:
            if time.monotonic() > deadline:
                raise TimeoutError("calls kept coming to the proxy")
            time.sleep(0.2)


def _image_key(body: bytes) -> str:
    import hashlib
    import json

    for message in json.loads(body)["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part.get("type") == "image_url":
                return hashlib.sha1(part["image_url"]["url"].encode()).hexdigest()
    return "0" * 40


@contextlib.contextmanager
def flaky_proxy(upstream: str, every: int = 3) -> Iterator[tuple[str, FlakyProxy]]:
    proxy = FlakyProxy(upstream, every)

    class Handler(_Broken):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            key = _image_key(body)
            with proxy.lock:
                proxy.last_call = time.monotonic()
                failing = proxy.fails(key)
                counts = proxy.refused if failing else proxy.forwarded
                counts[key] = counts.get(key, 0) + 1
            if failing:
                self._json(503, b'{"error": {"message": "overloaded", "type": "server_error"}}')
                return
            request = urllib.request.Request(
                proxy.upstream + self.path.removeprefix("/v1"),
                data=body,
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
                self._json(response.status, response.read())

    with _serving(Handler) as url:
        yield url, proxy


@contextlib.contextmanager
def rewriting_proxy(upstream: str, rewrite) -> Iterator[str]:
    """An OpenAI-compatible front to a real server whose answers ``rewrite(prompt, image_key, ask)``
    decides: it gets the request's text, its image's key (``image_key``: the hash of the data URL, as
    ``FlakyProxy`` counts them) and ``ask()``, which forwards the request and returns the real answer,
    and returns the answer to send (a malformed one on purpose, for parsers facing a bad model)."""
    import json

    class Handler(_Broken):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.loads(raw)
            prompt = " ".join(
                part.get("text", "")
                for message in body["messages"]
                for part in (message["content"] if isinstance(message["content"], list) else [])
            ).strip()
            reply: dict = {}

            def ask() -> str:
                request = urllib.request.Request(
                    upstream.rstrip("/") + "/chat/completions", data=raw, headers={"content-type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
                    reply.update(json.loads(response.read()))
                return reply["choices"][0]["message"]["content"] or ""

            answer = rewrite(prompt, _image_key(raw), ask)
            if not reply:
                reply.update(
                    id="rewritten",
                    object="chat.completion",
                    created=0,
                    model=body.get("model", "m"),
                    choices=[{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}],
                    usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                )
            reply["choices"][0]["message"]["content"] = answer
            self._json(200, json.dumps(reply).encode())

    with _serving(Handler) as url:
        yield url
