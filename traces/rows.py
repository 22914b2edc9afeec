"""A decoded trace event as a ``pipeline_events`` row, and stored values back as plain ones.

>>> decimal_text("0.002100"), decimal_text(0)
('0.0021', '0')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["decimal_text", "epoch_ms", "event_row"]


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def epoch_ms(value: dt.datetime) -> int:
    """Epoch milliseconds of a stored time."""
    if value.tzinfo is None:  # the engine hands back naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def event_row(event: Mapping[str, Any], trace_partition: int, trace_offset: int) -> list[Any]:
    """One ``pipeline_events`` row (``event_columns()`` order) from a decoded trace event."""
    calls = event.get("calls") or ()
    return [
        event["event_id"],
        event["pipeline_id"],
        event["step_name"],
        event["request_id"],
        event["attempt"],
        event["status"],
        event["disposition"],
        event.get("error_type"),
        event.get("error_message"),
        _ts(event["created_at"]),
        _ts(event["started_at"]),
        _ts(event["submitted_at"]),
        float(event["duration_ms"]),
        float(event["queue_wait_ms"]),
        event["worker_id"],
        event["topic"],
        event["partition"],
        event["offset"],
        event.get("endpoint"),
        event.get("model"),
        event.get("provider"),
        event.get("input_tokens") or 0,
        event.get("output_tokens") or 0,
        Decimal(event.get("cost_usd") or "0"),
        event.get("usage_source"),
        event.get("routing_rule"),
        event.get("rules_version"),
        [c["endpoint"] for c in calls],
        [c["provider"] for c in calls],
        [c["model"] for c in calls],
        [c["operation"] for c in calls],
        [c["status"] for c in calls],
        [c.get("error_type") or "" for c in calls],
        [c.get("input_tokens") or 0 for c in calls],
        [c.get("output_tokens") or 0 for c in calls],
        [Decimal(c.get("cost_usd") or "0") for c in calls],
        [float(c["duration_ms"]) for c in calls],
        [float(c["ttft_ms"]) if c.get("ttft_ms") is not None else 0.0 for c in calls],
        [c.get("rule") or "" for c in calls],
        event.get("trace_id") or "",
        event.get("span_id") or "",
        event.get("input"),
        event.get("output"),
        trace_partition,
        trace_offset,
        event.get("replay_id") or "",
        event.get("variant") or "",
    ]


def decimal_text(value: Any) -> str:
    """Exact decimal text without trailing zeros ("0.0021", "0")."""
    number = Decimal(str(value))
    text = format(number.normalize(), "f")
    return "0" if number == 0 else text
