"""``weir routes``: apply, show and list the history of routing rule sets (no deploy needed)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from aiokafka.errors import KafkaError
from rich.console import Console

from weir.commands._output import JsonOption, print_json
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import BrokerError, RoutingError

if TYPE_CHECKING:
    from weir.processors.announcements import RouterAnnouncement
    from weir.processors.router_status import RouterStatus
    from weir.processors.rules import RuleSet

app = typer.Typer(
    help="Routing rules on the routes topic: workers switch within seconds.", no_args_is_help=True
)
out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (else WEIR_CONFIG).")
]


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="YAML (or JSON) rule set, or a list of them.")],
    pipeline: Annotated[
        str | None,
        typer.Option(
            help="module:attribute of the pipeline whose routers the rules are for; checks that"
            " every endpoint the rules name exists. Without it, endpoint names are checked"
            " against the routers running workers announced on the routes topic."
        ),
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Why; kept in the history.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate only; publish nothing.")] = False,
    config: ConfigOption = None,
) -> None:
    """Validate a rules file and publish it as the next version of each router's rules."""
    from weir.processors.router import registered_routers
    from weir.processors.routes import apply_rule_set, check_against_routers, load_rule_sets

    if not file.exists():
        raise RoutingError(f"rules file {file} does not exist")
    rule_sets = load_rule_sets(file.read_text(), source=str(file))
    routers = None
    if pipeline is not None:
        from weir.loader import load_pipeline

        load_pipeline(pipeline, search_path=Path.cwd())
        routers = registered_routers()
        for rule_set in rule_sets:
            check_against_routers(rule_set, routers)
    settings = load_settings(config)
    if routers is None:
        _check_announced(settings, rule_sets)
    if dry_run:
        for rule_set in rule_sets:
            out.print(f"{rule_set.router}: {len(rule_set.rules)} rule(s) valid (not published)")
        return

    async def run() -> None:
        for rule_set in rule_sets:
            done = await apply_rule_set(settings, rule_set, comment=comment, routers=routers)
            out.print(
                f"{done.router}: version {done.version} applied ({len(done.rules)} rule(s));"
                " workers switch within seconds"
            )

    asyncio.run(run())


def _check_announced(settings: WeirSettings, rule_sets: list[RuleSet]) -> None:
    """Endpoint names against the routers workers announced; a note where none did."""
    from weir.processors.announcements import check_against_announced, read_announcements

    async def read() -> dict[str, RouterAnnouncement]:
        async with asyncio.timeout(settings.routes_wait_s + 10):
            return await read_announcements(settings)

    try:
        announced = asyncio.run(read())
    except (BrokerError, KafkaError, OSError, TimeoutError) as exc:
        why = str(exc) or type(exc).__name__
        err.print(
            f"note: endpoint names not checked: the routes topic cannot be read ({why});"
            " give --pipeline module:attribute to check against the code",
            highlight=False,
        )
        return
    for rule_set in rule_sets:
        if check_against_announced(rule_set, announced) is None:
            err.print(
                f"note: router {rule_set.router!r}: no worker has announced it on the routes"
                " topic, so its endpoint names are not checked (start a worker first, or give"
                " --pipeline module:attribute)",
                highlight=False,
            )


@app.command("show")
def show(
    router: Annotated[str | None, typer.Argument(help="One router (default: all).")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Print the rule set in force (YAML) for each router on the routes topic, and which
    version each running worker has in force (and any version it refused, and why)."""
    from weir.processors.router_status import read_statuses
    from weir.processors.routes import dump_rule_set, read_rule_sets

    settings = load_settings(config)

    async def read() -> tuple[dict[str, RuleSet], dict[str, list[RouterStatus]]]:
        return await read_rule_sets(settings), await read_statuses(settings)

    latest, statuses = asyncio.run(read())
    wanted = {k: v for k, v in latest.items() if router is None or k == router}
    if as_json:
        print_json(
            [
                r.model_dump(mode="json")
                | {"workers": [s.model_dump(mode="json") for s in statuses.get(name, [])]}
                for name, r in wanted.items()
            ]
        )
        if router and not wanted:
            raise typer.Exit(1)
        return
    if not wanted:
        out.print(
            f"no rule set for router {router!r} on the routes topic (its code rules apply)"
            if router
            else "no rule sets on the routes topic (routers use the rules in their code)"
        )
        for status in statuses.get(router or "", []):
            out.print(f"  {status.describe()}", highlight=False)
        raise typer.Exit(1 if router else 0)
    for name, rule_set in wanted.items():
        out.print(f"# router {rule_set.router}, version {rule_set.version}", highlight=False)
        out.print(dump_rule_set(rule_set), highlight=False)
        workers = statuses.get(name, [])
        if not workers:
            out.print("# no running worker has reported this router", highlight=False)
        for status in workers:
            out.print(f"# {status.describe()}", highlight=False)


@app.command("history")
def history(
    router: Annotated[str | None, typer.Argument(help="One router (default: all).")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Every version applied, oldest first: when, by whom, why, and its rules."""
    from weir.processors.routes import read_history
    from weir.processors.rules import RuleSet

    entries = asyncio.run(read_history(load_settings(config), router))
    if as_json:
        print_json(
            [
                e.model_dump(mode="json")
                if isinstance(e, RuleSet)
                else {"router": e, "reset": True}
                for e in entries
            ]
        )
        return
    if not entries:
        out.print("no rule set was ever applied" + (f" to router {router!r}" if router else ""))
        return
    for entry in entries:
        if not isinstance(entry, RuleSet):
            out.print(f"{entry}  reset (back to the rules in code)", highlight=False)
            continue
        when = (
            dt.datetime.fromtimestamp(entry.applied_at / 1000, dt.UTC).strftime("%F %T UTC")
            if entry.applied_at
            else "-"
        )
        rules = ", ".join(r.name for r in entry.rules) or "(default only)"
        line = f"{entry.router}  v{entry.version}  {when}  by {entry.applied_by or '-'}  [{rules}]"
        if entry.comment:
            line += f"  {entry.comment}"
        out.print(line, highlight=False, soft_wrap=True)


@app.command("reset")
def reset(
    router: Annotated[str, typer.Argument(help="The router.")],
    config: ConfigOption = None,
) -> None:
    """Send a router back to the rules in its code (a tombstone on the routes topic)."""
    from weir.processors.routes import reset_rule_set

    asyncio.run(reset_rule_set(load_settings(config), router))
    out.print(f"{router}: reset; workers use the rules in code within seconds")
