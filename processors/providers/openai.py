"""OpenAI-compatible HTTP APIs: chat completions (plain and SSE-streamed), embeddings,
image generation (``/images/generations``) and audio transcription (``/audio/transcriptions``).

The same wire format is served by OpenAI, Azure OpenAI's v1 API, vLLM, Ollama,
TGI's Messages API, LM Studio, llama.cpp's server and most hosted gateways, so
``base_url`` is all that differs (it includes the ``/v1`` part).

Streamed calls ask for usage in the stream (``stream_options.include_usage``),
so their tokens are the provider's own count, not an estimate; a stream that
ends without ``[DONE]`` is a broken stream, never a short answer.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from weir.core.errors import ModelResponseError, StreamInterruptedError
from weir.processors.providers._base import (
    Completion,
    Embedded,
    Imaged,
    Message,
    Piece,
    ProviderCall,
    Transcribed,
)
from weir.processors.providers._http import HttpProvider

__all__ = ["OpenAICompatible"]


class OpenAICompatible(HttpProvider):
    """An OpenAI-compatible server.

    ``api_key`` is a secret reference (``env:OPENAI_API_KEY``); servers that need
    no key (a local vLLM or Ollama) take ``None``.  ``stream_usage=False`` is for
    servers that reject ``stream_options``; their streamed usage is then estimated.

    >>> OpenAICompatible("http://127.0.0.1:11434/v1").describe()
    'openai at http://127.0.0.1:11434/v1'
    """

    name = "openai"

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key: str | None = None,
        organization: str | None = None,
        stream_usage: bool = True,
        http2: bool = False,
        max_connections: int = 100,
    ) -> None:
        headers = {"OpenAI-Organization": organization} if organization else None
        super().__init__(
            base_url,
            api_key=api_key,
            http2=http2,
            max_connections=max_connections,
            headers=headers,
        )
        self.stream_usage = stream_usage

    def auth_headers(self, call: ProviderCall) -> dict[str, str]:
        if call.api_key is None:
            return {}
        return {"Authorization": f"Bearer {call.api_key.get_secret_value()}"}

    async def chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> Completion:
        body = {**params, "model": call.model, "messages": list(messages), "stream": False}
        data = await self.post_json(call, "/chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r}: chat answer has no choices[0].message"
            ) from None
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            model=str(data.get("model") or call.model),
            input_tokens=_int(usage.get("prompt_tokens")),
            output_tokens=_int(usage.get("completion_tokens")),
            finish_reason=finish,
            raw=data,
        )

    async def stream_chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> AsyncIterator[Piece]:
        body: dict[str, Any] = {
            **params,
            "model": call.model,
            "messages": list(messages),
            "stream": True,
        }
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        async for event in self.stream_sse(call, "/chat/completions", body):
            if event.data.strip() == "[DONE]":
                yield Piece(done=True)
                return
            try:
                chunk = json.loads(event.data)
            except json.JSONDecodeError:
                raise ModelResponseError(
                    f"endpoint {call.endpoint!r} streamed an event that is not JSON"
                ) from None
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:  # some servers report failures inside a 200 stream
                message = str((chunk.get("error") or {}).get("message", "error"))[:200]
                raise StreamInterruptedError(
                    f"endpoint {call.endpoint!r} reported an error mid-stream: {message}"
                )
            text, finish = "", None
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text += delta.get("content") or ""
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or {}
            yield Piece(
                text=text,
                model=chunk.get("model"),
                input_tokens=_int(usage.get("prompt_tokens")),
                output_tokens=_int(usage.get("completion_tokens")),
                finish_reason=finish,
            )
        raise StreamInterruptedError(
            f"endpoint {call.endpoint!r}: the stream ended without [DONE] (answer incomplete)"
        )

    async def embed(
        self, call: ProviderCall, texts: Sequence[str], params: Mapping[str, Any]
    ) -> Embedded:
        body = {**params, "model": call.model, "input": list(texts)}
        data = await self.post_json(call, "/embeddings", body)
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r}: embeddings answer has no data[].embedding"
            ) from None
        if len(vectors) != len(texts):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r} returned {len(vectors)} vectors"
                f" for {len(texts)} inputs"
            )
        usage = data.get("usage") or {}
        return Embedded(
            vectors=vectors,
            model=str(data.get("model") or call.model),
            input_tokens=_int(usage.get("prompt_tokens")),
        )

    async def generate_image(
        self, call: ProviderCall, prompt: str, params: Mapping[str, Any]
    ) -> Imaged:
        body = {**params, "model": call.model, "prompt": prompt}
        data = await self.post_json(call, "/images/generations", body)
        rows = data.get("data")
        if not isinstance(rows, list) or not rows:
            raise ModelResponseError(f"endpoint {call.endpoint!r}: images answer has no data[]")
        urls: list[str | None] = []
        blobs: list[bytes | None] = []
        for row in rows:
            url = row.get("url") if isinstance(row, dict) else None
            encoded = row.get("b64_json") if isinstance(row, dict) else None
            if not isinstance(url, str) and not isinstance(encoded, str):
                raise ModelResponseError(
                    f"endpoint {call.endpoint!r}: an image has neither url nor b64_json"
                )
            try:
                blob = base64.b64decode(encoded, validate=True) if encoded else None
            except (binascii.Error, ValueError):
                raise ModelResponseError(
                    f"endpoint {call.endpoint!r}: an image's b64_json is not base64"
                ) from None
            urls.append(url if isinstance(url, str) else None)
            blobs.append(blob)
        return Imaged(urls=urls, data=blobs, model=str(data.get("model") or call.model))

    async def transcribe(
        self, call: ProviderCall, audio: bytes, filename: str, params: Mapping[str, Any]
    ) -> Transcribed:
        # verbose_json carries the audio's duration, which the price is per second of.
        fields = {"response_format": "verbose_json", **{k: str(v) for k, v in params.items()}}
        fields["model"] = call.model
        data = await self.post_multipart(
            call, "/audio/transcriptions", fields, {"file": (filename, audio)}
        )
        text = data.get("text")
        if not isinstance(text, str):
            raise ModelResponseError(f"endpoint {call.endpoint!r}: transcription has no text")
        duration = data.get("duration")
        return Transcribed(
            text=text,
            model=str(data.get("model") or call.model),
            duration_s=float(duration) if isinstance(duration, int | float) else None,
            language=data.get("language") if isinstance(data.get("language"), str) else None,
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
