"""Where a step's conversations live: a compacted table keyed by conversation id.

The table is one compacted topic per step (``weir.<pipeline>.conversation.<step>``),
partitioned like the pipeline's topics: conversation ``c`` lives on the partition
its id hashes to, which is the partition every message of its requests is keyed
to (``routing_key``), so the worker that owns a conversation's requests is the
one that reads its table partition, and a conversation moves with its partition
between workers and survives restarts.

Before an attempt, the store reads the conversation's table partition up to its
current end (one offset lookup, then only what other workers or an earlier life
of this one wrote since), so after a rebalance or a restart the history is the
last one written.  The new state goes out with the step's output, in the same
batch, acknowledged before the input counts as done (at-least-once, like every
step output).  A request redelivered after a crash whose turns were stored
already sees the history its first attempt saw, and its turns are not added
again, so a crash neither loses nor duplicates a turn.
Attempts of one conversation run one at a time in a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError, SchemaInvalidError
from weir.core.kafka import KafkaConnection
from weir.streams.context import AttemptScope
from weir.streams.conversation import (
    Conversation,
    ConversationState,
    History,
    conversation_id_of,
    trimmed,
)
from weir.streams.outbox import OutMessage
from weir.topics._aiokafka import (
    KeyPartitioner,
    read_until,
    retrying,
    rewind,
    started_consumer,
    stop_consumer,
)
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = ["ConversationStore", "read_conversation"]

log = logging.getLogger("weir.conversation")

T = TypeVar("T")


class ConversationStore:
    """One conversational step's table in one worker."""

    def __init__(
        self, settings: WeirSettings, config: Conversation, *, topic: str, step: str
    ) -> None:
        self._settings = settings
        self.config = config
        self.topic = topic
        self._step = step
        self._partitioner = KeyPartitioner()
        self._count: int | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reading = asyncio.Lock()
        self._parts: dict[int, dict[str, ConversationState]] = {}
        self._positions: dict[int, int] = {}
        self._written: dict[str, ConversationState] = {}
        """States this worker wrote that its table copy may not have read back yet."""
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @property
    def partitions_read(self) -> set[int]:
        """Table partitions this worker has read (those of the conversations it ran)."""
        return set(self._positions)

    def partition_of(self, conversation_id: str) -> int:
        assert self._count is not None
        parts = list(range(self._count))
        return int(self._partitioner(conversation_id.encode(), parts, parts))

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            async with TopicAdmin(self._settings) as admin:
                self._count = (await admin.partitions([self.topic])).get(self.topic, 0)
            if not self._count:
                raise SchemaInvalidError(f"the conversation table {self.topic} does not exist")
            self._consumer = await started_consumer(
                KafkaConnection.of(self._settings),
                what=f"connecting to read {self.topic}",
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
            )
        return self._consumer

    async def _catch_up(self, partition: int) -> dict[str, ConversationState]:
        """The partition's conversations as of its current end."""
        async with self._reading:
            consumer = await self._start()
            tp = TopicPartition(self.topic, partition)
            if partition not in self._positions:
                # assign() replaces the assignment: put the others back where they were.
                known = [TopicPartition(self.topic, p) for p in self._positions]
                consumer.assign([*known, tp])
                for other in known:
                    consumer.seek(other, self._positions[other.partition])
                await rewind(consumer, [tp])
                self._positions[partition] = 0
                self._parts[partition] = {}
            table = self._parts[partition]
            end = await retrying(
                lambda: consumer.end_offsets([tp]), what=f"reading the end of {self.topic}"
            )
            now = int(time.time() * 1000)
            async for record in read_until(consumer, tp, end[tp]):
                if record.key is None:
                    continue
                key = record.key.decode(errors="replace")
                if record.value is None:
                    table.pop(key, None)
                    continue
                try:
                    state = ConversationState.decode(record.value)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("skipping an unreadable entry of %s: %s", self.topic, exc)
                    continue
                if state.expired(self.config.ttl, now):
                    table.pop(key, None)
                else:
                    table[key] = state
            self._positions[partition] = await consumer.position(tp)
            return table

    async def state(self, conversation_id: str) -> ConversationState:
        """The conversation's latest state (empty when new or expired); ``BrokerError``
        (a retriable failure of the attempt) when the table cannot be read."""
        try:
            async with self._reading:
                await self._start()
            table = await self._catch_up(self.partition_of(conversation_id))
        except KafkaError as exc:
            raise BrokerError(f"reading the conversation table {self.topic} failed: {exc}") from exc
        stored = table.get(conversation_id)
        mine = self._written.get(conversation_id)
        if mine is not None and (stored is None or stored.seq < mine.seq):
            stored = mine
        else:
            self._written.pop(conversation_id, None)  # the table has caught up with it
        if stored is None or stored.expired(self.config.ttl, int(time.time() * 1000)):
            return ConversationState()
        return stored

    async def around(
        self,
        request: str,
        request_id: str,
        scope: AttemptScope,
        run: Callable[[], Awaitable[T]],
    ) -> tuple[T, list[OutMessage]]:
        """Run one attempt with its ``History`` on ``scope``; return its result and the
        table write of the turns it added (none when it added none)."""
        payload = json.loads(request)
        cid = conversation_id_of(payload) if isinstance(payload, dict) else None
        if cid is None:
            scope.history = History(
                None, ConversationState(), self.config, request_id=request_id, step=self._step
            )
            return await run(), []
        lock, users = self._locks.get(cid, (asyncio.Lock(), 0))
        self._locks[cid] = (lock, users + 1)
        try:
            async with lock:
                state = await self.state(cid)
                history = History(cid, state, self.config, request_id=request_id, step=self._step)
                scope.history = history
                result = await run()
                return result, await self._write(cid, state, history)
        finally:
            lock, users = self._locks[cid]
            if users == 1:
                del self._locks[cid]
            else:
                self._locks[cid] = (lock, users - 1)

    async def history_seen(self, request: str, request_id: str, submitted_at: int) -> History:
        """The history a request's attempt saw, as far as the table still holds it (a step
        replay's): the turns before the request's own, or, when its turns are not stored
        (it failed, or they were trimmed), the turns added before it was submitted, with
        the newest summary of turns before that (``ConversationState.summary_before``).
        Turns the replay adds are kept nowhere."""
        payload = json.loads(request)
        cid = conversation_id_of(payload) if isinstance(payload, dict) else None
        state = ConversationState() if cid is None else await self.state(cid)
        if not any(t.request_id == request_id for t in state.turns):
            # Its turns gone or never written: the current summary may fold in turns that
            # came after it, which the replay must not see.
            earlier = [t for t in state.turns if t.at < submitted_at]
            summary = state.summary_before(submitted_at)
            state = ConversationState(earlier, summary, state.updated_at, state.seq)
        history = History(cid, state, self.config, request_id=request_id, step=self._step)
        history.recorded = True  # so nothing the replay adds would be written
        return history

    async def _write(
        self, cid: str, state: ConversationState, history: History
    ) -> list[OutMessage]:
        added = history.added
        if not added or history.recorded:
            return []  # nothing to add, or added by an earlier attempt that was answered
        new = dataclasses.replace(
            state,
            turns=[*state.turns, *added],
            updated_at=int(time.time() * 1000),
            seq=state.seq + len(added),
        )
        new, dropped = await trimmed(self.config, new, keep=len(added))
        if dropped:
            log.debug("conversation %s: %d turn(s) trimmed", cid, len(dropped))
        self._written[cid] = new
        return [OutMessage(self.topic, cid.encode(), new.encode(), None, self.partition_of(cid))]

    async def stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self._consumer)
            self._consumer = None


async def read_conversation(
    settings: WeirSettings, conversation_id: str, *, pipeline: str | None = None
) -> list[tuple[str, str, ConversationState]]:
    """``(pipeline, step, state)`` for every conversational step that holds the
    conversation (of ``pipeline``, else of every pipeline), as of now."""
    conversation_id_of({"conversation_id": conversation_id})  # a clear error for a bad id
    async with TopicAdmin(settings) as admin:
        topics = [
            t
            for t in await admin.list()
            if ".conversation." in t
            and (pipeline is None or t.startswith(f"{PipelineTopics(pipeline).prefix}.{pipeline}."))
        ]
    found = []
    for topic in sorted(topics):
        config = Conversation(ttl=None)  # what is stored, expired or not: Kafka deletes it
        store = ConversationStore(settings, config, topic=topic, step="")
        try:
            await store._start()
            state = (await store._catch_up(store.partition_of(conversation_id))).get(
                conversation_id
            )
        finally:
            await store.stop()
        if state is not None:
            name, _, step = topic.partition(".conversation.")
            found.append((name.split(".", 1)[1], step, state))
    return found
