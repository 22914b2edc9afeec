"""How commands print data: JSON for scripts, tables that are never cut at 80 columns.

Every command that prints data takes ``--json`` and then prints exactly one JSON
document (or, for streams of records, one per line) on stdout and nothing else
there, so ``weir ... --json | jq`` always works.  Tables use the terminal's
width and wrap cells to fit it; when stdout is not a terminal (a pipe, a file,
CI logs) rich would assume 80 columns and squeeze or cut the cells, so there
the table is printed at its natural width instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

__all__ = ["JsonOption", "json_text", "print_json", "print_table"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]

_MAX_WIDTH = 1000
"""Widest a table is laid out off a terminal (a cell longer than this still wraps)."""


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Decimal):
        return str(o)  # exact: a float would round costs
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, bytes):
        return o.decode(errors="replace")
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def json_text(value: Any) -> str:
    """``value`` as one line of JSON (dataclasses, Decimals as exact text, datetimes ISO)."""
    return json.dumps(value, default=_default, ensure_ascii=False)


def print_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout, unstyled (rich would wrap and colour it)."""
    print(json_text(value), flush=True)


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` whole: wrapped to a terminal's width, else at its natural width."""
    # soft_wrap=False: the commands' consoles soft-wrap text lines, which would keep the
    # table's cells from wrapping to the width.
    if console.is_terminal:
        console.print(table, soft_wrap=False)
        return
    natural = Measurement.get(console, console.options.update_width(_MAX_WIDTH), table).maximum
    width = console.width
    console.width = max(width, min(natural, _MAX_WIDTH))
    try:
        console.print(table, soft_wrap=False)
    finally:
        console.width = width
