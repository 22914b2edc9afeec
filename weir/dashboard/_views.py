"""The dashboard pages and the JSON trace API behind ``weir trace``/``weir stats``."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from aiohttp import web

from weir._http import positive_seconds
from weir.core.config import WeirSettings
from weir.core.errors import (
    RequestNotFoundError,
    TraceQueryError,
    TraceSchemaMissingError,
    TraceStoreError,
)
from weir.dashboard._charts import bar_chart, gantt, line_chart
from weir.traces import (
    LatencyPoint,
    TraceQueries,
    dumps,
    open_queries,
    parse_window,
)

T = TypeVar("T")

QueriesProvider = Callable[[], TraceQueries]

SETTINGS = web.AppKey("dashboard_settings", WeirSettings)
QUERIES = web.AppKey("trace_queries", object)
"""A ``QueriesProvider`` when this process holds the store (the sink); else unset."""

_WINDOWS = ("15m", "1h", "6h", "24h", "7d")


async def _ask(request: web.Request, fn: Callable[[TraceQueries], T]) -> T:
    """Run ``fn`` against the store in a thread, opening (and closing) it if needed."""
    provider: QueriesProvider | None = request.app.get(QUERIES)  # type: ignore[assignment]
    if provider is not None:
        return await asyncio.to_thread(lambda: fn(provider()))
    settings = request.app[SETTINGS]

    def run() -> T:
        queries = open_queries(settings)
        try:
            return fn(queries)
        finally:
            queries.close()

    return await asyncio.to_thread(run)


def _since_ms(request: web.Request, default: str = "1h") -> tuple[int, str]:
    if "since_ms" in request.query:
        try:
            return int(request.query["since_ms"]), request.query["since_ms"]
        except ValueError as exc:
            raise web.HTTPBadRequest(text="since_ms must be epoch milliseconds") from exc
    window = request.query.get("since", default)
    try:
        seconds = parse_window(window)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return int((time.time() - seconds) * 1000), window


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(body), status=status, content_type="application/json")


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high}")
    return value


@web.middleware
async def store_errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Store trouble as 503 and unknown requests as 404, in JSON under /api, HTML elsewhere."""
    api = request.path.startswith("/api/traces")
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except RequestNotFoundError as exc:
        if api:
            return _json({"error": str(exc), "error_type": exc.error_type}, 404)
        return _page("not found", f"<p class=error>{html.escape(str(exc))}</p>", status=404)
    except TraceQueryError as exc:
        return _json({"error": str(exc), "error_type": exc.error_type}, 400)
    except TraceStoreError as exc:
        if api:
            return _json({"error": str(exc), "error_type": exc.error_type}, 503)
        title = (
            "no trace schema yet"
            if isinstance(exc, TraceSchemaMissingError)
            else "store unavailable"
        )
        return _page(title, f"<h1>{title}</h1><p class=error>{html.escape(str(exc))}</p>", 503)


# -- JSON API --------------------------------------------------------------------------------


async def api_timeline(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    baseline = positive_seconds(request, "baseline", default=86400.0)
    timeline = await _ask(request, lambda q: q.timeline(request_id, baseline_s=baseline))
    return _json(timeline.to_dict())


async def api_stats(request: web.Request) -> web.Response:
    since, _ = _since_ms(request)
    pipeline = request.query.get("pipeline") or None
    stats = await _ask(request, lambda q: q.stats(since_ms=since, pipeline=pipeline))
    return _json(stats.to_dict())


async def api_latency(request: web.Request) -> web.Response:
    since, _ = _since_ms(request)
    pipeline = request.query.get("pipeline") or None
    bucket = _int(request, "bucket", 1, 1, 1440)
    points = await _ask(
        request,
        lambda q: q.latency_series(since_ms=since, pipeline=pipeline, bucket_minutes=bucket),
    )
    return _json(points)


async def api_slowest(request: web.Request) -> web.Response:
    since, _ = _since_ms(request)
    pipeline = request.query.get("pipeline") or None
    limit = _int(request, "limit", 20, 1, 1000)
    rows = await _ask(request, lambda q: q.slowest(since_ms=since, pipeline=pipeline, limit=limit))
    return _json(rows)


async def api_sql(request: web.Request) -> web.Response:
    """``POST {"query": "..."}``: one read-only statement (``weir sql`` while a sink runs)."""
    from weir.traces.sql import select

    provider: QueriesProvider | None = request.app.get(QUERIES)  # type: ignore[assignment]
    if provider is None:
        raise web.HTTPNotFound(text="only `weir sink` answers SQL")
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text='send {"query": "..."} as JSON') from exc
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, str) or not query.strip():
        raise web.HTTPBadRequest(text='send {"query": "..."} as JSON')
    result = await asyncio.to_thread(lambda: select(provider(), query))
    return _json(result.to_dict())


# -- pages -----------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:18px;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 8px} h2{font-size:15px;margin:18px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:6px}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #e5e7eb;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.error{color:#b91c1c} .verdict{font-size:15px;background:#fff7ed;padding:8px;border-radius:6px}
form{margin:6px 0 10px} nav a{margin-right:10px}
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        f"<!doctype html><html><head><meta charset=utf-8><title>weir: {html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body>"
        '<nav><a href="/dashboard">dashboard</a><a href="/dashboard/lag">lag</a></nav>'
        f"{body}</body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html")


def _bucket_minutes(window_s: float) -> int:
    return max(1, int(window_s // 60 // 60))


async def dashboard(request: web.Request) -> web.Response:
    since, window = _since_ms(request)
    pipeline = request.query.get("pipeline") or None
    bucket = _bucket_minutes(time.time() - since / 1000)

    def gather(q: TraceQueries) -> tuple[Any, Any, Any]:
        return (
            q.latency_series(since_ms=since, pipeline=pipeline, bucket_minutes=bucket),
            q.stats(since_ms=since, pipeline=pipeline),
            q.slowest(since_ms=since, pipeline=pipeline, limit=15),
        )

    series, stats, slowest = await _ask(request, gather)
    pipelines = sorted({s.pipeline_id for s in stats.steps})
    options = "".join(
        f'<option value="{html.escape(p)}"{" selected" if p == pipeline else ""}>'
        f"{html.escape(p)}</option>"
        for p in pipelines
    )
    windows = "".join(f"<option{' selected' if w == window else ''}>{w}</option>" for w in _WINDOWS)
    form = (
        '<form method="get">pipeline <select name="pipeline"><option value="">all</option>'
        f"{options}</select> since <select name=since>{windows}</select>"
        " <button>show</button></form>"
    )
    charts = _latency_charts(series)
    failures = bar_chart(
        "failures by error type",
        [(f"{f.error_type} ({f.pipeline_id}/{f.step_name})", f.count) for f in stats.failures],
    )
    cost = bar_chart(
        "cost by model and pipeline",
        [(f"{c.model} · {c.pipeline_id}", float(c.cost_usd)) for c in stats.cost],
        unit="$",
    )
    rows = "".join(
        f'<tr><td><a href="/dashboard/requests/{quote(r.request_id, safe="")}">'
        f"{html.escape(r.request_id)}</a></td><td>{html.escape(r.pipeline_id)}</td>"
        f"<td>{r.total_ms:,.0f} ms</td><td>{r.attempts}</td><td>{r.failures}</td>"
        f"<td>${html.escape(r.cost_usd)}</td></tr>"
        for r in slowest
    )
    body = (
        f"<h1>weir traces{' — ' + html.escape(pipeline) if pipeline else ''}</h1>{form}"
        f"<h2>latency percentiles per step (processing time)</h2>"
        f'<div class="grid">{charts}</div>'
        f'<h2>failures and cost</h2><div class="grid"><div class="card">{failures}</div>'
        f'<div class="card">{cost}</div></div>'
        "<h2>slowest requests</h2><table id=slowest><tr><th>request</th><th>pipeline</th>"
        f"<th>total</th><th>attempts</th><th>failures</th><th>cost</th></tr>{rows}</table>"
        + await _reviews(request.app[SETTINGS], [pipeline] if pipeline else pipelines, stats, since)
    )
    return _page("dashboard", body)


async def _reviews(settings: WeirSettings, pipelines: list[str], stats: Any, since: int) -> str:
    """Escalations to a person per pipeline, from the review topics on Kafka."""
    from aiokafka.errors import KafkaError

    from weir.core.errors import WeirError
    from weir.streams.review_figures import review_figures

    if not pipelines:
        return ""
    try:
        async with asyncio.timeout(10):
            figures = await review_figures(settings, pipelines, since_ms=since)
    except (KafkaError, WeirError, TimeoutError) as exc:
        return f"<h2>reviews</h2><p class=error>unavailable: {html.escape(str(exc))}</p>"
    if not figures:
        return ""

    def ms(value: float | int | None) -> str:
        return "-" if value is None else f"{value / 1000:,.1f} s"

    rows = ""
    for f in figures:
        requests = max((s.requests for s in stats.steps if s.pipeline_id == f.pipeline), default=0)
        share = f.share_of(requests)
        rows += (
            f"<tr><td>{html.escape(f.pipeline)}</td><td>{f.escalated}</td>"
            f"<td>{'-' if share is None else f'{100 * share:.1f}%'}</td><td>{f.answered}</td>"
            f"<td>{f.timed_out}</td><td>{ms(f.answer_p50_ms)}</td><td>{ms(f.answer_p95_ms)}</td>"
            f"<td>{f.backlog}</td><td>{ms(f.oldest_open_ms)}</td></tr>"
        )
    return (
        "<h2>escalations to a person</h2><table id=reviews><tr><th>pipeline</th>"
        "<th>escalated</th><th>share</th><th>answered</th><th>timed out</th>"
        "<th>answer p50</th><th>answer p95</th><th>backlog</th><th>oldest open</th></tr>"
        f"{rows}</table>"
    )


def _latency_charts(points: list[LatencyPoint]) -> str:
    by_step: dict[tuple[str, str], list[LatencyPoint]] = {}
    for p in points:
        by_step.setdefault((p.pipeline_id, p.step_name), []).append(p)
    if not by_step:
        return f'<div class="card">{line_chart("latency", {})}</div>'
    out = []
    for (pipeline, step), values in sorted(by_step.items()):
        series = {
            "p50": [(p.minute, p.p50_ms) for p in values],
            "p95": [(p.minute, p.p95_ms) for p in values],
            "p99": [(p.minute, p.p99_ms) for p in values],
        }
        out.append(f'<div class="card">{line_chart(f"{pipeline} / {step}", series)}</div>')
    return "".join(out)


async def request_page(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    timeline = await _ask(request, lambda q: q.timeline(request_id))
    chart = gantt(
        f"request {request_id} ({timeline.pipeline_id})",
        [
            (s.step_name, s.start_ms, s.retry_ms, s.queue_wait_ms, s.processing_ms)
            for s in timeline.steps
        ],
        total_ms=timeline.total_ms,
        highlight=timeline.slow_step,
    )
    rows = "".join(
        f"<tr><td>{html.escape(a.step_name)}</td><td>{a.attempt}</td><td>{a.status}</td>"
        f"<td>{html.escape(a.error_type or '')}</td><td>{a.queue_wait_ms:,.1f}</td>"
        f"<td>{a.duration_ms:,.1f}</td><td>{html.escape(a.model or '')}</td>"
        f"<td>{a.input_tokens}/{a.output_tokens}</td><td>${html.escape(a.cost_usd)}</td>"
        f"<td>{html.escape(a.worker_id)}</td></tr>"
        for a in timeline.attempts
    )
    query = urlencode({"pipeline": timeline.pipeline_id})
    body = (
        f"<h1>request {html.escape(request_id)}</h1>"
        f'<p><a href="/dashboard?{query}">pipeline {html.escape(timeline.pipeline_id)}</a></p>'
        f'<p class="verdict">{html.escape(timeline.verdict())}</p>'
        f'<div class="card">{chart}</div>'
        '<p>bars: <span style="color:#9ca3af">■</span> retries (failed attempts and back-off)'
        ' <span style="color:#f59e0b">■</span> queue wait'
        ' <span style="color:#2563eb">■</span> processing</p>'
        "<h2>attempts</h2><table><tr><th>step</th>"
        "<th>attempt</th><th>status</th><th>error</th><th>queue wait ms</th>"
        "<th>processing ms</th><th>model</th><th>tokens in/out</th><th>cost</th>"
        f"<th>worker</th></tr>{rows}</table>"
    )
    return _page(f"request {request_id}", body)
