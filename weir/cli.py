"""The ``weir`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from weir.commands import dlq
from weir.commands import trace as trace_commands
from weir.config import WeirSettings, load_settings
from weir.errors import ConfigError, WeirError

T = TypeVar("T")

app = typer.Typer(
    help="weir: pipelines of plain Python functions, run as stream processors on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
broker_app = typer.Typer(
    help="Run the local single-node Kafka broker (KRaft).", no_args_is_help=True
)
topics_app = typer.Typer(help="List and create weir's topics.", no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro schemas of weir's messages.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(dlq.app, name="dlq")
app.command("trace")(trace_commands.trace)
app.command("stats")(trace_commands.stats)
app.command("sink")(trace_commands.sink)


def _register_commands() -> None:
    from weir.commands import bench, cost, routes

    app.add_typer(routes.app, name="routes")
    app.command("cost")(cost.cost)
    app.command("bench")(bench.bench)


_register_commands()

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (else WEIR_CONFIG).")
]


def _settings(config: Path | None, **overrides: Any) -> WeirSettings:
    return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def main() -> None:
    """Entry point: every weir error becomes one readable line and exit code 2."""
    try:
        app()
    except WeirError as exc:
        err.print(f"[bold red]error[/] ({exc.error_type}): {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


# -- broker ---------------------------------------------------------------------------


def _broker(config: Path | None) -> Any:
    from topics.broker import LocalBroker

    settings = _settings(config)
    if not settings.uses_local_broker:
        raise ConfigError(
            f"WEIR_KAFKA_BOOTSTRAP points at {settings.kafka_bootstrap}; 'weir broker' manages"
            " only the local broker (unset it to use the local one)"
        )
    return LocalBroker(settings)


@broker_app.command("start")
def broker_start(config: ConfigOption = None) -> None:
    """Fetch Kafka from Maven Central (once), start it on 127.0.0.1 and wait until it serves."""
    started = time.monotonic()
    status = _broker(config).start()
    out.print(
        f"kafka {status.version} running (pid {status.pid}) at {status.bootstrap}"
        f" in {time.monotonic() - started:.1f}s; logs: {status.log_file}"
    )


@broker_app.command("stop")
def broker_stop(config: ConfigOption = None) -> None:
    """Stop the local broker (no-op when it is not running)."""
    _broker(config).stop()
    out.print("kafka stopped")


@broker_app.command("status")
def broker_status(config: ConfigOption = None) -> None:
    """Say whether the local broker runs, where, and where its data and logs are."""
    status = _broker(config).status()
    state = "[green]running[/]" if status.running else "[red]stopped[/]"
    out.print(f"kafka {status.version}: {state} pid={status.pid} bootstrap={status.bootstrap}")
    out.print(f"data: {status.data_dir}\nlogs: {status.log_file}")
    if not status.running:
        raise typer.Exit(1)


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
    from streams.worker import Worker
    from weir.loader import load_pipeline

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = _settings(config, max_in_flight=max_in_flight)
    pipe = load_pipeline(pipeline, search_path=Path.cwd())
    only = [s.strip() for s in steps.split(",")] if steps else None

    async def run() -> None:
        from processors import aclose_model_layer
        from weir.web import WebServer

        w = Worker(pipe, settings, steps=only)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.request_stop)
        web = WebServer(settings, w) if settings.web_port else None
        if web is not None:
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
        try:
            await w.run()
        finally:
            if web is not None:
                await web.stop()
            await aclose_model_layer()

    _run(run())


# -- submit / results -------------------------------------------------------------------


def _read_payloads(json_text: str | None, file: Path | None) -> list[dict[str, Any]]:
    if (json_text is None) == (file is None):
        raise typer.BadParameter("give exactly one of --json or --file")
    lines = [json_text] if json_text is not None else _lines(file)  # type: ignore[arg-type]
    payloads = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            where = "--json" if file is None else f"{file}:{number}"
            raise typer.BadParameter(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise typer.BadParameter(f"request {number} must be a JSON object")
        payloads.append(value)
    return payloads


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist")
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield line


@app.command()
def submit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    json_text: Annotated[
        str | None, typer.Option("--json", help="One request payload (a JSON object).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSON Lines file: one payload per line.")
    ] = None,
    avro: Annotated[bool, typer.Option(help="Send Avro (Confluent framing), not JSON.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the results and print them.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
    config: ConfigOption = None,
) -> None:
    """Submit requests to a pipeline's requests topic; print their request ids."""
    from streams.client import WeirClient

    payloads = _read_payloads(json_text, file)
    settings = _settings(config)

    async def run() -> None:
        async with WeirClient(settings) as client:
            with Progress(
                TextColumn("submitting"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                disable=len(payloads) < 100,
            ) as progress:
                task = progress.add_task("submit", total=len(payloads))
                ids = await client.submit_many(
                    pipeline,
                    payloads,
                    fmt="avro" if avro else "json",
                    on_sent=lambda n: progress.advance(task, n),
                )
            if not wait:
                for rid in ids:
                    out.print(rid, highlight=False)
                return
            results = await client.wait_for(pipeline, ids, timeout=timeout)
            for rid in ids:
                out.print(results[rid].model_dump_json(), highlight=False, soft_wrap=True)

    _run(run())


@app.command()
def results(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new ones.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOption = None,
) -> None:
    """Print a pipeline's results from the beginning of its results topic."""
    from streams.client import WeirClient

    settings = _settings(config)

    async def run() -> None:
        async with WeirClient(settings) as client:
            async for result in client.results(pipeline, follow=follow):
                if as_json:
                    out.print(result.model_dump_json(), highlight=False, soft_wrap=True)
                else:
                    out.print(_result_line(result), highlight=False, soft_wrap=True)

    _run(run())


def _result_line(result: Any) -> str:
    if result.status == "SUCCESS":
        return f"{result.request_id} {result.latency_ms:8.1f} ms  {result.output}"
    return (
        f"{result.request_id} FAILURE at {result.failed_step}: "
        f"{result.error_type}: {result.error_message}"
    )


# -- topics / schemas ---------------------------------------------------------------------


@topics_app.command("list")
def topics_list(config: ConfigOption = None) -> None:
    """List the cluster's topics with their partition counts."""
    from topics.admin import TopicAdmin

    async def run() -> dict[str, int]:
        async with TopicAdmin(_settings(config)) as admin:
            return await admin.list()

    table = Table("topic", "partitions")
    for name, partitions in _run(run()).items():
        table.add_row(name, str(partitions))
    out.print(table)


@topics_app.command("create")
def topics_create(
    pipeline: Annotated[str, typer.Argument(help="The pipeline, as module.path:attribute.")],
    config: ConfigOption = None,
) -> None:
    """Create every topic a pipeline needs (workers also do this when they start)."""
    from topics.admin import TopicAdmin
    from topics.names import topic_specs
    from weir.loader import load_pipeline

    settings = _settings(config)
    pipe = load_pipeline(pipeline, search_path=Path.cwd())

    async def run() -> list[str]:
        async with TopicAdmin(settings) as admin:
            return await admin.ensure(topic_specs(pipe, settings))

    created = _run(run())
    out.print(f"created {len(created)} topic(s)" + "".join(f"\n  {t}" for t in created))


@schemas_app.command("list")
def schemas_list() -> None:
    """Each schema with its wire id (the Confluent header's schema id)."""
    from schemas import (
        DEAD_LETTER_SCHEMA,
        ENVELOPE_SCHEMA,
        REQUEST_SCHEMA,
        RESULT_SCHEMA,
        TRACE_EVENT_SCHEMA,
    )

    table = Table("schema", "record", "schema id", "file")
    for s in (
        REQUEST_SCHEMA,
        ENVELOPE_SCHEMA,
        RESULT_SCHEMA,
        DEAD_LETTER_SCHEMA,
        TRACE_EVENT_SCHEMA,
    ):
        table.add_row(s.name, s.definition["name"], str(s.schema_id), f"schemas/{s.name}.avsc")
    out.print(table)


@schemas_app.command("show")
def schemas_show(
    name: Annotated[
        str, typer.Argument(help="request, envelope, result, dead_letter, trace_event")
    ],
) -> None:
    """Print one schema (the .avsc JSON)."""
    from schemas import load_schema

    try:
        schema = load_schema(name)
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"no schema {name!r}") from exc
    out.print_json(json.dumps(schema.definition))


# -- demo -----------------------------------------------------------------------------


@app.command()
def demo(
    requests: Annotated[int, typer.Option(help="How many requests to submit.")] = 20,
    keep_broker: Annotated[bool, typer.Option(help="Leave the broker running.")] = False,
    config: ConfigOption = None,
) -> None:
    """Start the broker and a worker, run the support pipeline on a batch, print the results."""
    from weir.demo import run_demo

    run_demo(_settings(config), requests=requests, keep_broker=keep_broker, console=out)
