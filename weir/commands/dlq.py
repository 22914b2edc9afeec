"""``weir dlq``: list, show and replay a pipeline's dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from weir.commands._output import JsonOption, print_json, print_table
from weir.core.config import load_settings
from weir.core.errors import WeirError
from weir.streams.replay import DEFAULT_PAGE_SIZE

app = typer.Typer(help="Inspect and replay dead-letter topics.", no_args_is_help=True)
out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)

Step = Annotated[str | None, typer.Option("--step", "-s", help="Only this step's dead letters.")]
ErrorType = Annotated[
    str | None,
    typer.Option("--error-type", "-e", help="Only this error type (e.g. model_timeout)."),
]
Since = Annotated[
    str | None, typer.Option(help="Only dead letters newer than this: 30m, 2h, 7d or an ISO time.")
]
Config = Annotated[str | None, typer.Option("--config", "-c", help="TOML settings file.")]


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    step: Step = None,
    error_type: ErrorType = None,
    since: Since = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Entries per page.")
    ] = DEFAULT_PAGE_SIZE,
    offset: Annotated[
        int, typer.Option("--offset", min=0, help="Skip this many matching entries first.")
    ] = 0,
    after: Annotated[
        str | None,
        typer.Option(help="Start after this entry id (the 'next page' hint prints it)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: Config = None,
) -> None:
    """List dead letters a page at a time, oldest first per step, with whether they were replayed.

    Topics are read as a stream: memory holds one page, however many dead letters there are.
    """
    from weir.streams.replay import DeadLetterQueue, parse_since

    settings = load_settings(config)
    since_ms = parse_since(since) if since else None
    page = asyncio.run(
        DeadLetterQueue(settings, pipeline).page(
            step=step,
            error_type=error_type,
            since_ms=since_ms,
            after=after,
            skip=offset,
            limit=limit,
        )
    )
    entries = page.entries
    more = (
        f"more: weir dlq list {pipeline} --after {page.next_after}"
        + (f" --step {step}" if step else "")
        + (f" --error-type {error_type}" if error_type else "")
        + (f" --limit {limit}" if limit != DEFAULT_PAGE_SIZE else "")
        if page.next_after
        else None
    )
    if as_json:
        for e in entries:
            row = {
                "id": e.id,
                "step": e.step,
                "error_type": e.letter.error_type,
                "error_message": e.letter.error_message,
                "attempt": e.letter.attempt,
                "request_id": e.letter.request_id,
                "dead_lettered_at": e.timestamp,
                "replayed_by": e.replayed_by,
            }
            out.print(json.dumps(row), highlight=False, soft_wrap=True)
        if more:
            err.print(more, highlight=False, soft_wrap=True)  # stdout stays one object a line
        return
    table = Table("id", "error type", "attempts", "request id", "when (UTC)", "message", "replayed")
    for e in entries:
        table.add_row(
            e.id,
            e.letter.error_type,
            str(e.letter.attempt),
            e.letter.request_id or "-",
            _when(e.timestamp),
            e.letter.error_message[:60],
            e.replayed_by or "",
        )
    print_table(out, table)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.letter.error_type] = counts.get(e.letter.error_type, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    out.print(
        f"{len(entries)} dead letter(s) on this page" + (f": {summary}" if summary else ""),
        highlight=False,
    )
    if more:
        out.print(more, highlight=False, soft_wrap=True)


@app.command("show")
def show(
    entry_id: Annotated[str, typer.Argument(help="<pipeline>/<step>/<partition>/<offset>.")],
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """Print one dead letter: why it failed, where it came from, and the original message."""
    from weir.streams.replay import DeadLetterQueue

    pipeline = entry_id.split("/", 1)[0]
    entry = asyncio.run(DeadLetterQueue(load_settings(config), pipeline).get(entry_id))
    letter = entry.letter
    fields = {
        "id": entry.id,
        "pipeline": letter.pipeline,
        "step": letter.step,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "attempt": letter.attempt,
        "first_failed_at": _when(letter.first_failed_at),
        "last_failed_at": _when(letter.last_failed_at),
        "worker_id": letter.worker_id,
        "source": f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}",
        "request_id": letter.request_id,
        "replayed_by": entry.replayed_by,
        "key": _text(letter.key),
        "value": _text(letter.value, limit=2000),
    }
    if as_json:
        fields |= {
            "first_failed_at": letter.first_failed_at,
            "last_failed_at": letter.last_failed_at,
            "source": {
                "topic": letter.source_topic,
                "partition": letter.source_partition,
                "offset": letter.source_offset,
            },
            "value": _text(letter.value, limit=1 << 20),
            "stacktrace": letter.stacktrace,
        }
        print_json(fields)
        return
    for name, value in fields.items():
        out.print(f"[bold]{name:>16}[/]: {value}", highlight=False, soft_wrap=True)
    if letter.stacktrace:
        out.print("[bold]      stacktrace[/]:", highlight=False)
        out.print(letter.stacktrace, highlight=False, markup=False)


@app.command("replay")
def replay(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    step: Annotated[str, typer.Option("--step", "-s", help="The step to replay at.")],
    error_type: ErrorType = None,
    since: Since = None,
    dry_run: Annotated[
        bool, typer.Option(help="Say what would be replayed; send nothing.")
    ] = False,
    again: Annotated[
        bool, typer.Option(help="Also replay dead letters an earlier replay re-injected.")
    ] = False,
    config: Config = None,
) -> None:
    """Re-inject dead letters at the step that failed; only that branch runs again."""
    from weir.streams.replay import DeadLetterQueue, parse_since

    settings = load_settings(config)
    queue = DeadLetterQueue(settings, pipeline)
    since_ms = parse_since(since) if since else None

    async def run() -> None:
        entries = await queue.entries(step=step, error_type=error_type, since_ms=since_ms)
        started = time.monotonic()
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            disable=dry_run or not entries,
        ) as progress:
            task = progress.add_task("replay", total=len(entries))
            report = await queue.replay(
                entries,
                dry_run=dry_run,
                again=again,
                on_progress=lambda n: progress.advance(task, n),
            )
        verb = "would replay" if dry_run else "replayed"
        out.print(
            f"{verb} {len(report.replayed)} of {len(entries)} dead letter(s) of"
            f" {pipeline}/{step} as {report.replay_id}"
            + (f" in {time.monotonic() - started:.1f}s" if not dry_run else ""),
            highlight=False,
        )
        if report.already:
            out.print(f"{report.already} were replayed before (use --again to replay them anyway)")
        for entry_id, why in report.skipped.items():
            err.print(f"skipped {entry_id}: {why}", highlight=False)
        if report.skipped and not report.replayed:
            raise WeirError(
                f"none of the {len(report.skipped)} matching dead letters can be replayed"
            )

    asyncio.run(run())


def _text(raw: bytes | None, limit: int = 200) -> str:
    if raw is None:
        return "(none)"
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return f"({len(raw)} bytes) {raw[:limit]!r}"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
