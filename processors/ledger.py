"""The cost ledger: spend per budget key, summed from the ``weir.costs`` topic.

Every budgeted model call puts a cost event on the ``weir.costs`` topic (key:
the budget key); each worker's ``CostLedger`` reads that topic from the start
of the longest window in use and keeps per-hour sums, so all workers see each
other's spend within about a second, and a restarted worker recovers its
windows from the topic (a call's cost event is acknowledged by the broker
before the call returns).  No Postgres, no Redis: the ledger is the event log.

Why a topic of its own rather than the trace topic: trace events are written
when a step attempt ends (too late to stop a long step from overspending) and
do not carry the request's tenant field.

Enforcement is by reservation: before a call, its worst-case cost (input
estimate plus ``max_tokens`` of output, at the endpoint's price) is reserved.
Calls run concurrently while their reservations fit under the limit; near the
limit they wait for the calls in flight to settle their real spend, and the
last one runs alone while the spend is still below the limit.  Once the spend
reaches the limit, calls are over budget.  So in one worker the spend stops
within one call's cost of the limit; several workers may overshoot further by
the calls they start within the ledger's propagation delay (about a second).

Budget keys come from request fields, so their number is capped: past
``budget_max_keys`` the least recently used keys without a call in flight are
evicted, and their spend moves into a fixed-size sketch that can only
over-estimate it (``weir.processors._spend_sketch``).  An evicted key that comes back
is counted at least what it spent: it may be refused slightly early, it is
never allowed past its limit.  Event ids remembered to count a re-sent event
once are capped too (``cost_events_seen_max``, oldest forgotten first): a
re-send arrives within seconds, far inside that many events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.processors._spend_sketch import SpendSketch
from weir.schemas.messages import now_ms
from weir.streams._bounded import RecentSet
from weir.streams.context import current_scope
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import COSTS_TOPIC, global_topic_specs

__all__ = ["BudgetStatus", "CostLedger", "Window", "window_start"]

log = logging.getLogger("weir.models")

Window = Literal["hour", "day", "month"]
_HOUR_MS = 3600 * 1000


def window_start(window: Window, at_ms: int) -> int:
    """Epoch ms where the UTC calendar ``window`` containing ``at_ms`` starts."""
    if window == "hour":
        return at_ms - at_ms % _HOUR_MS
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    if window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(start.timestamp() * 1000)


@dataclass(frozen=True)
class BudgetStatus:
    key: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.limit - self.spent - self.reserved)

    @property
    def exceeded(self) -> bool:
        return self.spent >= self.limit


class CostLedger:
    """Per-hour spend by budget key, read from and written to the costs topic.

    One per ``ModelServices`` (a worker's), made by its first budget and stopped with it.
    """

    send_patience_s = 30.0
    """How long ``record`` keeps sending an event the broker does not take."""

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self._hours: collections.OrderedDict[str, dict[int, Decimal]] = collections.OrderedDict()
        """Per budget key, spend per hour; least recently used key first."""
        self._reserved: dict[str, Decimal] = {}
        self._own: set[str] = set()
        self._seen: RecentSet[str] = RecentSet(settings.cost_events_seen_max)
        """Recent event ids, so an event sent twice (a retried send) counts once."""
        self._evicted = SpendSketch()
        """Spend of the keys evicted from ``_hours`` (an over-estimate; see ``_spend_sketch``)."""
        self._approximate: set[str] = set()
        """Keys in ``_hours`` made after evictions began: they may have spend in the sketch."""
        self.evicted_keys = 0
        """Budget keys moved out of memory since start (``budget_max_keys``)."""
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._settled = asyncio.Condition()
        self.events_read = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and read the topic up to now (once; concurrent callers wait together)."""
        if self._task is not None:
            return
        if self._starting is None:
            self._starting = asyncio.create_task(self._start())
        starting = self._starting
        try:
            await asyncio.shield(starting)
        except BaseException:
            if starting.done() and self._starting is starting:
                self._starting = None  # it failed: the next caller tries again
            raise

    async def _start(self) -> None:
        settings = self._settings
        async with TopicAdmin(settings) as admin:
            await admin.ensure([s for s in global_topic_specs(settings) if s.name == COSTS_TOPIC])
            count = (await admin.partitions([COSTS_TOPIC]))[COSTS_TOPIC]
        producer = KafkaConnection.of(settings).producer(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        consumer = KafkaConnection.of(settings).consumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        started = False
        try:
            await producer.start()
            await consumer.start()
            tps = [TopicPartition(COSTS_TOPIC, p) for p in range(count)]
            consumer.assign(tps)
            since = window_start("month", now_ms())
            # The ends first: a cost written between the two lookups is then read, where
            # seeking to the end after an empty time lookup would skip it.
            end = await consumer.end_offsets(tps)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else end[tp])
            deadline = time.monotonic() + 60
            while any([await consumer.position(tp) < end[tp] for tp in tps]):
                if time.monotonic() > deadline:
                    log.warning(
                        "cost ledger: catching up took over 60s; going on with partial sums"
                    )
                    break
                self._apply_batch(await consumer.getmany(timeout_ms=200))
            started = True
        finally:
            if not started:  # nothing may keep connections of a start that failed
                with contextlib.suppress(Exception):
                    await producer.stop()
                with contextlib.suppress(Exception):
                    await stop_consumer(consumer)
        self._producer, self._consumer = producer, consumer
        self._task = asyncio.create_task(self._follow(), name="weir-cost-ledger")

    @property
    def running(self) -> bool:
        """Whether it follows the costs topic (started, not stopped)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self._consumer)
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self._starting = None

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                self._apply_batch(await consumer.getmany(timeout_ms=200))
            except KafkaError as exc:
                log.warning("cost ledger: reading %s failed (%s); retrying", COSTS_TOPIC, exc)
                await asyncio.sleep(1.0)

    def _apply_batch(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for record in records:
                try:
                    event = json.loads(record.value)
                    event_id = str(event["event_id"])
                    cost = Decimal(str(event["cost_usd"]))
                    at = int(event["ts"])
                    key = str(event["key"])
                except (KeyError, TypeError, ValueError, InvalidOperation, json.JSONDecodeError):
                    log.warning("cost ledger: skipping a malformed cost event at %s", record.offset)
                    continue
                self.events_read += 1
                if not self._seen.add(event_id):
                    continue
                if event_id in self._own:
                    self._own.discard(event_id)  # counted when it was spent
                    continue
                self._add(key, at, cost)

    # -- sums --------------------------------------------------------------------------

    def _add(self, key: str, at_ms: int, cost: Decimal) -> None:
        hours = self._hours.get(key)
        if hours is None:
            hours = self._hours[key] = {}
            if self._evicted:
                self._approximate.add(key)
            self._evict()
        else:
            self._hours.move_to_end(key)
        hour = window_start("hour", at_ms)
        hours[hour] = hours.get(hour, Decimal(0)) + cost
        # Keep about two months of hours per key.
        if len(hours) > 1600:
            for old in sorted(hours)[: len(hours) - 1600]:
                del hours[old]

    @property
    def event_ids_remembered(self) -> int:
        """Cost-event ids held for dedup (at most ``cost_events_seen_max``)."""
        return len(self._seen)

    @property
    def keys_in_memory(self) -> int:
        """Budget keys whose spend is held exactly (at most ``budget_max_keys``)."""
        return len(self._hours)

    def _evict(self) -> None:
        """Move least recently used keys past ``budget_max_keys`` into the sketch.

        Keys with a reservation (a call in flight) stay: their spend is about to change,
        so the table may exceed the cap by the number of keys with calls in flight.
        """
        limit = self._settings.budget_max_keys
        if len(self._hours) <= limit:
            return
        for key in list(self._hours):
            if len(self._hours) <= limit:
                break
            if self._reserved.get(key):
                continue
            for hour, cost in self._hours.pop(key).items():
                self._evicted.add(key, hour, cost)
            self._approximate.discard(key)
            self.evicted_keys += 1
            if self.evicted_keys == 1 or self.evicted_keys % 10_000 == 0:
                log.warning(
                    "cost ledger: more than %d budget keys (budget_max_keys); %d evicted so far,"
                    " their spend kept as an over-estimate",
                    limit,
                    self.evicted_keys,
                )
        self._evicted.forget_before(window_start("month", now_ms()))

    def spent(self, key: str, window: Window, at_ms: int | None = None) -> Decimal:
        """What ``key`` spent in the current ``window``: exact, or at least that once evicted."""
        at = now_ms() if at_ms is None else at_ms
        start = window_start(window, at)
        hours = self._hours.get(key)
        exact = sum((v for h, v in (hours or {}).items() if h >= start), Decimal(0))
        if hours is not None:
            self._hours.move_to_end(key)
        if self._evicted and (hours is None or key in self._approximate):
            return exact + self._evicted.estimate(key, since_ms=start)
        return exact

    def status(self, key: str, window: Window, limit: Decimal) -> BudgetStatus:
        return BudgetStatus(
            key, limit, self.spent(key, window), self._reserved.get(key, Decimal(0))
        )

    async def reserve(
        self, key: str, window: Window, limit: Decimal, amount: Decimal, *, wait_s: float = 60.0
    ) -> bool:
        """Reserve ``amount`` under ``limit``; ``False`` once the spend has reached it."""
        deadline = time.monotonic() + wait_s
        while True:
            spent = self.spent(key, window)
            reserved = self._reserved.get(key, Decimal(0))
            # Concurrent calls are admitted while their worst cases fit; the last one alone
            # while the spend is below the limit, so the overshoot is at most one call.
            fits = spent + reserved + amount <= limit
            if fits or (reserved == 0 and spent < limit):
                if amount:
                    self._reserved[key] = reserved + amount
                return True
            if spent >= limit or time.monotonic() > deadline:
                return False
            # Calls in flight hold the room; what they really spend decides.
            async with self._settled:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._settled.wait()

    def unreserve(self, key: str, amount: Decimal) -> None:
        if amount:
            left = max(Decimal(0), self._reserved.get(key, Decimal(0)) - amount)
            if left:
                self._reserved[key] = left
            else:  # no entry per key that was ever used: they come from request fields
                self._reserved.pop(key, None)
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._settled:
                self._settled.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            task = asyncio.get_running_loop().create_task(wake())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def record(self, key: str, cost: Decimal, *, reserved_part: Decimal = Decimal(0)) -> None:
        """Count ``cost`` now, then put its event on the topic and wait for the broker's ack.

        Broker errors are retried with back-off (as the worker's outbox does) for
        up to ``send_patience_s``; the caller's cancellation (a step timeout, a
        worker draining) ends the wait, and so does the ledger stopping.  An
        event that is not written is logged: this worker still counts it, but
        other workers and a restarted one do not see it.
        """
        at = now_ms()
        self.unreserve(key, reserved_part)
        self._add(key, at, cost)
        event_id = uuid.uuid4().hex
        scope = current_scope()
        event = {
            "event_id": event_id,
            "key": key,
            "cost_usd": str(cost),
            "ts": at,
            "pipeline": scope.context.pipeline if scope else None,
            "request_id": scope.context.request_id if scope else None,
            "step": scope.context.step if scope else None,
        }
        value = json.dumps(event).encode()
        self._own.add(event_id)
        deadline = time.monotonic() + self.send_patience_s
        backoff = 0.2
        while True:
            producer = self._producer
            if producer is None:
                log.warning("cost ledger is not running; spend of %s counted locally only", key)
                self._own.discard(event_id)  # it will not come back from the topic
                return
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await producer.send_and_wait(COSTS_TOPIC, value, key.encode())
                return
            except (KafkaError, TimeoutError) as exc:
                if time.monotonic() + backoff > deadline:
                    # It may still arrive (so its id stays among ours, to count it once).
                    log.error("cost ledger: a cost event of %s was not written: %s", key, exc)
                    return
                log.warning(
                    "cost ledger: the broker did not take a cost event (%s); again in %.1fs",
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
