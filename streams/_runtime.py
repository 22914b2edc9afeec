"""What the worker's stages share: settings, the outbox, traces, counters."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiokafka.structs import ConsumerRecord

from weir.core.config import WeirSettings
from weir.schemas._clock import now_ms
from weir.schemas._trace_codec import StepTraceCodec
from weir.schemas.messages import (
    TRACE_EVENT_SCHEMA,
    Envelope,
    ModelCall,
    TraceEvent,
    total_usage,
)
from weir.schemas.registry import SchemaRegistry
from weir.streams._attempt_trace import AttemptTrace, EventIds
from weir.streams.dead_letter import DeadLetters
from weir.streams.journal import CallJournal
from weir.streams.outbox import Outbox, OutMessage
from weir.streams.pipeline import Pipeline
from weir.streams.redaction import Redactor
from weir.streams.services import WorkerServices
from weir.streams.tracing import Tracing
from weir.topics.names import PipelineTopics

__all__ = [
    "ERROR_MAX_BYTES",
    "TRACE_ERROR_MAX_BYTES",
    "Record",
    "Runtime",
    "WorkerStats",
    "guess_request_id",
    "make_record",
    "merge_calls",
]

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def make_record(
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
) -> Record:
    """A record as a consumer would have read it, for input handed over in this process."""
    # Positional, in the order of its fields (topic, partition, offset, timestamp,
    # timestamp_type, key, value, checksum, key size, value size, headers): a third cheaper.
    return ConsumerRecord(
        topic,
        partition,
        offset,
        timestamp,
        0,
        key,
        value,
        None,
        len(key or b""),
        len(value),
        headers,
    )


ERROR_MAX_BYTES = 8192
"""An error message in a FAILURE result or a dead letter is cut to this (it says what failed)."""
TRACE_ERROR_MAX_BYTES = 2000
"""An error message on a trace event or span: one row of the trace store."""


@dataclass
class WorkerStats:
    """Counters a running worker keeps (read them; do not write)."""

    received: int = 0
    completed: int = 0
    attempts: int = 0
    retried: int = 0
    fallbacks: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    """Inputs dropped because their request was already joined or answered."""
    results: int = 0
    dead_letter_failures: int = 0
    """Records that could not be dead-lettered at all (logged with their coordinates)."""
    answered_ids_forgotten: int = 0
    """Answered ids dropped from memory early by ``answered_max_per_partition``."""
    in_place: int = 0
    """Step inputs run in place: records this worker sent and ran, not read back
    (``weir.streams._in_place``)."""
    ran_ahead: int = 0
    """Of ``in_place``, the ones run before the broker acknowledged their record."""
    answers_ahead: int = 0
    """Answer transactions that found their transaction opened ahead (``answer_open_ahead_ms``)."""
    failures_by_type: dict[str, int] = field(default_factory=dict)

    def failed(self, error_type: str) -> None:
        self.failures_by_type[error_type] = self.failures_by_type.get(error_type, 0) + 1


@dataclass
class Runtime:
    """Shared by the ingress, the step runners and the answer stage of one worker."""

    pipeline: Pipeline
    settings: WeirSettings
    topics: PipelineTopics
    outbox: Outbox
    dead_letters: DeadLetters
    tracing: Tracing
    redactor: Redactor
    stats: WorkerStats
    lag: Callable[[str], int]
    """Unprocessed messages on this worker's partitions of a step's input topic."""
    rank: dict[str, int] = field(default_factory=dict)
    services: WorkerServices | None = None
    registry: SchemaRegistry | None = None
    """The schema registry requests' writer schemas are looked up in (when configured)."""
    result_schema_id: int | None = None
    """The result schema's registry id, which Avro results are framed with (when registered)."""
    journal: CallJournal | None = None
    """The model-call journal (``weir.streams.journal``), when ``journal_calls`` is on."""
    _codecs: dict[tuple[str, str], StepTraceCodec] = field(default_factory=dict)
    """Per (step, input topic): the constant part of its attempts' trace events."""
    _event_ids: EventIds = field(default_factory=EventIds)

    def __post_init__(self) -> None:
        self.rank = {name: i for i, name in enumerate(self.pipeline.order)}

    def merge_paths(self, paths: Iterable[list[str]]) -> list[str]:
        """The union of several branches' paths, in the pipeline's order."""
        steps = {step for path in paths for step in path}
        return sorted(steps, key=lambda s: self.rank.get(s, len(self.rank)))

    def attempt_trace(
        self,
        step: str,
        record: Record,
        base: Envelope,
        started_at: int,
        duration_ms: float,
        queue_wait_ms: float,
        calls: list[ModelCall],
        trace_id: str | None,
        span_id: str | None,
    ) -> AttemptTrace:
        """The trace event of an attempt of ``step`` on ``record`` (a success until told)."""
        key = (step, record.topic)
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = StepTraceCodec(
                TRACE_EVENT_SCHEMA.header,
                self.pipeline.name,
                step,
                self.settings.worker_id,
                record.topic,
                str(total_usage(())[2]),
            )
        return AttemptTrace(
            codec,
            base.request_id,
            base.attempt,
            now_ms(),
            started_at,
            base.submitted_at,
            duration_ms,
            queue_wait_ms,
            record.partition,
            record.offset,
            calls,
            trace_id,
            span_id,
            self._event_ids.next(),
        )

    def trace(self, event: TraceEvent | AttemptTrace) -> list[OutMessage]:
        """The trace-topic message for ``event`` (none when trace events are off).

        Its error message is redacted here, the one way out of every trace event;
        its input and output were redacted when they were set (``redacted``).
        """
        if not self.settings.trace_events:
            return []
        if event.error_message:
            event.error_message = self.redact_error(event.error_message, TRACE_ERROR_MAX_BYTES)
        # An event whose record is still on its way rides along: the batch that ran it
        # ahead places it once the record lands (``weir.streams._record_tasks``).
        # It is encoded once it is placed (``_record_tasks._placed``), not twice.
        if isinstance(event, AttemptTrace) and event.offset < 0:
            value, ahead = None, event
        else:
            value, ahead = event.encode(), None
        topic = self.settings.trace_topic
        return [OutMessage(topic, event.request_id.encode(), value, decoded=ahead)]

    async def redacted(self, value: Any) -> str:
        """A step's input or output as redacted text (large ones off the event loop)."""
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return await self.redactor.redact_async(text)

    def redact_error(self, message: str, max_bytes: int = ERROR_MAX_BYTES) -> str:
        """An error message fit to leave the worker: cut to ``max_bytes``, then redacted.

        Exceptions quote their inputs (a validation error repeats the bad value, a
        step's own message may name a customer), so every error text is redacted.
        Bounded this small, it is cheap enough for the event loop.
        """
        return self.redactor.redact(message, max_bytes=max_bytes)

    def failure_envelope(
        self,
        *,
        request_id: str,
        step: str,
        error_type: str,
        error_message: str,
        base: Envelope | None,
        calls: list[ModelCall],
        traceparent: str | None,
        created_at: int,
    ) -> OutMessage:
        """Tells the answer stage that ``request_id`` failed at ``step``."""
        env = Envelope(
            request_id=request_id,
            pipeline=self.pipeline.name,
            step="_answer",
            source=step,
            kind="FAILURE",
            submitted_at=base.submitted_at if base else created_at // 1000,
            created_at=created_at,
            request=base.request if base else "{}",
            payload=None,
            traceparent=traceparent,
            options=dict(base.options) if base else {},
            path=list(base.path) if base else [],
            calls=calls,
            error_type=error_type,
            error_message=self.redact_error(error_message),
            failed_step=step,
            replay=base.replay if base else None,
        )
        return OutMessage(self.topics.answers, request_id.encode(), env.encode())


def merge_calls(*groups: Iterable[ModelCall]) -> list[ModelCall]:
    """Model calls of several branches, each call once (shared ancestors appear in both)."""
    seen: set[tuple[str, int, str, int, float]] = set()
    out = []
    for group in groups:
        for call in group:
            key = (call.step, call.attempt, call.endpoint, call.started_at, call.duration_ms)
            if key not in seen:
                seen.add(key)
                out.append(call)
    return out


def guess_request_id(record: Record) -> str | None:
    """The request id of a bad message, when its key or body still tells it."""
    if record.value and record.value.lstrip()[:1] == b"{":
        with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
            body: Any = json.loads(record.value)
            if isinstance(body, dict) and isinstance(body.get("request_id"), str):
                return str(body["request_id"])
    if record.key:
        with contextlib.suppress(UnicodeDecodeError):
            return str(record.key.decode())
    return None
