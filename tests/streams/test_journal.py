"""Model calls paid once: a worker killed between its model calls (one of them streamed)
and its output."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests._journaled import PRICE, journaled
from tests._kafka import read_results, read_topic
from tests._model_servers import ModelServer, input_tokens
from tests.conftest import worker_env
from weir.streams import WeirClient
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, topic_specs

pytestmark = pytest.mark.kafka

N = 200


class _Worker:
    def __init__(self, repo: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir", "worker", "tests._journaled:pipeline"],
            cwd=repo,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    async def wait_assigned(self) -> None:
        async with asyncio.timeout(90):
            while not re.search(r"assigned \d+ partitions", self.log.read_text()):
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited:\n{self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._fh.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._fh.closed:
            self._fh.close()


async def test_a_worker_killed_after_its_model_calls_does_not_call_them_again(
    kafka, pipeline_name, repo_root, tmp_path
):
    server = await ModelServer("journal").start()
    server.behaviour.reply = lambda text: f"answer to {text}"
    topics = PipelineTopics(pipeline_name)
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(journaled(pipeline_name, server.url, 0), kafka))

    def env(hold: float) -> dict[str, str]:
        return worker_env(
            kafka,
            WEIR_TEST_PIPELINE=pipeline_name,
            WEIR_TEST_MODEL_URL=server.url,
            WEIR_TEST_HOLD_S=str(hold),
            WEIR_MAX_IN_FLIGHT="1000",
            WEIR_JOURNAL_CALLS="true",
        )

    first = _Worker(repo_root, env(600), tmp_path / "first.log")
    second: _Worker | None = None
    try:
        await first.wait_assigned()
        async with WeirClient(kafka) as client:
            ids = await client.submit_many(pipeline_name, [{"text": f"q{n}"} for n in range(N)])
        # Every call answered and journaled: all 200 requests now sit between their calls
        # and their output, for ten minutes.
        journal = await read_topic(kafka, topics.journal, until=2 * N, timeout=180)
        assert len(journal) == 2 * N
        assert server.calls["chat"] == N and server.calls["stream"] == N
        first.kill()
        second = _Worker(repo_root, env(0), tmp_path / "second.log")
        results, counts = await read_results(kafka, topics.results, N, timeout=240)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        await server.stop()
    # Not one call more after the restart, streamed or not.
    assert server.calls["chat"] == N and server.calls["stream"] == N
    assert set(results) == set(ids) and max(counts.values()) == 1
    for n, rid in enumerate(ids):
        result = results[rid]
        assert result.status == "SUCCESS", result.error_message
        assert result.value == {"first": f"answer to q{n}", "second": f"answer to again q{n}"}
        expected = Decimal(0)
        for text in (f"q{n}", f"again q{n}"):
            reply = f"answer to {text}"
            tokens_in = input_tokens([{"role": "user", "content": text}])
            expected += PRICE.cost(tokens_in, len(reply.split()))
        assert result.cost_usd == expected  # counted once
        assert len(result.calls) == 2
    # A replayed stream is published again, whole, for clients that follow the request:
    # a done from the call, and one from its replay.
    chunks = [json.loads(r.value) for r in await read_topic(kafka, topics.stream)]
    done = collections.Counter(c["request_id"] for c in chunks if c["type"] == "done")
    assert done == dict.fromkeys(ids, 2)
