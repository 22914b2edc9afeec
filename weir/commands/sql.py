"""``weir sql "<query>"``: any read-only SQL on the trace store, as a table, JSON or CSV.

The statement runs in the store's database (``weir`` unless
``WEIR_CLICKHOUSE_DATABASE`` says otherwise), so the seed's query over
``pipeline_events`` runs verbatim; through the running ``weir sink`` when it
holds the embedded store, directly otherwise (``weir.traces.sql``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from weir.commands._output import json_text, print_table
from weir.core.config import load_settings
from weir.traces.sink_status import empty_store_hint
from weir.traces.sql import SqlResult, run_sql

__all__ = ["render", "sql"]

out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells
err = Console(stderr=True, soft_wrap=True)

Format = Literal["table", "json", "csv"]


def sql(
    query: Annotated[
        str,
        typer.Argument(help="One SELECT (the seed's query runs as written); '-' reads stdin."),
    ],
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="table, json (one object per row in a list) or csv."),
    ] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file (else WEIR_CONFIG).")
    ] = None,
) -> None:
    """Run read-only SQL on the trace store (table pipeline_events, database weir)."""
    if fmt not in ("table", "json", "csv"):
        raise typer.BadParameter(f"{fmt!r} is not one of table, json, csv", param_hint="--format")
    text = sys.stdin.read() if query == "-" else query
    settings = load_settings(config)
    result = run_sql(settings, text)
    render(result, "json" if as_json else fmt)  # type: ignore[arg-type]
    if result.store_empty:
        err.print(
            f"the trace store holds no events: {empty_store_hint(settings)}",
            highlight=False,
            soft_wrap=True,
        )


def render(result: SqlResult, fmt: Format) -> None:
    """Print ``result`` on stdout in ``fmt``."""
    if fmt == "json":
        print(json_text(result.records()))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([_csv_cell(v) for v in row] for row in result.rows)
    else:
        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*(Text(_cell(v)) for v in row))
        print_table(out, table)
        out.print(f"{len(result.rows)} row(s)", style="dim", highlight=False)


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e15 else str(value)
    if isinstance(value, list | dict):
        return json_text(value)
    return str(value)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json_text(value)
    return value
