"""HTTP plumbing shared by the HTTP providers: pooled clients, SSE, error translation.

Every httpx error and every non-2xx answer becomes one of weir's model errors
here, in one place, so retry and breaker decisions are a lookup on the error
class.  Response bodies quoted in messages are cut short and scrubbed of every
secret this process has resolved (some APIs echo the key they refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from weir.core.errors import (
    ModelError,
    ModelRequestError,
    ModelResponseError,
    ModelTimeoutError,
    ModelUnavailableError,
    RateLimitedError,
    SecretError,
    StreamInterruptedError,
)
from weir.core.secrets import SecretRef, scrub
from weir.core.urls import mask_url
from weir.processors.providers._base import Provider, ProviderCall

__all__ = ["HttpProvider", "SseEvent"]

_BODY_QUOTE = 300


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


class HttpProvider(Provider):
    """A provider over HTTP with one pooled ``httpx.AsyncClient`` per event loop."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        http2: bool = False,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ModelRequestError(f"{self.name} base_url must be http(s)://..., got {base_url!r}")
        if http2:
            try:
                import h2  # noqa: F401
            except ImportError:
                raise ModelRequestError("http2=True needs the h2 package: pip install h2") from None
        if api_key is not None:
            try:
                SecretRef.parse(api_key)
            except SecretError as exc:
                raise SecretError(f"{self.name} provider api_key: {exc}") from None
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http2 = http2
        self.max_concurrency = max_connections
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._headers = dict(headers or {})
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def describe(self) -> str:
        return f"{self.name} at {mask_url(self.base_url)}"

    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            # Deadlines are the endpoint's (asyncio.timeout around each call or chunk);
            # httpx's own per-operation timeouts only catch a connect that never completes.
            client = httpx.AsyncClient(
                http2=self._http2,
                limits=self._limits,
                timeout=httpx.Timeout(None, connect=30.0),
                headers=self._headers,
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def auth_headers(self, call: ProviderCall) -> dict[str, str]:
        """Headers that carry the key (each provider names its own)."""
        return {}

    async def post_json(
        self, call: ProviderCall, path: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        url = self.base_url + path
        with _translated(call.endpoint, streaming=False):
            response = await self.client().post(url, json=body, headers=self.auth_headers(call))
        return self._json_of(call, response)

    def _json_of(self, call: ProviderCall, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise status_error(call.endpoint, response.status_code, response.text, response)
        try:
            value = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r} answered {response.status_code} with a body that is"
                f" not JSON: {_quote(response.text)}"
            ) from None
        if not isinstance(value, dict):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r} answered a JSON {type(value).__name__}, not an object"
            )
        return value

    async def post_multipart(
        self,
        call: ProviderCall,
        path: str,
        data: Mapping[str, str],
        files: Mapping[str, tuple[str, bytes]],
    ) -> dict[str, Any]:
        """A ``multipart/form-data`` POST (file uploads); the JSON object it answers."""
        url = self.base_url + path
        with _translated(call.endpoint, streaming=False):
            response = await self.client().post(
                url, data=dict(data), files=dict(files), headers=self.auth_headers(call)
            )
        return self._json_of(call, response)

    async def stream_sse(
        self, call: ProviderCall, path: str, body: Mapping[str, Any]
    ) -> AsyncIterator[SseEvent]:
        """Server-sent events of a streamed answer, as they arrive."""
        url = self.base_url + path
        started = False
        try:
            with _translated(call.endpoint, streaming=False):
                request = self.client().build_request(
                    "POST", url, json=body, headers=self.auth_headers(call)
                )
                response = await self.client().send(request, stream=True)
            try:
                if response.status_code >= 400:
                    try:
                        text = (await response.aread()).decode("utf-8", "replace")
                    except httpx.HTTPError:
                        text = ""  # the body broke off; the status still says what went wrong
                    raise status_error(call.endpoint, response.status_code, text, response)
                started = True
                event, data = "", list[str]()
                with _translated(call.endpoint, streaming=True):
                    async for line in response.aiter_lines():
                        if not line:
                            if data:
                                yield SseEvent(event or "message", "\n".join(data))
                            event, data = "", list[str]()
                        elif line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        # ":" comments and other fields (id, retry) carry nothing we use.
                    if data:
                        yield SseEvent(event or "message", "\n".join(data))
            finally:
                with contextlib.suppress(httpx.HTTPError):  # the answer is complete or lost
                    await response.aclose()
        except StreamInterruptedError:
            raise
        except ModelUnavailableError as exc:
            if started:
                raise StreamInterruptedError(str(exc)) from None
            raise


class _translated:
    """Turns httpx errors raised in the block into model errors naming the endpoint."""

    def __init__(self, endpoint: str, *, streaming: bool) -> None:
        self._endpoint = endpoint
        self._streaming = streaming

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or not isinstance(exc, httpx.HTTPError):
            return
        where = f"endpoint {self._endpoint!r}"
        what = f"{type(exc).__name__}: {scrub(str(exc))[:_BODY_QUOTE]}"
        error: ModelError
        if self._streaming:
            error = StreamInterruptedError(f"{where}: the stream broke off ({what})")
        elif isinstance(exc, httpx.TimeoutException):
            error = ModelTimeoutError(f"{where} timed out ({what})")
        elif isinstance(exc, httpx.TransportError):
            error = ModelUnavailableError(f"{where} cannot be reached ({what})")
        else:
            error = ModelUnavailableError(f"{where}: {what}")
        # ``from None``: httpx's own exception may quote request details; ours is complete.
        raise error from None


def _quote(text: str) -> str:
    text = scrub(text.strip())
    return text[:_BODY_QUOTE] + ("..." if len(text) > _BODY_QUOTE else "")


def status_error(
    endpoint: str, status: int, body: str, response: httpx.Response | None = None
) -> ModelError:
    """The model error for an HTTP error answer (the body quoted, short and scrubbed)."""
    where = f"endpoint {endpoint!r} answered {status}"
    detail = f"{where}: {_quote(body)}" if body.strip() else where
    error: ModelError
    if status == 429:
        error = RateLimitedError(detail)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                error.retry_after_s = float(retry_after)  # type: ignore[attr-defined]
    elif status in (408, 504):
        error = ModelTimeoutError(detail)
    elif status >= 500 or status == 529:  # 529: Anthropic's "overloaded"
        error = ModelUnavailableError(detail)
    else:
        error = ModelRequestError(detail)
    error.status = status
    return error
