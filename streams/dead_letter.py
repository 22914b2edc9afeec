"""Dead-letter records: the failed message, unchanged, plus headers saying why.

The value stays the original bytes (replay needs them); the headers this
module adds (error message, stack trace) are redacted, as they quote user data.

Header convention: Kafka Connect's ``__connect.errors.*`` names where Connect
has one (topic, partition, offset, exception class/message/stacktrace,
connector = pipeline, task = worker, stage = step), ``weir.*`` for the rest
(attempt count, first/last failure time, request id, error type).  See
``schemas/dead_letter.avsc`` and ``DeadLetter.from_message``.
"""

from __future__ import annotations

import traceback

from aiokafka.structs import ConsumerRecord

from schemas.messages import DeadLetter, now_ms
from streams.outbox import OutMessage
from streams.redaction import Redactor
from weir.errors import WeirError

__all__ = ["MAX_ERROR_MESSAGE_BYTES", "MAX_STACKTRACE_CHARS", "DeadLetters", "error_type_of"]

MAX_STACKTRACE_CHARS = 8192
"""Stack traces are cut to their last this-many characters: the end says where it failed."""
MAX_ERROR_MESSAGE_BYTES = 8192
"""Error messages are cut to this many bytes (marked ``…[truncated N bytes]``)."""


def error_type_of(error: BaseException) -> str:
    """The stable ``error_type`` of any exception (``internal_error`` for non-weir ones)."""
    return error.error_type if isinstance(error, WeirError) else "internal_error"


class DeadLetters:
    """Builds dead-letter messages for one pipeline on one worker."""

    def __init__(self, *, pipeline: str, worker_id: str, redactor: Redactor | None = None) -> None:
        self._pipeline = pipeline
        self._worker_id = worker_id
        self._redactor = redactor or Redactor()

    def message(
        self,
        topic: str,
        record: ConsumerRecord[bytes, bytes],
        *,
        step: str,
        error: BaseException,
        value: bytes | None = None,
        request_id: str | None = None,
        attempt: int = 1,
        first_failed_at: int | None = None,
    ) -> OutMessage:
        """The dead letter of ``record``; await its ack before acknowledging ``record``.

        It keeps the record's key, value and headers (``value`` replaces the value
        where the record alone could not be replayed: a fan-in's inputs).
        """
        failed_at = now_ms()
        # Bounded before redaction, so this stays cheap on the event loop.
        stack = self._redactor.redact_tail(
            "".join(traceback.format_exception(error)), MAX_STACKTRACE_CHARS
        )
        message = self._redactor.redact(
            str(error) or type(error).__name__, max_bytes=MAX_ERROR_MESSAGE_BYTES
        )
        letter = DeadLetter(
            pipeline=self._pipeline,
            step=step,
            error_type=error_type_of(error),
            error_message=message,
            stacktrace=stack,
            attempt=attempt,
            first_failed_at=first_failed_at or failed_at,
            last_failed_at=failed_at,
            worker_id=self._worker_id,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            request_id=request_id,
        )
        # Headers of an earlier dead-lettering are replaced, not repeated, on a second failure.
        added = letter.headers()
        own = {name for name, _ in added}
        kept = [(n, v) for n, v in record.headers or () if n not in own]
        body = record.value if value is None else value
        return OutMessage(topic, record.key, body, kept + added)
