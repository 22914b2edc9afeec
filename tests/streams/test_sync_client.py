"""``SyncWeirClient``: the blocking client a script uses, against a real worker and broker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests._pipelines import diamond
from weir.core.config import load_settings
from weir.core.errors import ResultTimeoutError, WeirError
from weir.streams import SyncWeirClient, Worker


def _script(settings, pipeline: str) -> tuple[list[int], int, list[int]]:
    """What a script does: no event loop of its own, only blocking calls."""
    with SyncWeirClient(settings) as client:
        rid = client.submit(pipeline, {"n": 4})
        one = client.result(rid, timeout=60).value["sum"]
        done: list[int] = []
        results = client.map(
            pipeline,
            [{"n": n} for n in range(30)],
            timeout=60,
            progress=lambda d, t: done.append(d),
        )
        try:
            client.result("nobody-submitted-this", timeout=0.3)
        except ResultTimeoutError:
            pass
        else:
            raise AssertionError("result() of an unknown id must time out")
        return [r.value["double"] for r in results], one, done


@pytest.mark.kafka
async def test_a_script_submits_maps_and_awaits_without_an_event_loop(kafka, pipeline_name):
    p = diamond(pipeline_name)
    async with Worker(p, kafka):
        doubles, one, done = await asyncio.to_thread(_script, kafka, p.name)
    assert doubles == [2 * (n + 1) for n in range(30)]
    assert one == 10 + 25
    assert done == list(range(1, 31))
    assert not [t for t in threading.enumerate() if t.name == "weir-client"]  # loop thread ended


def test_a_client_not_started_says_so() -> None:
    client = SyncWeirClient(load_settings())
    with pytest.raises(WeirError, match="not started"):
        client.submit("p", {})
