"""``StreamPublisher``: the worker side of token streams, publishing a streamed model call's chunks.

Each streamed model call inside a step publishes its chunks to the pipeline's
stream topic, keyed by request id, in the record format ``weir.streams.tokens``
describes (where clients read them).  Deltas are sent as soon as they arrive;
while the broker is still acknowledging one record, the deltas arriving
meanwhile are merged into the next, so a slow broker costs records, not
latency or memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from decimal import Decimal
from typing import Any

from weir.core.errors import StepError
from weir.schemas.messages import now_ms
from weir.streams.context import AttemptScope
from weir.topics._murmur2 import murmur2
from weir.topics.names import PipelineTopics

__all__ = ["StreamPublisher", "partition_of"]


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) puts ``key`` on."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class StreamPublisher:
    """Publishes one streamed model call of a step attempt, in order, with the worker's producer."""

    abandon_wait_s = 2.0
    """How long a cancelled call waits for its ``abort`` record to be acknowledged."""

    def __init__(self, scope: AttemptScope) -> None:
        ctx = scope.context
        self._publish = scope.publish
        self._topic = PipelineTopics(ctx.pipeline).stream
        self._key = ctx.request_id.encode()
        self._base: dict[str, Any] = {
            "request_id": ctx.request_id,
            "step": ctx.step,
            "attempt": ctx.attempt,
            "call": uuid.uuid4().hex[:12],
        }
        self._seq = 0
        self._endpoint = ""
        self._try = 0
        self.ended = False
        """A ``done`` or ``abort`` record was queued: the call's last word."""
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._sender: asyncio.Task[None] | None = None
        self.published = 0
        """Records acknowledged by the broker (merged deltas count once)."""

    def _add(self, record: dict[str, Any]) -> None:
        self._endpoint, self._try = record["endpoint"], record["try"]
        self.ended = self.ended or record["type"] in ("done", "abort")
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="weir-stream-publisher")
        last = self._pending[-1] if self._pending else None
        if (
            record["type"] == "delta"
            and last is not None
            and last["type"] == "delta"
            and last["try"] == record["try"]
        ):
            last["text"] += record["text"]
        else:
            self._pending.append(record)
        self._wake.set()

    def delta(self, text: str, *, endpoint: str, attempt: int) -> None:
        self._add({"type": "delta", "text": text, "endpoint": endpoint, "try": attempt})

    def restart(self, *, endpoint: str, attempt: int, error_type: str) -> None:
        self._add(
            {
                "type": "restart",
                "text": "",
                "endpoint": endpoint,
                "try": attempt,
                "error_type": error_type,
            }
        )

    def done(
        self,
        *,
        endpoint: str,
        attempt: int,
        input_tokens: int,
        output_tokens: int,
        usage_source: str,
        cost_usd: Decimal,
    ) -> None:
        self._add(
            {
                "type": "done",
                "text": "",
                "endpoint": endpoint,
                "try": attempt,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "source": usage_source,
                },
                "cost_usd": str(cost_usd),
            }
        )

    def abort(
        self, *, error_type: str, endpoint: str | None = None, attempt: int | None = None
    ) -> None:
        """The call failed for good (endpoint and try default to the last published)."""
        self._add(
            {
                "type": "abort",
                "text": "",
                "endpoint": self._endpoint if endpoint is None else endpoint,
                "try": self._try if attempt is None else attempt,
                "error_type": error_type,
            }
        )

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                record = self._pending.pop(0)
                self._seq += 1
                value = {**self._base, **record, "seq": self._seq, "ts": now_ms()}
                try:
                    await self._publish(self._topic, self._key, json.dumps(value).encode(), [])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._error = exc
                    self._pending.clear()
                    return
                self.published += 1
            if self._closed:
                return

    async def close(self) -> None:
        """Wait until every record is acknowledged; ``StepError`` if publishing failed."""
        self._closed = True
        self._wake.set()
        if self._sender is not None:
            await self._sender
        if self._error is not None:
            raise StepError(
                f"publishing the token stream to {self._topic} failed:"
                f" {type(self._error).__name__}: {self._error}"
            ) from self._error

    async def cancel(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    async def abandon(self, error_type: str = "cancelled") -> None:
        """The call was cancelled (step timeout, worker draining): publish ``abort`` if no
        ``done``/``abort`` was, waiting at most ``abandon_wait_s`` for it, then stop."""
        if not self.ended:
            self.abort(error_type=error_type)
        self._closed = True
        self._wake.set()
        try:
            if self._sender is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.abandon_wait_s):
                        await asyncio.shield(self._sender)
        finally:
            await self.cancel()
