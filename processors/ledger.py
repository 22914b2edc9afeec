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

Enforcement is by reservation, group-wide: before a call, its worst-case cost
(input estimate plus ``max_tokens`` of output, at the endpoint's price) is
claimed by a claim event on the topic, which every worker decides the same way
in the topic's order (``weir.processors._claims``).  Calls run concurrently
while their claims fit under the limit; near the limit they wait for the calls
in flight to settle their real spend, and the last one runs alone while the
spend is still below the limit.  Once the spend reaches the limit, calls are
over budget.  So the spend of all the pipeline's workers together stops within
one call's cost of the limit.  The price: a budgeted call waits for its claim
to come back from the topic (a produce and a read, milliseconds), and its cost
is counted when its event has come back (``record`` returns then).

Budget keys come from request fields, so their number is capped: past
``budget_max_keys`` the least recently used keys without a call in flight are
evicted, and their spend moves into a fixed-size sketch that can only
over-estimate it (``weir.processors._spend_table``).  An evicted key that comes back
is counted at least what it spent: it may be refused slightly early, it is
never allowed past its limit.  Event ids remembered to count a re-sent event
once are capped too (``cost_events_seen_max``, oldest forgotten first): a
re-send arrives within seconds, far inside that many events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError
from weir.core.kafka import KafkaConnection
from weir.processors._claims import Claim, ClaimBook, Verdict
from weir.processors._spend_table import SpendTable, Window, window_start
from weir.processors._start_once import StartOnce
from weir.schemas.messages import now_ms
from weir.streams._bounded import RecentSet
from weir.streams.context import current_scope
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import COSTS_TOPIC, global_topic_specs

__all__ = ["BudgetStatus", "Claim", "CostLedger", "Window", "window_start"]

log = logging.getLogger("weir.models")


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
        self._table = SpendTable(settings.budget_max_keys)
        """Spend per budget key and hour, in the topic's order."""
        self._claims = ClaimBook()
        """Reservations held group-wide, decided in the topic's order."""
        self._own: set[str] = set()
        """Own events counted before they came back (their send failed): skipped if they do."""
        self._applied: dict[str, asyncio.Future[None]] = {}
        """Own cost events waited for until they come back from the topic."""
        self._seen: RecentSet[str] = RecentSet(settings.cost_events_seen_max)
        """Recent event ids, so an event sent twice (a retried send) counts once."""
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = StartOnce(self._start, name="weir-ledger-start")
        self._pending: set[asyncio.Future[Any]] = set()
        self._settled = asyncio.Condition()
        self._settlements = 0
        """Claims settled or released so far: a waiter sees any that came after it looked."""
        self.events_read = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and read the topic up to now (once; concurrent callers wait together)."""
        if self._task is not None:
            return
        await self._starting()

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
        self._claims.fail_waiting(BrokerError("the cost ledger stopped before a claim came back"))
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self._consumer)
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self._starting.reset()

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
        if any(batch.values()):
            self._notify()  # spend or claims changed: waiting claims look again
        for records in batch.values():
            for record in records:
                try:
                    event = json.loads(record.value)
                    event_id = str(event["event_id"])
                    kind = event.get("type", "cost")
                    if kind == "claim":
                        if self._seen.add(event_id):
                            self._claims.decide(event, self.spent)
                        continue
                    key = str(event["key"])
                    if kind == "release":
                        if self._seen.add(event_id):
                            self._claims.release(key, str(event["claim"]))
                        continue
                    cost = Decimal(str(event["cost_usd"]))
                    at = int(event["ts"])
                except (KeyError, TypeError, ValueError, InvalidOperation, json.JSONDecodeError):
                    log.warning("cost ledger: skipping a malformed cost event at %s", record.offset)
                    continue
                self.events_read += 1
                if not self._seen.add(event_id):
                    continue
                self._claims.settle(key, event.get("claim"), cost)
                if event_id in self._own:
                    self._own.discard(event_id)  # counted when it was spent
                    continue
                self._add(key, at, cost)
                waiter = self._applied.pop(event_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    # -- sums --------------------------------------------------------------------------

    def _add(self, key: str, at_ms: int, cost: Decimal) -> None:
        self._table.add(key, at_ms, cost, keep=self._claims.holds)

    @property
    def event_ids_remembered(self) -> int:
        """Cost-event ids held for dedup (at most ``cost_events_seen_max``)."""
        return len(self._seen)

    @property
    def keys_in_memory(self) -> int:
        """Budget keys whose spend is held exactly (at most ``budget_max_keys``)."""
        return self._table.keys_in_memory

    @property
    def evicted_keys(self) -> int:
        """Budget keys moved out of memory since start (``budget_max_keys``)."""
        return self._table.evicted_keys

    def spent(self, key: str, window: Window, at_ms: int | None = None) -> Decimal:
        """What ``key`` spent in the current ``window``: exact, or at least that once evicted."""
        return self._table.spent(key, window, now_ms() if at_ms is None else at_ms)

    def status(self, key: str, window: Window, limit: Decimal) -> BudgetStatus:
        return BudgetStatus(
            key, limit, self.spent(key, window), self._claims.reserved(key, now_ms())
        )

    async def reserve(
        self, key: str, window: Window, limit: Decimal, amount: Decimal, *, wait_s: float = 60.0
    ) -> Claim | None:
        """Claim ``amount`` under ``limit`` for the group; ``None`` once the spend has reached it.

        While other calls' claims leave no room but their actual spend may, it
        waits (up to ``wait_s``) for them to settle, then claims again.
        """
        deadline = time.monotonic() + wait_s
        while True:
            if self.spent(key, window) >= limit:
                return None
            if not amount:
                return Claim("", key, amount)
            seen = self._settlements
            verdict = await self._claim(key, window, limit, amount)
            if isinstance(verdict, Claim):
                return verdict
            if verdict == "spent" or time.monotonic() > deadline:
                return None
            # Calls in flight hold the room; what they really spend decides.
            async with self._settled:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._settled.wait_for(functools.partial(self._changed_since, seen))

    async def _claim(
        self, key: str, window: Window, limit: Decimal, amount: Decimal
    ) -> Claim | Verdict:
        """Put a claim on the topic and wait for it to come back decided."""
        claim_id = uuid.uuid4().hex
        event = {
            "type": "claim",
            "event_id": claim_id,
            "key": key,
            "amount_usd": str(amount),
            "limit_usd": str(limit),
            "window": window,
            "ts": now_ms(),
        }
        verdict = self._claims.expect(claim_id)
        try:
            if not await self._send(key, event):
                raise BrokerError(f"cost ledger: cannot put a budget claim of {key} on the topic")
            async with asyncio.timeout(self.send_patience_s):
                decided = await verdict
        except TimeoutError:
            raise BrokerError(
                f"cost ledger: a budget claim of {key} did not come back from {COSTS_TOPIC}"
            ) from None
        finally:
            self._claims.forget(claim_id)
        return Claim(claim_id, key, amount) if decided == "granted" else decided

    def release(self, claim: Claim, left: Decimal) -> None:
        """Free what ``claim`` still holds (``left``), for every worker; sent in the background."""
        if not claim.id or left <= 0:
            return
        # Freed when the event comes back, here as in every worker: claims are decided the
        # same way everywhere only if every worker frees it at the same place in the log.
        event: dict[str, Any] = {"type": "release", "event_id": uuid.uuid4().hex}
        event |= {"key": claim.key, "claim": claim.id, "ts": now_ms()}
        with contextlib.suppress(RuntimeError):  # no running loop: the claim expires instead
            task = asyncio.get_running_loop().create_task(self._send(claim.key, event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _changed_since(self, seen: int) -> bool:
        return self._settlements != seen

    def _notify(self) -> None:
        self._settlements += 1

        async def wake() -> None:
            async with self._settled:
                self._settled.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            task = asyncio.get_running_loop().create_task(wake())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def record(self, key: str, cost: Decimal, *, claim: str | None = None) -> None:
        """Put ``cost`` on the topic and return once it is counted (read back from the topic).

        ``claim``: the claim it uses up.  Broker errors are retried with back-off
        (as the worker's outbox does) for up to ``send_patience_s``; the caller's
        cancellation (a step timeout, a worker draining) ends the wait, and so does
        the ledger stopping.  An event that is not written is logged and counted
        here only: other workers and a restarted one do not see it.
        """
        at = now_ms()
        event_id = uuid.uuid4().hex
        scope = current_scope()
        event = {
            "event_id": event_id,
            "key": key,
            "cost_usd": str(cost),
            "ts": at,
            "claim": claim,
            "pipeline": scope.context.pipeline if scope else None,
            "request_id": scope.context.request_id if scope else None,
            "step": scope.context.step if scope else None,
        }
        applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied[event_id] = applied
        try:
            if await self._send(key, event):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.send_patience_s):
                        await asyncio.shield(applied)
                        return
        finally:
            self._applied.pop(event_id, None)
        if not applied.done():
            # Not back from the topic: count it here now (and not again if it comes back).
            self._own.add(event_id)
            self._add(key, at, cost)
            if claim is not None and self._claims.settle(key, claim, cost):
                self._notify()

    async def _send(self, key: str, event: dict[str, Any]) -> bool:
        """Send ``event``; whether the broker acknowledged it (retried for ``send_patience_s``)."""
        value = json.dumps(event).encode()
        deadline = time.monotonic() + self.send_patience_s
        backoff = 0.2
        while True:
            producer = self._producer
            if producer is None:
                log.warning("cost ledger is not running; spend of %s counted locally only", key)
                return False
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await producer.send_and_wait(COSTS_TOPIC, value, key.encode())
                return True
            except (KafkaError, TimeoutError) as exc:
                if time.monotonic() + backoff > deadline:
                    log.error("cost ledger: an event of %s was not written: %s", key, exc)
                    return False
                log.warning(
                    "cost ledger: the broker did not take an event (%s); again in %.1fs",
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
