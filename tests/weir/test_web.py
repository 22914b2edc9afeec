"""The HTTP surface: bearer token on every route but /health, read-only pages, SSE caps.

Real servers on real ports; the SSE tests read a real stream topic on the
session's broker; the schema tests compare the embedded store's
``system.tables`` before and after every GET route was requested.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests._sink import free_port
from tests.traces.test_store import rows, synthetic_events
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import SecretError
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, TopicSpec
from weir.traces import TraceStore
from weir.web import WebServer, create_app

TOKEN = "test-web-token-5f1c9e"


def _paths(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app routes, placeholders filled in."""
    out = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        out.add((route.method, re.sub(r"\{[^}]+\}", "x", canonical)))
    return sorted(out)


def _settings(tmp_path: Path, base: WeirSettings | None = None, **extra: object) -> WeirSettings:
    values: dict[str, object] = {
        "clickhouse_dsn": f"chdb://{tmp_path / 'store'}",
        "home": tmp_path,
        "web_port": free_port(),
    }
    if base is not None:
        values["kafka_bootstrap"] = base.bootstrap_servers
    values.update(extra)
    return load_settings(**values)


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "web-token"
    path.write_text(TOKEN + "\n")
    return f"file:{path}"


async def test_with_a_token_every_route_but_health_answers_401_without_it(
    kafka: WeirSettings, tmp_path: Path, token_file: str
) -> None:
    settings = _settings(tmp_path, kafka, web_token=token_file)
    routes = _paths(create_app(settings))
    # The enumeration really covers the surface (a new route is in it automatically).
    assert ("GET", "/health") in routes and ("GET", "/streams/x/x") in routes
    assert ("GET", "/dashboard") in routes and ("GET", "/models") in routes
    async with (
        WebServer(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        for method, path in routes:
            bare = await http.request(method, path, params={"idle_timeout": "1"})
            if path == "/health":
                assert bare.status_code == 200, path
                continue
            assert bare.status_code == 401, (method, path)
            assert bare.headers["WWW-Authenticate"].startswith("Bearer"), path
            if method != "HEAD":
                assert bare.json()["error_type"] == "unauthorized"
                assert TOKEN not in bare.text
            wrong = await http.request(
                method, path, headers={"Authorization": "Bearer not-the-token"}
            )
            assert wrong.status_code == 401, (method, path)
            basic = await http.request(method, path, headers={"Authorization": TOKEN})
            assert basic.status_code == 401, (method, path)  # no "Bearer " scheme

            good = await http.request(
                method,
                path,
                params={"idle_timeout": "1"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            # Past the check, each route answers for itself (no worker: /stats is 404,
            # no such pipeline: the stream is 404, no trace schema: the pages are 503).
            assert good.status_code != 401, (method, path, good.text)
        ok = await http.get("/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and isinstance(ok.json(), dict)


async def test_a_token_reference_that_cannot_be_resolved_stops_the_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path, web_token=f"file:{tmp_path / 'missing'}")
    with pytest.raises(SecretError):
        await WebServer(settings).start()


def test_a_literal_token_is_refused_in_settings() -> None:
    from weir.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(web_token=TOKEN)
    assert "web_token" in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", False, True), ("0.0.0.0", True, False), ("127.0.0.1", False, False)],
)
async def test_binding_beyond_loopback_without_a_token_is_warned_about(
    tmp_path: Path,
    token_file: str,
    caplog: pytest.LogCaptureFixture,
    host: str,
    token: bool,
    warned: bool,
) -> None:
    extra: dict[str, object] = {"web_host": host, "web_port": 0}
    if token:
        extra["web_token"] = token_file
    settings = _settings(tmp_path, **extra)
    with caplog.at_level(logging.WARNING, logger="weir.web"):
        async with WebServer(settings):
            pass
    warnings = [r for r in caplog.records if "not a loopback address" in r.getMessage()]
    assert bool(warnings) is warned


# -- GET never writes ---------------------------------------------------------------------


def _schema(store_dir: Path) -> list[tuple[str, ...]]:
    import chdb

    conn = chdb.connect(str(store_dir))
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT database, name, engine_full, create_table_query FROM system.tables"
            " WHERE database NOT IN ('system', 'INFORMATION_SCHEMA', 'information_schema')"
            " ORDER BY database, name"
        )
        return [tuple(str(v) for v in row) for row in cursor.fetchall()]
    finally:
        conn.close()


async def _get_every_route(settings: WeirSettings) -> dict[str, httpx.Response]:
    answers = {}
    async with (
        WebServer(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as http,
    ):
        for method, path in _paths(create_app(settings)):
            if method != "GET" or path.startswith("/streams/"):
                continue  # the token stream reads Kafka, not the trace store
            answers[path] = await http.get(path)
    return answers


async def test_a_get_on_a_store_without_the_schema_creates_nothing_and_says_so(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    (tmp_path / "store").mkdir()
    before = _schema(tmp_path / "store")
    answers = await _get_every_route(settings)
    assert _schema(tmp_path / "store") == before
    assert not [t for t in before if t[0] == "weir"]
    page = answers["/dashboard"]
    assert page.status_code == 503 and "no trace schema yet" in page.text
    assert "weir sink" in page.text
    api = answers["/api/traces/stats"]
    assert api.status_code == 503 and api.json()["error_type"] == "trace_schema_missing"


async def test_a_get_never_alters_the_schema_even_when_the_settings_differ(
    tmp_path: Path,
) -> None:
    # The store was made with a 30-day TTL; a page served with 3 days must not ALTER it.
    writer = _settings(tmp_path, trace_ttl_days=30)
    store = TraceStore.connect(writer)
    now = int(time.time() * 1000)
    store.insert(rows(synthetic_events("support", 40, now_ms=now)), token="a")
    store.close()
    before = _schema(tmp_path / "store")
    assert any("toIntervalDay(30)" in t[2] for t in before)
    answers = await _get_every_route(_settings(tmp_path, trace_ttl_days=3))
    assert answers["/dashboard"].status_code == 200
    assert answers["/api/traces/stats"].status_code == 200
    assert _schema(tmp_path / "store") == before


# -- SSE caps and parameters --------------------------------------------------------------


@pytest.fixture
async def stream_server(
    kafka: WeirSettings, tmp_path: Path, pipeline_name: str
) -> AsyncIterator[tuple[str, str]]:
    settings = _settings(tmp_path, kafka, sse_max_streams=1, sse_max_lifetime_s=2.0)
    topic = PipelineTopics(pipeline_name).stream
    async with TopicAdmin(settings) as admin:
        await admin.ensure([TopicSpec(topic, settings.partitions, 1)])
    async with WebServer(settings) as server:
        yield server.url, pipeline_name


async def _events(response: httpx.Response) -> list[tuple[str, str]]:
    out = []
    async for block in _blocks(response):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields.get("event", ""), fields.get("data", "")))
    return out


async def _blocks(response: httpx.Response) -> AsyncIterator[str]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield block


async def test_streams_beyond_the_cap_are_refused_with_503_and_retry_after(
    stream_server: tuple[str, str],
) -> None:
    url, pipeline = stream_server
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        path = f"/streams/{pipeline}/r-1"
        async with http.stream("GET", path, params={"idle_timeout": "30"}) as first:
            assert first.status_code == 200
            second = await http.get(f"/streams/{pipeline}/r-2", params={"idle_timeout": "30"})
            assert second.status_code == 503
            assert second.headers["Retry-After"] == "5"
            body = second.json()
            assert body["error_type"] == "too_many_streams"
            assert "sse_max_streams = 1" in body["error"]
            # The first one ends at its lifetime (2 s), not at its 30 s idle timeout.
            events = await _events(first)
        assert events[-1][0] == "timeout"
        assert "lifetime" in json.loads(events[-1][1])
        # Its slot is free again.
        async with http.stream("GET", path, params={"idle_timeout": "0.5"}) as third:
            assert third.status_code == 200
            assert (await _events(third))[-1][0] == "timeout"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"idle_timeout": "nan"}, "idle_timeout"),
        ({"idle_timeout": "inf"}, "idle_timeout"),
        ({"idle_timeout": "-Infinity"}, "idle_timeout"),
        ({"idle_timeout": "-1"}, "idle_timeout"),
        ({"idle_timeout": "0"}, "idle_timeout"),
        ({"idle_timeout": "soon"}, "idle_timeout"),
        ({"since": "yesterday"}, "since"),
        ({"since": "-5"}, "since"),
    ],
)
async def test_bad_stream_parameters_are_400_naming_the_parameter(
    stream_server: tuple[str, str], query: dict[str, str], name: str
) -> None:
    url, pipeline = stream_server
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.get(f"/streams/{pipeline}/r-1", params=query)
    assert response.status_code == 400
    body = response.json()
    assert body["error_type"] == "parameter_invalid"
    assert name in body["error"]


async def test_bad_trace_parameters_are_400_naming_the_parameter(tmp_path: Path) -> None:
    async with (
        WebServer(_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        for value in ("nan", "inf", "-3", "x"):
            response = await http.get("/api/traces/requests/r-1", params={"baseline": value})
            assert response.status_code == 400, value
            assert "baseline" in response.json()["error"]


def test_a_starting_worker_creates_the_trace_schema_and_survives_a_store_it_cannot_reach(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from weir.cli import _prepare_trace_store

    settings = _settings(tmp_path)
    _prepare_trace_store(settings)  # what `weir worker` does before serving pages
    assert {t[1] for t in _schema(tmp_path / "store") if t[0] == "weir"} >= {
        "pipeline_events",
        "pipeline_latency_1m",
    }
    unreachable = _settings(tmp_path, clickhouse_dsn=f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="weir.web"):
        _prepare_trace_store(unreachable)
    assert any("were not created" in r.getMessage() for r in caplog.records)
