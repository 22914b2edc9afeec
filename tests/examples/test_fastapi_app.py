"""The FastAPI example served by uvicorn on a free port, driven with httpx over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from examples.fastapi_app import create_app
from tests._model_servers import ModelServer
from tests._pipelines import diamond
from weir.core.config import WeirSettings
from weir.processors import ModelEndpoint, OpenAICompatible, Price
from weir.processors.services import ModelServices
from weir.streams import Pipeline, Worker

pytestmark = pytest.mark.kafka


@asynccontextmanager
async def _served(settings: WeirSettings, pipeline: str) -> AsyncIterator[str]:
    """The example app under uvicorn (its lifespan included) on 127.0.0.1; yields its URL."""
    config = uvicorn.Config(
        create_app(settings, pipeline=pipeline, timeout=30),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()  # raises why it could not start
                await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def _sse(body: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_the_handler_submits_awaits_and_returns_each_result(kafka, pipeline_name):
    p = diamond(pipeline_name)
    async with (
        Worker(p, kafka, services=ModelServices(kafka)),
        _served(kafka, p.name) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        answers = await asyncio.gather(*(http.post("/ask", json={"n": n}) for n in range(40)))
        bad = await http.post("/ask", json={"n": "not a number"})
    for n, response in enumerate(answers):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"] == {"double": 2 * (n + 1), "square": (n + 1) ** 2,
                                  "sum": 2 * (n + 1) + (n + 1) ** 2}  # fmt: skip
        assert response.headers["X-Request-Id"] == body["request_id"]
    assert len({r.json()["request_id"] for r in answers}) == 40
    assert bad.status_code == 502 and bad.json()["error_type"]  # the failure, as an error


async def test_the_stream_route_relays_tokens_in_order_then_the_result(kafka, pipeline_name):
    reply = " ".join(f"token{n}" for n in range(30))
    server = await ModelServer("fastapi").start()
    server.behaviour.reply = lambda text: reply
    server.behaviour.chunk_delay_s = 0.005
    llm = ModelEndpoint(
        f"{pipeline_name}-llm",
        provider=OpenAICompatible(server.url),
        price=Price.per_million(input="0.15", output="0.60"),
        breaker=None,
    )
    p = Pipeline(pipeline_name)

    @p.step()
    async def answer(text: str) -> str:
        return (await llm.stream_chat([{"role": "user", "content": text}]).collect()).text

    try:
        async with (
            Worker(p, kafka, services=ModelServices(kafka)),
            _served(kafka, p.name) as url,
            httpx.AsyncClient(base_url=url, timeout=60) as http,
        ):
            response = await http.post("/ask/stream", json={"text": "why?"})
    finally:
        await server.stop()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[-2:] == ["done", "result"] and set(kinds[:-2]) == {"delta"}
    assert "".join(str(data["text"]) for kind, data in events if kind == "delta") == reply
    seqs = [int(data["seq"]) for kind, data in events[:-1]]  # type: ignore[call-overload]
    assert seqs == sorted(seqs)
    result = events[-1][1]
    assert result["answer"] == reply and result["request_id"] == response.headers["X-Request-Id"]
