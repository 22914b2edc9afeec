"""Step caching on a real broker, with a real ``weir sink`` storing the trace events."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from tests._sink import SinkProcess, sink_settings
from weir.core.errors import PipelineDefinitionError
from weir.streams import Cache, Pipeline, WeirClient, Worker
from weir.traces import RemoteTraceStore, TraceStore


def _cached(name: str, version: str, calls: collections.Counter[str]) -> Pipeline:
    p = Pipeline(name)

    @p.step(cache=Cache(ttl=600, version=version))
    async def answer(text: str) -> dict[str, Any]:
        calls[version] += 1
        await asyncio.sleep(0.05)  # a model call's worth of time: concurrent misses overlap
        return {"reply": text.upper(), "version": version}

    @p.step(depends_on=[answer])
    def deliver(answer: dict[str, Any]) -> dict[str, Any]:
        return answer

    return p


async def _stored(url: str, pipeline: str, expected: int) -> None:
    remote = RemoteTraceStore(url)
    try:
        async with asyncio.timeout(120):
            while True:
                try:
                    stats = await asyncio.to_thread(remote.stats, since_ms=0, pipeline=pipeline)
                    if sum(s.attempts for s in stats.steps) >= expected:
                        return
                except Exception:  # the sink's store may still be opening
                    pass
                await asyncio.sleep(0.5)
    finally:
        remote.close()


@pytest.mark.kafka
async def test_a_cached_step_runs_once_for_a_hundred_identical_requests(
    kafka, pipeline_name, repo_root, tmp_path
):
    settings = sink_settings(kafka, pipeline_name, f"chdb://{tmp_path / 'store'}")
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    calls: collections.Counter[str] = collections.Counter()
    same = [{"text": "is my card blocked?"}]
    try:
        await sink.wait_placed()
        async with (
            Worker(_cached(pipeline_name, "v1", calls), settings),
            WeirClient(settings) as client,
        ):
            first = await client.map(pipeline_name, same * 100, timeout=120)
        assert calls["v1"] == 1
        assert {r.value["reply"] for r in first} == {"IS MY CARD BLOCKED?"}
        assert sum(r.cost_usd for r in first) == 0 and all(not r.calls for r in first)
        # A new version calls again; a restarted worker finds v1's entry in the table.
        async with (
            Worker(_cached(pipeline_name, "v2", calls), settings),
            WeirClient(settings) as client,
        ):
            second = await client.map(pipeline_name, same * 10, timeout=120)
        async with (
            Worker(_cached(pipeline_name, "v1", calls), settings),
            WeirClient(settings) as client,
        ):
            third = await client.map(pipeline_name, same * 5, timeout=120)
        assert calls == {"v1": 1, "v2": 1}
        assert {r.value["version"] for r in second} == {"v2"}
        assert {r.value["version"] for r in third} == {"v1"}
        await _stored(sink.url, pipeline_name, 2 * 115)
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]
    store = TraceStore.connect(settings)
    try:
        rows = store.query(
            "SELECT status, count() FROM pipeline_events WHERE pipeline_id = {p:String}"
            " AND step_name = 'answer' GROUP BY status",
            p=pipeline_name,
        )
    finally:
        store.close()
    assert dict(rows) == {"SUCCESS": 2, "CACHE_HIT": 99 + 9 + 5}


def test_a_cache_that_cannot_work_is_refused_when_the_step_is_declared() -> None:
    with pytest.raises(PipelineDefinitionError, match="ttl"):
        Cache(ttl=0)
    p = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match="must be a Cache"):
        p.step(name="echo", cache={"ttl": 5})(lambda text: text)  # type: ignore[arg-type]
