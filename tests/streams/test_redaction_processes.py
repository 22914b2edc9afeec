"""Canary PII and secrets leave a real worker and a real sink through no channel at all.

A ``weir worker`` process runs ``tests._canary``: its steps log the canaries,
raise them in exception messages, tracebacks and chained causes, and trace
their inputs and outputs; the ClickHouse DSN of both processes carries a
canary password.  Every way out is then read back independently: the
processes' stderr, the trace topic, the trace store through the sink's API,
dead-letter headers, results, and the HTTP answers of both servers.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests._canary import CANARIES, CANARY_EMAIL, CANARY_PASSWORD, canary_pipeline
from tests._clickhouse_http import ClickHouseHttp
from tests._kafka import read_topic
from tests._sink import SinkProcess, free_port, sink_settings
from tests.conftest import worker_env
from tests.traces.test_clickhouse_sink import wait_stored
from weir.core.config import WeirSettings
from weir.streams import WeirClient
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, global_topic_specs, topic_specs

pytestmark = pytest.mark.kafka

REQUESTS = 3


class CanaryWorker:
    """``python -m weir worker tests._canary:canary`` with stdout and stderr in a file."""

    def __init__(self, repo: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir", "worker", "tests._canary:canary"],
            cwd=repo,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    async def wait_assigned(self, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not re.search(r"assigned \d+ partitions \([1-9]\d* in total\)", self.text()):
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited:\n{self.text()[-3000:]}")
                await asyncio.sleep(0.2)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._fh.close()
        return code


def _leaks(text: str | bytes) -> list[str]:
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [c for c in CANARIES if c in body]


async def _get_all(
    client: httpx.AsyncClient, servers: dict[str, str], paths: list[str]
) -> dict[str, str]:
    """``"<label><path>": "<status> <body>"`` for every path on every server."""
    out = {}
    for label, base in servers.items():
        for path in paths:
            response = await client.get(base + path)
            out[label + path] = f"{response.status_code} {response.text}"
    return out


async def test_canaries_reach_no_log_trace_dead_letter_result_or_http_response(
    kafka: WeirSettings, pipeline_name: str, repo_root: Path, tmp_path: Path
) -> None:
    server = ClickHouseHttp(tmp_path / "clickhouse", free_port())
    await server.start()
    # clickhouse-connect sends the credentials; the test server accepts any.
    dsn = server.dsn.replace("http://", f"http://weir:{CANARY_PASSWORD}@")
    settings = sink_settings(kafka, pipeline_name, dsn)
    async with TopicAdmin(settings) as admin:
        await admin.ensure(global_topic_specs(settings))
        await admin.ensure(topic_specs(canary_pipeline(pipeline_name), settings))
    web_port = free_port()
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    worker = CanaryWorker(
        repo_root,
        worker_env(
            settings,
            WEIR_TEST_PIPELINE=pipeline_name,
            WEIR_TRACE_TOPIC=settings.trace_topic,
            WEIR_CLICKHOUSE_DSN=dsn,
            WEIR_WEB_PORT=str(web_port),
        ),
        tmp_path / "worker.log",
    )
    topics = PipelineTopics(pipeline_name)
    worker_url, sink_url = f"http://127.0.0.1:{web_port}", sink.url
    try:
        await sink.wait_placed()
        await worker.wait_assigned()
        async with WeirClient(settings) as client:
            ids = await client.submit_many(
                pipeline_name, [{"customer": CANARY_EMAIL} for _ in range(REQUESTS)]
            )
            results = await client.wait_for(pipeline_name, ids, timeout=90)
        assert {r.status for r in results.values()} == {"FAILURE"}
        assert {r.failed_step for r in results.values()} == {"charge"}
        dead = await read_topic(settings, topics.dead_letter("charge"), until=REQUESTS)
        traces = await read_topic(settings, settings.trace_topic, until=2 * REQUESTS)
        answers = await read_topic(settings, topics.results, until=REQUESTS)
        await wait_stored(sink_url, pipeline_name, 2 * REQUESTS)

        async with httpx.AsyncClient(timeout=30) as http:
            pages = [
                "/health",
                "/stats",
                "/models",
                "/dashboard",
                f"/dashboard/requests/{ids[0]}",
                f"/api/traces/requests/{ids[0]}",
                "/api/traces/stats?since=1h",
                "/api/traces/slowest?since=1h",
            ]
            served = await _get_all(http, {"": sink_url, "worker ": worker_url}, pages)
            await server.stop()  # the store goes away: its errors are answered too
            down = await _get_all(
                http, {"": sink_url, "worker ": worker_url}, ["/api/traces/stats", "/dashboard"]
            )
    finally:
        assert worker.stop() == 0, worker.text()[-3000:]
        assert sink.stop() == 0, sink.text()[-3000:]
        await server.stop()
        server.close()

    # Logs: the lines were written (redacted), the canaries were not.
    worker_log, sink_log = worker.text(), sink.text()
    assert _leaks(worker_log) == [], worker_log[-3000:]
    assert _leaks(sink_log) == [], sink_log[-3000:]
    assert "charging [REDACTED:email] with key [REDACTED:api_key]" in worker_log
    assert "billing lookup failed for [REDACTED:email]" in worker_log
    assert "Traceback" in worker_log  # the logged exception is there, redacted
    assert "weir:***@127.0.0.1" in sink_log  # the sink names its store, masked

    # Dead letters: the value is the original message (replay needs it), headers are clean.
    assert len(dead) == REQUESTS
    for record in dead:
        headers = dict(record.headers)
        assert _leaks(b"\n".join(headers.values())) == [], headers
        assert b"[REDACTED:email]" in headers["__connect.errors.exception.message"]
        assert b"Traceback" in headers["__connect.errors.exception.stacktrace"]
        assert CANARY_EMAIL.encode() in record.value

    # Trace events on the topic and in the store; results.
    assert len(traces) >= 2 * REQUESTS
    for record in traces:
        assert _leaks(record.value) == [], record.value[:2000]
    assert any(b"[REDACTED:email]" in r.value for r in traces)  # log_io input/output
    assert len(answers) == REQUESTS
    for record in answers:
        assert _leaks(record.value) == [], record.value
    assert all("[REDACTED:email]" in (r.error_message or "") for r in results.values())

    # HTTP: every page of both servers, with the store up and down.
    assert all(v.startswith("200") for k, v in served.items() if "/api/traces/stats" in k)
    assert "[REDACTED:" in served[f"/api/traces/requests/{ids[0]}"]  # the stored error
    assert {k: _leaks(v) for k, v in served.items() if _leaks(v)} == {}
    assert {k: _leaks(v) for k, v in down.items() if _leaks(v)} == {}
    assert down["worker /api/traces/stats"].startswith("503")
    assert "weir:***@127.0.0.1" in down["worker /api/traces/stats"]
