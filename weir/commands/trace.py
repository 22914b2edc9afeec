"""``weir trace``, ``weir stats`` and ``weir sink``: the trace store from the command line.

``weir sink`` runs the ClickHouse sink as its own process, with a web server
(``sink_web_port``) serving the dashboard and the trace API.  The embedded
store (``chdb://``) can be open in one process at a time, so while a sink runs
``weir trace``/``weir stats`` ask it over HTTP; otherwise they open the store
themselves.  With a ClickHouse server (``http(s)://``) they always query it
directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from weir.commands._output import JsonOption, print_table
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import RequestNotFoundError
from weir.traces import (
    Stats,
    Timeline,
    dumps,
    open_queries,
    parse_window,
    sink_file,
)
from weir.traces.sink_status import empty_store_hint, sink_status

if TYPE_CHECKING:
    from weir.streams.review_figures import ReviewFigures

__all__ = ["render_reviews", "render_stats", "render_timeline", "sink", "stats", "trace"]

out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (else WEIR_CONFIG).")
]

_BAR = 36


def _window(text: str, option: str) -> float:
    try:
        return parse_window(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def trace(
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    baseline: Annotated[
        str, typer.Option(help="Window of earlier requests the step p50s come from.")
    ] = "24h",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """One request's timeline: queue wait, processing, retries, model, tokens and cost per
    step, and the step that made it slow against that step's p50."""
    baseline_s = _window(baseline, "--baseline")
    settings = load_settings(config)
    queries = open_queries(settings)
    try:
        timeline = queries.timeline(request_id, baseline_s=baseline_s)
    except RequestNotFoundError as exc:
        if sink_status(settings).running:
            raise
        raise RequestNotFoundError(f"{exc}; {empty_store_hint(settings)}") from exc
    finally:
        queries.close()
    if as_json:
        print(dumps(timeline.to_dict()))
        return
    render_timeline(timeline, out, baseline=baseline)


def stats(
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline.")] = None,
    since: Annotated[str, typer.Option(help="Window: 15m, 1h, 24h, 7d ...")] = "1h",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """p50/p95/p99 per step, failures by error type and cost by model over a window."""
    since_ms = int((time.time() - _window(since, "--since")) * 1000)
    settings = load_settings(config)
    queries = open_queries(settings)
    try:
        result = queries.stats(since_ms=since_ms, pipeline=pipeline)
    finally:
        queries.close()
    if not result.steps:
        # stderr, so --json output stays one JSON document.
        scope = f" of pipeline {pipeline}" if pipeline else ""
        err.print(
            f"no trace events{scope} in the last {since}: {empty_store_hint(settings)}",
            highlight=False,
            soft_wrap=True,
        )
    reviews = _review_rows(settings, result, pipeline, since_ms)
    if as_json:
        print(dumps({**result.to_dict(), "reviews": reviews}))
        return
    render_stats(result, out, since=since)
    render_reviews(reviews, out)


def _review_rows(
    settings: WeirSettings, result: Stats, pipeline: str | None, since_ms: int
) -> list[dict[str, object]]:
    """Review figures of the pipelines in ``result`` (from their review topics on Kafka)."""
    from aiokafka.errors import KafkaError

    from weir.core.errors import WeirError
    from weir.streams.review_figures import review_figures

    names = [pipeline] if pipeline else sorted({s.pipeline_id for s in result.steps})
    if not names:
        return []

    async def read() -> list[ReviewFigures]:
        async with asyncio.timeout(10):  # the trace figures stand without them
            return await review_figures(settings, names, since_ms=since_ms)

    try:
        figures = asyncio.run(read())
    except (KafkaError, WeirError, TimeoutError) as exc:
        err.print(f"review figures left out: Kafka did not answer ({exc})", highlight=False)
        return []
    rows = []
    for f in figures:
        requests = max((s.requests for s in result.steps if s.pipeline_id == f.pipeline), default=0)
        rows.append({**f.to_dict(), "requests": requests, "escalated_share": f.share_of(requests)})
    return rows


def render_reviews(rows: list[dict[str, object]], console: Console) -> None:
    """Escalations to a person: share, time to answer, backlog."""
    if not rows:
        return
    table = Table(
        "pipeline",
        "escalated",
        "share",
        "answered",
        "timed out",
        "answer p50",
        "answer p95",
        "backlog",
        "oldest open",
        title="escalations to a person (reviews)",
    )

    def ms(value: object) -> str:
        return "-" if not isinstance(value, int | float) else _ms(float(value))

    for r in rows:
        share = r["escalated_share"]
        table.add_row(
            str(r["pipeline"]),
            str(r["escalated"]),
            "-" if not isinstance(share, float) else f"{100 * share:.1f}%",
            str(r["answered"]),
            str(r["timed_out"]),
            ms(r["answer_p50_ms"]),
            ms(r["answer_p95_ms"]),
            str(r["backlog"]),
            ms(r["oldest_open_ms"]),
        )
    print_table(console, table)


def sink(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
    config: ConfigOption = None,
) -> None:
    """Consume the trace topic into ClickHouse until SIGTERM/SIGINT; serve the dashboard."""
    from weir.logs import configure_logging

    settings = load_settings(config)
    configure_logging(settings, log_level)
    asyncio.run(_run_sink(settings))


async def _run_sink(settings: WeirSettings) -> None:
    from weir.core.errors import TraceStoreError
    from weir.traces import TraceQueries
    from weir.traces.clickhouse_sink import ClickHouseSink
    from weir.web import WebServer

    runner = ClickHouseSink(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.request_stop)

    def queries() -> TraceQueries:
        if runner.store is None:
            raise TraceStoreError(f"trace store {settings.trace_store_dsn} is not open (yet)")
        return runner.store

    if not settings.sink_web_port:
        # Announced even without HTTP: readers then say the store is held, and by whom,
        # instead of failing to lock its files.
        with _announced(settings, url=None):
            await runner.run()
        return
    web_settings = settings.model_copy(update={"web_port": settings.sink_web_port})
    async with WebServer(web_settings, trace_queries=queries) as web:
        logging.getLogger("weir.web").info("sink serving the dashboard on %s/dashboard", web.url)
        with _announced(settings, url=web.url):
            await runner.run()


@contextlib.contextmanager
def _announced(settings: WeirSettings, *, url: str | None) -> Iterator[None]:
    """While the sink runs, ``sink_file`` says where (embedded stores only)."""
    announce = sink_file(settings)
    if announce is not None:
        announce.parent.mkdir(parents=True, exist_ok=True)
        announce.write_text(json.dumps({"pid": os.getpid(), "url": url}))
    try:
        yield
    finally:
        if announce is not None:
            announce.unlink(missing_ok=True)


# -- rendering ---------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value / 1000:,.2f} s" if value >= 1000 else f"{value:,.1f} ms"


def _bar(start: float, retries: float, queue: float, processing: float, total: float) -> Text:
    """The step's place in the request: retries ▒, queue wait ░, processing █."""
    scale = _BAR / total if total > 0 else 0.0
    text = Text(" " * min(_BAR, round(start * scale)))
    for length, char, style in (
        (retries, "▒", "grey50"),
        (queue, "░", "yellow"),
        (processing, "█", "blue"),
    ):
        cells = round(length * scale)
        if length > 0 and cells == 0:
            cells = 1 if char == "█" else 0
        text.append(char * cells, style=style)
    return text


def render_timeline(timeline: Timeline, console: Console, *, baseline: str = "24h") -> None:
    head = f"request {timeline.request_id} of {timeline.pipeline_id}: {_ms(timeline.total_ms)}"
    if timeline.pipeline_p50_ms is not None:
        head += (
            f" (pipeline p50 {_ms(timeline.pipeline_p50_ms)} over"
            f" {timeline.baseline_requests} requests, last {baseline})"
        )
    console.print(head, highlight=False)
    table = Table(
        "step",
        "tries",
        "queue wait",
        "processing",
        "retries",
        "total",
        "p50",
        "model",
        "tokens in/out",
        "cost $",
        f"0 → {_ms(timeline.total_ms)}",
    )
    for s in timeline.steps:
        slow = s.step_name == timeline.slow_step
        table.add_row(
            Text(s.step_name + (" ◀ slow" if slow else ""), style="bold red" if slow else ""),
            str(s.attempts) + (f" ({', '.join(s.error_types)})" if s.error_types else ""),
            _ms(s.queue_wait_ms),
            _ms(s.processing_ms),
            _ms(s.retry_ms) if s.retry_ms else "-",
            _ms(s.total_ms),
            _ms(s.p50_ms) if s.p50_ms is not None else "-",
            s.model or "-",
            f"{s.input_tokens}/{s.output_tokens}",
            s.cost_usd,
            _bar(s.start_ms, s.retry_ms, s.queue_wait_ms, s.processing_ms, timeline.total_ms),
        )
    print_table(console, table)
    console.print("bars: ▒ retries  ░ queue wait  █ processing", style="dim")
    console.print(timeline.verdict(), highlight=False, soft_wrap=True)


def render_stats(result: Stats, console: Console, *, since: str = "1h") -> None:
    scope = f"pipeline {result.pipeline}" if result.pipeline else "all pipelines"
    console.print(f"{scope}, last {since}", highlight=False)
    steps = Table(
        "pipeline",
        "step",
        "attempts",
        "failures",
        "p50",
        "p95",
        "p99",
        "queue p50",
        "queue p95",
        "queue p99",
        title="processing time and queue wait per step",
    )
    for s in result.steps:
        steps.add_row(
            s.pipeline_id,
            s.step_name,
            str(s.attempts),
            str(s.failures),
            _ms(s.duration_p50_ms),
            _ms(s.duration_p95_ms),
            _ms(s.duration_p99_ms),
            _ms(s.queue_wait_p50_ms),
            _ms(s.queue_wait_p95_ms),
            _ms(s.queue_wait_p99_ms),
        )
    print_table(console, steps)
    failures = Table("pipeline", "step", "error type", "count", "avg ms", title="failures")
    for f in result.failures:
        failures.add_row(
            f.pipeline_id, f.step_name, f.error_type, str(f.count), f"{f.avg_duration_ms:,.1f}"
        )
    print_table(console, failures)
    cost = Table(
        "pipeline",
        "model",
        "provider",
        "calls",
        "tokens in",
        "tokens out",
        "cost $",
        title="cost by model",
    )
    for c in result.cost:
        cost.add_row(
            c.pipeline_id,
            c.model,
            c.provider,
            str(c.calls),
            str(c.input_tokens),
            str(c.output_tokens),
            c.cost_usd,
        )
    print_table(console, cost)
