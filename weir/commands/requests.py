"""``weir submit`` and ``weir results``: requests in, answers out, from the command line."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from weir.commands._output import print_json
from weir.core.config import load_settings

__all__ = ["lag", "results", "submit"]

out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (else WEIR_CONFIG).")
]


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


def _read_options(given: list[str]) -> dict[str, str]:
    """``key=value`` pairs into request options (values stay text, as on the wire)."""
    options: dict[str, str] = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--option")
        options[key.strip()] = value
    return options


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist")
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield line


def submit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    json_text: Annotated[
        str | None, typer.Option("--json", help="One request payload (a JSON object).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSON Lines file: one payload per line.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="A request option, key=value (repeatable), e.g. -o latency_sla=200;"
            " routing rules read it as options.<key>.",
        ),
    ] = None,
    avro: Annotated[bool, typer.Option(help="Send Avro (Confluent framing), not JSON.")] = False,
    wait: Annotated[
        bool, typer.Option(help="Wait for the results and print them (JSON lines).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
    restart: Annotated[
        bool,
        typer.Option(help="--file: ignore FILE.weir-progress and send every line again."),
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(help="--file: send at most this many requests per second."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Submit requests to a pipeline's requests topic; print their request ids.

    With ``--file``, lines the broker acknowledged are recorded in
    ``FILE.weir-progress``; after an interruption the same command sends only the rest.
    """
    from weir.streams.client import WeirClient

    options = _read_options(option or [])
    settings = load_settings(config)
    if file is not None and json_text is None:
        _submit_file(pipeline, file, options, avro, wait, timeout, restart, rate, settings)
        return
    payloads = _read_payloads(json_text, file)

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
                    options=options,
                    fmt="avro" if avro else "json",
                    on_sent=lambda n: progress.advance(task, n),
                )
            if not wait:
                for rid in ids:
                    out.print(rid, highlight=False)
                return
            results = await client.wait_for(pipeline, ids, timeout=timeout)
            for rid in ids:
                print_json(results[rid].to_json())

    asyncio.run(run())


def _submit_file(
    pipeline: str,
    file: Path,
    options: dict[str, str],
    avro: bool,
    wait: bool,
    timeout: float,
    restart: bool,
    rate: float | None,
    settings: Any,
) -> None:
    from weir.core.errors import WeirError
    from weir.streams.client import WeirClient
    from weir.submission import SubmitReport, submit_file

    async def run() -> SubmitReport:
        async with WeirClient(settings) as client:
            with Progress(
                TextColumn("submitting"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=err,
            ) as progress:
                task = progress.add_task("submit", total=None, rate="")
                started = time.monotonic()

                def begin(report: SubmitReport) -> None:
                    progress.update(task, total=report.lines, completed=report.already)

                def acked(n: int) -> None:
                    progress.advance(task, n)
                    done = progress.tasks[0].completed
                    per_s = done / max(1e-3, time.monotonic() - started)
                    progress.update(task, rate=f"{per_s:,.0f}/s")

                report = await submit_file(
                    client,
                    pipeline,
                    file,
                    options=options,
                    fmt="avro" if avro else "json",
                    restart=restart,
                    rate=rate,
                    on_acked=acked,
                    on_start=begin,
                )
            if wait and report.ids:
                results = await client.wait_for(pipeline, report.ids, timeout=timeout)
                for rid in report.ids:
                    print_json(results[rid].to_json())
            return report

    try:
        report = asyncio.run(run())
    except WeirError as exc:
        err.print(f"[red]{exc.error_type}[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if not wait:
        for rid in report.ids:
            out.print(rid, highlight=False)
    err.print(
        f"{report.sent} sent and acknowledged, {report.already} already acknowledged"
        f" by an earlier run, of {report.lines} lines",
        highlight=False,
    )
    if report.bad:
        for number, why in report.bad[:20]:
            err.print(f"{file}:{number}: {why}", highlight=False)
        more = " (first 20 shown)" if len(report.bad) > 20 else ""
        err.print(
            f"[red]{len(report.bad)} line(s) not sent{more}[/]: fix them in place and run the"
            " same command again: only they will be sent",
            highlight=False,
        )
        raise typer.Exit(1)


def results(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new ones.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="Write them to FILE.jsonl (appended) or FILE.parquet (needs weir[parquet])"
            " as they arrive, not to the terminal.",
        ),
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option(help="With --follow: stop after this many seconds without a result."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print a pipeline's results from the beginning of its results topic."""
    from weir.streams.client import WeirClient

    settings = load_settings(config)
    if to is not None:
        _results_to_file(pipeline, to, follow, idle_timeout, settings)
        return

    async def run() -> None:
        async with WeirClient(settings) as client:
            async for result in client.results(pipeline, follow=follow):
                if as_json:
                    print_json(result.to_json())
                else:
                    out.print(_result_line(result), highlight=False, soft_wrap=True)

    asyncio.run(run())


def _results_to_file(
    pipeline: str, to: Path, follow: bool, idle_timeout: float | None, settings: Any
) -> None:
    from weir.core.errors import WeirError
    from weir.result_files import open_result_file
    from weir.streams.client import WeirClient

    try:
        writer = open_result_file(to)
    except WeirError as exc:
        err.print(f"[red]{exc.error_type}[/]: {exc}", highlight=False)
        raise typer.Exit(2) from None

    async def run() -> None:
        async with WeirClient(settings) as client:
            with Progress(
                TextColumn(f"writing {to.name}"),
                MofNCompleteColumn(),
                console=err,
                transient=True,
            ) as progress:
                task = progress.add_task("results", total=None)
                async for result in client.results(
                    pipeline, follow=follow, idle_timeout=idle_timeout
                ):
                    writer.write(result)
                    writer.flush()
                    progress.advance(task)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()  # a Parquet file is readable once its footer is written
        err.print(f"{writer.written} result(s) written to {to}", highlight=False)


def _result_line(result: Any) -> str:
    if result.status == "SUCCESS":
        return f"{result.request_id} {result.latency_ms:8.1f} ms  {result.output}"
    return (
        f"{result.request_id} FAILURE at {result.failed_step}: "
        f"{result.error_type}: {result.error_message}"
    )


def lag(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    partitions: Annotated[
        bool, typer.Option("--partitions", "-p", help="One row per partition.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
    config: ConfigOption = None,
) -> None:
    """Group-wide consumer lag of a pipeline: messages not yet done, per step (and partition)."""
    from rich.table import Table

    from weir.commands._output import print_table
    from weir.topics.lag import group_members, lag_report, pipeline_lag

    settings = load_settings(config)

    async def read() -> tuple[list[Any], int]:
        return await pipeline_lag(settings, pipeline), await group_members(settings, pipeline)

    rows, members = asyncio.run(read())
    if not rows:
        err.print(f"pipeline {pipeline!r} has no topics: is its name right?", highlight=False)
        raise typer.Exit(1)
    if as_json:
        print_json(lag_report(pipeline, rows, members))
        return
    if partitions:
        table = Table("step", "topic", "partition", "committed", "end", "lag")
        for r in rows:
            committed = "-" if r.committed is None else str(r.committed)
            table.add_row(r.step, r.topic, str(r.partition), committed, str(r.end), str(r.lag))
    else:
        table = Table("step", "topics", "lag")
        for step in dict.fromkeys(r.step for r in rows):
            mine = [r for r in rows if r.step == step]
            table.add_row(step, str(len({r.topic for r in mine})), f"{sum(r.lag for r in mine):,}")
    print_table(out, table)
