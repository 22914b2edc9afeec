"""Real HTTP model servers for tests: OpenAI-compatible and Anthropic wire formats.

One ``ModelServer`` per endpoint under test, on 127.0.0.1 and a free port.
What it does is controlled through ``behaviour`` (latency, error rates, hangs,
streams cut mid-answer) and can be changed while a test runs; ``calls`` counts
every request it received, by kind, so tests count traffic at the server.

Usage is deterministic and reported the way each API reports it: input tokens
are the words of every message plus 7, output tokens the words of the answer.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Behaviour:
    latency_s: float = 0.0
    """Before answering (before the first chunk of a stream)."""
    chunk_delay_s: float = 0.0
    fail_rate: float = 0.0
    """Fraction of calls answered with one of ``fail_statuses``."""
    fail_statuses: tuple[int, ...] = (500, 429)
    hang_rate: float = 0.0
    """Fraction of calls that hang ``hang_s`` before answering."""
    hang_s: float = 30.0
    cut_after: int | None = None
    """Streams: stop after this many text chunks..."""
    cut_rate: float = 1.0
    """...in this fraction of streams..."""
    cut_mode: str = "abort"
    """...by dropping the connection (``abort``) or ending the body cleanly (``eof``)."""
    echo_key_in_errors: bool = False
    """Quote the caller's API key in error bodies (as some real APIs do)."""
    reply: Callable[[str], str] = field(default=lambda text: f"you said {text}")
    throttle: list[float] = field(default_factory=list)
    """Images and audio: while not empty, answer 429 with ``Retry-After`` of the next value."""
    rejects: Callable[[str], bool] | None = None
    """Embeddings: answer 400 to a call with any input this is true of (a poison text)."""


def _words(text: str) -> int:
    return len(text.split())


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def input_tokens(messages: list[dict[str, Any]], system: str = "") -> int:
    """What the servers report as input tokens for these messages."""
    text = " ".join(str(m.get("content", "")) for m in messages) + " " + system
    return _words(text) + 7


def image_bytes(prompt: str, index: int) -> bytes:
    return b"\x89PNG" + hashlib.sha256(f"{prompt}/{index}".encode()).digest()


def vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 6) for b in digest[:dims]]


class ModelServer:
    """An aiohttp server speaking OpenAI's and Anthropic's APIs under ``/v1``."""

    def __init__(self, name: str = "model", *, seed: int = 7) -> None:
        self.name = name
        self.behaviour = Behaviour()
        self.calls: collections.Counter[str] = collections.Counter()
        """By kind: chat, stream, embeddings, messages, messages_stream, failed, hung, cut."""
        self.api_keys: list[str] = []
        self.call_times: list[float] = []
        """Images and audio: the loop time of every call answered (not throttled)."""
        self.batch_sizes: list[int] = []
        """Embeddings: inputs per call, in arrival order."""
        self.embedded: list[str] = []
        """Embeddings: every input answered with a vector."""
        self.chats_open = 0
        self.chats_open_peak = 0
        """OpenAI chat calls (not streamed) being answered at once, and the most ever."""
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def total(self) -> int:
        """Model requests received (every kind)."""
        return sum(
            v for k, v in self.calls.items() if k not in ("failed", "hung", "cut", "rejected")
        )

    async def start(self) -> ModelServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- shared behaviour -------------------------------------------------------------

    async def _misbehave(self, request: web.Request, anthropic: bool) -> web.Response | None:
        b = self.behaviour
        key = request.headers.get("x-api-key") or request.headers.get("Authorization", "")
        key = key.removeprefix("Bearer ")
        if key:
            self.api_keys.append(key)
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        roll = self._rng.random()
        if roll < b.hang_rate:
            self.calls["hung"] += 1
            await asyncio.sleep(b.hang_s)
        elif roll < b.hang_rate + b.fail_rate:
            self.calls["failed"] += 1
            status = self._rng.choice(b.fail_statuses)
            message = f"{self.name} failed on purpose"
            if b.echo_key_in_errors:
                message += f" (key {key})"
            if anthropic:
                kind = "rate_limit_error" if status == 429 else "api_error"
                body = {"type": "error", "error": {"type": kind, "message": message}}
            else:
                body = {"error": {"message": message, "type": "server_error", "code": status}}
            return web.json_response(body, status=status)
        return None

    def _reply(self, messages: list[dict[str, Any]]) -> str:
        return self.behaviour.reply(_last_user(messages))

    # -- OpenAI ------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = bool(body.get("stream"))
        self.calls["stream" if stream else "chat"] += 1
        if not stream:
            self.chats_open += 1
            self.chats_open_peak = max(self.chats_open_peak, self.chats_open)
        try:
            failed = await self._misbehave(request, anthropic=False)
        finally:
            self.chats_open -= not stream
        if failed is not None:
            return failed
        messages = body["messages"]
        text = self._reply(messages)
        usage = {
            "prompt_tokens": input_tokens(messages),
            "completion_tokens": _words(text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        model = body["model"]
        if not stream:
            return web.json_response(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            return await self._openai_stream(request, response, body, text, usage)
        except ConnectionResetError:  # the client stopped reading (it had what it wanted)
            return response

    async def _openai_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        body: dict[str, Any],
        text: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        model = body["model"]

        async def send(data: Any) -> None:
            raw = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {raw}\n\n".encode())

        words = text.split(" ")
        cut = self._cut_point(len(words))
        await send({"model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for i, word in enumerate(words):
            if cut is not None and i == cut:
                return await self._cut(request, response)
            if self.behaviour.chunk_delay_s:
                await asyncio.sleep(self.behaviour.chunk_delay_s)
            piece = word if i == 0 else " " + word
            await send({"model": model, "choices": [{"index": 0, "delta": {"content": piece}}]})
        await send(
            {"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"model": model, "choices": [], "usage": usage})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls["embeddings"] += 1
        failed = await self._misbehave(request, anthropic=False)
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self.batch_sizes.append(len(inputs))
        rejects = self.behaviour.rejects
        if rejects is not None and any(rejects(t) for t in inputs):
            self.calls["rejected"] += 1
            body = {"error": {"message": "input rejected", "type": "invalid_request_error"}}
            return web.json_response(body, status=400)
        self.embedded.extend(inputs)
        tokens = sum(_words(t) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector(t)}
                    for i, t in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _throttled(self) -> web.Response | None:
        if not self.behaviour.throttle:
            return None
        self.calls["throttled"] += 1
        wait = self.behaviour.throttle.pop(0)
        body = {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}
        return web.json_response(body, status=429, headers={"Retry-After": f"{wait:g}"})

    async def _images(self, request: web.Request) -> web.Response:
        """Images as URLs, or as base64 PNG-like bytes derived from the prompt."""
        body = await request.json()
        throttled = self._throttled()
        if throttled is not None:
            return throttled
        self.calls["images"] += 1
        self.call_times.append(asyncio.get_running_loop().time())
        n = int(body.get("n", 1))
        prompt = body["prompt"]
        if body.get("response_format") == "b64_json":
            rows = [
                {"b64_json": base64.b64encode(image_bytes(prompt, i)).decode()} for i in range(n)
            ]
        else:
            rows = [{"url": f"https://images.example/{self.name}/{i}.png"} for i in range(n)]
        return web.json_response({"created": 0, "data": rows})

    async def _transcriptions(self, request: web.Request) -> web.Response:
        """The text is the uploaded bytes decoded; the duration is 1 s per 1,000 bytes."""
        form = await request.post()
        throttled = self._throttled()
        if throttled is not None:
            return throttled
        self.calls["transcriptions"] += 1
        self.call_times.append(asyncio.get_running_loop().time())
        upload = form["file"]
        audio = upload.file.read()  # type: ignore[union-attr]
        answer: dict[str, Any] = {"text": audio.decode(errors="replace"), "language": "en"}
        if form.get("response_format") == "verbose_json":
            answer["duration"] = len(audio) / 1000
        return web.json_response(answer)

    # -- Anthropic ---------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = bool(body.get("stream"))
        self.calls["messages_stream" if stream else "messages"] += 1
        if "max_tokens" not in body:
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "max_tokens"},
                },
                status=400,
            )
        failed = await self._misbehave(request, anthropic=True)
        if failed is not None:
            return failed
        messages = body["messages"]
        text = self._reply(messages)
        in_tokens = input_tokens(messages, body.get("system", ""))
        out_tokens = _words(text)
        model = body["model"]
        if not stream:
            return web.json_response(
                {
                    "id": "msg_test",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            return await self._anthropic_stream(request, response, model, text, in_tokens)
        except ConnectionResetError:
            return response

    async def _anthropic_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        model: str,
        text: str,
        in_tokens: int,
    ) -> web.StreamResponse:
        out_tokens = _words(text)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_test",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "usage": {"input_tokens": in_tokens, "output_tokens": 1},
                },
            },
        )
        await send(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await send("ping", {"type": "ping"})
        words = text.split(" ")
        cut = self._cut_point(len(words))
        for i, word in enumerate(words):
            if cut is not None and i == cut:
                return await self._cut(request, response)
            if self.behaviour.chunk_delay_s:
                await asyncio.sleep(self.behaviour.chunk_delay_s)
            piece = word if i == 0 else " " + word
            await send(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": out_tokens},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    # -- cutting streams -----------------------------------------------------------------

    def _cut_point(self, words: int) -> int | None:
        b = self.behaviour
        if b.cut_after is None or self._rng.random() >= b.cut_rate:
            return None
        return min(b.cut_after, max(0, words - 1))

    async def _cut(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        self.calls["cut"] += 1
        if self.behaviour.cut_mode == "eof":
            await response.write_eof()
        elif request.transport is not None:
            request.transport.abort()
        return response


async def start_servers(*names: str) -> list[ModelServer]:
    return [await ModelServer(name).start() for name in names]
