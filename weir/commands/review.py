"""``weir review``: list, show and answer the requests a step escalated to a person."""

from __future__ import annotations

import asyncio
import getpass
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from weir.commands._output import JsonOption, print_json, print_table
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import ReviewNotFoundError
from weir.streams.review import Review, answer_review, read_reviews
from weir.topics.admin import TopicAdmin

__all__ = ["app"]

app = typer.Typer(help="Requests escalated to a person: list, show, answer.", no_args_is_help=True)
out = Console(soft_wrap=True)

Config = Annotated[str | None, typer.Option("--config", "-c", help="TOML settings file.")]
PipelineOption = Annotated[
    str | None,
    typer.Option("--pipeline", "-p", help="The request's pipeline (else every one is searched)."),
]


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _pipelines(settings: WeirSettings, pipeline: str | None) -> list[str]:
    if pipeline is not None:
        return [pipeline]
    async with TopicAdmin(settings) as admin:
        names = await admin.list()
    prefix = "weir."
    return sorted(
        t[len(prefix) : -len(".reviews")]
        for t in names
        if t.startswith(prefix) and t.endswith(".reviews")
    )


async def _all_reviews(settings: WeirSettings, pipeline: str | None) -> list[Review]:
    found: list[Review] = []
    for name in await _pipelines(settings, pipeline):
        found += (await read_reviews(settings, name)).reviews.values()
    return found


async def _find(settings: WeirSettings, request_id: str, pipeline: str | None) -> Review:
    for review in await _all_reviews(settings, pipeline):
        if review.request_id == request_id:
            return review
    where = f"pipeline {pipeline!r}" if pipeline else "any pipeline"
    raise ReviewNotFoundError(f"request {request_id} has no review in {where} ('weir review list')")


@app.command("list")
def list_(
    pipeline: Annotated[str | None, typer.Argument(help="Pipeline name (else all).")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Answered and expired reviews too, not only open ones.")
    ] = False,
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """Reviews waiting for a person (oldest first), without their transcripts."""
    settings = load_settings(config)
    reviews = asyncio.run(_all_reviews(settings, pipeline))
    shown = sorted(
        (r for r in reviews if every or r.status == "open"), key=lambda r: r.escalated_at
    )
    if as_json:
        print_json([{"pipeline": r.pipeline, **r.summary()} for r in shown])
        return
    if not shown:
        out.print("no reviews waiting" if not every else "no reviews")
        return
    table = Table("request", "pipeline", "step", "reason", "status", "escalated", "deadline")
    for r in shown:
        status = r.status if r.status == "open" else f"{r.status} by {r.closed_by}"
        table.add_row(
            r.request_id,
            r.pipeline,
            r.step,
            r.reason,
            status,
            _when(r.escalated_at),
            _when(r.deadline_at),
        )
    print_table(out, table)


@app.command("show")
def show(
    request_id: Annotated[str, typer.Argument(help="The escalated request's id.")],
    pipeline: PipelineOption = None,
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """One review: its reason, transcript, the intermediate outputs and the request."""
    settings = load_settings(config)
    review = asyncio.run(_find(settings, request_id, pipeline))
    details = {"pipeline": review.pipeline, **review.details()}
    if as_json:
        print_json(details)
        return
    out.print(f"request {review.request_id} ({review.pipeline}, step {review.step})")
    out.print(f"reason: {review.reason}", markup=False)
    status = review.status if review.status == "open" else f"{review.status} by {review.closed_by}"
    out.print(f"status: {status}; escalated {_when(review.escalated_at)} UTC,", end=" ")
    out.print(f"deadline {_when(review.deadline_at)} UTC")
    out.print("transcript:")
    for line in review.transcript:
        out.print(f"  {line}", markup=False, highlight=False)


@app.command("answer")
def answer(
    request_id: Annotated[str, typer.Argument(help="The escalated request's id.")],
    text: Annotated[str, typer.Option("--text", "-t", help="The answer the customer gets.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Who answers (default: the login name).")
    ] = None,
    pipeline: PipelineOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 60.0,
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """Deliver a person's answer as the request's one result."""
    settings = load_settings(config)
    who = by or getpass.getuser()

    async def run() -> None:
        review = await _find(settings, request_id, pipeline)
        result = await answer_review(
            settings, review.pipeline, request_id, text=text, by=who, timeout=timeout
        )
        if as_json:
            print_json(result.to_json())
            return
        value = result.value
        waited = value.get("waited_ms", 0) / 1000 if isinstance(value, dict) else 0
        out.print(
            f"answered request {request_id} as {who} after {waited:.1f}s; result delivered",
            highlight=False,
        )

    asyncio.run(run())
