"""``WeirClient``: input checks, and the shared result listener and streams on the broker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests._model_servers import ModelServer
from tests._pipelines import diamond
from tests.conftest import worker_env
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import ConfigError, ResultTimeoutError
from weir.core.kafka import KafkaConnection
from weir.processors import ModelEndpoint, OpenAICompatible, Price
from weir.processors.services import ModelServices
from weir.streams import Pipeline, Worker
from weir.streams.client import WeirClient
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, topic_specs


@pytest.mark.parametrize(("payloads", "ids"), [(3, 2), (1, 2)])
async def test_submit_many_refuses_a_request_id_count_that_does_not_match(payloads, ids):
    client = WeirClient(load_settings())  # not started: the check comes before any I/O
    with pytest.raises(ConfigError) as raised:
        await client.submit_many(
            "p", [{"n": n} for n in range(payloads)], request_ids=[f"r{n}" for n in range(ids)]
        )
    assert f"{payloads} payload(s) but {ids} request id(s)" in str(raised.value)


# -- on the broker ------------------------------------------------------------------------


def _broker_connections(settings: WeirSettings) -> int:
    """TCP connections this process holds to the broker: what the broker sees of us."""
    port = int(settings.bootstrap_servers.rsplit(":", 1)[1])
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


class _WorkerProcess:
    """``weir worker tests._pipelines:diamond_pipeline``, so its connections are not ours."""

    def __init__(self, repo: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir", "worker", "tests._pipelines:diamond_pipeline"],
            cwd=repo,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@pytest.mark.kafka
async def test_a_thousand_concurrent_result_awaits_share_one_consumer(
    kafka, pipeline_name, repo_root, tmp_path
):
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(diamond(pipeline_name), kafka))
    worker = _WorkerProcess(
        repo_root, worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name), tmp_path / "worker.log"
    )
    try:
        # Other tests of this process may hold connections of their own: count ours as a
        # difference.
        outside = _broker_connections(kafka)
        async with WeirClient(kafka) as client:
            ids = await client.submit_many(pipeline_name, [{"n": n} for n in range(1000)])
            before = _broker_connections(kafka)
            peak = before
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, _broker_connections(kafka))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            try:
                results = await asyncio.gather(*(client.result(rid, timeout=120) for rid in ids))
            finally:
                sampling = False
                await sampler
            received = client.listener.received
    finally:
        worker.stop()
    for n, (rid, result) in enumerate(zip(ids, results, strict=True)):
        assert result.request_id == rid and result.status == "SUCCESS"
        assert result.value == {"double": 2 * (n + 1), "square": (n + 1) ** 2,
                                "sum": 2 * (n + 1) + (n + 1) ** 2}  # fmt: skip
    # A producer and one listener; awaiting a thousand results opened no consumer more (a
    # consumer per await would be a thousand connections; a reconnect is one or two).
    assert before - outside <= 4, (outside, before)
    assert peak - before <= 2, (before, peak)
    assert received >= 1000


@pytest.mark.kafka
async def test_result_survives_an_unreadable_record_and_times_out_clearly(kafka, pipeline_name):
    p = diamond(pipeline_name)
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        first = await client.submit(p.name, {"n": 1})
        assert (await client.result(first, timeout=60)).value["sum"] == 8
        # Garbage on the results topic must not stop the listener for everyone else.
        async with KafkaConnection.of(kafka).producer() as producer:
            await producer.send_and_wait(
                PipelineTopics(p.name).results, b"\x00not a result", key=b"x"
            )
        ids = await client.submit_many(p.name, [{"n": n} for n in range(20)])
        results = await asyncio.gather(*(client.result(rid, timeout=60) for rid in ids))
        assert [r.value["double"] for r in results] == [2 * (n + 1) for n in range(20)]
        with pytest.raises(ResultTimeoutError) as raised:
            await client.result("never-submitted", timeout=0.5)
    assert "never-submitted" in str(raised.value) and "0.5s" in str(raised.value)


@pytest.mark.kafka
async def test_map_returns_results_in_order_and_reports_progress(kafka, pipeline_name):
    p = diamond(pipeline_name)
    seen: list[tuple[int, int]] = []
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        results = await client.map(
            p.name,
            [{"n": n} for n in range(50)],
            timeout=60,
            progress=lambda d, t: seen.append((d, t)),
        )
    assert [r.value["square"] for r in results] == [(n + 1) ** 2 for n in range(50)]
    assert seen == [(d, 50) for d in range(1, 51)]


@pytest.mark.kafka
async def test_stream_yields_a_submitted_requests_chunks_in_order(kafka, pipeline_name):
    reply = " ".join(f"word{n}" for n in range(40))
    server = await ModelServer("sdk").start()
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
        async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
            rid = await client.submit(p.name, {"text": "refund?"})
            # Opened after submitting: the client knows when, and reads from there.
            chunks = [chunk async for chunk in client.stream(rid, idle_timeout=30)]
            result = await client.result(rid, timeout=30)
    finally:
        await server.stop()
    assert [c.kind for c in chunks][-1] == "done"
    assert "restart" not in [c.kind for c in chunks]
    deltas = [c for c in chunks if c.kind == "delta"]
    assert "".join(c.text for c in deltas) == reply == result.value
    seqs = [c.seq for c in chunks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_stream_of_a_request_this_client_did_not_submit_needs_its_pipeline() -> None:
    client = WeirClient(load_settings())
    with pytest.raises(ConfigError, match="give its pipeline"):
        client.stream("someone-elses")
