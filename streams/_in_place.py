"""Running the next step of a batch's outputs in the same task, on the objects.

A batch of an inline stage sends an output for a step this worker also runs in place
(batchable, no join, no conversation) to the partition the key maps to, when this
worker holds that partition, marked ``weir.in_place: <token>``, and runs that step on the
envelope object, and so on down the chain.  When every message of a round is small, the
next step runs while the round's send is still on its way (its records get their offsets
when they land; what names an offset, a trace event or a dead letter, waits for it);
otherwise once the broker has acknowledged it.  The first input is finished only when all
of it is acknowledged.

The record stays on its topic (replay reads step topics).  The step's own consumer skips
it only when the token is this worker's own, one made afresh per ``Worker``: a record
that another worker (or an earlier run of this one) marked is processed as usual.  Why
that is safe: the worker that marked a record runs it, or its first input stays
unfinished (cancelled, partition lost, crash) and is redone from the start by whoever
takes it next, which sends the step's output again.  A rebalance after the mark at worst
runs the record twice (the answer stage drops the duplicate answer).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiokafka import TopicPartition

from weir.schemas.messages import Envelope, now_ms
from weir.streams._partitions import Partitions
from weir.streams._placement import Placement
from weir.streams._runtime import Record, make_record
from weir.streams.outbox import Outcome, OutMessage

__all__ = ["IN_PLACE_HEADER", "InPlace", "Landing", "NextStage"]

IN_PLACE_HEADER = "weir.in_place"
"""On a step-topic record its sender runs in place: the sending worker's token."""


class NextStage(Protocol):
    """A step's ``prepare``: handed its input record, the envelope it was encoded from and,
    as ``landed``, what to await before naming the record's offset (``Landing.wait``)."""

    def __call__(
        self,
        record: Record,
        decoded: Envelope | None = None,
        *,
        landed: Callable[[], Awaitable[None]] | None = None,
    ) -> Awaitable[Outcome]: ...


class Landing:
    """An output marked to run in place, and where the broker put it.

    Its record (``record()``) may be handed to the next step before the broker has
    acknowledged it (the batch runs ahead, ``weir.streams._record_tasks``): its
    partition is known from the start, its offset and timestamp are filled in, on the
    same object, once it lands.  Whatever must name the offset awaits ``wait()``.
    """

    __slots__ = (
        "_record",
        "_waiter",
        "envelope",
        "message",
        "offset",
        "partition",
        "settled",
        "stage",
        "timestamp",
    )

    def __init__(self, message: OutMessage, envelope: Envelope, stage: str, partition: int) -> None:
        self.message = message
        self.envelope = envelope
        self.stage = stage
        self.partition = partition
        """Where the message is sent: known before it lands."""
        self.offset = -1
        self.timestamp = now_ms()
        self.settled = False
        """Landed, or its send is over (refused, abandoned): the offset is all it will be."""
        self._record: Record | None = None
        self._waiter: asyncio.Future[None] | None = None

    def landed(self, partition: int, offset: int) -> None:
        self.partition, self.offset, self.timestamp = partition, offset, now_ms()
        record = self._record
        if record is not None:
            record.partition, record.offset, record.timestamp = partition, offset, self.timestamp
        self.settle()

    def settle(self) -> None:
        """No acknowledgement will come after this (called when its send is over)."""
        self.settled = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the record has landed (or its send is over)."""
        if not self.settled:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)

    def record(self) -> Record:
        """The record as the step's consumer would have read it (one object: see above)."""
        record = self._record
        if record is None:
            m = self.message
            record = self._record = make_record(
                m.topic,
                self.partition,
                self.offset,
                self.timestamp,
                m.key,
                m.value or b"",
                list(m.headers or ()),
            )
        return record


class InPlace:
    """Which outputs run in place (``mark``), and which records to skip (``skips``)."""

    __slots__ = ("_headers", "_partitions", "_placement", "_stages", "token")

    def __init__(
        self,
        stages: Mapping[str, tuple[str, NextStage]],
        *,
        partitions: Partitions,
        placement: Placement,
        token: bytes | None = None,
    ) -> None:
        self._stages = stages
        """``(stage, prepare)`` of the steps run in place, by input topic."""
        self._partitions = partitions
        self._placement = placement
        self.token = token if token is not None else os.urandom(8).hex().encode()
        self._headers = [(IN_PLACE_HEADER, self.token)]

    def stage(self, landing: Landing) -> NextStage:
        return self._stages[landing.message.topic][1]

    def skips(self, record: Record) -> bool:
        """A record this worker marked itself: it runs (or ran) in the batch that sent it."""
        headers = record.headers
        if not headers:
            return False
        token = self.token
        return any(k == IN_PLACE_HEADER and v == token for k, v in headers)

    def mark(self, messages: list[OutMessage]) -> tuple[list[OutMessage], list[Landing]]:
        """``messages`` with the ones to run in place marked and placed; their landings."""
        stages = self._stages
        if not stages:
            return messages, []
        out: list[OutMessage] = []
        landings: list[Landing] = []
        for m in messages:
            stage = stages.get(m.topic)
            env = m.decoded
            if (
                stage is not None
                and isinstance(env, Envelope)
                and m.value is not None
                and m.key is not None
                and m.partition is None
                and not m.headers
            ):
                p = self._placement.partition_of(m.topic, m.key)
                # Only a partition held here: its owner elsewhere would run it too.
                if p is not None and self._partitions.takes(TopicPartition(m.topic, p)):
                    landing = Landing(m, env, stage[0], p)
                    m = OutMessage(
                        m.topic,
                        m.key,
                        m.value,
                        self._headers,
                        p,
                        decoded=env,
                        landed=landing.landed,
                    )
                    landing.message = m
                    landings.append(landing)
            out.append(m)
        return out, landings
