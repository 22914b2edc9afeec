"""``weir schemas``: the Avro schemas of weir's messages and their wire ids."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from weir.commands._output import JsonOption, print_json, print_table

app = typer.Typer(help="The Avro schemas of weir's messages.", no_args_is_help=True)
out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells


@app.command("list")
def schemas_list(as_json: JsonOption = False) -> None:
    """Each schema with its wire id (the Confluent header's schema id)."""
    from weir.schemas import (
        DEAD_LETTER_SCHEMA,
        ENVELOPE_SCHEMA,
        REQUEST_SCHEMA,
        RESULT_SCHEMA,
        TRACE_EVENT_SCHEMA,
    )

    rows = [
        {
            "schema": s.name,
            "record": s.definition["name"],
            "schema_id": s.schema_id,
            "file": f"schemas/{s.name}.avsc",
        }
        for s in (
            REQUEST_SCHEMA,
            ENVELOPE_SCHEMA,
            RESULT_SCHEMA,
            DEAD_LETTER_SCHEMA,
            TRACE_EVENT_SCHEMA,
        )
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("schema", "record", "schema id", "file")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    print_table(out, table)


@app.command("show")
def schemas_show(
    name: Annotated[
        str, typer.Argument(help="request, envelope, result, dead_letter, trace_event")
    ],
) -> None:
    """Print one schema (the .avsc JSON)."""
    from weir.schemas import load_schema

    try:
        schema = load_schema(name)
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"no schema {name!r}") from exc
    out.print_json(json.dumps(schema.definition))
