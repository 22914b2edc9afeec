"""The worker: runs every stage of a pipeline as a stream processor on Kafka.

Stages: the ingress (requests topic), one ``StepRunner`` per step (its input
topic and delayed retry topics), and the answer stage (the only writer of the
results topic).  One consumer in the pipeline's group reads them all.  A stage whose
work never waits (``inline=True`` steps, and the ingress running them) takes each
fetched batch of a partition as one task: its records run one after the other and
everything they write goes out in one send, trace events packed per trace partition.
Other records become a task each (a slow model call must not hold the records behind
it).  At most ``max_in_flight`` tasks at once.

Why aiokafka directly, not faust-streaming agents: the runtime needs many
requests in flight per partition (slow model calls must not block the
requests behind them), offsets committed only up to the first unfinished
message, fan-in tables restored before a partition is processed, delayed
retry topics that pause one partition until its head is due, and one
transactional producer per answers partition.  Faust gives none of these as
guarantees (agents with ``concurrency > 1`` may not write tables, commits
stall behind gaps, ``exactly_once`` has open duplicate bugs, and its
rebalance handling has open stall bugs), so the consume-process-produce loop
is written here on aiokafka's consumer and producers.

Delivery: processing is at-least-once (an input offset is committed only after
everything it caused was acknowledged by the broker; after a crash unfinished
work is redelivered), and answers are exactly-once (see ``weir.streams.answer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import WeirError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import REQUEST_SCHEMA, RESULT_SCHEMA, now_ms, now_us
from weir.schemas.registry import SchemaRegistry
from weir.streams._gc import tune_gc
from weir.streams._runtime import Record, Runtime, WorkerStats, guess_request_id
from weir.streams._trace_batch import pack_traces
from weir.streams.answer import AnswerStage
from weir.streams.dead_letter import DeadLetters, error_type_of
from weir.streams.executor import StepExecutor
from weir.streams.ingress import Ingress, RootHandler
from weir.streams.join import eviction_messages
from weir.streams.journal import CallJournal
from weir.streams.offsets import PartitionOffsets
from weir.streams.outbox import Abandoned, Outbox, Outcome, OutMessage, Owned
from weir.streams.pipeline import Pipeline
from weir.streams.redaction import Redactor
from weir.streams.review_desk import ReviewDesk
from weir.streams.runner import NOT_BEFORE_HEADER, StepRunner
from weir.streams.services import WorkerServices
from weir.streams.threads import StepThreads
from weir.streams.tracing import Tracing
from weir.topics._aiokafka import KeyPartitioner, place
from weir.topics.admin import TopicAdmin
from weir.topics.names import ANSWER, INGRESS, PipelineTopics, topic_specs

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("weir.worker")

Handler = Callable[[Record, Owned], Awaitable[None]]
Preparer = Callable[[Record], Awaitable[Outcome]]

_MAINTENANCE_S = 30.0
_ASSIGN_ATTEMPTS = 4


@dataclass(frozen=True)
class _Route:
    stage: str
    handle: Handler
    delayed: bool = False
    """A retry topic: records wait until their ``weir.not_before`` time."""
    prepare: Preparer | None = None
    """Set when the stage never waits on its own (inline steps): a fetched batch of its
    records runs in one task and is sent once, not as a task and a send per record."""


class Worker:
    """Runs ``pipeline`` until stopped.

    ``steps`` limits the worker to some steps (the ingress runs when a root step
    does, the answer stage when a final step does; name ``requests`` or
    ``_answer`` to select them alone).  ``services`` (the model layer's, for
    steps that call models: ``weir.processors.ModelServices``) start and stop
    with the worker.

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
        tracing: Tracing | None = None,
        redactor: Redactor | None = None,
        services: WorkerServices | None = None,
    ) -> None:
        self.pipeline = pipeline.validate()
        self.settings = settings
        self.topics = PipelineTopics(pipeline.name)
        self.stats = WorkerStats()
        only = None if steps is None else set(steps)
        known = {*pipeline.steps, INGRESS, ANSWER}
        if only is not None and (unknown := only - known):
            raise WeirError(
                f"pipeline {pipeline.name!r} has no step(s) {sorted(unknown)}"
                f" (its steps: {list(pipeline.order)})"
            )
        self.threads = StepThreads(
            ThreadPoolExecutor(max_workers=settings.step_threads, thread_name_prefix="weir-step"),
            stuck_max=settings.step_stuck_threads_max,
        )
        """Runs synchronous steps; ``threads.stuck()`` lists steps stuck past their timeout."""
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = KeyPartitioner()
        self._consumer: AIOKafkaConsumer | None = None
        self.tracing = tracing or Tracing(settings)
        redactor = redactor or Redactor.from_settings(settings)
        self._runtime = Runtime(
            pipeline=self.pipeline,
            settings=settings,
            topics=self.topics,
            outbox=Outbox(),
            dead_letters=DeadLetters(
                pipeline=pipeline.name, worker_id=settings.worker_id, redactor=redactor
            ),
            tracing=self.tracing,
            redactor=redactor,
            stats=self.stats,
            lag=self.lag,
            services=services,
        )
        self.services = services
        """Started with the worker and stopped with it; steps reach it through their scope."""
        self._routes: dict[str, _Route] = {}
        self._roots_here: Collection[str] = ()
        self.runners: dict[str, StepRunner] = {}
        self.answers: AnswerStage | None = None
        self._build(only)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._inflight: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._assigned: set[TopicPartition] = set()
        self._revoking: set[TopicPartition] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.review_desk = ReviewDesk(self.settings, self.pipeline.name)
        if self.settings.journal_calls:
            self._runtime.journal = CallJournal(self.settings, self.topics.journal)
        """Delivers answered reviews and expires overdue ones (``weir.streams.review``)."""
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False

    # -- wiring --------------------------------------------------------------------

    def _build(self, only: set[str] | None) -> None:
        p, rt = self.pipeline, self._runtime
        steps = [s for s in p.order if only is None or s in only]
        # Root steps run in the ingress, on the request's record (filled in below).
        roots: dict[str, RootHandler] = {}
        ingress = None
        if only is None or INGRESS in only or any(s in p.root_steps for s in steps):
            ingress = Ingress(rt, roots)
            self._roots_here = roots.keys()
        for name in steps:
            executor = StepExecutor(
                p.steps[name],
                pipeline=p.name,
                worker_id=self.settings.worker_id,
                default_timeout_s=p.timeout_s or self.settings.step_timeout_s,
                threads=self.threads,
            )
            runner = StepRunner(rt, name, executor)
            self.runners[name] = runner
            if name in p.root_steps:
                roots[name] = runner
            first, *retries = runner.topics
            prepare = runner.prepare if runner.batchable else None
            self._routes[first] = _Route(name, runner.handle, prepare=prepare)
            for topic in retries:
                self._routes[topic] = _Route(name, runner.handle, delayed=True, prepare=prepare)
        if ingress is not None:
            prepare = ingress.prepare if ingress.batchable else None
            self._routes[self.topics.requests] = _Route(INGRESS, ingress.handle, prepare=prepare)
        if only is None or ANSWER in only or any(s in p.final_steps for s in steps):
            self.answers = AnswerStage(
                rt, owns=lambda p: TopicPartition(self.topics.answers, p) in self._assigned
            )
            self._routes[self.answers.topic] = _Route(ANSWER, self.answers.handle)

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
        if self.services is not None:
            await self.services.start()
        async with TopicAdmin(self.settings) as admin:
            await admin.ensure(topic_specs(self.pipeline, self.settings))
        if self.settings.schema_registry_url is not None:
            await self._register_schemas()
        self._producer = KafkaConnection.of(self.settings).producer(
            client_id=f"weir-{self.settings.worker_id}",
            acks="all",
            enable_idempotence=True,
            linger_ms=self.settings.producer_linger_ms,
            max_batch_size=self.settings.producer_batch_bytes,
            request_timeout_ms=30000,
            partitioner=self._partitioner,
        )
        await self._producer.start()
        self._runtime.outbox.attach(self._producer)
        if self._runtime.journal is not None:
            # Loaded before any record is taken: a redelivered attempt must find its calls.
            await self._runtime.journal.start()
        if self.answers is not None:
            # A final step's output is answered here when this worker owns its answers
            # partition: no answers-topic hop that only moves data.
            self._runtime.outbox.shortcut(self.topics.answers, self._answer_here)
        self._consumer = KafkaConnection.of(self.settings).consumer(
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
            # A revocation waits up to shutdown_timeout_s for in-flight work; the group must
            # wait longer than that, or it expels this member while it still writes answers.
            rebalance_timeout_ms=int((self.settings.shutdown_timeout_s + 30) * 1000),
            isolation_level="read_committed",
        )
        await self._consumer.start()
        self._consumer.subscribe(list(self._routes), listener=_Rebalance(self))
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name="weir-fetch"),
            asyncio.create_task(self._commit_loop(), name="weir-commit"),
            asyncio.create_task(self._maintenance_loop(), name="weir-maintenance"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._loop_ended)
        await self.review_desk.start()
        tune_gc(self.settings.gc_gen0_threshold)
        log.info(
            "worker %s started pipeline %s on %s (%d topics)",
            self.settings.worker_id,
            self.pipeline.name,
            self.settings.bootstrap_servers,
            len(self._routes),
        )

    async def _answer_here(self, message: OutMessage) -> bool:
        if self.answers is None or message.key is None:
            return False
        p = message.partition
        if p is None:
            p = self._partition_of(message.topic, message.key)
        if p is None:
            return False
        return await self.answers.take(message, p)

    def _partition_of(self, topic: str, key: bytes) -> int | None:
        """The partition the producer sends ``key`` to on ``topic`` (``None``: not known yet)."""
        partitions = self._partitions(topic)
        return None if partitions is None else int(self._partitioner(key, partitions, partitions))

    def _partitions(self, topic: str) -> list[int] | None:
        producer = self._producer
        if producer is None:
            return None
        # The consumer knows the partitions of what it reads (the producer only learns of a
        # topic once it has sent to it).
        partitions = None
        if self._consumer is not None:
            partitions = self._consumer.partitions_for_topic(topic)
        if not partitions:
            partitions = producer.client.cluster.partitions_for_topic(topic)
        return sorted(partitions) if partitions else None

    def _pack_traces(self, messages: list[OutMessage]) -> list[OutMessage]:
        topic = self.settings.trace_topic
        partitions = self._partitions(topic)
        if partitions is None:
            return messages
        partitioner = self._partitioner
        return pack_traces(messages, topic, lambda key: partitioner(key, partitions, partitions))

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A loop that ends on its own is a bug: say so and stop, rather than idle as healthy."""
        if task.cancelled() or self._stopping.is_set():
            return
        error = task.exception()
        log.critical(
            "worker loop %s ended (%r); stopping the worker", task.get_name(), error, exc_info=error
        )
        self.request_stop()

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

    async def _register_schemas(self) -> None:
        """Register the request and result schemas under their topics' subjects."""
        registry = SchemaRegistry.of(self.settings)
        try:
            await registry.register(f"{self.topics.requests}-value", REQUEST_SCHEMA)
            result_id = await registry.register(f"{self.topics.results}-value", RESULT_SCHEMA)
        except BaseException:
            await registry.aclose()
            raise
        self._runtime.registry = registry
        self._runtime.result_schema_id = result_id

    async def stop(self) -> None:
        """Stop fetching, let in-flight work finish (bounded), commit it, leave the group.

        Work still unfinished after ``shutdown_timeout_s`` is cancelled and not
        committed, so the group redelivers it to another worker.
        """
        if not self._started or self._stopped.is_set():
            return
        self._stopping.set()
        fetch, commit, maintenance = self._tasks
        await _cancel(fetch)
        await _cancel(maintenance)
        await self._drain([t for tasks in self._inflight.values() for t in tasks])
        await _cancel(commit)
        with contextlib.suppress(KafkaError):
            await self._commit()
        await self.review_desk.stop()
        if self._runtime.journal is not None:
            await self._runtime.journal.stop()
        for runner in self.runners.values():
            if runner.cache is not None:
                await runner.cache.stop()
            if runner.conversations is not None:
                await runner.conversations.stop()
        if self.answers is not None:
            await self.answers.stop()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self.threads.shutdown()
        self.tracing.shutdown()
        if self.services is not None:
            await self.services.stop()
        if self._runtime.registry is not None:
            await self._runtime.registry.aclose()
        self._stopped.set()
        s = self.stats
        log.info(
            "worker %s stopped: %d messages, %d attempts, %d retried, %d dead-lettered,"
            " %d duplicates dropped, %d answered",
            self.settings.worker_id,
            s.received,
            s.attempts,
            s.retried,
            s.dead_lettered,
            s.duplicates,
            s.results,
        )

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for ``tasks`` up to the shutdown timeout; cancel the rest."""
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("handing back %d unfinished message(s)", len(late))
            await asyncio.wait(late)

    # -- observation ---------------------------------------------------------------

    def lag(self, step: str) -> int:
        """Messages not yet finished on this worker's partitions of ``step``'s input topic.

        A root step run in the ingress counts the requests topic too (its input now).
        """
        consumer = self._consumer
        if consumer is None:
            return 0
        topics = {self.topics.step(step)}
        if step in self._roots_here:
            topics.add(self.topics.requests)
        total = 0
        for tp in list(self._assigned):
            if tp.topic not in topics:
                continue
            end = consumer.highwater(tp)
            tracker = self._offsets.get(tp)
            done = tracker.committable() if tracker is not None else None
            if end is not None and done is not None:
                total += max(0, end - done)
            elif end is not None:
                total += end - (self._committed.get(tp) or 0)
        return total

    def stuck_records(self) -> list[dict[str, object]]:
        """Records that have held their partition's commits for ``stuck_record_after_s``."""
        after = self.settings.stuck_record_after_s
        out: list[dict[str, object]] = []
        for tp, tracker in list(self._offsets.items()):
            if tp in self._assigned and (head := tracker.stuck(after)) is not None:
                offset, seconds = head
                out.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "offset": offset,
                        "seconds": round(seconds, 1),
                    }
                )
        return out

    @property
    def assigned(self) -> set[TopicPartition]:
        return set(self._assigned)

    @property
    def stopping(self) -> bool:
        """Asked to stop, or stopped (a loop that died stops the worker too)."""
        return self._stopping.is_set()

    # -- the loops -----------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batches = await consumer.getmany(
                timeout_ms=200, max_records=self.settings.max_poll_records
            )
            for tp, records in batches.items():
                route = self._routes[tp.topic]
                if route.prepare is not None:
                    await self._take_batch(tp, records, route)
                    continue
                for record in records:
                    if not self._takes(tp):
                        self._unfetch(tp, record.offset)
                        break
                    if route.delayed and (due := _not_before(record)) > now_ms():
                        self._defer(tp, record.offset, due)
                        break
                    # Back-pressure: wait for a free slot before taking more work.
                    await self._slots.acquire()
                    if not self._takes(tp):
                        self._slots.release()
                        self._unfetch(tp, record.offset)
                        break
                    tracker = self._offsets[tp]
                    tracker.track(record.offset)
                    task = asyncio.create_task(
                        self._process(tp, record, route.handle, route.stage, tracker)
                    )
                    self._inflight[tp].add(task)

    async def _take_batch(self, tp: TopicPartition, records: list[Record], route: _Route) -> None:
        """Start one task for the records of ``tp`` that may start now (see ``_Route``)."""
        take = []
        for record in records:
            if not self._takes(tp):
                self._unfetch(tp, record.offset)
                break
            if route.delayed and (due := _not_before(record)) > now_ms():
                self._defer(tp, record.offset, due)
                break
            take.append(record)
        if not take:
            return
        # Back-pressure: a batch holds a slot per record (at most all of them), so no more
        # than max_in_flight records are held, batched or not.
        slots = min(len(take), self.settings.max_in_flight)
        for _ in range(slots):
            await self._slots.acquire()
        if not self._takes(tp):
            for _ in range(slots):
                self._slots.release()
            self._unfetch(tp, take[0].offset)
            return
        tracker = self._offsets[tp]
        for record in take:
            tracker.track(record.offset)
        task = asyncio.create_task(self._process_batch(tp, take, route, tracker, slots))
        self._inflight[tp].add(task)

    def _takes(self, tp: TopicPartition) -> bool:
        """Whether new records of ``tp`` may start (assigned, and not being revoked)."""
        return tp in self._assigned and tp not in self._revoking

    def _unfetch(self, tp: TopicPartition, offset: int) -> None:
        """Give back records of a partition that is not (or no longer) ours to process.

        Still assigned (its tables are being restored): rewind, so nothing is
        skipped.  Revoked: drop them; the new owner reads from the committed offset.
        """
        consumer = self._consumer
        assert consumer is not None
        if tp in consumer.assignment() and tp not in self._revoking:
            consumer.seek(tp, offset)

    def _defer(self, tp: TopicPartition, offset: int, due: int) -> None:
        """Hold a retry partition until its head record is due; nothing behind it is lost."""
        consumer = self._consumer
        assert consumer is not None
        consumer.pause(tp)
        consumer.seek(tp, offset)
        delay = max(0.0, (due - now_ms()) / 1000)
        asyncio.get_running_loop().call_later(delay, self._resume, tp)

    def _resume(self, tp: TopicPartition) -> None:
        if self._consumer is not None and tp in self._assigned and not self._stopping.is_set():
            self._consumer.resume(tp)

    async def _park(self, stage: str, record: Record, error: Exception, owned: Owned) -> None:
        """Dead-letter a record whose handling raised unexpectedly.

        Its request is answered with a FAILURE when its id can be read, so the
        client is not left waiting (not from the answer stage itself, which
        would only be handed the failure again).  A record that cannot go to
        the dead-letter topic as it is (too large, refused) goes in its bounded
        form; one that cannot go at all is logged with its coordinates and let
        go, so that no record holds its partition back for good.
        """
        error_type = error_type_of(error)
        self.stats.dead_lettered += 1
        self.stats.failed(error_type)
        letters = self._runtime.dead_letters
        topic = self.topics.dead_letter(stage)
        request_id = guess_request_id(record)
        failure = []
        if stage != ANSWER and request_id is not None:
            failure.append(
                self._runtime.failure_envelope(
                    request_id=request_id,
                    step=stage,
                    error_type=error_type,
                    error_message=f"weir failed handling the message: {type(error).__name__}"
                    if error_type == "internal_error"
                    else str(error),
                    base=None,
                    calls=[],
                    traceparent=None,
                    created_at=now_us(),
                )
            )
        # A letter the topic refuses as too large goes in its bounded form (the outbox
        # sends its fallback); what cannot go at all is let go after the patience.
        letter = letters.message(topic, record, step=stage, error=error, request_id=request_id)
        patience = self.settings.dead_letter_patience_s
        try:
            async with asyncio.timeout(patience):
                await self._runtime.outbox.send_all([letter, *failure], owned=owned)
            return
        except (asyncio.CancelledError, Abandoned):
            raise
        except TimeoutError:
            log.error(
                "could not dead-letter %s@%d within %gs; letting it go (it stays on its"
                " topic until retention removes it)",
                record.topic,
                record.offset,
                patience,
            )
        except Exception as exc:
            log.error(
                "dead letter of %s@%d refused (%s); letting it go", record.topic, record.offset, exc
            )
        self.stats.dead_letter_failures += 1

    async def _process(
        self,
        tp: TopicPartition,
        record: Record,
        handle: Handler,
        stage: str,
        tracker: PartitionOffsets,
    ) -> None:
        self.stats.received += 1

        def owned() -> bool:
            return tp in self._assigned

        try:
            try:
                await handle(record, owned)
            except (asyncio.CancelledError, Abandoned):
                raise
            except Exception as exc:
                # A bug in weir itself, or a dead letter its handler could not write.  Left
                # unfinished, this record would hold back the partition's commits for good
                # and fail again after every restart; park it.
                await self._failed(tp, stage, record, exc, owned)
            self.stats.completed += 1
            # The tracker this record was taken under: after a re-assignment the partition
            # has a new one, which this record must not advance.
            tracker.finish(record.offset)
        except (asyncio.CancelledError, Abandoned):
            pass  # not finished: the offset stays uncommitted and is redelivered
        except Exception:
            # Redelivering would fail the same way after every restart: let it go, loudly.
            log.exception("could not dead-letter %s@%d; letting it go", tp, record.offset)
            self.stats.dead_letter_failures += 1
            tracker.finish(record.offset)
        finally:
            self._slots.release()
            current = asyncio.current_task()
            if current is not None and tp in self._inflight:
                self._inflight[tp].discard(current)

    async def _process_batch(
        self,
        tp: TopicPartition,
        records: list[Record],
        route: _Route,
        tracker: PartitionOffsets,
        slots: int,
    ) -> None:
        """Run a batch of records, then send all they must write at once.

        The same guarantees as ``_process`` per record: a record whose handling raises is
        parked alone; when the batch's send is refused (a message too large), every
        record's outcome is delivered on its own, so only the offending request fails.
        """
        prepare = route.prepare
        assert prepare is not None
        self.stats.received += len(records)
        outbox = self._runtime.outbox

        def owned() -> bool:
            return tp in self._assigned

        try:
            outcomes: list[tuple[Record, Outcome]] = []
            for record in records:
                try:
                    outcomes.append((record, await prepare(record)))
                except (asyncio.CancelledError, Abandoned):
                    raise
                except Exception as exc:
                    await self._failed(tp, route.stage, record, exc, owned)
            messages = [m for _, outcome in outcomes for m in outcome.messages()]
            try:
                await outbox.send_all(self._pack_traces(messages), owned=owned)
            except (asyncio.CancelledError, Abandoned):
                raise
            except Exception:
                for record, outcome in outcomes:
                    try:
                        await outcome.deliver(outbox, owned)
                    except (asyncio.CancelledError, Abandoned):
                        raise
                    except Exception as exc:
                        await self._failed(tp, route.stage, record, exc, owned)
            self.stats.completed += len(records)
            for record in records:
                tracker.finish(record.offset)
        except (asyncio.CancelledError, Abandoned):
            pass  # not finished: the offsets stay uncommitted and are redelivered
        except Exception:
            log.exception("could not dead-letter a record of %s; letting the batch go", tp)
            self.stats.dead_letter_failures += 1
            for record in records:
                tracker.finish(record.offset)
        finally:
            for _ in range(slots):
                self._slots.release()
            current = asyncio.current_task()
            if current is not None and tp in self._inflight:
                self._inflight[tp].discard(current)

    async def _failed(
        self, tp: TopicPartition, stage: str, record: Record, exc: Exception, owned: Owned
    ) -> None:
        """A record whose handling raised: park it (see ``_process``)."""
        if isinstance(exc, WeirError):
            log.warning("could not finish %s@%d: %s", tp, record.offset, exc)
        else:
            log.exception("unexpected error handling %s@%d", tp, record.offset)
        await self._park(stage, record, exc, owned)

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

    async def _maintenance_loop(self) -> None:
        """Expire old join entries (their tombstones keep changelogs bounded)."""
        while True:
            await asyncio.sleep(_MAINTENANCE_S)
            tables = [r.join for r in self.runners.values() if r.join is not None]
            tombstones = [m for table in tables for m in table.expire()]
            tombstones += [m for t in tables for m in eviction_messages(self._runtime, t)]
            if self.answers is not None:
                tombstones += self.answers.expire()
            if tombstones:
                with contextlib.suppress(Abandoned):
                    await self._runtime.outbox.send_all(tombstones, owned=lambda: True)

    # -- rebalance -------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # No new work on them from here on; what is in flight may finish and send.
        self._revoking |= revoked
        try:
            await self._drain([t for tp in revoked for t in self._inflight.get(tp, ())])
            with contextlib.suppress(KafkaError):
                await self._commit(revoked)
        finally:
            for tp in revoked:
                self._assigned.discard(tp)
                self._offsets.pop(tp, None)
                self._committed.pop(tp, None)
                self._inflight.pop(tp, None)
            self._revoking -= revoked
        by_stage = self._by_stage(revoked)
        for stage, partitions in by_stage.items():
            if stage == ANSWER and self.answers is not None:
                await self.answers.revoked(partitions)
            elif (runner := self.runners.get(stage)) is not None and runner.join is not None:
                runner.join.drop(partitions)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        # aiokafka starts fetching new partitions while this callback still runs; hold
        # them until their tables are restored, so no record is handled (or skipped) early.
        consumer.pause(*assigned)
        backoff = 1.0
        for attempt in range(1, _ASSIGN_ATTEMPTS + 1):
            try:
                await self._take(assigned)
                return
            except Exception:
                # aiokafka would log and swallow this, leaving the partitions paused for good.
                log.exception(
                    "taking %d partitions failed (attempt %d of %d)",
                    len(assigned),
                    attempt,
                    _ASSIGN_ATTEMPTS,
                )
                await asyncio.sleep(backoff)
                backoff *= 2
        log.critical("could not take the assigned partitions; stopping the worker")
        self.request_stop()

    async def _take(self, assigned: set[TopicPartition]) -> None:
        """Place, restore the tables of, and resume newly assigned partitions."""
        consumer = self._consumer
        assert consumer is not None
        await place(consumer, assigned)
        for tp in assigned:
            self._offsets[tp] = PartitionOffsets()
            self._inflight[tp] = set()
        # Tables are restored before any record of their partition is processed.
        for stage, partitions in self._by_stage(assigned).items():
            if stage == ANSWER and self.answers is not None:
                await self.answers.assigned(partitions)
            elif (runner := self.runners.get(stage)) is not None and runner.join is not None:
                waiting = await runner.join.restore(KafkaConnection.of(self.settings), partitions)
                if waiting:
                    log.info("restored %d waiting joins of step %s", waiting, stage)
        self._assigned |= assigned
        consumer.resume(*assigned)
        log.info("assigned %d partitions (%d in total)", len(assigned), len(self._assigned))

    def _by_stage(self, tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
        """Partitions of stateful stages' main input topics (joins, answers), by stage."""
        out: dict[str, list[int]] = {}
        for tp in tps:
            route = self._routes.get(tp.topic)
            if route is None or route.delayed or route.stage == INGRESS:
                continue
            out.setdefault(route.stage, []).append(tp.partition)
        return out


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(set(assigned))


def _not_before(record: Record) -> int:
    for key, value in record.headers or ():
        if key == NOT_BEFORE_HEADER:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel and await ``task``; an error it already ended with was logged when it ended."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            log.debug("task %s had ended with an error", task.get_name(), exc_info=True)
