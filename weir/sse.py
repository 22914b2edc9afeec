"""The worker's token-stream routes: Server-Sent Events over ``TokenStream``, and ``/models``.

``GET /streams/{pipeline}/{request_id}`` relays one request's token stream as
SSE.  Each open stream holds two Kafka consumers, so a server serves at most
``sse_max_streams`` at once (more get 503 with ``Retry-After``) and each for at
most ``sse_max_lifetime_s`` (then a ``timeout`` event ends it).  ``idle_timeout``
must be a finite number of seconds above 0: ``nan`` or ``inf`` would never fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from aiohttp import web

from weir._http import epoch_ms, error_response, positive_seconds
from weir.core.config import WeirSettings
from weir.core.errors import StreamAbortedError, TooManyStreamsError, UnknownPipelineError
from weir.processors.endpoint import endpoint_states
from weir.processors.streaming import TokenStream

__all__ = ["add_routes"]

_SETTINGS = web.AppKey("weir.models.settings", WeirSettings)


@dataclass
class _StreamSlots:
    """SSE streams open on one application (one per app, never module-wide)."""

    limit: int
    open: int = 0


_SLOTS = web.AppKey("weir.models.sse_slots", _StreamSlots)


def add_routes(app: web.Application, settings: WeirSettings) -> None:
    """``GET /streams/{pipeline}/{request_id}`` (SSE) and ``GET /models`` (breakers, latency)."""
    app[_SETTINGS] = settings
    app[_SLOTS] = _StreamSlots(limit=settings.sse_max_streams)
    app.router.add_get("/streams/{pipeline}/{request_id}", _sse)
    app.router.add_get("/models", _models)


async def _sse(request: web.Request) -> web.StreamResponse:
    settings = request.app[_SETTINGS]
    step = request.query.get("step") or None
    since = epoch_ms(request, "since")
    idle = positive_seconds(request, "idle_timeout", default=60.0)
    slots = request.app[_SLOTS]
    if slots.open >= slots.limit:
        # Each stream holds two Kafka consumers; past the cap, the client should come back.
        busy = TooManyStreamsError(
            f"this server already serves {slots.open} token streams (sse_max_streams ="
            f" {slots.limit}); try again shortly"
        )
        return error_response(503, busy, headers={"Retry-After": "5"})
    slots.open += 1
    try:
        return await _serve_stream(request, settings, step, since, idle)
    finally:
        slots.open -= 1


async def _serve_stream(
    request: web.Request, settings: WeirSettings, step: str | None, since: int | None, idle: float
) -> web.StreamResponse:
    stream = TokenStream(
        settings,
        request.match_info["pipeline"],
        request.match_info["request_id"],
        step=step,
        since_ms=since,
        idle_timeout=idle,
    )
    try:
        await stream.start()
    except UnknownPipelineError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    lifetime = settings.sse_max_lifetime_s
    try:
        await response.prepare(request)
        async with asyncio.timeout(lifetime):
            async for chunk in stream:
                data = {
                    "text": chunk.text,
                    "step": chunk.step,
                    "attempt": chunk.attempt,
                    "endpoint": chunk.endpoint,
                    "seq": chunk.seq,
                }
                if chunk.kind == "restart":
                    data["error_type"] = chunk.error_type
                if chunk.kind == "done":
                    data["usage"] = chunk.usage
                    data["cost_usd"] = str(chunk.cost_usd) if chunk.cost_usd is not None else None
                await response.write(
                    f"event: {chunk.kind}\nid: {chunk.seq}\ndata: {json.dumps(data)}\n\n".encode()
                )
    except TimeoutError as exc:
        # The idle timeout (TokenStream's) or the lifetime cap (ours): say which.
        text = str(exc) or f"the stream reached its lifetime of {lifetime:g}s (sse_max_lifetime_s)"
        await _last_write(response, f"event: timeout\ndata: {json.dumps(text)}\n\n")
    except StreamAbortedError as exc:
        aborted = json.dumps({"reason": exc.reason, "message": str(exc)})
        await _last_write(response, f"event: abort\ndata: {aborted}\n\n")
    except ConnectionResetError:
        pass  # the client went away
    finally:
        await stream.stop()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _last_write(response: web.StreamResponse, text: str) -> None:
    with contextlib.suppress(ConnectionResetError):  # the client may be gone already
        await response.write(text.encode())


async def _models(request: web.Request) -> web.Response:
    # The worker's settings (its --config), never ones re-read from the environment.
    return web.json_response(endpoint_states(request.app[_SETTINGS]))
