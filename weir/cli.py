"""The ``weir`` command."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from weir.commands import broker as broker_commands
from weir.commands import dlq
from weir.commands import requests as request_commands
from weir.commands import schemas as schema_commands
from weir.commands import sql as sql_commands
from weir.commands import topics as topic_commands
from weir.commands import trace as trace_commands
from weir.commands._options import EXIT_FAILURE, EXIT_USAGE, ConfigOption, settings_from
from weir.core.config import WeirSettings
from weir.core.errors import (
    ConfigError,
    MessageError,
    PipelineDefinitionError,
    RoutingError,
    SchemaRegistryError,
    TraceQueryError,
    UnknownPipelineError,
    WeirError,
)

if TYPE_CHECKING:
    from weir.processors import ModelServices
    from weir.processors.router import Router

T = TypeVar("T")

app = typer.Typer(
    help="weir: pipelines of plain Python functions, run as stream processors on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(broker_commands.app, name="broker")
app.add_typer(topic_commands.app, name="topics")
app.add_typer(schema_commands.app, name="schemas")
app.add_typer(dlq.app, name="dlq")
app.command("trace")(trace_commands.trace)
app.command("stats")(trace_commands.stats)
app.command("sink")(trace_commands.sink)
app.command("sql")(sql_commands.sql)
app.command("submit")(request_commands.submit)
app.command("results")(request_commands.results)
app.command("lag")(request_commands.lag)


def _register_commands() -> None:
    from weir.commands import bench, conversation, cost, replay, review, routes, what_if

    app.add_typer(routes.app, name="routes")
    app.add_typer(review.app, name="review")
    app.add_typer(conversation.app, name="conversation")
    app.command("cost")(cost.cost)
    app.command("bench")(bench.bench)
    app.command("replay")(replay.replay)
    app.command("compare")(replay.compare)
    routes.app.command("what-if")(what_if.what_if)


_register_commands()

out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


_USAGE_ERRORS = (
    ConfigError,
    PipelineDefinitionError,
    UnknownPipelineError,
    RoutingError,
    MessageError,
    TraceQueryError,
)
"""Errors in what the user gave, fixed by changing the command (exit 2, as click's usage
errors); every other weir error is a failure (exit 1)."""


def main() -> None:
    """Entry point: every weir error becomes one readable line; exit 0 ok, 1 failure, 2 usage."""
    # A native crash (a C extension, the Kafka client, the embedded engine) prints every
    # thread's Python stack instead of ending the worker without a word.
    faulthandler.enable()
    try:
        app()
    except WeirError as exc:
        err.print(
            f"[bold red]error[/] ({exc.error_type}): ", end="", highlight=False, soft_wrap=True
        )
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        usage = isinstance(exc, _USAGE_ERRORS) and not isinstance(exc, SchemaRegistryError)
        sys.exit(EXIT_USAGE if usage else EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)


# -- worker ---------------------------------------------------------------------------


@app.command()
def worker(
    pipeline: Annotated[str, typer.Argument(help="The pipeline, as module.path:attribute.")],
    steps: Annotated[
        str | None, typer.Option(help="Run only these steps (comma-separated).")
    ] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="Concurrent messages.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
    config: ConfigOption = None,
) -> None:
    """Run a pipeline's steps until SIGTERM/SIGINT, then finish in-flight work and stop."""
    from weir.loader import load_pipeline, routers_of
    from weir.logs import configure_logging
    from weir.processors import ModelServices
    from weir.streams.worker import Worker

    settings = settings_from(config, max_in_flight=max_in_flight)
    configure_logging(settings, log_level)
    pipe = load_pipeline(pipeline, search_path=Path.cwd())
    only = [s.strip() for s in steps.split(",")] if steps else None

    async def run() -> Worker:
        from weir.web import WebServer

        services = ModelServices(settings)
        w = Worker(pipe, settings, steps=only, services=services)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.request_stop)
        web = WebServer(settings, w) if settings.web_port else None
        if web is not None:
            await asyncio.to_thread(_prepare_trace_store, settings)
            try:
                await web.start()
                logging.getLogger("weir.web").info("serving on %s", web.url)
            except OSError as exc:
                # A second worker on the same machine: it still works, without HTTP.
                logging.getLogger("weir.web").warning(
                    "no HTTP server: %s:%d is taken (%s); set WEIR_WEB_PORT to another port",
                    settings.web_host,
                    settings.web_port,
                    exc.strerror or exc,
                )
                web = None
        await _announce_routers(settings, pipe.name, services, routers_of(pipeline))
        try:
            await w.run()
        finally:
            if web is not None:
                await web.stop()
            await _withdraw_router_statuses(settings, services)
        return w

    stopped = _run(run())
    if stuck := stopped.threads.stuck():
        # Python joins every pool thread at exit, so a step that never returns would keep
        # the stopped worker alive forever; its work was handed back to the group already.
        logging.getLogger("weir.worker").error(
            "exiting with %d synchronous step call(s) still running past their timeout: %s",
            len(stuck),
            ", ".join(f"{s.step} (request {s.request_id})" for s in stuck),
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _prepare_trace_store(settings: WeirSettings) -> None:
    """Create the trace store's tables now, so the dashboard's pages only ever read.

    Best effort: the sink creates them too, and while it holds an embedded
    store this worker cannot open it (nor needs to).
    """
    from weir.core.errors import TraceStoreError
    from weir.traces import TraceStore, running_sink_url

    if running_sink_url(settings) is not None:
        return
    try:
        TraceStore.connect(settings, create_schema=True).close()
    except TraceStoreError as exc:
        logging.getLogger("weir.web").warning(
            "the trace store's tables were not created (%s); `weir sink` creates them, and"
            " until then the dashboard says so",
            exc,
        )


async def _announce_routers(
    settings: WeirSettings, pipeline: str, services: ModelServices, routers: dict[str, Router]
) -> None:
    """Tell ``weir routes apply`` which endpoints this worker's routers know."""
    if not routers:
        return
    from weir.processors.announcements import announce_routers

    log = logging.getLogger("weir.models")
    try:
        async with asyncio.timeout(30):
            sent = await announce_routers(settings, routers.values(), pipeline=pipeline)
    except Exception as exc:  # a help for rule checks: the worker runs without it
        log.warning("routes: could not announce the routers (%s: %s)", type(exc).__name__, exc)
        return
    if sent:
        log.info("routes: announced router(s) %s", ", ".join(a.router for a in sent))
        # Follow the routes topic from the start (not from the first model call), so each
        # router's status is on the topic before any request arrives.
        for router in routers.values():
            services.add_router(router)
        services.watcher().start()


async def _withdraw_router_statuses(settings: WeirSettings, services: ModelServices) -> None:
    """A stopping worker runs no version any more: take its statuses off the routes topic."""
    names = [name for name, r in services.routers.items() if r.watch]
    if not names:
        return
    from weir.processors.router_status import withdraw_statuses

    try:
        async with asyncio.timeout(10):
            await withdraw_statuses(settings, names)
    except Exception as exc:  # stopping goes on; `weir routes show` keeps a stale line
        logging.getLogger("weir.models").warning("routes: statuses not withdrawn: %s", exc)


# -- demo -----------------------------------------------------------------------------


@app.command()
def demo(
    requests: Annotated[int, typer.Option(help="How many requests to submit.")] = 20,
    keep_broker: Annotated[bool, typer.Option(help="Leave the broker running.")] = False,
    config: ConfigOption = None,
) -> None:
    """Start the broker and a worker, run the support pipeline on a batch, print the results."""
    from weir.demo import run_demo

    run_demo(settings_from(config), requests=requests, keep_broker=keep_broker, console=out)
