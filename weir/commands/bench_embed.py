"""``weir bench embed``: the embedding micro-batcher against a local endpoint."""

from __future__ import annotations

import json
import shlex
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from weir.bench_embed import EmbedBenchConfig, as_dict, run_embed_bench

out = Console()
err = Console(stderr=True)


def bench_embed(*, bootstrap: str | None, quick: bool, as_json_: bool) -> None:
    cfg = EmbedBenchConfig(bootstrap=bootstrap)
    if quick:
        cfg.texts, cfg.per_item_texts = 10_000, 500
    command = "weir bench " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else [])
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting the broker", total=cfg.texts + cfg.per_item_texts)
        figures = run_embed_bench(
            cfg,
            progress=lambda n: bar.advance(task, n),
            status=lambda text: bar.update(task, description=text),
        )
    result = as_dict(figures)
    if as_json_:
        print(json.dumps({"config": cfg.__dict__, "command": command, **result}, indent=2))
        return
    table = Table(
        title=f"{cfg.texts} texts, {cfg.texts_per_request}/request; endpoint: "
        f"{cfg.overhead_ms:g} ms/call + {cfg.per_item_ms:g} ms/text, batches <= {cfg.max_batch},"
        f" {cfg.endpoint_concurrency} computed at once"
    )
    for column in ("run", "texts/s", "x per item", "x direct"):
        table.add_column(column, justify="left" if column == "run" else "right")
    single = figures.per_item_items_s
    direct = figures.direct_items_s
    for run, rate in (
        ("direct, full batches", direct),
        ("weir, micro-batched", figures.batched_items_s),
        (f"weir, one call per text ({figures.per_item_texts} texts)", single),
    ):
        table.add_row(run, f"{rate:,.0f}", f"{rate / single:.1f}", f"{rate / direct:.3f}")
    out.print(table)
    out.print(
        f"batched: {figures.batched_calls} calls, {figures.batched_mean_batch} texts/call;"
        f" worker RSS {figures.rss_after_warmup_mb:.0f} MB after warm-up, peak"
        f" {figures.rss_peak_mb:.0f} MB (+{result['rss_growth_mb']:.0f} MB) during the burst;"
        f" worker CPU {figures.batched_worker_cpu_s:.1f} s"
        f" ({figures.batched_worker_cpu_s * 1e6 / cfg.texts:.0f} us/text)"
    )
    out.print(f"reproduce: [bold]{command}[/]")
