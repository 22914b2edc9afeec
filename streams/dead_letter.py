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

from weir.core.errors import PayloadTooLargeError, WeirError
from weir.schemas.messages import DeadLetter, now_ms
from weir.streams.outbox import MAX_MESSAGE_BYTES, OutMessage
from weir.streams.redaction import Redactor

__all__ = [
    "HEAD_BYTES",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_STACKTRACE_CHARS",
    "PAYLOAD_HEAD_HEADER",
    "DeadLetters",
    "error_type_of",
]

MAX_STACKTRACE_CHARS = 8192
"""Stack traces are cut to their last this-many characters: the end says where it failed."""
MAX_ERROR_MESSAGE_BYTES = 8192
"""Error messages are cut to this many bytes (marked ``…[truncated N bytes]``)."""

HEAD_BYTES = 256
"""How much of a record too large to dead-letter as is travels (redacted) in its bounded form."""

PAYLOAD_HEAD_HEADER = "weir.payload_head"
_MAX_KEY_BYTES = 1024
_BOUNDED_MESSAGE_BYTES = 1000


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
        where the record alone could not be replayed: a fan-in's inputs).  When
        that would not fit in one Kafka message, the bounded form is returned, and
        it is also what goes if the topic refuses this one as too large.
        """
        # Bounded before redaction, so this stays cheap on the event loop.
        stack = self._redactor.redact_tail(
            "".join(traceback.format_exception(error)), MAX_STACKTRACE_CHARS
        )
        message = self._redactor.redact(
            str(error) or type(error).__name__, max_bytes=MAX_ERROR_MESSAGE_BYTES
        )
        letter = self._letter(
            record,
            step=step,
            error_type=error_type_of(error),
            error_message=message,
            stacktrace=stack,
            request_id=request_id,
            attempt=attempt,
            first_failed_at=first_failed_at,
        )
        # Headers of an earlier dead-lettering are replaced, not repeated, on a second failure.
        added = letter.headers()
        own = {name for name, _ in added}
        kept = [(n, v) for n, v in record.headers or () if n not in own]
        body = record.value if value is None else value
        headers = kept + added
        size = len(body or b"") + len(record.key or b"") + sum(len(n) + len(v) for n, v in headers)
        bounded = self.bounded(
            topic,
            record,
            step=step,
            error=error,
            request_id=request_id,
            attempt=attempt,
            first_failed_at=first_failed_at,
        )
        if size > MAX_MESSAGE_BYTES:
            return bounded
        return OutMessage(topic, record.key, body, headers, fallback=bounded, ahead=True)

    def bounded(
        self,
        topic: str,
        record: ConsumerRecord[bytes, bytes],
        *,
        step: str,
        error: BaseException,
        request_id: str | None = None,
        attempt: int = 1,
        first_failed_at: int | None = None,
    ) -> OutMessage:
        """A small dead letter that identifies ``record`` without carrying it.

        For records that cannot go to the dead-letter topic as they are (too
        large, or refused by the topic): no value, the record's coordinates
        (source topic, partition, offset) to fetch it while retention keeps it,
        its size, its first ``HEAD_BYTES`` bytes (redacted) and the original
        error type.  Its own error type is ``payload_too_large``.
        """
        size = len(record.value or b"")
        original = error_type_of(error)
        reason = self._redactor.redact(
            str(error) or type(error).__name__, max_bytes=_BOUNDED_MESSAGE_BYTES
        )
        letter = self._letter(
            record,
            step=step,
            error_type=PayloadTooLargeError.error_type,
            error_message=(
                f"the record ({size} bytes) could not be dead-lettered as it is; fetch it from"
                f" {record.topic} partition {record.partition} offset {record.offset} while"
                f" retention keeps it. It failed with {original}: {reason}"
            ),
            stacktrace=None,
            request_id=request_id,
            attempt=attempt,
            first_failed_at=first_failed_at,
            payload_bytes=size,
            original_error_type=original,
        )
        head = (record.value or b"")[:HEAD_BYTES].decode("utf-8", "replace")
        redacted_head = self._redactor.redact(head).encode()[:HEAD_BYTES]
        headers = [*letter.headers(), (PAYLOAD_HEAD_HEADER, redacted_head)]
        key = record.key[:_MAX_KEY_BYTES] if record.key is not None else None
        return OutMessage(topic, key, None, headers, ahead=True)

    def _letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        *,
        step: str,
        error_type: str,
        error_message: str,
        stacktrace: str | None,
        request_id: str | None,
        attempt: int,
        first_failed_at: int | None,
        payload_bytes: int | None = None,
        original_error_type: str | None = None,
    ) -> DeadLetter:
        failed_at = now_ms()
        return DeadLetter(
            pipeline=self._pipeline,
            step=step,
            error_type=error_type,
            error_message=error_message,
            stacktrace=stacktrace,
            attempt=attempt,
            first_failed_at=first_failed_at or failed_at,
            last_failed_at=failed_at,
            worker_id=self._worker_id,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            request_id=request_id,
            payload_bytes=payload_bytes,
            original_error_type=original_error_type,
        )
