"""Writing failed messages to their step's dead-letter topic."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable, Sequence

from schemas.messages import DeadLetter, now_ms
from weir.errors import WeirError

__all__ = ["MAX_STACKTRACE_CHARS", "DeadLetterWriter", "error_type_of"]

MAX_STACKTRACE_CHARS = 8192
"""Stack traces are cut to their last this-many characters: the end says where it failed."""

Headers = Sequence[tuple[str, bytes]]
Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[None]]
"""Sends ``(topic, key, value, headers)`` and waits for the broker's ack."""


def error_type_of(error: BaseException) -> str:
    """The stable ``error_type`` of any exception (``internal_error`` for non-weir ones)."""
    return error.error_type if isinstance(error, WeirError) else "internal_error"


class DeadLetterWriter:
    """Puts a failed message on a dead-letter topic: original key, value and headers kept."""

    def __init__(self, send: Send, *, pipeline: str, worker_id: str) -> None:
        self._send = send
        self._pipeline = pipeline
        self._worker_id = worker_id

    async def write(
        self,
        topic: str,
        *,
        step: str,
        error: BaseException,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        request_id: str | None = None,
        attempt: int = 1,
        first_failed_at: int | None = None,
    ) -> DeadLetter:
        """Write and await the ack; the caller acknowledges the source message only after."""
        failed_at = now_ms()
        stack = "".join(traceback.format_exception(error))[-MAX_STACKTRACE_CHARS:]
        record = DeadLetter(
            pipeline=self._pipeline,
            step=step,
            error_type=error_type_of(error),
            error_message=str(error) or type(error).__name__,
            stacktrace=stack,
            attempt=attempt,
            first_failed_at=first_failed_at or failed_at,
            last_failed_at=failed_at,
            worker_id=self._worker_id,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            request_id=request_id,
        )
        # Headers of an earlier dead-lettering are replaced, not repeated, on a second failure.
        own = {name for name, _ in record.headers()}
        kept = [(n, v) for n, v in headers if n not in own]
        await self._send(topic, key, value, kept + record.headers())
        return record
