"""The review routes of the worker's HTTP server, for a review tool.

``GET /reviews/{pipeline}`` lists the open reviews (no transcripts: those are
read with ``weir review show``); ``POST /reviews/{pipeline}/{request_id}`` with
``{"text": ..., "by": ...}`` delivers a person's answer as the request's one
result, like ``weir review answer``: 200 with who answered and how long the
request waited, 404 for an unknown review, 409 for a closed one, 400 for a bad
body, 504 when no result came within ``timeout`` (query parameter, seconds).
"""

from __future__ import annotations

import json

from aiohttp import web

from weir._http import error_response, positive_seconds
from weir.core.config import WeirSettings
from weir.core.errors import (
    ResultTimeoutError,
    ReviewClosedError,
    ReviewError,
    ReviewNotFoundError,
    UnknownPipelineError,
)
from weir.streams.review import answer_review, read_reviews

__all__ = ["add_routes"]

_SETTINGS = web.AppKey("weir.review.settings", WeirSettings)


def add_routes(app: web.Application, settings: WeirSettings) -> None:
    app[_SETTINGS] = settings
    app.router.add_get("/reviews/{pipeline}", _list)
    app.router.add_post("/reviews/{pipeline}/{request_id}", _answer)


async def _list(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    try:
        book = await read_reviews(settings, request.match_info["pipeline"])
    except UnknownPipelineError as exc:
        return error_response(404, exc)
    return web.json_response([r.summary() for r in book.open()])


async def _answer(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    pipeline, rid = request.match_info["pipeline"], request.match_info["request_id"]
    timeout = positive_seconds(request, "timeout", default=60.0)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    by = body.get("by") if isinstance(body, dict) else None
    if not isinstance(text, str) or not isinstance(by, str) or not by.strip():
        bad = ReviewError('send a JSON object {"text": "<the answer>", "by": "<who answers>"}')
        return error_response(400, bad)
    try:
        result = await answer_review(settings, pipeline, rid, text=text, by=by, timeout=timeout)
    except (UnknownPipelineError, ReviewNotFoundError) as exc:
        return error_response(404, exc)
    except ReviewClosedError as exc:
        return error_response(409, exc)
    except ReviewError as exc:
        return error_response(400, exc)
    except ResultTimeoutError as exc:
        return error_response(504, exc)
    value = result.value if isinstance(result.value, dict) else {}
    return web.json_response(
        {
            "request_id": rid,
            "answered_by": value.get("answered_by"),
            "waited_ms": value.get("waited_ms"),
            "human_answered": value.get("human_answered"),
        }
    )
