"""``weir replay`` and ``weir compare``: a candidate over a step's past inputs, and how it did."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from weir.commands._output import JsonOption, print_json, print_table
from weir.core.config import load_settings
from weir.core.errors import ConfigError

if TYPE_CHECKING:
    from weir.replays.compare import Comparison, Side

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Config = Annotated[str | None, typer.Option("--config", "-c", help="TOML settings file.")]


def parse_share(text: str) -> float:
    """``10%`` or ``0.1`` as a share in (0, 1].

    >>> parse_share("10%"), parse_share("0.25")
    (0.1, 0.25)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if match is None:
        raise ConfigError(f"--sample {text!r} is not a share; use a percentage (10%) or 0.1")
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 < value <= 1:
        raise ConfigError(f"--sample {text!r} must be more than 0% and at most 100%")
    return value


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation as exc:
        raise ConfigError(f"--budget {text!r} is not an amount of USD (e.g. 5.00)") from exc
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"--budget {text!r} must be a positive amount of USD")
    return value


def replay(
    pipeline: Annotated[
        str, typer.Argument(help="The pipeline, as module:attribute (as for weir worker).")
    ],
    step: Annotated[str | None, typer.Option("--step", "-s", help="The step to replay.")] = None,
    since: Annotated[
        str, typer.Option(help="Inputs recorded since: 30m, 24h, 7d or an ISO time.")
    ] = "24h",
    until: Annotated[str | None, typer.Option(help="...and before this (default: now).")] = None,
    sample: Annotated[
        str, typer.Option(help="Share of the inputs to replay: 10% or 0.1.")
    ] = "100%",
    endpoint: Annotated[
        str | None, typer.Option(help="Candidate: send the step's model calls to this endpoint.")
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(help="Candidate: run this module:function in place of the step's function."),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="Stop once the candidate has spent this many USD.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Inputs replayed at once (the budget still holds).")
    ] = 4,
    dry_run: Annotated[
        bool, typer.Option(help="Only count the inputs and price them; call nothing.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option(help="Carry on with this replay id where it stopped.")
    ] = None,
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """Replay a step's recorded inputs against a candidate, in its own consumer group and topic.

    Nothing reaches the results topic or the step's dependents; functions marked
    @side_effect are skipped. Compare with the live step afterwards: weir compare <replay-id>.
    """
    from weir.loader import load_pipeline
    from weir.replays.step_replay import ReplayProgress, StepReplay
    from weir.streams.replay import parse_since

    settings = load_settings(config)
    loaded = load_pipeline(pipeline, search_path=Path.cwd())

    async def run() -> tuple[StepReplay, ReplayProgress]:
        if resume is not None:
            job = await StepReplay.resume(
                settings,
                loaded,
                resume,
                budget_usd=_usd(budget) if budget else None,
                concurrency=concurrency,
            )
        else:
            if step is None:
                raise ConfigError("--step is required (or --resume <replay-id>)")
            job = await StepReplay.create(
                settings,
                loaded,
                step=step,
                since_ms=parse_since(since),
                until_ms=parse_since(until) if until else None,
                sample=parse_share(sample),
                endpoint=endpoint,
                variant=variant,
                budget_usd=_usd(budget) if budget else None,
                concurrency=concurrency,
            )
        with Progress(
            TextColumn("counting" if dry_run else "replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=err,
            disable=as_json,
        ) as bar:
            task = bar.add_task("replay", total=job.total, note="")

            def show(p: ReplayProgress) -> None:
                bar.update(
                    task, completed=p.read, note=f"{p.replayed} replayed, ${p.spent_usd:.4f}"
                )

            result = await (job.dry_run(show) if dry_run else job.run(show))
        return job, result

    job, result = asyncio.run(run())
    plan = job.plan
    summary = {
        "replay_id": plan.replay_id,
        "pipeline": plan.pipeline,
        "step": plan.step,
        "variant": plan.label,
        "dry_run": dry_run,
        "inputs_in_window": result.total,
        "replayed": result.replayed,
        "failed": result.failed,
        "spent_usd": result.spent_usd,
        "estimated_usd": result.estimated_usd if dry_run else None,
        "stopped_by_budget": result.stopped_by_budget,
        "topic": job.topic,
    }
    if as_json:
        print_json(summary)
        return
    if dry_run:
        out.print(
            f"would replay {result.replayed} of {result.total} recorded input(s) of"
            f" {plan.pipeline}/{plan.step} against {plan.label},"
            f" estimated ${result.estimated_usd:.6f}",
            highlight=False,
        )
        return
    out.print(
        f"replay {plan.replay_id}: {result.replayed} input(s) of {plan.pipeline}/{plan.step}"
        f" against {plan.label}, {result.failed} failed, spent ${result.spent_usd:.6f}",
        highlight=False,
    )
    if result.stopped_by_budget:
        out.print(
            f"stopped at the budget (${plan.budget_usd}); carry on with: weir replay {pipeline}"
            f" --resume {plan.replay_id} --budget <more> (the spend so far counts)",
            highlight=False,
        )
    out.print(
        f"compare with the live step: weir compare {pipeline} {plan.replay_id}", highlight=False
    )


def compare(
    replay_id: Annotated[
        str | None, typer.Argument(help="The replay id weir replay printed.")
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(help="Instead: this pipeline's live shadow calls (rules with shadow:)."),
    ] = None,
    since: Annotated[str, typer.Option(help="With --shadow: calls since 30m, 24h, 7d.")] = "24h",
    router: Annotated[
        str | None, typer.Option(help="With --shadow: only this router's shadowed calls.")
    ] = None,
    scorer: Annotated[
        str,
        typer.Option(
            help="Output similarity: exact, embedding:<endpoint> (cosine) or module:function."
        ),
    ] = "exact",
    load: Annotated[
        str | None,
        typer.Option(
            "--import", help="Import this module first (where the scorer's endpoint is defined)."
        ),
    ] = None,
    examples: Annotated[
        int, typer.Option(min=0, help="How many of the most different outputs to show.")
    ] = 5,
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """Baseline (the step live) against candidate (the replay) over the same inputs: count,
    errors, latency p50/p95/p99, tokens, cost per request and per month, output agreement."""
    import importlib
    import sys

    from weir.processors.services import ModelServices
    from weir.replays import find_replay, read_outcomes
    from weir.replays.baseline import live_attempts
    from weir.replays.compare import compare as compare_sides
    from weir.replays.compare import load_scorer

    settings = load_settings(config)
    modules = []
    if load is not None:
        sys.path.insert(0, str(Path.cwd()))
        try:
            modules.append(importlib.import_module(load))
        except ImportError as exc:
            raise ConfigError(f"--import {load!r}: {exc}") from exc
    score = load_scorer(scorer, modules=modules)

    if (replay_id is None) == (shadow is None):
        raise ConfigError("give a replay id, or --shadow <pipeline>")

    async def run() -> Comparison:
        if shadow is not None:
            from weir.replays.shadows import shadow_comparison_inputs
            from weir.streams.replay import parse_since

            plan, outcomes, live = await shadow_comparison_inputs(
                settings, shadow, since_ms=parse_since(since), router=router
            )
        else:
            assert replay_id is not None
            plan, topic = await find_replay(settings, replay_id)
            outcomes = await read_outcomes(settings, topic)
            live = await live_attempts(settings, plan, [o.request_id for o in outcomes])
        # An embedding scorer calls its endpoint: through services of this command's own.
        async with ModelServices(settings):
            return await compare_sides(plan, outcomes, live, scorer=score, examples=examples)

    result = asyncio.run(run())
    if as_json:
        print_json(result)
        return
    render_comparison(result, out)


def render_comparison(c: Comparison, console: Console) -> None:
    """The comparison as a table, then the most different outputs side by side."""
    console.print(
        f"replay {c.replay_id} of {c.pipeline}/{c.step}: live (baseline) against {c.variant}",
        highlight=False,
    )
    table = Table("", "baseline", "candidate")
    b, k = c.baseline, c.candidate

    def errors(side: Side) -> str:
        return ", ".join(f"{t} {n}" for t, n in side.errors.items()) or "-"

    rows = [
        ("requests", str(b.count), str(k.count)),
        ("succeeded", str(b.succeeded), str(k.succeeded)),
        ("errors", errors(b), errors(k)),
        *(
            (f"latency {q}", f"{b.latency_ms[q]:,.1f} ms", f"{k.latency_ms[q]:,.1f} ms")
            for q in ("p50", "p95", "p99")
        ),
        ("input tokens", f"{b.input_tokens:,}", f"{k.input_tokens:,}"),
        ("output tokens", f"{b.output_tokens:,}", f"{k.output_tokens:,}"),
        ("cost", f"${b.cost_usd:.6f}", f"${k.cost_usd:.6f}"),
        ("cost per request", f"${b.cost_per_request_usd:.6f}", f"${k.cost_per_request_usd:.6f}"),
        ("projected per month", f"${b.projected_month_usd:,}", f"${k.projected_month_usd:,}"),
    ]
    for row in rows:
        table.add_row(*row)
    print_table(console, table)
    console.print(
        f"agreement over {c.compared} outputs: exact match {c.exact_match_rate:.1%},"
        f" {c.scorer} mean {c.mean_score:.3f}",
        highlight=False,
    )
    if c.missing_baseline:
        console.print(
            f"{c.missing_baseline} replayed input(s) have no live trace events (expired, or the"
            " sink has not caught up) and are left out",
            highlight=False,
        )
    if c.most_different:
        diff = Table("request", "score", "baseline", "candidate")
        for e in c.most_different:
            diff.add_row(e.request_id, f"{e.score:.3f}", e.baseline or "", e.candidate or "")
        print_table(console, diff)
