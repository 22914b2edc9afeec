"""Anthropic's Messages API, plain and SSE-streamed.

System messages of an OpenAI-style message list move to the ``system`` field;
``max_tokens`` (required by the API) defaults to ``default_max_tokens``.  Input
tokens come from ``message_start``, output tokens from the last
``message_delta``; a stream without ``message_stop`` is a broken stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from weir.core.errors import ModelResponseError, StreamInterruptedError
from weir.processors.providers._base import Completion, Message, Piece, ProviderCall
from weir.processors.providers._http import HttpProvider, status_error
from weir.processors.tokens import message_text

__all__ = ["Anthropic"]

_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class Anthropic(HttpProvider):
    """Anthropic's API (or a server speaking it); ``api_key`` is a secret reference.

    >>> Anthropic(api_key="env:ANTHROPIC_API_KEY").describe()
    'anthropic at https://api.anthropic.com/v1'
    """

    name = "anthropic"

    def __init__(
        self,
        base_url: str = "https://api.anthropic.com/v1",
        *,
        api_key: str | None = None,
        version: str = "2023-06-01",
        default_max_tokens: int = 1024,
        http2: bool = False,
        max_connections: int = 100,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            http2=http2,
            max_connections=max_connections,
            headers={"anthropic-version": version},
        )
        self.default_max_tokens = default_max_tokens

    def auth_headers(self, call: ProviderCall) -> dict[str, str]:
        if call.api_key is None:
            return {}
        return {"x-api-key": call.api_key.get_secret_value()}

    def _body(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        system = [message_text(m) for m in messages if m.get("role") == "system"]
        rest = [dict(m) for m in messages if m.get("role") != "system"]
        body: dict[str, Any] = {"max_tokens": self.default_max_tokens, **params}
        body.update(model=call.model, messages=rest)
        if system and "system" not in body:
            body["system"] = "\n\n".join(system)
        return body

    async def chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> Completion:
        data = await self.post_json(call, "/messages", self._body(call, messages, params))
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise ModelResponseError(f"endpoint {call.endpoint!r}: messages answer has no content")
        text = "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text"
        )
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            model=str(data.get("model") or call.model),
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            finish_reason=data.get("stop_reason"),
            raw=data,
        )

    async def stream_chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> AsyncIterator[Piece]:
        body = {**self._body(call, messages, params), "stream": True}
        async for event in self.stream_sse(call, "/messages", body):
            if event.event == "ping":
                continue
            try:
                data = json.loads(event.data)
            except json.JSONDecodeError:
                raise ModelResponseError(
                    f"endpoint {call.endpoint!r} streamed an event that is not JSON"
                ) from None
            kind = event.event if event.event != "message" else str(data.get("type", ""))
            if kind == "message_start":
                message = data.get("message") or {}
                usage = message.get("usage") or {}
                yield Piece(
                    model=message.get("model"),
                    input_tokens=_int(usage.get("input_tokens")),
                    output_tokens=_int(usage.get("output_tokens")),
                )
            elif kind == "content_block_delta":
                delta = data.get("delta") or {}
                if delta.get("type") == "text_delta":
                    yield Piece(text=str(delta.get("text", "")))
            elif kind == "message_delta":
                usage = data.get("usage") or {}
                yield Piece(
                    output_tokens=_int(usage.get("output_tokens")),
                    input_tokens=_int(usage.get("input_tokens")),
                    finish_reason=(data.get("delta") or {}).get("stop_reason"),
                )
            elif kind == "message_stop":
                yield Piece(done=True)
                return
            elif kind == "error":
                error = data.get("error") or {}
                status = _ERROR_STATUS.get(str(error.get("type")), 500)
                raise StreamInterruptedError(
                    str(status_error(call.endpoint, status, str(error.get("message", ""))))
                    + " (mid-stream)"
                )
        raise StreamInterruptedError(
            f"endpoint {call.endpoint!r}: the stream ended without message_stop (answer incomplete)"
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
