"""``weir routes what-if``: a candidate rule set on recorded traffic, without calling any model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from weir.commands._output import JsonOption, print_json, print_table
from weir.core.config import load_settings
from weir.core.errors import ConfigError, RoutingError

if TYPE_CHECKING:
    from weir.replays.what_if import WhatIfReport

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def what_if(
    file: Annotated[Path, typer.Argument(help="YAML (or JSON) rule set: the candidate.")],
    pipeline: Annotated[
        str, typer.Option(help="module:attribute of the pipeline whose step routes the calls.")
    ],
    step: Annotated[str, typer.Option("--step", "-s", help="The step that calls the router.")],
    since: Annotated[
        str, typer.Option(help="Requests recorded since: 30m, 24h, 7d or an ISO time.")
    ] = "7d",
    until: Annotated[str | None, typer.Option(help="...and before this (default: now).")] = None,
    sample: Annotated[str, typer.Option(help="Share of the requests: 10% or 0.1.")] = "100%",
    as_json: JsonOption = False,
    config: Annotated[str | None, typer.Option("--config", "-c", help="TOML settings.")] = None,
) -> None:
    """How a candidate rule set would split recorded calls across endpoints and what it would
    cost, next to what happened and to the live rules evaluated the same way. No model is
    called: each recorded input runs its step up to the routed call, priced from the live
    call's tokens."""
    from weir.commands.replay import parse_share
    from weir.loader import load_pipeline
    from weir.processors.routes import load_rule_sets, read_history
    from weir.processors.rules import RuleSet
    from weir.replays.what_if import what_if as evaluate
    from weir.streams.replay import parse_since

    if not file.exists():
        raise RoutingError(f"rules file {file} does not exist")
    candidates = load_rule_sets(file.read_text(), source=str(file))
    if len(candidates) != 1:
        raise ConfigError(f"{file} holds {len(candidates)} rule sets; what-if takes one")
    settings = load_settings(config)
    loaded = load_pipeline(pipeline, search_path=Path.cwd())

    async def run() -> WhatIfReport:
        history = [
            e for e in await read_history(settings, candidates[0].router) if isinstance(e, RuleSet)
        ]
        return await evaluate(
            settings,
            loaded,
            step=step,
            candidate=candidates[0],
            history=history,
            since_ms=parse_since(since),
            until_ms=parse_since(until) if until else None,
            sample=parse_share(sample),
        )

    report = asyncio.run(run())
    if as_json:
        print_json({**report.__dict__, "cost_difference_usd": report.cost_difference_usd})
        return
    render(report, out)


def render(r: WhatIfReport, console: Console) -> None:
    console.print(
        f"router {r.router} on {r.pipeline}/{r.step}: {r.routed} routed call(s) of {r.inputs}"
        " recorded input(s)",
        highlight=False,
    )
    endpoints = sorted(set(r.actual.calls) | set(r.live.calls) | set(r.candidate.calls))
    table = Table("endpoint", "actual", "live rules (evaluated)", "candidate")
    for name in endpoints:
        table.add_row(
            name,
            *(str(split.calls.get(name, 0)) for split in (r.actual, r.live, r.candidate)),
        )
    table.add_row("cost", *(f"${split.cost_usd:.6f}" for split in (r.actual, r.live, r.candidate)))
    print_table(console, table)
    console.print(
        f"candidate: {r.changed} call(s) go elsewhere, cost difference"
        f" ${r.cost_difference_usd:+.6f}; live rules reproduce {r.reproduced} of {r.routed}",
        highlight=False,
    )
    for label, split in (("live rules", r.live), ("candidate", r.candidate)):
        if split.errors:
            console.print(f"{label}: unroutable {split.errors}", highlight=False)
        if split.unpriced:
            note = f"{label}: {split.unpriced} call(s) to endpoints without a price"
            console.print(note, highlight=False)
    for why, n in r.skipped.items():
        err.print(f"left out {n}: {why}", highlight=False)
