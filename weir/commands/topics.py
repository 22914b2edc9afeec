"""``weir topics``: list the cluster's topics, create (or plan) a pipeline's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from weir.commands._options import ConfigOption, settings_from
from weir.commands._output import JsonOption, print_json, print_table

app = typer.Typer(help="List and create weir's topics.", no_args_is_help=True)
out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)


@app.command("list")
def topics_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List the cluster's topics with their partition counts."""
    from weir.topics.admin import TopicAdmin

    async def run() -> dict[str, int]:
        async with TopicAdmin(settings_from(config)) as admin:
            return await admin.list()

    listed = asyncio.run(run())
    if as_json:
        print_json([{"topic": name, "partitions": n} for name, n in listed.items()])
        return
    table = Table("topic", "partitions")
    for name, partitions in listed.items():
        table.add_row(name, str(partitions))
    print_table(out, table)


@app.command("create")
def topics_create(
    pipeline: Annotated[str, typer.Argument(help="The pipeline, as module.path:attribute.")],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print every topic the pipeline needs (partitions, replication, configs) and"
            " whether it exists; create nothing.",
        ),
    ] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Create every topic a pipeline needs (workers also do this when they start)."""
    from weir.loader import load_pipeline
    from weir.topics.admin import TopicAdmin
    from weir.topics.names import topic_specs

    settings = settings_from(config)
    pipe = load_pipeline(pipeline, search_path=Path.cwd())
    specs = topic_specs(pipe, settings)

    if dry_run:

        async def plan() -> list[Any]:
            async with TopicAdmin(settings) as admin:
                return await admin.plan(specs)

        plans = asyncio.run(plan())
        missing = sum(1 for p in plans if not p.exists)
        err.print(f"dry run: {missing} of {len(plans)} topic(s) would be created")
        if as_json:
            print_json(
                [
                    {
                        "topic": p.name,
                        "partitions": p.partitions,
                        "replication_factor": p.replication_factor,
                        "config": p.config,
                        "exists": p.exists,
                    }
                    for p in plans
                ]
            )
            return
        table = Table("topic", "partitions", "replication", "config", "action")
        for p in plans:
            configs = " ".join(f"{k}={v}" for k, v in sorted(p.config.items()))
            action = "exists" if p.exists else "create"
            table.add_row(p.name, str(p.partitions), str(p.replication_factor), configs, action)
        print_table(out, table)
        return

    async def run() -> list[str]:
        async with TopicAdmin(settings) as admin:
            return await admin.ensure(specs)

    created = asyncio.run(run())
    if as_json:
        print_json({"created": created})
        return
    out.print(f"created {len(created)} topic(s)" + "".join(f"\n  {t}" for t in created))
