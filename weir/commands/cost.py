"""``weir cost <request_id>``: what one request cost, call by call, from the trace topic."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from weir.commands._output import JsonOption, print_json, print_table
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import WeirError
from weir.core.kafka import KafkaConnection

out = Console(soft_wrap=True)  # lines stay whole in pipes; tables wrap their cells


async def request_calls(
    settings: WeirSettings, request_id: str, *, since_hours: float = 24.0
) -> list[dict[str, Any]]:
    """Every model call of ``request_id`` (all steps, all attempts) from the trace topic."""
    from aiokafka import TopicPartition

    from weir.schemas.messages import TraceEvent, now_ms
    from weir.schemas.trace_batch import is_trace_batch, unpack_trace_events
    from weir.streams._stream_publisher import partition_of
    from weir.topics._aiokafka import stop_consumer
    from weir.topics.admin import TopicAdmin

    topic = settings.trace_topic
    async with TopicAdmin(settings) as admin:
        count = (await admin.partitions([topic])).get(topic)
    if not count:
        raise WeirError(f"there is no trace topic ({topic}) yet: no step has run")
    key = request_id.encode()
    tp = TopicPartition(topic, partition_of(key, count))
    consumer = KafkaConnection.of(settings).consumer(
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    calls: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        consumer.assign([tp])
        found = await consumer.offsets_for_times({tp: now_ms() - int(since_hours * 3600_000)})
        at = found.get(tp)
        if at is None:
            return []
        consumer.seek(tp, at.offset)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value is None:
                        continue
                    if is_trace_batch(record.headers):  # a worker's batch: any requests
                        events = [
                            TraceEvent.decode(raw)
                            for raw in unpack_trace_events(record.value, record.headers)
                        ]
                    elif record.key == key:
                        events = [TraceEvent.decode(record.value)]
                    else:
                        continue
                    for event in events:
                        if event["request_id"] != request_id or event["event_id"] in seen:
                            continue
                        seen.add(event["event_id"])
                        calls.extend(event["calls"])
    finally:
        await stop_consumer(consumer)
    calls.sort(key=lambda c: c["started_at"])
    return calls


def summary(request_id: str, calls: list[dict[str, Any]]) -> str:
    """The one-line answer: tokens, the model(s) that answered, the cost."""
    from weir.processors.cost import format_usd

    tokens_in = sum(c["input_tokens"] for c in calls)
    tokens_out = sum(c["output_tokens"] for c in calls)
    cost = sum((Decimal(c["cost_usd"]) for c in calls), Decimal(0))
    answered = list(dict.fromkeys(c["model"] for c in calls if c["status"] == "SUCCESS"))
    via = ", ".join(answered) if answered else "no model (every call failed)"
    estimated = any(c["usage_source"] == "estimate" for c in calls)
    note = " (some token counts are estimates)" if estimated else ""
    return (
        f"request {request_id} used {tokens_in:,} input tokens and {tokens_out:,} output tokens,"
        f" routed through {via}, cost {format_usd(cost)}{note}"
    )


def cost(
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    since_hours: Annotated[
        float, typer.Option(help="How far back to look on the trace topic.")
    ] = 24.0,
    as_json: JsonOption = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings.")] = None,
) -> None:
    """Tokens and cost of one request: a summary line and every model call."""
    calls = asyncio.run(request_calls(load_settings(config), request_id, since_hours=since_hours))
    if as_json:
        print_json(
            {
                "request_id": request_id,
                "input_tokens": sum(c["input_tokens"] for c in calls),
                "output_tokens": sum(c["output_tokens"] for c in calls),
                "cost_usd": str(sum((Decimal(c["cost_usd"]) for c in calls), Decimal(0))),
                "summary": summary(request_id, calls) if calls else None,
                "calls": calls,
            }
        )
        if not calls:
            raise typer.Exit(1)
        return
    if not calls:
        out.print(f"no model calls of request {request_id} in the last {since_hours:g}h")
        raise typer.Exit(1)
    out.print(summary(request_id, calls), highlight=False, soft_wrap=True)
    table = Table(
        "step",
        "attempt",
        "endpoint",
        "model",
        "status",
        "in",
        "out",
        "usage",
        "cost (USD)",
        "ms",
        "rule",
    )
    for c in calls:
        rule = f"{c['rule']} v{c['rules_version']}" if c["rule"] else ""
        status = c["status"] if c["status"] == "SUCCESS" else f"{c['status']} {c['error_type']}"
        table.add_row(
            c["step"],
            str(c["attempt"]),
            c["endpoint"],
            c["model"],
            status,
            f"{c['input_tokens']:,}",
            f"{c['output_tokens']:,}",
            c["usage_source"],
            c["cost_usd"],
            f"{c['duration_ms']:.0f}",
            rule,
        )
    print_table(out, table)
