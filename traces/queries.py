"""The queries commands and dashboards ask of a trace store, in SQL, and the timeline they build."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Protocol

from weir.core.errors import RequestNotFoundError
from weir.traces.results import (
    CostByModel,
    FailureCount,
    LatencyPoint,
    SlowRequest,
    Stats,
    StepAttempt,
    StepStats,
    StepTime,
    Timeline,
)
from weir.traces.rows import decimal_text, epoch_ms
from weir.traces.schema import EVENTS_TABLE, LATENCY_TABLE, QUANTILES

__all__ = ["StoreQueries", "TraceQueries", "build_timeline"]


class TraceQueries(Protocol):
    """What commands and dashboards ask of a trace store (local or through a sink)."""

    def timeline(self, request_id: str, *, baseline_s: float = 86400.0) -> Timeline: ...

    def stats(self, *, since_ms: int, pipeline: str | None = None) -> Stats: ...

    def latency_series(
        self, *, since_ms: int, pipeline: str | None = None, bucket_minutes: int = 1
    ) -> list[LatencyPoint]: ...

    def slowest(
        self, *, since_ms: int, pipeline: str | None = None, limit: int = 20
    ) -> list[SlowRequest]: ...

    def close(self) -> None: ...


class StoreQueries:
    """``TraceQueries`` in SQL over the store's ``_query`` (a subclass connects it)."""

    live_only = " AND replay_id = ''"
    """Added to the filters of questions about live traffic (replayed attempts left out);
    empty for a store an earlier weir made and nothing migrated yet: no replays in it."""

    dsn: str
    database: str

    def _query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def timeline(self, request_id: str, *, baseline_s: float = 86400.0) -> Timeline:
        """The request's attempts and per-step times beside each step's p50.

        The baseline is the pipeline's requests that ended in the ``baseline_s``
        before this one ended.
        """
        rows = self._query(
            f"""
SELECT step_name, attempt, status, disposition, error_type, error_message, started_at,
       created_at, queue_wait_ms, duration_ms, worker_id, model, provider, endpoint,
       routing_rule, input_tokens, output_tokens, toString(cost_usd), trace_id, span_id,
       input, output, pipeline_id, submitted_at
FROM {EVENTS_TABLE}
WHERE request_id = {{rid:String}}
ORDER BY started_at, step_name, attempt
""",
            rid=request_id,
        )
        if not rows:
            raise RequestNotFoundError(
                f"no trace events for request {request_id!r} in {self.dsn}"
                f" (database {self.database}); is the sink running, and did the request pass"
                " through a worker with trace_events on?"
            )
        attempts = [
            StepAttempt(
                step_name=r[0],
                attempt=int(r[1]),
                status=r[2],
                disposition=r[3],
                error_type=r[4],
                error_message=r[5],
                started_at=epoch_ms(r[6]),
                created_at=epoch_ms(r[7]),
                queue_wait_ms=float(r[8]),
                duration_ms=float(r[9]),
                worker_id=r[10],
                model=r[11],
                provider=r[12],
                endpoint=r[13],
                routing_rule=r[14],
                input_tokens=int(r[15]),
                output_tokens=int(r[16]),
                cost_usd=decimal_text(r[17]),
                trace_id=r[18],
                span_id=r[19],
                input=r[20],
                output=r[21],
            )
            for r in rows
        ]
        pipeline = rows[0][22]
        submitted = min(epoch_ms(r[23]) for r in rows)
        ended = max(a.created_at for a in attempts)
        since, until = ended - int(baseline_s * 1000), ended
        baseline = self._query(
            f"""
SELECT step_name, quantileExact(0.5)(t), count()
FROM (
    SELECT request_id, step_name,
           max(toUnixTimestamp64Milli(created_at))
             - min(toUnixTimestamp64Milli(started_at) - queue_wait_ms) AS t
    FROM {EVENTS_TABLE}
    WHERE pipeline_id = {{p:String}}{self.live_only}
      AND created_at BETWEEN fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')
                         AND fromUnixTimestamp64Milli({{until:Int64}}, 'UTC')
    GROUP BY request_id, step_name
)
GROUP BY step_name
""",
            p=pipeline,
            since=since,
            until=until,
        )
        p50 = {r[0]: float(r[1]) for r in baseline}
        overall = self._query(
            f"""
SELECT quantileExact(0.5)(t), count()
FROM (
    SELECT request_id,
           max(toUnixTimestamp64Milli(created_at)) - min(toUnixTimestamp64Milli(submitted_at)) AS t
    FROM {EVENTS_TABLE}
    WHERE pipeline_id = {{p:String}}{self.live_only}
      AND created_at BETWEEN fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')
                         AND fromUnixTimestamp64Milli({{until:Int64}}, 'UTC')
    GROUP BY request_id
)
""",
            p=pipeline,
            since=since,
            until=until,
        )
        count = int(overall[0][1]) if overall else 0
        return build_timeline(
            request_id,
            pipeline,
            submitted,
            attempts,
            p50,
            pipeline_p50_ms=float(overall[0][0]) if count else None,
            baseline_requests=count,
        )

    def stats(self, *, since_ms: int, pipeline: str | None = None) -> Stats:
        """p50/p95/p99 per step, failures by error type and cost by model since ``since_ms``."""
        # Live traffic only: replayed attempts (``weir compare`` reports them) would skew it.
        where = "created_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')" + self.live_only
        params: dict[str, Any] = {"since": since_ms}
        if pipeline is not None:
            where += " AND pipeline_id = {p:String}"
            params["p"] = pipeline
        steps = self._query(
            f"""
SELECT pipeline_id, step_name, count(), countIf(status = 'FAILURE'), uniqExact(request_id),
       quantilesExact({QUANTILES})(duration_ms), quantilesExact({QUANTILES})(queue_wait_ms)
FROM {EVENTS_TABLE} WHERE {where}
GROUP BY pipeline_id, step_name ORDER BY pipeline_id, step_name
""",
            **params,
        )
        failures = self._query(
            f"""
SELECT pipeline_id, step_name, error_type, count(), avg(duration_ms)
FROM {EVENTS_TABLE} WHERE {where} AND status = 'FAILURE'
GROUP BY pipeline_id, step_name, error_type ORDER BY count() DESC, pipeline_id, step_name
""",
            **params,
        )
        cost = self._query(
            f"""
SELECT pipeline_id, calls.model AS model, calls.provider AS provider, count(),
       sum(calls.input_tokens), sum(calls.output_tokens), toString(sum(calls.cost_usd))
FROM {EVENTS_TABLE} ARRAY JOIN calls WHERE {where}
GROUP BY pipeline_id, model, provider ORDER BY sum(calls.cost_usd) DESC, pipeline_id, model
""",
            **params,
        )
        return Stats(
            since_ms=since_ms,
            pipeline=pipeline,
            steps=[
                StepStats(
                    pipeline_id=r[0],
                    step_name=r[1],
                    attempts=int(r[2]),
                    failures=int(r[3]),
                    requests=int(r[4]),
                    duration_p50_ms=_f(r[5][0]),
                    duration_p95_ms=_f(r[5][1]),
                    duration_p99_ms=_f(r[5][2]),
                    queue_wait_p50_ms=_f(r[6][0]),
                    queue_wait_p95_ms=_f(r[6][1]),
                    queue_wait_p99_ms=_f(r[6][2]),
                )
                for r in steps
            ],
            failures=[
                FailureCount(r[0], r[1], r[2] or "unknown", int(r[3]), _f(r[4])) for r in failures
            ],
            cost=[
                CostByModel(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), decimal_text(r[6]))
                for r in cost
            ],
        )

    def latency_series(
        self, *, since_ms: int, pipeline: str | None = None, bucket_minutes: int = 1
    ) -> list[LatencyPoint]:
        """Processing-time percentiles per step and time bucket, from the minute aggregates."""
        where = "minute >= toStartOfMinute(fromUnixTimestamp64Milli({since:Int64}, 'UTC'))"
        params: dict[str, Any] = {"since": since_ms, "bucket": max(1, bucket_minutes)}
        if pipeline is not None:
            where += " AND pipeline_id = {p:String}"
            params["p"] = pipeline
        rows = self._query(
            f"""
SELECT toStartOfInterval(minute, toIntervalMinute({{bucket:UInt32}})) AS bucket,
       pipeline_id, step_name, sum(attempts), sum(failures),
       quantilesTDigestMerge({QUANTILES})(duration_q)
FROM {LATENCY_TABLE} WHERE {where}
GROUP BY bucket, pipeline_id, step_name ORDER BY bucket, pipeline_id, step_name
""",
            **params,
        )
        return [
            LatencyPoint(
                minute=epoch_ms(r[0]),
                pipeline_id=r[1],
                step_name=r[2],
                attempts=int(r[3]),
                failures=int(r[4]),
                p50_ms=_f(r[5][0]),
                p95_ms=_f(r[5][1]),
                p99_ms=_f(r[5][2]),
            )
            for r in rows
        ]

    def slowest(
        self, *, since_ms: int, pipeline: str | None = None, limit: int = 20
    ) -> list[SlowRequest]:
        """The requests with the longest submission-to-last-step time since ``since_ms``."""
        where = "created_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
        params: dict[str, Any] = {"since": since_ms, "limit": limit}
        if pipeline is not None:
            where += " AND pipeline_id = {p:String}"
            params["p"] = pipeline
        rows = self._query(
            f"""
SELECT request_id, any(pipeline_id), min(toUnixTimestamp64Milli(submitted_at)) AS submitted,
       max(toUnixTimestamp64Milli(created_at)) - submitted AS total, count(),
       countIf(status = 'FAILURE'), toString(sum(cost_usd))
FROM {EVENTS_TABLE} WHERE {where} AND request_id != ''
GROUP BY request_id ORDER BY total DESC, request_id LIMIT {{limit:UInt32}}
""",
            **params,
        )
        return [
            SlowRequest(
                r[0], r[1], int(r[2]), float(r[3]), int(r[4]), int(r[5]), decimal_text(r[6])
            )
            for r in rows
        ]


def build_timeline(
    request_id: str,
    pipeline: str,
    submitted_at: int,
    attempts: list[StepAttempt],
    p50: Mapping[str, float],
    *,
    pipeline_p50_ms: float | None,
    baseline_requests: int,
) -> Timeline:
    """Group a request's attempts by step and find the step furthest above its p50."""
    by_step: dict[str, list[StepAttempt]] = {}
    for a in sorted(attempts, key=lambda a: (a.started_at, a.attempt)):
        by_step.setdefault(a.step_name, []).append(a)
    steps = []
    for name, tries in by_step.items():
        last = tries[-1]
        ready = min(a.ready_at for a in tries)
        total = max(a.created_at for a in tries) - ready
        usual = p50.get(name)
        tokens_in = sum(a.input_tokens for a in tries)
        tokens_out = sum(a.output_tokens for a in tries)
        steps.append(
            StepTime(
                step_name=name,
                attempts=len(tries),
                status=last.status,
                start_ms=max(0.0, ready - submitted_at),
                total_ms=total,
                queue_wait_ms=last.queue_wait_ms,
                processing_ms=last.duration_ms,
                retry_ms=max(0.0, last.ready_at - ready),
                p50_ms=usual,
                excess_ms=None if usual is None else total - usual,
                model=next((a.model for a in reversed(tries) if a.model), None),
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=decimal_text(sum((Decimal(a.cost_usd) for a in tries), Decimal(0))),
                error_types=sorted({a.error_type for a in tries if a.error_type}),
            )
        )
    ended = max((a.created_at for a in attempts), default=submitted_at)
    above = [s for s in steps if s.excess_ms is not None and s.excess_ms > 0]
    slow = max(above, key=lambda s: s.excess_ms or 0.0).step_name if above else None
    return Timeline(
        request_id=request_id,
        pipeline_id=pipeline,
        submitted_at=submitted_at,
        total_ms=float(ended - submitted_at),
        pipeline_p50_ms=pipeline_p50_ms,
        baseline_requests=baseline_requests,
        steps=steps,
        attempts=attempts,
        slow_step=slow,
    )


def _f(value: Any) -> float:
    """A float from a query value; NaN (quantiles of nothing) becomes 0."""
    out = float(value) if value is not None else 0.0
    return 0.0 if out != out else out
