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
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import WeirError
from weir.core.kafka import DataProducer
from weir.schemas.messages import REQUEST_SCHEMA, RESULT_SCHEMA
from weir.schemas.registry import SchemaRegistry
from weir.streams._clients import cancel, drain, worker_consumer, worker_producer
from weir.streams._fetcher import Fetcher
from weir.streams._gc import tune_gc
from weir.streams._in_place import InPlace
from weir.streams._partitions import Partitions
from weir.streams._placement import Placement
from weir.streams._rebalance import Rebalance
from weir.streams._record_tasks import RecordTasks, Route
from weir.streams._runtime import Runtime, WorkerStats
from weir.streams.answer import AnswerStage
from weir.streams.dead_letter import DeadLetters
from weir.streams.executor import StepExecutor
from weir.streams.ingress import Ingress, RootHandler
from weir.streams.join import eviction_messages
from weir.streams.journal import CallJournal
from weir.streams.outbox import Abandoned, Outbox, OutMessage
from weir.streams.pipeline import Pipeline
from weir.streams.redaction import Redactor
from weir.streams.review_desk import ReviewDesk
from weir.streams.runner import StepRunner
from weir.streams.services import WorkerServices
from weir.streams.threads import StepThreads
from weir.streams.tracing import Tracing
from weir.topics._aiokafka import KeyPartitioner
from weir.topics.admin import TopicAdmin
from weir.topics.names import ANSWER, INGRESS, PipelineTopics, topic_specs

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("weir.worker")

_MAINTENANCE_S = 30.0


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
        self._producer: DataProducer | None = None
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
        self._routes: dict[str, Route] = {}
        self._roots_here: Collection[str] = ()
        self.runners: dict[str, StepRunner] = {}
        self.answers: AnswerStage | None = None
        self._partitions = Partitions(settings.max_in_flight)
        self._build(only)
        self._placement = Placement(self._partitioner)
        # The steps a batch may run on its outputs, in its task (``_in_place``): batchable,
        # with no join or conversation that must see its inputs in their partition's order.
        in_place = {
            self.topics.step(name): (name, runner.prepare)
            for name, runner in self.runners.items()
            if settings.in_place_steps
            and runner.batchable
            and runner.join is None
            and runner.conversations is None
        }
        self._records = RecordTasks(
            self._runtime,
            self._partitions,
            lambda messages: self._placement.pack_traces(messages, settings.trace_topic),
            InPlace(in_place, partitions=self._partitions, placement=self._placement),
        )
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
            self._routes[first] = Route(name, runner.handle, prepare=prepare)
            for topic in retries:
                self._routes[topic] = Route(name, runner.handle, delayed=True, prepare=prepare)
        if ingress is not None:
            requests = Route(
                INGRESS, ingress.handle, prepare=ingress.prepare if ingress.batchable else None
            )
            self._routes[self.topics.requests] = requests
        if only is None or ANSWER in only or any(s in p.final_steps for s in steps):
            held = self._partitions.assigned
            self.answers = AnswerStage(
                rt, owns=lambda p: TopicPartition(self.topics.answers, p) in held
            )
            self._routes[self.answers.topic] = Route(ANSWER, self.answers.handle)

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
        self._producer = worker_producer(self.settings, self._partitioner)
        await self._producer.start()
        self._placement.producer = self._producer
        self._runtime.outbox.attach(self._producer)
        if self._runtime.journal is not None:
            # Loaded before any record is taken: a redelivered attempt must find its calls.
            await self._runtime.journal.start()
        if self.answers is not None:
            # A final step's output is answered here when this worker owns its answers
            # partition: no answers-topic hop that only moves data.
            self._runtime.outbox.shortcut(self.topics.answers, self._answer_here)
        self._consumer = worker_consumer(self.settings, self.topics.consumer_group)
        await self._consumer.start()
        self._placement.consumer = self._consumer
        rebalance = Rebalance(
            self._consumer,
            partitions=self._partitions,
            routes=self._routes,
            runners=self.runners,
            answers=self.answers,
            settings=self.settings,
            drain=self._drain,
            commit=self._commit,
            request_stop=self.request_stop,
        )
        self._consumer.subscribe(list(self._routes), listener=rebalance)
        fetcher = Fetcher(
            self._consumer,
            self._routes,
            self._partitions,
            self._records,
            self.settings,
            self._stopping,
        )
        self._tasks = [
            asyncio.create_task(fetcher.run(), name="weir-fetch"),
            asyncio.create_task(self._commit_loop(), name="weir-commit"),
            asyncio.create_task(self._maintenance_loop(), name="weir-maintenance"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._loop_ended)
        await self.review_desk.start()
        tune_gc(self.settings.gc_gen0_threshold, self.settings.gc_gen2_threshold)
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
            p = self._placement.partition_of(message.topic, message.key)
        if p is None:
            return False
        return await self.answers.take(message, p)

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
        await cancel(fetch)
        await cancel(maintenance)
        await self._drain(self._partitions.tasks())
        await cancel(commit)
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
        await drain(tasks, self.settings.shutdown_timeout_s)

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
        return self._partitions.lag(consumer, topics)

    def stuck_records(self) -> list[dict[str, object]]:
        """Records that have held their partition's commits for ``stuck_record_after_s``."""
        return self._partitions.stuck_records(self.settings.stuck_record_after_s)

    @property
    def assigned(self) -> set[TopicPartition]:
        return set(self._partitions.assigned)

    @property
    def stopping(self) -> bool:
        """Asked to stop, or stopped (a loop that died stops the worker too)."""
        return self._stopping.is_set()

    # -- the loops -----------------------------------------------------------------

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
        await self._partitions.commit(consumer, partitions)

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
