"""``weir bench``: weir's worker beside a hand-written aiokafka chain (see ``weir.bench``)."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from weir.bench import BenchConfig, Round, as_json, run_bench, summary, systems

out = Console()
err = Console(stderr=True)


def bench(
    workload: Annotated[
        str,
        typer.Argument(help="hotpath (3 inline steps vs. a chain) or embed (the micro-batcher)."),
    ] = "hotpath",
    requests: Annotated[int, typer.Option("--requests", "-n", help="Burst size.")] = 20_000,
    probe: Annotated[int, typer.Option(help="Unloaded requests, one at a time.")] = 200,
    rounds: Annotated[int, typer.Option(help="Alternating rounds (weir, chain, ...).")] = 3,
    quick: Annotated[
        bool, typer.Option("--quick", help="A small run: 1 round, N=3000, 50 probes.")
    ] = False,
    tracing_off: Annotated[
        bool, typer.Option("--tracing-off", help="Also run weir without trace events/spans.")
    ] = False,
    two_workers: Annotated[
        bool, typer.Option("--two-workers", help="Also run 2 weir workers in one group.")
    ] = False,
    confluent: Annotated[
        bool,
        typer.Option(
            "--confluent", help="Also run the chain on confluent-kafka (must be installed)."
        ),
    ] = False,
    chain_txn: Annotated[
        bool,
        typer.Option(
            "--chain-txn",
            help="Also run the chain with exactly-once results (its last hop transactional).",
        ),
    ] = False,
    slow_model: Annotated[
        float,
        typer.Option(
            "--slow-model",
            help="Also run weir with one async step awaiting this many seconds (0: not run).",
        ),
    ] = 0.0,
    slow_burst: Annotated[
        int, typer.Option(help="Burst size of the slow-model run (10x the in-flight default).")
    ] = 10_000,
    broker_warmup: Annotated[
        int | None,
        typer.Option(
            help="Requests through weir and the chain before round 1, not reported (the "
            "broker's JIT warms up); 0: none. Default 10000, with --quick 2000."
        ),
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(help="An existing Kafka (default: a throw-away local broker).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Sample each system's process in its burst (CPU, GC, the Kafka requests it"
            " sent); writes PROFILE-<system>-r<n>.txt."
        ),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="Another weir run with environment overrides, alternated with the rest: "
            "NAME:KEY=VALUE[,KEY=VALUE] (e.g. gc-default:WEIR_GC_GEN0_THRESHOLD=0)."
        ),
    ] = None,
    as_json_: Annotated[bool, typer.Option("--json", help="Print JSON, no table.")] = False,
) -> None:
    """3 inline steps (n+1 each) in weir vs. a hand-written 3-hop aiokafka chain.

    ``weir bench embed``: an embedding pipeline with and without the micro-batcher,
    against a local endpoint the run starts (see ``weir.bench_embed``).
    """
    if workload == "embed":
        from weir.commands.bench_embed import bench_embed

        bench_embed(bootstrap=bootstrap, quick=quick, as_json_=as_json_)
        return
    if workload != "hotpath":
        err.print(f"[red]unknown workload {workload!r}: hotpath or embed[/]")
        raise typer.Exit(2)
    if quick:
        requests, probe, rounds = min(requests, 3000), min(probe, 50), 1
    variants = {}
    for spec in variant or []:
        name, _, pairs = spec.partition(":")
        variants[name] = dict(p.split("=", 1) for p in pairs.split(",") if p)
    cfg = BenchConfig(
        variants=variants,
        requests=requests,
        probe=probe,
        rounds=rounds,
        tracing_off=tracing_off,
        two_workers=two_workers,
        confluent=confluent,
        chain_txn=chain_txn,
        slow_model_s=slow_model,
        slow_burst=slow_burst,
        bootstrap=bootstrap,
        profile=profile,
        warmup=200 if quick else 500,
        broker_warmup=(2000 if quick else 10_000) if broker_warmup is None else broker_warmup,
    )
    command = "weir bench " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else [])
    total = rounds * len(systems(cfg)) * (requests + probe)
    if slow_model:
        total += rounds * (slow_burst - requests)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting the broker", total=total)

        def advance(n: int) -> None:
            bar.advance(task, n or 1)

        def status(text: str) -> None:
            bar.update(task, description=text)

        results = run_bench(cfg, progress=advance, status=status)
    if as_json_:
        print(as_json(cfg, results, command))
        return
    out.print(render(results, cfg))
    out.print(f"reproduce: [bold]{command}[/]")


def _hops(p50: list[float], p99: list[float]) -> str:
    """``p50/p99`` of each hop, in order."""
    return " ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(p50, p99, strict=True))


def render(results: list[Round], cfg: BenchConfig) -> Table:
    table = Table(
        title=f"3 inline steps, N={cfg.requests} burst, {cfg.probe} unloaded, "
        f"{cfg.rounds} alternating round(s), medians",
    )
    for column in (
        "system",
        "burst req/s",
        "x chain",
        "CPU ms/req",
        "broker CPU ms/req",
        "p50 ms",
        "p99 ms",
        "p50 x chain",
        "peak RSS MB",
        "burst +RSS MB",
        "per-hop p50/p99 ms",
    ):
        table.add_column(column, justify="left" if column == "system" else "right")
    for system, s in summary(results).items():
        table.add_row(
            system,
            f"{s['rps']:,.0f}",
            f"{s['ratio']:.3f}",
            f"{s['cpu_ms_per_request']:.3f}",
            "-"
            if s["broker_cpu_ms_per_request"] is None
            else f"{s['broker_cpu_ms_per_request']:.3f}",
            f"{s['probe_p50_ms']:.1f}",
            f"{s['probe_p99_ms']:.1f}",
            f"{s['p50_ratio']:.2f}",
            f"{s['peak_rss_mb']:.0f}",
            f"{s['burst_rss_mb']:.0f}",
            _hops(s["hop_p50_ms"], s["hop_p99_ms"]),
        )
    return table
