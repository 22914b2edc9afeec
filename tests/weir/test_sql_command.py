"""``weir sql`` as a real command: the seed's query verbatim, through a running sink and without.

Also what the trace-store commands say when a sink holds the store without a web
port, and when the store is empty.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._kafka import read_results
from tests._sink import SinkProcess, sink_settings
from tests._traced import expected_attempts, flaky
from tests.conftest import worker_env
from tests.traces.test_clickhouse_sink import wait_stored
from weir.core.config import WeirSettings
from weir.streams import WeirClient, Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

# Exactly as the seed document prints it: several lines, a trailing semicolon, no database.
SEED_QUERY = """SELECT step_name, AVG(duration_ms), COUNT(*)
FROM pipeline_events
WHERE status = 'FAILURE'
AND error_type = 'model_timeout'
AND created_at > NOW() - INTERVAL '7 days'
GROUP BY step_name
ORDER BY COUNT(*) DESC;"""
N = 50


def weir(repo: Path, settings: WeirSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(
        settings,
        WEIR_CLICKHOUSE_DSN=settings.trace_store_dsn.get_secret_value(),
        WEIR_TRACE_TOPIC=settings.trace_topic,
    )
    env.pop("COLUMNS", None)  # not a terminal: tables must still come out whole
    return subprocess.run(
        [sys.executable, "-m", "weir", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def timeouts_expected() -> int:
    """model_timeout failures of ``flaky``'s generate step for requests 0..N-1."""
    return sum(1 for n in range(N) if n % 10 == 0) + 3 * sum(1 for n in range(N) if n % 100 == 7)


def test_the_seed_query_is_the_one_the_readme_documents(repo_root: Path) -> None:
    # The seed document lives outside the repository; the README quotes its query.
    assert SEED_QUERY in (repo_root / "README.md").read_text()


async def test_weir_sql_runs_the_seed_query_verbatim_through_the_sink_and_without_it(
    kafka, pipeline_name, repo_root, tmp_path
):
    settings = sink_settings(kafka, pipeline_name, f"chdb://{tmp_path / 'store'}")
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    pipeline = flaky(pipeline_name)
    try:
        await sink.wait_placed()
        async with Worker(pipeline, settings), WeirClient(settings) as client:
            await client.submit_many(
                pipeline_name, [{"n": i, "email": f"u{i}@example.com"} for i in range(N)]
            )
            await read_results(settings, PipelineTopics(pipeline_name).results, N)
        await wait_stored(sink.url, pipeline_name, sum(expected_attempts(N).values()))

        # The sink holds the embedded store: the command goes through its HTTP API.
        through_sink = weir(repo_root, settings, "sql", SEED_QUERY, "--format", "json")
        assert through_sink.returncode == 0, through_sink.stderr
        rows = json.loads(through_sink.stdout)
        assert [(r["step_name"], r["COUNT()"]) for r in rows] == [("generate", timeouts_expected())]
        assert rows[0]["AVG(duration_ms)"] > 0

        table = weir(repo_root, settings, "sql", SEED_QUERY)
        assert table.returncode == 0, table.stderr
        generate_row = next(line for line in table.stdout.splitlines() if "generate" in line)
        assert str(timeouts_expected()) in generate_row
        assert "1 row(s)" in table.stdout

        as_csv = weir(repo_root, settings, "sql", SEED_QUERY, "--format", "csv")
        parsed = list(csv.reader(io.StringIO(as_csv.stdout)))
        assert parsed[0] == ["step_name", "AVG(duration_ms)", "COUNT()"]
        assert parsed[1][0] == "generate" and int(parsed[1][2]) == timeouts_expected()

        refused = weir(repo_root, settings, "sql", "DROP TABLE pipeline_events")
        assert refused.returncode == 2 and "only reads" in refused.stderr, refused.stderr
        bad = weir(repo_root, settings, "sql", "SELEC 1")
        assert bad.returncode == 2 and "trace_query_invalid" in bad.stderr
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]

    # No sink: the command opens the store itself, and finds the same.
    direct = weir(repo_root, settings, "sql", SEED_QUERY, "--json")
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout) == rows


async def test_a_sink_without_a_web_port_is_named_instead_of_a_lock_error(
    kafka, pipeline_name, repo_root, tmp_path
):
    settings = sink_settings(kafka, pipeline_name, f"chdb://{tmp_path / 'store'}", sink_web_port=0)
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    try:
        await sink.wait_placed()
        for args in (["stats"], ["sql", SEED_QUERY], ["trace", "some-request"]):
            done = weir(repo_root, settings, *args)
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            said = done.stderr
            assert f"`weir sink` (pid {sink.proc.pid})" in said and "serves no HTTP" in said
            assert "WEIR_SINK_WEB_PORT" in said
            assert "Cannot lock file" not in said and "Traceback" not in said
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]


def test_an_empty_store_says_whether_a_sink_runs_and_how_to_start_one(
    kafka, pipeline_name, repo_root, tmp_path
):
    settings = sink_settings(kafka, pipeline_name, f"chdb://{tmp_path / 'store'}")
    # No schema yet: reading commands never create it, and say who does.
    absent = weir(repo_root, settings, "stats", "--json")
    assert absent.returncode == 1, absent.stderr
    assert "trace_schema_missing" in absent.stderr
    assert "no `weir sink` is running" in absent.stderr

    empty = weir(repo_root, settings, "sql", SEED_QUERY)
    assert empty.returncode == 0, empty.stderr
    assert "0 row(s)" in empty.stdout
    assert "the trace store holds no events" in empty.stderr
    assert "no `weir sink` is running" in empty.stderr

    stats = weir(repo_root, settings, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["steps"] == []  # stdout stays JSON; the hint is on stderr
    assert "no `weir sink` is running" in stats.stderr and "start one with `weir sink`" in (
        stats.stderr
    )

    missing = weir(repo_root, settings, "trace", "no-such-request")
    assert missing.returncode == 1
    assert "request_not_found" in missing.stderr and "no `weir sink` is running" in missing.stderr
