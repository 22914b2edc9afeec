"""The worker: runs every step of a pipeline as a stream processor on Kafka.

Why aiokafka directly, not faust-streaming agents: the runtime needs many
requests in flight per partition (slow model calls must not block the
requests behind them), offsets committed only up to the first unfinished
message, fan-in tables restored before a partition is processed, and
pause-free back-pressure through a bounded number of in-flight messages.
Faust gives none of these as guarantees (agents with ``concurrency > 1`` may
not write tables, commits stall behind gaps without the ordering we need,
and its rebalance handling has open duplicate/stall bugs), so the whole
consume-process-produce loop is written here on aiokafka's consumer and
producer, with one task per message under one semaphore.

Delivery is at-least-once: an input offset is committed only after everything
it caused (outputs, changelog writes, dead letters) was acknowledged by the
broker.  After a crash, unfinished work is redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.messages import Envelope, Request, Result, now_ms, now_us
from streams.dead_letter import DeadLetterWriter, error_type_of
from streams.executor import StepExecutor, encode_output, split_branch
from streams.join import JoinTable
from streams.offsets import PartitionOffsets
from streams.pipeline import RESULT_COLLECTOR, Pipeline
from topics.admin import TopicAdmin
from topics.names import INGRESS, PipelineTopics, topic_specs
from weir.config import WeirSettings
from weir.errors import BranchError, MessageError, SchemaInvalidError, WeirError

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("weir.worker")

Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]


@dataclass
class WorkerStats:
    """Counters a running worker keeps (read them; do not write)."""

    received: int = 0
    completed: int = 0
    dead_lettered: int = 0
    results: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs ``pipeline`` until stopped.

    >>> worker = Worker(pipeline, settings)          # doctest: +SKIP
    >>> async with worker:                           # doctest: +SKIP
    ...     await worker.wait_stopped()
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: WeirSettings,
        *,
        steps: Iterable[str] | None = None,
    ) -> None:
        self.pipeline = pipeline.validate()
        self.settings = settings
        self.topics = PipelineTopics(pipeline.name)
        self.stats = WorkerStats()
        self._rank = {name: i for i, name in enumerate(pipeline.order)}
        self._only = None if steps is None else set(steps)
        if self._only is not None and (unknown := self._only - set(pipeline.steps)):
            raise WeirError(f"pipeline {pipeline.name!r} has no step(s) {sorted(unknown)}")
        self._threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="weir-step")
        self._executors = {
            name: StepExecutor(
                step,
                pipeline=pipeline.name,
                worker_id=settings.worker_id,
                default_timeout_s=settings.step_timeout_s,
                threads=self._threads,
            )
            for name, step in pipeline.steps.items()
        }
        self._joins: dict[str, JoinTable] = {}
        self._handlers: dict[str, tuple[str, Handler]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters = DeadLetterWriter(
            self._send_headers, pipeline=pipeline.name, worker_id=settings.worker_id
        )
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._inflight: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._assigned: set[TopicPartition] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False
        self._build_handlers()

    # -- wiring --------------------------------------------------------------------

    def _build_handlers(self) -> None:
        p, t = self.pipeline, self.topics

        def runs(step: str) -> bool:
            return self._only is None or step in self._only

        if self._only is None or any(runs(s) for s in p.root_steps):
            self._handlers[t.requests] = (INGRESS, self._handle_request)
        for name in p.order:
            if not runs(name):
                continue
            step = p.steps[name]
            self._handlers[t.step(name)] = (name, self._step_handler(name))
            if step.is_join:
                self._joins[name] = JoinTable(
                    name, step.depends_on, t.join_changelog(name), self._send_to_partition
                )
        if p.needs_result_collector and (self._only is None or RESULT_COLLECTOR in self._only):
            self._handlers[t.step(RESULT_COLLECTOR)] = (RESULT_COLLECTOR, self._handle_collector)
            self._joins[RESULT_COLLECTOR] = JoinTable(
                RESULT_COLLECTOR,
                p.final_steps,
                t.join_changelog(RESULT_COLLECTOR),
                self._send_to_partition,
            )

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create missing topics, join the consumer group and start processing."""
        if self._started:
            return
        self._started = True
        async with TopicAdmin(self.settings) as admin:
            await admin.ensure(topic_specs(self.pipeline, self.settings))
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=f"weir-{self.settings.worker_id}",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=30000,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.topics.consumer_group,
            client_id=f"weir-{self.settings.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.max_poll_records,
            # A slow model call must not cost the group its member: liveness is the
            # heartbeat, and the fetch loop keeps polling while tasks run.
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        self._consumer.subscribe(list(self._handlers), listener=_Rebalance(self))
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name="weir-fetch"),
            asyncio.create_task(self._commit_loop(), name="weir-commit"),
        ]
        log.info(
            "worker %s started pipeline %s on %s (%d topics)",
            self.settings.worker_id,
            self.pipeline.name,
            self.settings.bootstrap_servers,
            len(self._handlers),
        )

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run(self) -> None:
        """Start, process until ``request_stop()``, then stop gracefully."""
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler)."""
        self._stopping.set()

    async def stop(self) -> None:
        """Stop fetching, let in-flight work finish (bounded), commit it, leave the group.

        Work still unfinished after ``shutdown_timeout_s`` is cancelled and not
        committed, so the group redelivers it to another worker.
        """
        if not self._started or self._stopped.is_set():
            return
        self._stopping.set()
        fetch, commit = self._tasks
        await _cancel(fetch)
        pending = [t for tasks in self._inflight.values() for t in tasks]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await _cancel(commit)
        with contextlib.suppress(KafkaError):
            await self._commit()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("worker %s stopped", self.settings.worker_id)

    # -- the loops -----------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batches = await consumer.getmany(
                timeout_ms=200, max_records=self.settings.max_poll_records
            )
            for tp, records in batches.items():
                handler = self._handlers[tp.topic][1]
                for record in records:
                    # Back-pressure: wait for a free slot before taking more work.
                    await self._slots.acquire()
                    if tp not in self._assigned:
                        self._slots.release()
                        break  # revoked while we waited; its new owner will read it
                    self._offsets[tp].track(record.offset)
                    task = asyncio.create_task(self._process(tp, record, handler))
                    self._inflight[tp].add(task)

    async def _process(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], handler: Handler
    ) -> None:
        self.stats.received += 1
        try:
            while True:
                try:
                    await handler(record)
                    break
                except KafkaError as exc:
                    # The broker did not take our output: keep the input unfinished and try
                    # again, so nothing is acknowledged that was not written.
                    if self._stopping.is_set():
                        return
                    log.warning("kafka error while handling %s@%d: %s", tp, record.offset, exc)
                    await asyncio.sleep(1.0)
            self.stats.completed += 1
            if (offsets := self._offsets.get(tp)) is not None:
                offsets.finish(record.offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in weir itself: log it loudly, do not finish the offset.
            log.exception("unexpected error handling %s@%d", tp, record.offset)
        finally:
            self._slots.release()
            current = asyncio.current_task()
            if current is not None and tp in self._inflight:
                self._inflight[tp].discard(current)  # type: ignore[arg-type]

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_s)
            try:
                await self._commit()
            except KafkaError as exc:
                log.warning("offset commit failed (will retry): %s", exc)

    async def _commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {}
        for tp in list(partitions if partitions is not None else self._offsets):
            tracker = self._offsets.get(tp)
            position = tracker.committable() if tracker else None
            if position is not None and position > self._committed.get(tp, -1):
                offsets[tp] = position
        if offsets:
            await consumer.commit(offsets)
            self._committed.update(offsets)

    # -- rebalance -------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        tasks = [t for tp in revoked for t in self._inflight.get(tp, ())]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_s)
        with contextlib.suppress(KafkaError):
            await self._commit(revoked)
        for tp in revoked:
            self._assigned.discard(tp)
            self._offsets.pop(tp, None)
            self._committed.pop(tp, None)
            self._inflight.pop(tp, None)
            if join := self._join_for(tp.topic):
                join.drop([tp.partition])

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._offsets[tp] = PartitionOffsets()
            self._inflight[tp] = set()
        by_join: dict[str, list[int]] = {}
        for tp in assigned:
            if self._join_for(tp.topic) is not None:
                by_join.setdefault(tp.topic, []).append(tp.partition)
        for topic, partitions in by_join.items():
            join = self._join_for(topic)
            assert join is not None
            waiting = await join.restore(self.settings.bootstrap_servers, partitions)
            if waiting:
                log.info("restored %d waiting joins of step %s", waiting, join.step)
        self._assigned |= assigned
        log.info("assigned %d partitions (%d in total)", len(assigned), len(self._assigned))

    def _merge_paths(self, envelopes: Iterable[Envelope]) -> list[str]:
        """The steps behind a join's inputs, in the pipeline's order (arrival order varies)."""
        steps = {step for env in envelopes for step in env.path}
        return sorted(steps, key=self._rank.__getitem__)

    def _join_for(self, topic: str) -> JoinTable | None:
        entry = self._handlers.get(topic)
        return self._joins.get(entry[0]) if entry else None

    # -- sending -------------------------------------------------------------------

    @property
    def _out(self) -> AIOKafkaProducer:
        assert self._producer is not None
        return self._producer

    async def _send_headers(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        await (await self._out.send(topic, value=value, key=key, headers=headers))

    async def _send_to_partition(
        self, topic: str, partition: int, key: bytes, value: bytes | None
    ) -> None:
        await (await self._out.send(topic, value=value, key=key, partition=partition))

    async def _send_all(self, messages: list[tuple[str, bytes, bytes]]) -> None:
        """Send ``(topic, key, value)`` messages together and wait for all acks."""
        futures = [await self._out.send(t, value=v, key=k) for t, k, v in messages]
        await asyncio.gather(*futures)

    # -- handlers ------------------------------------------------------------------

    async def _handle_request(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Validate a request and hand it to the root steps."""
        try:
            request = Request.from_wire(
                record.value,
                pipeline=self.pipeline.name,
                key=record.key,
                max_bytes=self.settings.max_payload_bytes,
            )
            self._check_root_fields(request)
        except MessageError as exc:
            request_id = _guess_request_id(record)
            await self._dead_letter(record, INGRESS, exc, request_id=request_id)
            if request_id is not None:
                await self._send_failure(request_id, INGRESS, exc, submitted_at=None, path=[])
            return
        payload = json.dumps(request.payload, separators=(",", ":"))
        created = now_us()
        key = request.request_id.encode()
        out = []
        for root in self.pipeline.root_steps:
            env = Envelope(
                request_id=request.request_id,
                pipeline=self.pipeline.name,
                step=root,
                source="",
                kind="VALUE",
                submitted_at=request.submitted_at,
                created_at=created,
                request=payload,
                payload=None,
                traceparent=request.traceparent,
                options=request.options,
            )
            out.append((self.topics.step(root), key, env.encode()))
        await self._send_all(out)

    def _check_root_fields(self, request: Request) -> None:
        if self.pipeline.input_model is not None:
            try:
                self.pipeline.input_model.model_validate(request.payload)
            except Exception as exc:
                raise SchemaInvalidError(
                    f"request payload does not match {self.pipeline.input_model.__name__}: {exc}"
                ) from exc
        # Reject at the door what a root step could not take, so the client hears about it
        # from the requests topic rather than from a step.
        missing = []
        for root in self.pipeline.root_steps:
            for b in self.pipeline.steps[root].bindings:
                if b.source != "field":
                    continue
                if b.name not in request.payload:
                    if b.required:
                        missing.append(f"{b.name} (step {root})")
                elif b.adapter is not None:
                    try:
                        b.adapter.validate_python(request.payload[b.name])
                    except ValidationError as exc:
                        raise SchemaInvalidError(
                            f"request field {b.name!r} (step {root}): {exc.errors()[0]['msg']}"
                        ) from exc
        if missing:
            raise SchemaInvalidError(f"request payload is missing field(s): {', '.join(missing)}")

    def _step_handler(self, name: str) -> Handler:
        async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
            await self._handle_step(name, record)

        return handle

    async def _handle_step(self, name: str, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            env = Envelope.decode(record.value)
        except MessageError as exc:
            await self._dead_letter(record, name, exc, request_id=_guess_request_id(record))
            return
        inputs: dict[str, Envelope] = {env.source: env}
        join = self._joins.get(name)
        if join is not None:
            complete = join.offer(record.partition, env)
            if complete is None:
                await join.persist(record.partition, env.request_id)
                return
            inputs = complete
        await self._run_step(name, record, env, inputs)
        if join is not None:
            await join.clear(record.partition, env.request_id)

    async def _run_step(
        self,
        name: str,
        record: ConsumerRecord[bytes, bytes],
        env: Envelope,
        inputs: dict[str, Envelope],
    ) -> None:
        path = self._merge_paths(inputs.values())
        dependents = self.pipeline.dependents(name)
        if any(e.kind == "SKIP" for e in inputs.values()):
            await self._emit(name, env, path, dependents, output=None, targets=())
            return
        started = time.perf_counter()
        try:
            value = await self._executors[name].run(inputs, env)
            output, targets = split_branch(value)
            if targets is not None and (bad := [t for t in targets if t not in dependents]):
                raise BranchError(
                    f"step {name!r} branched to {bad}, which do not depend on it"
                    f" (its dependents: {list(dependents)})"
                )
            encoded = encode_output(output, step=name)
        except WeirError as exc:
            await self._dead_letter(record, name, exc, request_id=env.request_id)
            await self._send_failure(env.request_id, name, exc, env.submitted_at, path)
            return
        log.debug("step %s ran in %.1f ms", name, (time.perf_counter() - started) * 1e3)
        await self._emit(name, env, [*path, name], dependents, output=encoded, targets=targets)

    async def _emit(
        self,
        name: str,
        env: Envelope,
        path: list[str],
        dependents: tuple[str, ...],
        *,
        output: str | None,
        targets: tuple[str, ...] | None,
    ) -> None:
        """Send a step's output (or its skip) to its dependents, or towards the result."""
        key = env.request_id.encode()
        created = now_us()

        def envelope(to: str, kind: str, payload: str | None) -> bytes:
            return Envelope(
                request_id=env.request_id,
                pipeline=env.pipeline,
                step=to,
                source=name,
                kind=kind,  # type: ignore[arg-type]
                submitted_at=env.submitted_at,
                created_at=created,
                request=env.request,
                payload=payload,
                attempt=1,
                traceparent=env.traceparent,
                options=env.options,
                path=path,
            ).encode()

        skipped = output is None and targets == ()
        if not dependents:
            if self.pipeline.needs_result_collector:
                kind = "SKIP" if skipped else "VALUE"
                to = RESULT_COLLECTOR
                await self._send_all([(self.topics.step(to), key, envelope(to, kind, output))])
            elif skipped:
                await self._send_result(env, path, output=None)
            else:
                await self._send_result(env, path, output=output)
            return
        out = []
        for dep in dependents:
            take = not skipped and (targets is None or dep in targets)
            out.append(
                (
                    self.topics.step(dep),
                    key,
                    envelope(dep, "VALUE" if take else "SKIP", output if take else None),
                )
            )
        await self._send_all(out)

    async def _handle_collector(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Join the final steps' outputs into one result."""
        try:
            env = Envelope.decode(record.value)
        except MessageError as exc:
            await self._dead_letter(record, RESULT_COLLECTOR, exc)
            return
        join = self._joins[RESULT_COLLECTOR]
        complete = join.offer(record.partition, env)
        if complete is None:
            await join.persist(record.partition, env.request_id)
            return
        produced = {s: e for s, e in complete.items() if e.kind == "VALUE"}
        if len(produced) == 1:
            output: str | None = next(iter(produced.values())).payload
        elif produced:
            output = json.dumps({s: json.loads(e.payload or "null") for s, e in produced.items()})
        else:
            output = None
        await self._send_result(env, self._merge_paths(complete.values()), output=output)
        await join.clear(record.partition, env.request_id)

    async def _send_result(self, env: Envelope, path: list[str], *, output: str | None) -> None:
        completed = now_ms()
        result = Result(
            request_id=env.request_id,
            pipeline=env.pipeline,
            status="SUCCESS",
            output=output,
            path=path,
            submitted_at=env.submitted_at,
            completed_at=completed,
            latency_ms=now_us() / 1000 - env.submitted_at,
        )
        await self._send_all(
            [
                (
                    self.topics.results,
                    env.request_id.encode(),
                    result.to_wire(self.settings.results_format),
                )
            ]
        )
        self.stats.results += 1

    async def _send_failure(
        self,
        request_id: str,
        step: str,
        error: BaseException,
        submitted_at: int | None,
        path: list[str],
    ) -> None:
        completed = now_ms()
        submitted = submitted_at if submitted_at is not None else completed
        result = Result(
            request_id=request_id,
            pipeline=self.pipeline.name,
            status="FAILURE",
            error_type=error_type_of(error),
            error_message=str(error),
            failed_step=step,
            path=path,
            submitted_at=submitted,
            completed_at=completed,
            latency_ms=float(completed - submitted),
        )
        await self._send_all(
            [
                (
                    self.topics.results,
                    request_id.encode(),
                    result.to_wire(self.settings.results_format),
                )
            ]
        )

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        step: str,
        error: BaseException,
        *,
        request_id: str | None = None,
    ) -> None:
        self.stats.dead_lettered += 1
        kind = error_type_of(error)
        self.stats.failures_by_type[kind] = self.stats.failures_by_type.get(kind, 0) + 1
        log.warning("dead-lettering %s@%d at %s: %s", record.topic, record.offset, step, error)
        await self._dead_letters.write(
            self.topics.dead_letter(step),
            step=step,
            error=error,
            key=record.key,
            value=record.value,
            headers=list(record.headers or ()),
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            request_id=request_id,
        )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(set(assigned))




def _guess_request_id(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The request id of a bad message, when its key or body still tells it."""
    if record.value and record.value.lstrip()[:1] == b"{":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body: Any = json.loads(record.value)
            if isinstance(body, dict) and isinstance(body.get("request_id"), str):
                return str(body["request_id"])
    if record.key:
        with contextlib.suppress(UnicodeDecodeError):
            return record.key.decode()
    return None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
