"""One consumer per client that reads every result and hands each to whoever awaits it.

The listener owns a single group-less consumer, assigned to the results
partitions of each pipeline it watches, positioned at their end when it starts
watching.  A record is decoded once and resolves the future of its request id,
so awaiting a result costs a dictionary lookup, however many are awaited.

A client watches a pipeline before it submits the pipeline's first request, so
no result of a request it submitted can be missed.  Results nobody awaits yet
are kept (the ``keep`` most recent) for a later ``result()`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError, ResultTimeoutError, UnknownPipelineError, WeirError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Result
from weir.topics._aiokafka import retrying, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = ["ResultListener"]

log = logging.getLogger("weir.client")


class ResultListener:
    """Correlates a client's results with the futures of their request ids."""

    poll_ms = 100
    """How long one fetch waits for records; also the longest ``watch()`` waits for the loop."""

    def __init__(self, settings: WeirSettings, *, keep: int, client_id: str) -> None:
        if keep < 1:
            raise WeirError(f"keep_results must be at least 1, got {keep}")
        self._settings = settings
        self._keep = keep
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        """Held by each fetch and by a change of assignment, never both at once."""
        self._watched: dict[str, list[TopicPartition]] = {}
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._arrived: OrderedDict[str, Result] = OrderedDict()
        self._awaiters: Counter[str] = Counter()
        self._failure: BaseException | None = None
        self.received = 0
        """Result records decoded since start (duplicates included)."""

    @property
    def watched(self) -> tuple[str, ...]:
        return tuple(self._watched)

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = KafkaConnection.of(self._settings).consumer(
            client_id=self._client_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # Only reached when retention removed records under our position.
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            await stop_consumer(consumer)
            raise BrokerError(
                f"cannot reach Kafka at {self._settings.bootstrap_servers} to read results: {exc}"
            ) from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"{self._client_id}-results")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(consumer)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(WeirError("the client was stopped before the result arrived"))
                fut.exception()  # retrieved: nobody may be awaiting it any more
        self._waiting.clear()

    async def watch(self, pipeline: str) -> None:
        """Read ``pipeline``'s results from now on (from the current end of its topic)."""
        if pipeline in self._watched:
            return
        consumer = self._consumer
        if consumer is None:
            raise WeirError("WeirClient is not started")
        topic = PipelineTopics(pipeline).results
        async with TopicAdmin(self._settings) as admin:
            count = (await admin.partitions([topic])).get(topic)
        if not count:
            raise UnknownPipelineError(
                f"pipeline {pipeline!r} has no results topic ({topic}): start a worker for it"
                " first, or create its topics with 'weir topics create'"
            )
        new = [TopicPartition(topic, p) for p in range(count)]
        async with self._lock:
            if pipeline in self._watched:
                return
            # assign() replaces the assignment and forgets positions: keep the old ones.
            old = [tp for tps in self._watched.values() for tp in tps]
            positions = {tp: await consumer.position(tp) for tp in old}
            consumer.assign(old + new)
            for tp, offset in positions.items():
                consumer.seek(tp, offset)
            ends = await retrying(lambda: consumer.end_offsets(new), what="reading result ends")
            for tp in new:
                consumer.seek(tp, ends[tp])
            self._watched[pipeline] = new

    async def result(self, request_id: str, *, timeout: float) -> Result:
        """The first result of ``request_id`` seen since it was submitted or awaited."""
        kept = self._arrived.pop(request_id, None)
        if kept is not None:
            return kept
        if self._failure is not None:
            raise WeirError(f"the client's result listener stopped: {self._failure}")
        fut = self.expect(request_id)
        self._awaiters[request_id] += 1
        try:
            async with asyncio.timeout(timeout):
                # Shielded: one awaiter timing out must not cancel the others' future.
                result = await asyncio.shield(fut)
        except TimeoutError:
            raise ResultTimeoutError(
                f"the result of request {request_id} did not arrive within {timeout:g}s;"
                " is a worker for its pipeline running ('weir worker')?"
            ) from None
        finally:
            self._awaiters[request_id] -= 1
            if self._awaiters[request_id] <= 0:
                del self._awaiters[request_id]
                if not fut.done() and self._waiting.get(request_id) is fut:
                    # Given up by every awaiter: forget it, or a web app's timeouts would pile up.
                    del self._waiting[request_id]
        self._arrived.pop(request_id, None)
        return result

    def expect(self, request_id: str) -> asyncio.Future[Result]:
        """The future the result of ``request_id`` will resolve (made on first call)."""
        fut = self._waiting.get(request_id)
        if fut is None:
            fut = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        return fut

    def _deliver(self, result: Result) -> None:
        rid = result.request_id
        fut = self._waiting.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(result)
        self._arrived[rid] = result
        self._arrived.move_to_end(rid)
        while len(self._arrived) > self._keep:
            self._arrived.popitem(last=False)

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        backoff = 0.1
        try:
            while True:
                if not self._watched:
                    await asyncio.sleep(self.poll_ms / 1000)
                    continue
                try:
                    async with self._lock:
                        batch = await consumer.getmany(timeout_ms=self.poll_ms)
                except KafkaError as exc:
                    log.warning("reading results failed (%s); retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                backoff = 0.1
                for records in batch.values():
                    for record in records:
                        if record.value is None:
                            continue
                        try:
                            result = Result.from_wire(record.value)
                        except (ValueError, WeirError) as exc:
                            # Not ours to fix, and must not stop the others' results.
                            log.warning(
                                "skipping an unreadable result at %s[%d]@%d: %s",
                                record.topic,
                                record.partition,
                                record.offset,
                                exc,
                            )
                            continue
                        self.received += 1
                        self._deliver(result)
                # Let awaiters run between batches, so a flood of results cannot starve them.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failure = exc
            log.exception("the result listener stopped")
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(WeirError(f"the client's result listener stopped: {exc}"))
            raise
