"""Sending a handler's messages together, and retrying until the broker takes them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from weir.errors import OutputTooLargeError

__all__ = ["MAX_MESSAGE_BYTES", "Abandoned", "OutMessage", "Outbox", "Owned"]

log = logging.getLogger("weir.outbox")

MAX_MESSAGE_BYTES = 1_000_000
"""What a message may weigh: Kafka's default limit (1 MiB a request) less some headroom."""

Owned = Callable[[], bool]
"""Whether the worker still owns the input being handled (its partition is assigned)."""


class OutMessage(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None
    """Explicit partition (changelogs); ``None``: by key."""
    fallback: OutMessage | None = None
    """Sent instead when the broker refuses this message as too large (a dead letter's
    bounded form)."""


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


class Abandoned(Exception):
    """The worker let go of the input (partition revoked, worker stopping).

    Its offset is not committed, so its new owner processes it again.
    """


class Outbox:
    """The worker's non-transactional producer, behind one ``send_all``."""

    def __init__(self, *, max_backoff_s: float = 5.0) -> None:
        self._producer: AIOKafkaProducer | None = None
        self._max_backoff = max_backoff_s

    def attach(self, producer: AIOKafkaProducer) -> None:
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
        producer = self._producer
        backoff = 0.2
        while True:
            try:
                futures = [
                    await producer.send(
                        m.topic, value=m.value, key=m.key, headers=m.headers, partition=m.partition
                    )
                    for m in messages
                ]
                acks = await asyncio.gather(*futures, return_exceptions=True)
                instead = []
                for m, ack in zip(messages, acks, strict=True):
                    if isinstance(ack, _TOO_LARGE) and m.fallback is not None:
                        instead.append(m.fallback)
                    elif isinstance(ack, BaseException):
                        raise ack  # every ack was collected; the first failure decides
                if not instead:
                    return
                # The others were taken; what was refused goes in its smaller form.
                messages = instead
            except _TOO_LARGE as exc:
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
