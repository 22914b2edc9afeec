"""A FastAPI application on weir: each handler submits a request, awaits it, and answers.

One ``WeirClient`` lives as long as the application (its lifespan), so every
handler shares one producer and one result listener: awaiting a result is a
dictionary lookup, not a consumer per request.

    pip install 'weir[fastapi]'
    weir worker weir.demo.pipeline:pipeline
    uvicorn --factory examples.fastapi_app:create_app

    curl -s localhost:8000/ask -d '{"customer_id": "c-1", "text": "my balance?"}'
    curl -sN localhost:8000/ask/stream -d '{"text": "..."}'    # a pipeline that streams

``POST /ask`` returns the result (504 if it did not come in time, 502 with the
error type if the request failed).  ``POST /ask/stream`` answers with
Server-Sent Events: the model's tokens as ``delta`` events (``restart``: drop
the text so far), then one ``result`` event; ``abort`` or ``timeout`` end it
early.  The request id is in the ``X-Request-Id`` header of both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from weir.core.config import WeirSettings, load_settings
from weir.core.errors import ResultTimeoutError, StreamAbortedError
from weir.schemas.messages import Result
from weir.streams import WeirClient


def _answer(result: Result) -> JSONResponse:
    headers = {"X-Request-Id": result.request_id}
    if result.status != "SUCCESS":
        body = {
            "request_id": result.request_id,
            "error_type": result.error_type,
            "failed_step": result.failed_step,
            "message": result.error_message,
        }
        return JSONResponse(body, status_code=502, headers=headers)
    body = {
        "request_id": result.request_id,
        "answer": result.value,
        "path": list(result.path),
        "cost_usd": str(result.cost_usd),
    }
    return JSONResponse(body, headers=headers)


def _event(kind: str, data: object) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def create_app(
    settings: WeirSettings | None = None,
    *,
    pipeline: str = "intent_support",
    timeout: float = 30.0,
) -> FastAPI:
    """The application; ``settings`` default to the environment's (``WEIR_*``)."""
    config = settings if settings is not None else load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with WeirClient(config) as client:
            app.state.client = client
            yield

    app = FastAPI(title="weir example", lifespan=lifespan)

    @app.post("/ask")
    async def ask(payload: dict[str, Any], request: Request) -> JSONResponse:
        client: WeirClient = request.app.state.client
        rid = await client.submit(pipeline, payload)
        try:
            result = await client.result(rid, timeout=timeout)
        except ResultTimeoutError as exc:
            return JSONResponse(
                {"request_id": rid, "error_type": exc.error_type, "message": str(exc)},
                status_code=504,
                headers={"X-Request-Id": rid},
            )
        return _answer(result)

    @app.post("/ask/stream")
    async def ask_stream(payload: dict[str, Any], request: Request) -> StreamingResponse:
        client: WeirClient = request.app.state.client
        rid = await client.submit(pipeline, payload)

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in client.stream(rid, idle_timeout=timeout):
                    yield _event(chunk.kind, {"text": chunk.text, "seq": chunk.seq})
                result = await client.result(rid, timeout=timeout)
            except StreamAbortedError as exc:
                yield _event("abort", {"reason": exc.reason, "message": str(exc)})
                return
            except TimeoutError as exc:
                yield _event("timeout", {"message": str(exc)})
                return
            yield _event("result", json.loads(_answer(result).body))

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"X-Request-Id": rid, "Cache-Control": "no-cache"},
        )

    return app
