"""One request is one OpenTelemetry trace across two ``weir worker`` processes.

Each worker exports over OTLP/HTTP to a receiver this test runs (a real aiohttp
server decoding ``ExportTraceServiceRequest``); the spans are then checked for
one trace id per request and parent links that follow the pipeline's steps.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests._kafka import read_results
from tests._sink import free_port
from tests._traced import flaky
from tests.conftest import worker_env
from weir.core.kafka import KafkaConnection
from weir.streams import WeirClient
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, topic_specs

pytestmark = pytest.mark.kafka


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    error: bool


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (protobuf bodies, optionally gzipped)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for rs in message.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for scope in rs.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            resource=resource,
                            error=s.status.code == 2,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


class Worker:
    def __init__(self, repo: Path, env: dict[str, str], log: Path, steps: str) -> None:
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "weir",
                "worker",
                "tests._traced:flaky_pipeline",
                "--steps",
                steps,
            ],
            cwd=repo,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    async def wait_assigned(self, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while "assigned" not in self.log.read_text():
                if self.proc.poll() is not None:
                    raise AssertionError(self.log.read_text()[-3000:])
                await asyncio.sleep(0.2)

    async def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            while self.proc.poll() is None:
                await asyncio.sleep(0.1)
        self._fh.close()
        return self.proc.returncode


async def test_one_request_is_one_trace_across_two_worker_processes(
    kafka, pipeline_name, repo_root, tmp_path
):
    receiver = OtlpReceiver()
    await receiver.start()
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(flaky(pipeline_name), kafka))
    env = worker_env(
        kafka,
        WEIR_TEST_PIPELINE=pipeline_name,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
    )
    first = Worker(repo_root, env, tmp_path / "first.log", "fetch")
    second = Worker(repo_root, env, tmp_path / "second.log", "generate,deliver")
    n = 30
    upstream_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    upstream_span = "00f067aa0ba902b7"
    try:
        await first.wait_assigned()
        await second.wait_assigned()
        async with WeirClient(kafka) as client:
            ids = await client.submit_many(
                pipeline_name, [{"n": i, "email": f"u{i}@example.com"} for i in range(1, n)]
            )
        # One more from an instrumented producer: its trace context in a Kafka header.
        producer = KafkaConnection.of(kafka).producer()
        await producer.start()
        try:
            await producer.send_and_wait(
                PipelineTopics(pipeline_name).requests,
                json.dumps(
                    {"request_id": "upstream", "payload": {"n": 50, "email": "x@y.io"}}
                ).encode(),
                key=b"upstream",
                headers=[("traceparent", f"00-{upstream_trace}-{upstream_span}-01".encode())],
            )
        finally:
            await producer.stop()
        ids.append("upstream")
        results, _ = await read_results(kafka, PipelineTopics(pipeline_name).results, n)
        assert set(results) == set(ids)
    finally:
        assert await first.stop() == 0
        assert await second.stop() == 0
        await receiver.stop()

    steps = [s for s in receiver.spans if s.attributes.get("weir.pipeline") == pipeline_name]
    by_request: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in steps:
        by_request[s.attributes["weir.request_id"]].append(s)
    assert set(by_request) == set(ids)
    by_id = {s.span_id: s for s in receiver.spans}
    for rid, spans in by_request.items():
        assert len({s.trace_id for s in spans}) == 1, f"{rid} spans {len(spans)} traces"
        fetch = [s for s in spans if s.attributes["weir.step"] == "fetch"]
        generate = sorted(
            (s for s in spans if s.attributes["weir.step"] == "generate"),
            key=lambda s: s.attributes["weir.attempt"],
        )
        delivered = [s for s in spans if s.attributes["weir.step"] == "deliver"]
        if generate[-1].error:  # n % 100 == 7: attempts exhausted, dead-lettered
            assert delivered == [] and len(generate) == 3
            continue
        (deliver,) = delivered
        # Each process exported its own steps.
        assert {s.resource["weir.worker"] for s in fetch} != {deliver.resource["weir.worker"]}
        # Parents follow the steps: the last fetch attempt -> each generate attempt in turn
        # (a retry continues from the failed attempt) -> deliver.
        assert generate[0].parent_id == fetch[-1].span_id
        for before, after in itertools.pairwise(generate):
            assert after.parent_id == before.span_id and before.error
        assert deliver.parent_id == generate[-1].span_id
        if len(fetch) > 1:
            assert fetch[1].parent_id == fetch[0].span_id
        # Every model call is a child span of its attempt, with GenAI attributes.
        for attempt in generate:
            (call,) = [
                s
                for s in receiver.spans
                if s.parent_id == attempt.span_id and "gen_ai.request.model" in s.attributes
            ]
            assert call.trace_id == attempt.trace_id
            assert call.attributes["gen_ai.operation.name"] == "chat"
            assert call.attributes["gen_ai.provider.name"] in {"openai", "anthropic"}
            assert call.attributes["gen_ai.usage.input_tokens"] >= 100
            assert call.error == attempt.error
        roots = [s for s in spans if s.parent_id not in by_id]
        if rid == "upstream":
            assert fetch[0].trace_id == upstream_trace
            assert fetch[0].parent_id == upstream_span
        else:
            assert roots == [fetch[0]]
    retried = [rid for rid, spans in by_request.items() if len(spans) > 3]
    assert len(retried) >= 3  # n % 10 == 0 and n % 25 == 0 requests were retried
