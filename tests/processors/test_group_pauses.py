"""Retry-After for the whole group: two real worker processes, one endpoint the test starts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from aiohttp import web

from tests._group_workers import group_workers
from tests._model_servers import vector
from weir.core.kafka import KafkaConnection
from weir.processors.pauses import GroupPauses
from weir.streams import WeirClient
from weir.topics.names import PAUSES_TOPIC

pytestmark = pytest.mark.kafka

RETRY_AFTER_S = 3.0
FOLLOWING = "following other workers' endpoint pauses"
PROPAGATION_S = 0.7
"""Calls already admitted when the 429 came, and the pause's trip through the topic."""


class ThrottlingEmbedder:
    """Embeddings that take 20 ms; once armed, the next call gets 429 + ``Retry-After``."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        """(monotonic time, worker pid) of every call answered with vectors."""
        self.throttled: tuple[float, str] | None = None
        self.armed = False
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def pids(self, since: float = 0.0) -> set[str]:
        return {pid for at, pid in self.calls if at >= since}

    async def _embeddings(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        texts: list[str] = body["input"]
        pid = texts[0].partition(":")[0]
        if self.armed and self.throttled is None:
            self.throttled = (time.monotonic(), pid)
            error = {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}
            return web.json_response(
                error, status=429, headers={"Retry-After": f"{RETRY_AFTER_S:g}"}
            )
        await asyncio.sleep(0.02)
        self.calls.append((time.monotonic(), pid))
        data = [
            {"object": "embedding", "index": i, "embedding": vector(t)} for i, t in enumerate(texts)
        ]
        return web.json_response({"object": "list", "model": body["model"], "data": data})


async def test_a_429_with_retry_after_pauses_the_endpoint_in_every_worker_of_the_group(
    kafka, pipeline_name, repo_root, tmp_path
):
    server = ThrottlingEmbedder()
    await server.start()
    try:
        async with (
            group_workers(
                kafka,
                "tests._pause_pipeline:pipeline",
                pipeline_name,
                count=2,
                repo_root=repo_root,
                logs=tmp_path,
                WEIR_TEST_MODEL_URL=server.url,
            ),
            WeirClient(kafka) as client,
        ):
            await client.submit_many(pipeline_name, [{"text": f"t{i}"} for i in range(4000)])
            # Both workers call the endpoint (each follows the group's pauses from its
            # first call) before the one 429 is answered.
            for _ in range(600):
                if len(server.pids(since=time.monotonic() - 1)) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(server.pids(since=time.monotonic() - 1)) == 2, server.calls[-5:]
            # ...and both follow the group's pauses (they start to at their first call).
            logs = [tmp_path / f"worker{i}.log" for i in range(2)]
            for _ in range(600):
                if all(FOLLOWING in log.read_text() for log in logs):
                    break
                await asyncio.sleep(0.1)
            assert all(FOLLOWING in log.read_text() for log in logs)
            await asyncio.sleep(1)
            server.armed = True
            for _ in range(100):
                if server.throttled is not None:
                    break
                await asyncio.sleep(0.1)
            assert server.throttled is not None
            at, throttled_pid = server.throttled
            await asyncio.sleep(RETRY_AFTER_S + 3)
        other = (server.pids() - {throttled_pid}).pop()
        during = [
            (t - at, pid)
            for t, pid in server.calls
            if at + PROPAGATION_S <= t < at + RETRY_AFTER_S - 0.1
        ]
        # Without the pause reaching it, the other worker would have called every 20 ms.
        assert during == [], during[:10]
        before = [t for t, pid in server.calls if pid == other and at - 1 <= t < at]
        after = [t for t, pid in server.calls if pid == other and t >= at + RETRY_AFTER_S - 0.1]
        assert before, "the other worker was calling before the 429"
        assert after, "the other worker calls again once the pause is over"
    finally:
        await server.stop()


async def test_a_malformed_pause_is_skipped_and_a_far_one_is_capped_at_ten_minutes(kafka, caplog):
    group = f"g-{uuid.uuid4().hex[:8]}"  # the topic is shared: other tests' pauses are there
    pauses = GroupPauses(kafka)
    await pauses.start()
    producer = KafkaConnection.of(kafka).producer()
    await producer.start()
    try:
        far = json.dumps({"group": group, "endpoint": "far", "until": time.time() + 86400})
        near = json.dumps({"group": group, "endpoint": "near", "until": time.time() + 5})
        for value in (b"not json", b'{"group": "g"}', far.encode(), near.encode()):
            await producer.send_and_wait(PAUSES_TOPIC, value, group.encode())
        for _ in range(100):
            if pauses.until(group, "near"):
                break
            await asyncio.sleep(0.1)
        assert 0 < pauses.until(group, "near") - time.time() <= 5
        assert 0 < pauses.until(group, "far") - time.time() <= 600
        assert pauses.until("other-group", "near") == 0.0
        skipped = [r for r in caplog.records if "malformed pause" in r.getMessage()]
        assert len(skipped) == 2
    finally:
        await producer.stop()
        await pauses.aclose()
