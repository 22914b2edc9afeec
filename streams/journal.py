"""The model-call journal: a call a step attempt completed is paid once, even across a crash.

Processing is at least once: a worker killed after a step's model call
answered but before the step's output was produced gets the record
redelivered, and the step runs again.  Without a journal it would call (and
pay for) the model again.  So every completed model call of an attempt is
written to the pipeline's journal topic (``weir.<pipeline>.journal``, keyed
by request id) *before* the call returns to the step, keyed by request, step,
attempt and call index (the n-th call of the attempt).  When the redelivered
attempt makes its n-th call, the journaled response is returned instead, and
its model calls are recorded again on the attempt (the crashed attempt's
never reached a result, so cost is counted once).

A retry is a new attempt, and calls again: it is the failure of the previous
attempt that is retried, and a call that failed is not journaled.  A step
must make its calls in the same order each time for replays to line up;
streamed calls are journaled when complete (a replayed stream publishes its
whole text as one chunk).

Every worker reads the whole journal (as a global table) from the start, so
a worker that takes a partition over has the entries its previous owner
wrote.  Entries live ``journal_retention_s`` (topic retention and in
memory) and at most ``journal_max_entries`` are kept per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import TypeAdapter

from weir.core.config import WeirSettings
from weir.schemas.messages import ModelCall
from weir.streams.context import AttemptScope, collect_calls, current_scope, stop_collecting
from weir.topics._aiokafka import stop_consumer
from weir.topics.table import load_table

__all__ = ["CallJournal", "journaled", "journaled_call"]

log = logging.getLogger("weir.journal")

T = TypeVar("T")
P = ParamSpec("P")


class CallJournal:
    """One worker's view of a pipeline's journal: loaded at start, followed after."""

    def __init__(self, settings: WeirSettings, topic: str) -> None:
        self._settings = settings
        self.topic = topic
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._follow: asyncio.Task[None] | None = None
        self.replayed = 0
        """Calls answered from the journal instead of the model."""

    async def start(self) -> None:
        """Read every entry there is (before the worker takes any record)."""
        consumer = await load_table(
            self._settings, self.topic, lambda _key, value: self._take(value)
        )
        self._consumer = consumer
        self._follow = asyncio.create_task(self._follow_loop(), name="weir-journal")
        log.info("model-call journal loaded: %d entries", len(self._entries))

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
            self._follow = None
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self._consumer)
            self._consumer = None

    async def _follow_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("reading the journal failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    self._take(record.value)

    def _take(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            body = json.loads(value)
            key = str(body["key"])
        except (ValueError, KeyError, TypeError):
            return  # not an entry: the call is made again, never answered wrongly
        self._put(key, body)

    def _put(self, key: str, body: dict[str, Any]) -> None:
        now = time.time()
        self._entries[key] = (now, body)
        self._entries.move_to_end(key)
        horizon = now - self._settings.journal_retention_s
        while self._entries and (
            len(self._entries) > self._settings.journal_max_entries
            or next(iter(self._entries.values()))[0] < horizon
        ):
            self._entries.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._entries.get(key)
        return found[1] if found is not None else None

    async def write(self, scope: AttemptScope, key: str, body: dict[str, Any]) -> None:
        """Journal one completed call; returns once the broker has it."""
        body = {**body, "key": key}
        self._put(key, body)
        raw = json.dumps(body).encode()
        await scope.publish(self.topic, scope.context.request_id.encode(), raw, [])


def _key(scope: AttemptScope, index: int) -> str:
    ctx = scope.context
    return f"{ctx.request_id}/{ctx.step}/{ctx.attempt}/{index}"


async def journaled(
    call: Callable[[], Awaitable[T]],
    adapter: TypeAdapter[T],
    *,
    replayed: Callable[[T], None] | None = None,
) -> T:
    """Run one model call of the current attempt through the journal.

    Outside a worker (or with the journal off) it is just ``await call()``.
    ``replayed(response)`` is called when the response comes from the journal
    (a stream republishes its text with it).
    """
    scope = current_scope()
    journal = scope.journal if scope is not None else None
    if scope is None or journal is None:
        return await call()
    index = scope.next_call_index()
    key = _key(scope, index)
    found = journal.get(key)
    if found is not None:
        journal.replayed += 1
        for record in found["calls"]:
            scope.record(ModelCall.from_record(record))
        response = adapter.validate_python(found["response"])
        if replayed is not None:
            replayed(response)
        return response
    # This task's records only: calls made concurrently by the same attempt are their own.
    collected, token = collect_calls()
    try:
        response = await call()
    finally:
        stop_collecting(token)
    try:
        calls = [c.to_record() for c in collected]
        body = {"response": adapter.dump_python(response, mode="json"), "calls": calls}
        await journal.write(scope, key, body)
    except Exception as exc:
        # The answer stands; only a crash before the output would make this call again.
        log.warning("journaling call %s failed: %s", key, exc)
    return response


def journaled_call(
    result: type[T],
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate a model endpoint's call method so each call goes through ``journaled``."""
    adapter = TypeAdapter(result)

    def wrap(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(method)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await journaled(lambda: method(*args, **kwargs), adapter)

        return run

    return wrap
