"""How ClickHouse turns an Avro block of trace events into ``pipeline_events`` rows.

The sink hands the store a container block (``weir.traces._event_block``) whose
records are the trace-event schema with ``trace_partition`` and
``trace_offset`` in front; ``insert_select`` is the statement that reads it and
fills each column exactly as ``weir.traces.rows.event_row`` does in Python
(``tests/traces/test_event_insert.py`` compares the two row for row).
"""

from __future__ import annotations

import json
from typing import Any

from weir.schemas.messages import TRACE_EVENT_SCHEMA
from weir.traces.schema import EVENTS_TABLE, event_columns

__all__ = ["BLOCK_SCHEMA", "STRUCTURE", "insert_select"]


def _block_schema() -> dict[str, Any]:
    event = TRACE_EVENT_SCHEMA.definition
    return {
        "type": "record",
        "name": "SinkEvent",
        "namespace": "dev.weir",
        "fields": [
            {"name": "trace_partition", "type": "int"},
            {"name": "trace_offset", "type": "long"},
            *event["fields"],
        ],
    }


_PRIMITIVES = {"string": "String", "int": "Int32", "long": "Int64", "double": "Float64"}


def _type(avro: Any) -> str:
    """The ClickHouse type ClickHouse's Avro reader gives an Avro type of the schema."""
    if isinstance(avro, str):
        return _PRIMITIVES.get(avro) or {"boolean": "Bool"}[avro]
    if isinstance(avro, list):  # ["null", x]
        return f"Nullable({_type(avro[1])})"
    if avro["type"] == "array":
        return f"Array({_type(avro['items'])})"
    if avro["type"] == "record":
        return f"Tuple({', '.join(_field(f) for f in avro['fields'])})"
    raise ValueError(f"no ClickHouse type for {avro!r}")  # pragma: no cover - schema is fixed


def _field(field: dict[str, Any]) -> str:
    return f"{field['name']} {_type(field['type'])}"


BLOCK_SCHEMA: bytes = json.dumps(_block_schema(), separators=(",", ":")).encode()
"""The container's writer schema (JSON)."""

STRUCTURE: str = ", ".join(_field(f) for f in _block_schema()["fields"])
"""The block's columns as ClickHouse reads them (``input()``/``file()``'s structure)."""

_COST = "toDecimal64(if({0} = '', '0', {0}), 12)"
_TIME = "fromUnixTimestamp64Milli({0}, 'UTC')"


def _calls(field: str, *, default: str | None = None, cost: bool = False) -> str:
    """The ``calls.<field>`` array: that element of each model call's tuple."""
    value = f"tupleElement(c, '{field}')"
    if default is not None:  # Python's row gives the column's default for a null
        value = f"ifNull({value}, {default})"
    if cost:
        value = _COST.format(value)
    return f"arrayMap(c -> {value}, calls)"


# What fills each column, beside ``event_columns()``; a plain name is the field as it is.
_EXPRESSIONS: dict[str, str] = {
    "created_at": _TIME.format("created_at"),
    "started_at": _TIME.format("started_at"),
    "submitted_at": _TIME.format("submitted_at"),
    "input_topic": "`topic`",
    "input_partition": "`partition`",
    "input_offset": "`offset`",
    "cost_usd": _COST.format("cost_usd"),
    "calls.endpoint": _calls("endpoint"),
    "calls.provider": _calls("provider"),
    "calls.model": _calls("model"),
    "calls.operation": _calls("operation"),
    "calls.status": _calls("status"),
    "calls.error_type": _calls("error_type", default="''"),
    "calls.input_tokens": _calls("input_tokens"),
    "calls.output_tokens": _calls("output_tokens"),
    "calls.cost_usd": _calls("cost_usd", cost=True),
    "calls.duration_ms": _calls("duration_ms"),
    "calls.ttft_ms": _calls("ttft_ms", default="0"),
    "calls.rule": _calls("rule", default="''"),
    "trace_id": "ifNull(trace_id, '')",
    "span_id": "ifNull(span_id, '')",
}


def insert_select(database: str, source: str) -> str:
    """``INSERT INTO pipeline_events (...) SELECT ... FROM <source>`` (without a FORMAT)."""
    columns = event_columns()
    names = ", ".join(f"`{c}`" for c in columns)
    values = ", ".join(_EXPRESSIONS.get(c, f"`{c}`") for c in columns)
    return f"INSERT INTO `{database}`.{EVENTS_TABLE} ({names}) SELECT {values} FROM {source}"
