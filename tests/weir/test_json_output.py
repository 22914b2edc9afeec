"""Every command that prints data prints parseable JSON with ``--json``; results carry values.

The commands run as real processes (``python -m weir ...``) against the test broker
and a trace store a real ``weir sink`` filled from a real worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._kafka import read_results, read_topic
from tests._sink import SinkProcess, sink_settings
from tests._traced import expected_attempts, flaky
from tests.conftest import worker_env
from tests.traces.test_clickhouse_sink import wait_stored
from weir.core.config import WeirSettings
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

N = 20  # flaky's request 7 always times out: one dead letter


@dataclass
class World:
    repo: Path
    settings: WeirSettings
    name: str
    router: str
    request_ids: list[str]
    home: Path
    seen: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weir", *args],
            cwd=self.repo,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def env(self) -> dict[str, str]:
        return worker_env(
            self.settings,
            WEIR_CLICKHOUSE_DSN=self.settings.trace_store_dsn.get_secret_value(),
            WEIR_TRACE_TOPIC=self.settings.trace_topic,
        )


async def _fill(settings: WeirSettings, name: str, sink: SinkProcess) -> list[str]:
    await sink.wait_placed()
    async with Worker(flaky(name), settings), WeirClient(settings) as client:
        ids = await client.submit_many(
            name, [{"n": i, "email": f"u{i}@example.com"} for i in range(N)]
        )
        await read_results(settings, PipelineTopics(name).results, N)
    await wait_stored(sink.url, name, sum(expected_attempts(N).values()))
    return ids


@pytest.fixture(scope="module")
def world(kafka, repo_root, tmp_path_factory) -> Iterator[World]:
    import uuid

    name = f"json-out-{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp("json-out")
    settings = sink_settings(kafka, name, f"chdb://{tmp / 'store'}")
    sink = SinkProcess(repo_root, settings, tmp / "sink.log")
    try:
        ids = asyncio.run(_fill(settings, name, sink))
    finally:
        # Stopped: the commands below open the store themselves.
        assert sink.stop() == 0, sink.text()[-3000:]
    w = World(repo_root, settings, name, f"{name}-router", ids, tmp / "home")
    rules = tmp / "rules.yaml"
    rules.write_text(
        f"router: {w.router}\ndefault: big\nrules:\n"
        "  - name: urgent\n    condition: options.latency_sla < 500\n    endpoint: fast\n"
    )
    applied = w.run("routes", "apply", str(rules), "--comment", "json test")
    assert applied.returncode == 0, applied.stderr
    listed = w.run("dlq", "list", name, "--json")
    assert listed.returncode == 0, listed.stderr
    w.seen["dead_letter"] = json.loads(listed.stdout.splitlines()[0])["id"]
    yield w


def _broker_env(w: World) -> dict[str, str]:
    # `weir broker` manages the local broker only: no WEIR_KAFKA_BOOTSTRAP, a home of its own.
    env = {k: v for k, v in w.env().items() if k != "WEIR_KAFKA_BOOTSTRAP"}
    return env | {"WEIR_HOME": str(w.home)}


Case = tuple[Callable[[World], list[str]], bool]
"""The command's arguments, and whether it prints JSON lines (else one document)."""

CASES: dict[str, Case] = {
    "results": (lambda w: ["results", w.name, "--json"], True),
    "dlq list": (lambda w: ["dlq", "list", w.name, "--json"], True),
    "dlq show": (lambda w: ["dlq", "show", w.seen["dead_letter"], "--json"], False),
    "topics list": (lambda w: ["topics", "list", "--json"], False),
    "schemas list": (lambda w: ["schemas", "list", "--json"], False),
    "routes show": (lambda w: ["routes", "show", w.router, "--json"], False),
    "routes history": (lambda w: ["routes", "history", w.router, "--json"], False),
    "cost": (lambda w: ["cost", w.request_ids[0], "--json"], False),
    "trace": (lambda w: ["trace", w.request_ids[0], "--json"], False),
    "stats": (lambda w: ["stats", "--pipeline", w.name, "--json"], False),
    "sql": (
        lambda w: ["sql", "SELECT step_name, count() FROM pipeline_events GROUP BY 1", "--json"],
        False,
    ),
    "broker status": (lambda w: ["broker", "status", "--json"], False),
}


@pytest.mark.parametrize("command", list(CASES))
def test_every_data_printing_command_prints_json_that_parses(world: World, command: str) -> None:
    args, lines = CASES[command]
    env = _broker_env(world) if command == "broker status" else None
    done = world.run(*args(world), env=env)
    # `broker status` exits 1 when the broker it manages is not running (it is not here).
    assert done.returncode == (1 if command == "broker status" else 0), done.stderr
    if lines:
        parsed = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert parsed, f"{command} printed nothing"
    else:
        parsed = json.loads(done.stdout)
    _check(command, parsed, world)


def _check(command: str, parsed: object, world: World) -> None:
    """A little of what each command's JSON must say."""
    if command == "results":
        assert isinstance(parsed, list) and len(parsed) >= N
        assert all(r["schema_version"] == 2 for r in parsed)
    elif command == "dlq show":
        assert isinstance(parsed, dict) and parsed["error_type"] == "model_timeout"
    elif command == "topics list":
        assert isinstance(parsed, list)
        assert any(t["topic"] == f"weir.{world.name}.requests" for t in parsed)
    elif command == "routes show":
        assert isinstance(parsed, list) and parsed[0]["router"] == world.router
    elif command == "routes history":
        assert isinstance(parsed, list) and parsed[-1]["comment"] == "json test"
    elif command == "cost":
        assert isinstance(parsed, dict) and parsed["request_id"] == world.request_ids[0]
        assert parsed["calls"] and parsed["cost_usd"]
    elif command == "trace":
        assert isinstance(parsed, dict)
        assert [s["step_name"] for s in parsed["steps"]] == ["fetch", "generate", "deliver"]
    elif command == "stats":
        assert isinstance(parsed, dict)
        assert {s["step_name"] for s in parsed["steps"]} == {"fetch", "generate", "deliver"}
    elif command == "sql":
        assert isinstance(parsed, list)
        assert {r["step_name"]: r["count()"] for r in parsed} == expected_attempts(N)
    elif command == "broker status":
        assert isinstance(parsed, dict) and parsed["running"] is False


def test_tables_are_not_cut_at_80_columns_off_a_terminal(world: World) -> None:
    env = {k: v for k, v in world.env().items() if k != "COLUMNS"}
    done = world.run("stats", "--pipeline", world.name, env=env)
    assert done.returncode == 0, done.stderr
    widest = max(len(line) for line in done.stdout.splitlines())
    assert widest > 80  # ten columns of numbers laid out whole
    assert "…" not in done.stdout  # no cell was cut short


# -- JSON results carry the output as a JSON value, end to end -----------------------------------


def quote_pipeline(name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step()
    def quote(order_id: str) -> dict[str, object]:
        return {"order_id": order_id, "total": 28.5, "available": True}

    return p


async def test_a_json_result_on_the_topic_carries_the_output_as_an_object(
    kafka, pipeline_name, repo_root
):
    async with Worker(quote_pipeline(pipeline_name), kafka), WeirClient(kafka) as client:
        rid = await client.submit(pipeline_name, {"order_id": "o-1"})
        records = await read_topic(kafka, PipelineTopics(pipeline_name).results, until=1)
        (result,) = (await client.wait_for(pipeline_name, [rid], timeout=60)).values()
    raw = json.loads(records[0].value)  # what kcat or any consumer sees
    assert raw["schema_version"] == 2
    assert raw["output"] == {"order_id": "o-1", "total": 28.5, "available": True}
    assert result.value == raw["output"]  # the Python client reads it the same

    printed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", "results", pipeline_name, "--json"],
        cwd=repo_root,
        env=worker_env(kafka),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["output"]["total"] == 28.5
