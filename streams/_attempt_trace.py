"""One step attempt's trace event, kept as its fields and written straight to Avro bytes.

A ``TraceEvent`` (``weir.schemas.messages``) is built field by field and encoded
through a generic writer; an attempt's event instead holds its own fields only and
shares the step's constant ones (pipeline, step, worker, input topic) with every
other attempt through a ``StepTraceCodec``, which encodes them once.  The bytes
are the ones ``TraceEvent.encode`` writes for the same fields (tested), so the sink
and every reader of the trace topic see no difference.
"""

from __future__ import annotations

import os
import struct

from weir.schemas._trace_codec import StepTraceCodec
from weir.schemas.messages import ModelCall, TraceEvent

__all__ = ["AttemptTrace", "EventIds"]

_IDS_PER_DRAW = 64


class EventIds:
    """Random 128-bit event ids as 32 hex digits, drawn from the OS 64 at a time.

    The same bits ``TraceEvent``'s ``os.urandom(16).hex()`` gives, without a ``getrandom``
    call per event.  A forked child draws afresh: it must not repeat its parent's ids.
    """

    __slots__ = ("_hex", "_pid", "_pos")

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0
        self._pid = 0

    def next(self) -> str:
        pos = self._pos
        if pos >= len(self._hex) or self._pid != os.getpid():
            self._hex = os.urandom(16 * _IDS_PER_DRAW).hex()
            self._pid = os.getpid()
            pos = 0
        self._pos = pos + 32
        return self._hex[pos : pos + 32]


class AttemptTrace:
    """The trace event of one attempt; its outcome fields are set as the attempt ends.

    It has ``TraceEvent``'s attribute names, so code that fills one fills the other.
    """

    __slots__ = (
        "attempt",
        "calls",
        "codec",
        "created_at",
        "disposition",
        "duration_ms",
        "error_message",
        "error_type",
        "event_id",
        "input",
        "offset",
        "output",
        "partition",
        "queue_wait_ms",
        "request_id",
        "span_id",
        "started_at",
        "status",
        "submitted_at",
        "trace_id",
    )

    def __init__(
        self,
        codec: StepTraceCodec,
        request_id: str,
        attempt: int,
        created_at: int,
        started_at: int,
        submitted_at: int,
        duration_ms: float,
        queue_wait_ms: float,
        partition: int,
        offset: int,
        calls: list[ModelCall],
        trace_id: str | None,
        span_id: str | None,
        event_id: str | None = None,
    ) -> None:
        self.codec = codec
        self.request_id = request_id
        self.attempt = attempt
        self.created_at = created_at
        self.started_at = started_at
        self.submitted_at = submitted_at
        self.duration_ms = duration_ms
        self.queue_wait_ms = queue_wait_ms
        self.partition = partition
        self.offset = offset
        self.calls = calls
        self.trace_id = trace_id
        self.span_id = span_id
        self.status = "SUCCESS"
        self.disposition = "emitted"
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.input: str | None = None
        self.output: str | None = None
        # As TraceEvent's: 128 random bits (a worker's ``EventIds`` draws them in bulk).
        self.event_id = event_id if event_id is not None else os.urandom(16).hex()

    @property
    def pipeline_id(self) -> str:
        return self.codec.pipeline_id

    @property
    def step_name(self) -> str:
        return self.codec.step_name

    def to_event(self) -> TraceEvent:
        """The same event as a ``TraceEvent``."""
        codec = self.codec
        return TraceEvent(
            pipeline_id=codec.pipeline_id,
            step_name=codec.step_name,
            request_id=self.request_id,
            attempt=self.attempt,
            status=self.status,  # type: ignore[arg-type]
            disposition=self.disposition,
            created_at=self.created_at,
            started_at=self.started_at,
            submitted_at=self.submitted_at,
            duration_ms=self.duration_ms,
            queue_wait_ms=self.queue_wait_ms,
            worker_id=codec.worker_id,
            topic=codec.topic,
            partition=self.partition,
            offset=self.offset,
            error_type=self.error_type,
            error_message=self.error_message,
            calls=list(self.calls),
            trace_id=self.trace_id,
            span_id=self.span_id,
            input=self.input,
            output=self.output,
            event_id=self.event_id,
        )

    def encode(self) -> bytes:
        """The event's framed Avro bytes (``trace_event.avsc``)."""
        if self.calls:  # model calls: summed and listed by the general writer
            return self.to_event().encode()
        try:
            return self.codec.encode(
                event_id=self.event_id,
                request_id=self.request_id,
                attempt=self.attempt,
                status=self.status,
                disposition=self.disposition,
                error_type=self.error_type,
                error_message=self.error_message,
                created_at=self.created_at,
                started_at=self.started_at,
                submitted_at=self.submitted_at,
                duration_ms=self.duration_ms,
                queue_wait_ms=self.queue_wait_ms,
                partition=self.partition,
                offset=self.offset,
                trace_id=self.trace_id,
                span_id=self.span_id,
                given=self.input,
                made=self.output,
            )
        except (TypeError, AttributeError, UnicodeEncodeError, OverflowError, struct.error):
            return self.to_event().encode()  # fastavro says what does not fit the schema
