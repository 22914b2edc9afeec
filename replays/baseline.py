"""A replay's baseline: what the step did live for the replayed requests.

Status, error type, latency, tokens and cost of each request's live attempts
come from ``pipeline_events`` in the trace store; the output from the step's
recorded outputs on Kafka (trace events carry outputs only for ``log_io``
steps, and then redacted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from weir.core.config import WeirSettings
from weir.replays.compare import LiveAttempt
from weir.replays.recording import read_outputs
from weir.replays.records import ReplayPlan
from weir.topics.names import PipelineTopics

__all__ = ["live_attempts"]

_CHUNK = 500
"""Request ids per query (the statement stays small)."""

# Live attempts only (replays trace theirs too, tagged with their id).
# One row per request: its last attempt's status, error and latency; tokens and cost of all
# its attempts (a retried call was paid for too).  LIMIT 1 BY event_id: the sink may have
# inserted an event twice before deduplication.  Values travel hex-encoded: request ids
# are client-chosen text, and hex cannot break out of a literal.
_SQL = """
SELECT request_id,
       argMax(status, (created_at, attempt)),
       argMax(error_type, (created_at, attempt)),
       argMax(duration_ms, (created_at, attempt)),
       sum(input_tokens),
       sum(output_tokens),
       toString(sum(cost_usd))
FROM (
    SELECT * FROM pipeline_events
    WHERE pipeline_id = unhex('{pipeline}') AND step_name = unhex('{step}')
      AND status != 'SKIPPED' AND replay_id = ''
      AND created_at >= fromUnixTimestamp64Milli({since}, 'UTC')
      AND request_id IN ({ids})
    LIMIT 1 BY event_id
)
GROUP BY request_id
"""


def _hex(text: str) -> str:
    return text.encode().hex()


async def live_attempts(
    settings: WeirSettings, plan: ReplayPlan, request_ids: Iterable[str]
) -> dict[str, LiveAttempt]:
    """The live attempt of each of ``request_ids`` that has trace events, with its output.

    The trace store is asked through a running sink when one holds it, else directly.
    """
    from weir.traces.sql import run_sql

    ids = sorted(set(request_ids))
    rows: list[list[Any]] = []
    for start in range(0, len(ids), _CHUNK):
        sql = _SQL.format(
            pipeline=_hex(plan.pipeline),
            step=_hex(plan.step),
            since=int(plan.since_ms),
            ids=", ".join(f"unhex('{_hex(i)}')" for i in ids[start : start + _CHUNK]),
        )
        result = await asyncio.to_thread(run_sql, settings, sql)
        rows += result.rows
    outputs = await read_outputs(
        settings,
        step=plan.step,
        topics=plan.output_topics,
        results_topic=PipelineTopics(plan.pipeline).results,
        request_ids=set(ids),
        since_ms=plan.since_ms,
    )
    out = {}
    for rid, status, error_type, duration, tokens_in, tokens_out, cost in rows:
        recorded = outputs.get(rid)
        out[rid] = LiveAttempt(
            request_id=rid,
            status=str(status),
            error_type=error_type,
            duration_ms=float(duration),
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            cost_usd=Decimal(cost),
            output=recorded.output if recorded is not None and status == "SUCCESS" else None,
        )
    return out
