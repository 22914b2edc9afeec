"""``Retry-After`` for a whole group: one worker's 429 pauses that endpoint in every worker.

When an endpoint answers 429 with ``Retry-After``, the worker that saw it puts a
pause on the ``weir.pauses`` topic (key: the pipeline's consumer group; value:
the endpoint's name and the wall-clock time until which it is paused).  Every
worker of the group follows that topic from the moment its first limited call
starts (reading the last ten minutes first, so a worker that joins mid-pause
waits too), and its calls to that endpoint wait until the pause ends.  Calls
wait rather than fail: the wait is back-pressure, bounded by the endpoint's
``queue_timeout_s``.

Why a topic rather than dividing by membership (as ``group_share`` does for
per-minute limits): a pause is an event that must reach every member now, not a
rate that each can take a share of, and it is rare (one message per 429), so it
costs nothing on the hot path: a call only reads the last pause this process
has seen.  Pauses are in wall-clock time: the workers' clocks are assumed to
agree to well under a second (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.processors._start_once import StartOnce
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PAUSES_TOPIC, global_topic_specs

__all__ = ["GroupPauses"]

log = logging.getLogger("weir.models")

_LOOK_BACK_MS = 600_000
"""How far back a starting follower reads: ``Retry-After`` is capped at ten minutes."""


class GroupPauses:
    """The pauses of every endpoint for every group, as this process has seen them.

    One per ``ModelServices`` (a worker's), started by its first call inside a
    group and stopped with it.
    """

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self._until: dict[tuple[str, str], float] = {}
        """(group, endpoint) -> wall-clock seconds until which calls wait."""
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = StartOnce(self._start, name="weir-pauses-start")
        self._sending: set[asyncio.Task[None]] = set()
        self._next_try = 0.0
        self.pauses_read = 0

    def follow_soon(self) -> None:
        """Start following the topic in the background if not yet (calls never wait for it)."""
        if self._task is not None or self._starting.begun:
            return
        if time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + 5.0  # a broker that is down is asked again later
        task = asyncio.create_task(self.start(), name="weir-pauses-follow")
        self._sending.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("cannot follow %s (pauses of other workers): %s", PAUSES_TOPIC, exc)

    def until(self, group: str, endpoint: str) -> float:
        """Wall-clock time (``time.time()``) until which ``endpoint`` is paused for ``group``."""
        return self._until.get((group, endpoint), 0.0)

    def announce(self, group: str, endpoint: str, wait_s: float) -> None:
        """Pause ``endpoint`` for ``group`` for ``wait_s`` here at once, and tell the group.

        The send runs in the background: the call that got the 429 does not wait for it.
        """
        until = time.time() + wait_s
        self._note(group, endpoint, until)
        log.info(
            "endpoint %s asked to wait %.1fs (Retry-After): pausing it for %s",
            endpoint,
            wait_s,
            group,
        )
        value = json.dumps({"group": group, "endpoint": endpoint, "until": until}).encode()
        task = asyncio.create_task(self._send(group, value), name="weir-pause-send")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _note(self, group: str, endpoint: str, until: float) -> None:
        key = (group, endpoint)
        self._until[key] = max(self._until.get(key, 0.0), until)
        now = time.time()
        for old in [k for k, v in self._until.items() if v < now - 60]:
            del self._until[old]  # ended pauses: keys come from the pipelines seen, few

    async def _send(self, group: str, value: bytes) -> None:
        try:
            await self.start()
            producer = self._producer
            if producer is None:
                return
            async with asyncio.timeout(10):
                await producer.send_and_wait(PAUSES_TOPIC, value, group.encode())
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("cannot tell group %s of an endpoint's pause: %s", group, exc)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and read the recent pauses (once; concurrent callers wait together)."""
        if self._task is not None:
            return
        await self._starting()

    async def _start(self) -> None:
        settings = self._settings
        async with TopicAdmin(settings) as admin:
            await admin.ensure([s for s in global_topic_specs(settings) if s.name == PAUSES_TOPIC])
        connection = KafkaConnection.of(settings)
        producer = connection.producer(acks="all", linger_ms=0)
        consumer = connection.consumer(enable_auto_commit=False, auto_offset_reset="latest")
        started = False
        try:
            await producer.start()
            await consumer.start()
            tp = TopicPartition(PAUSES_TOPIC, 0)
            consumer.assign([tp])
            found = await consumer.offsets_for_times({tp: int(time.time() * 1000) - _LOOK_BACK_MS})
            at = found.get(tp)
            if at is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, at.offset)
            started = True
        finally:
            if not started:
                with contextlib.suppress(Exception):
                    await producer.stop()
                with contextlib.suppress(Exception):
                    await stop_consumer(consumer)
        self._producer, self._consumer = producer, consumer
        self._task = asyncio.create_task(self._follow(), name="weir-pauses")
        log.info("following other workers' endpoint pauses (Retry-After) on %s", PAUSES_TOPIC)

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                self._apply(await consumer.getmany(timeout_ms=200))
            except KafkaError as exc:
                log.warning("pauses: reading %s failed (%s); retrying", PAUSES_TOPIC, exc)
                await asyncio.sleep(1.0)

    def _apply(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for record in records:
                try:
                    event = json.loads(record.value)
                    group, endpoint = str(event["group"]), str(event["endpoint"])
                    until = float(event["until"])
                except (KeyError, TypeError, ValueError, json.JSONDecodeError):
                    log.warning("pauses: skipping a malformed pause at offset %s", record.offset)
                    continue
                self.pauses_read += 1
                # A pause is capped as the endpoint caps Retry-After: a bad clock or
                # message cannot stop an endpoint for longer than ten minutes.
                self._note(group, endpoint, min(until, time.time() + 600.0))

    async def aclose(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self._consumer)
            self._consumer = None
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                await self._producer.stop()
            self._producer = None
        self._starting.reset()
