"""Sending a handler's messages together, and retrying until the broker takes them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from weir.core.errors import OutputTooLargeError
from weir.core.kafka import DataProducer
from weir.streams._out_message import OutMessage

__all__ = ["MAX_MESSAGE_BYTES", "Abandoned", "OutMessage", "Outbox", "Outcome", "Owned"]

log = logging.getLogger("weir.outbox")

MAX_MESSAGE_BYTES = 1_000_000
"""What a message may weigh: Kafka's default limit (1 MiB a request) less some headroom."""

Owned = Callable[[], bool]
"""Whether the worker still owns the input being handled (its partition is assigned)."""

Shortcut = Callable[["OutMessage"], Awaitable[bool]]
"""Hands a message to its consumer in this very process; ``False``: send it to Kafka."""


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


def _acked(
    messages: list[OutMessage], owners: list[_Group], members: list[int], ack: asyncio.Future[Any]
) -> None:
    """One batch's acknowledgement: told to each message's ``landed`` then to its group."""
    error = KafkaError("send cancelled") if ack.cancelled() else ack.exception()
    if error is None:
        first = ack.result()  # an ``Ack``
        for n, i in enumerate(members):
            landed = messages[i].landed
            if landed is not None:
                # Before the group's: the caller reads where it landed once it is done.
                landed(first.partition, first.offset + n)
    for i in members:
        owners[i].settle(error)


def _encoded(message: OutMessage) -> OutMessage:
    """``message`` with its ``decoded`` object encoded as its value (see ``OutMessage``)."""
    return message.with_value(message.decoded.encode())  # type: ignore[attr-defined]


class Outcome:
    """What handling one record must write, kept apart from writing it.

    A batch of records sends every outcome's ``messages()`` in one ``send_all``;
    when that fails as too large, each outcome is delivered on its own
    (``deliver``), where ``too_large`` says what to write instead (the request
    fails there) and the others go through (a duplicate is tolerated downstream).
    """

    __slots__ = ("own", "parts", "too_large")

    def __init__(
        self,
        own: list[OutMessage],
        *,
        too_large: Callable[[OutputTooLargeError], list[OutMessage]] | None = None,
        parts: Sequence[Outcome] = (),
    ) -> None:
        self.own = own
        self.too_large = too_large
        self.parts = parts
        """Outcomes written after ``own`` (a request's root steps), dropped if it fails."""

    def messages(self) -> list[OutMessage]:
        if not self.parts:
            return self.own
        return self.own + [m for part in self.parts for m in part.messages()]

    async def deliver(self, outbox: Outbox, owned: Owned) -> None:
        """Write this outcome alone, turning a too-large refusal into ``too_large``'s messages."""
        try:
            await outbox.send_all(self.own, owned=owned)
        except OutputTooLargeError as exc:
            if self.too_large is None:
                raise
            await outbox.send_all(self.too_large(exc), owned=owned)
            return
        if len(self.parts) == 1:
            await self.parts[0].deliver(outbox, owned)
        elif self.parts:
            await asyncio.gather(*(part.deliver(outbox, owned) for part in self.parts))


class Abandoned(Exception):
    """The worker let go of the input (partition revoked, worker stopping).

    Its offset is not committed, so its new owner processes it again.
    """


class _Group:
    """The messages of one ``send_all`` call: done when every ack (or the first error) is in."""

    __slots__ = ("error", "future", "remaining")

    def __init__(self, future: asyncio.Future[None], count: int) -> None:
        self.future = future
        self.remaining = count
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None, count: int = 1) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.remaining -= count
        if self.remaining <= 0 and not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(self.error)


class Outbox:
    """The worker's non-transactional producer, behind one ``send_all``.

    Every ``send_all`` call queues its messages; one flusher hands the queue to the
    producer in order.  When a partition's batch is full, only the flusher waits for
    it to drain — not every caller (aiokafka wakes all waiters of a drained batch,
    a herd that cost a quarter of the worker's CPU under load) — and each flush
    goes out as one batch per partition, its acknowledgement counted by one callback.
    """

    def __init__(self, *, max_backoff_s: float = 5.0) -> None:
        self._producer: DataProducer | None = None
        self._max_backoff = max_backoff_s
        self._queue: list[tuple[Sequence[OutMessage], _Group]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._shortcuts: dict[str, Shortcut] = {}

    def shortcut(self, topic: str, take: Shortcut) -> None:
        """Offer messages for ``topic`` to ``take`` first (a stage of this worker reads it).

        ``send_all`` awaits ``take`` for these before it sends the others; what ``take``
        declines (not this worker's partition, or given up) goes to Kafka with them.
        """
        self._shortcuts[topic] = take

    def attach(self, producer: DataProducer) -> None:
        """Use ``producer`` (started) from now on."""
        self._producer = producer

    async def send_all(self, messages: Sequence[OutMessage], *, owned: Owned) -> None:
        """Send ``messages`` and wait for every ack; on broker errors, send them all again.

        Retrying here rather than re-running the handler keeps a broker blip from
        re-running a step (and paying for its model calls twice).  A resend may
        duplicate a message that did arrive; every consumer downstream tolerates
        that.  Raises ``Abandoned`` once ``owned()`` turns false, and
        ``OutputTooLargeError`` at once for a message the broker will never take.
        """
        if not messages:
            return
        if self._producer is None:
            raise RuntimeError("Outbox has no producer yet")
        if len(messages) > 1 and any(m.after for m in messages):
            later = [m for m in messages if m.after]
            if len(later) < len(messages):
                await self.send_all([m for m in messages if not m.after], owned=owned)
                await self._send(later, owned=owned)
                return
        if len(messages) > 1 and any(m.ahead for m in messages):
            await self._send([m for m in messages if m.ahead], owned=owned)
            messages = [m for m in messages if not m.ahead]
        if self._shortcuts and any(m.topic in self._shortcuts for m in messages):
            # Taken first: what goes with it (a join's done marker, say) must not be
            # written before it, or a crash in between would lose it on redelivery.
            # A batch's answers are taken concurrently: their writer batches them into
            # one transaction.
            taken = [m for m in messages if m.topic in self._shortcuts]
            rest = [m for m in messages if m.topic not in self._shortcuts]
            if len(taken) == 1:
                took = [await self._shortcuts[taken[0].topic](taken[0])]
            else:
                took = await asyncio.gather(*(self._shortcuts[m.topic](m) for m in taken))
            declined = [m for m, ok in zip(taken, took, strict=True) if not ok]
            await self._send(declined + rest, owned=owned)
            return
        await self._send(messages, owned=owned)

    async def _send(self, messages: Sequence[OutMessage], *, owned: Owned) -> None:
        if not messages:
            return
        messages = [
            _encoded(m) if m.value is None and m.decoded is not None else m for m in messages
        ]
        backoff = 0.2
        while True:
            try:
                await self._enqueue(messages)
                return
            except _TOO_LARGE as exc:
                if any(m.fallback is not None for m in messages):
                    # Which message was refused is not known: those with a smaller form
                    # (dead letters) send it instead, the rest go again (a duplicate is
                    # tolerated downstream); a refusal after that is final.
                    messages = [m.fallback if m.fallback is not None else m for m in messages]
                    continue
                sizes = ", ".join(f"{m.topic}: {len(m.value or b'')} bytes" for m in messages)
                raise OutputTooLargeError(
                    f"Kafka refused a message as too large ({sizes}); keep step outputs"
                    " small (store large artefacts elsewhere and pass a reference)"
                ) from exc
            except KafkaError as exc:
                if not owned():
                    raise Abandoned from exc
                log.warning(
                    "broker did not take %d message(s) (%s); sending again in %.1fs",
                    len(messages),
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(self._max_backoff, backoff * 2)
                if not owned():
                    raise Abandoned from exc

    def _enqueue(self, messages: Sequence[OutMessage]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        group = _Group(loop.create_future(), len(messages))
        self._queue.append((messages, group))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="weir-outbox")
        return group.future

    async def _flush(self) -> None:
        producer = self._producer
        assert producer is not None
        while self._queue:
            queue, self._queue = self._queue, []
            messages = [m for ms, _ in queue for m in ms]
            owners = [group for ms, group in queue for _ in ms]
            try:
                batches = await producer.send_batches(messages)
            except asyncio.CancelledError:
                stopped = KafkaError("outbox stopped")
                for _, group in queue + self._queue:
                    group.settle(stopped, group.remaining)
                self._queue = []
                raise
            except Exception as exc:
                # Some batches may be queued: their acks come too late to matter, as every
                # caller of this round fails (and sends again, or gives up).
                for _, group in queue:
                    group.settle(exc, group.remaining)
                continue
            for ack, members in batches:
                ack.add_done_callback(partial(_acked, messages, owners, members))
