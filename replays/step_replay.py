"""Step replay: run a candidate (another endpoint or function) over a step's recorded inputs.

A replay reads the inputs the step received in a time window (a sample of
them, by request id, so a resumed replay samples the same ones), runs the
candidate on each in its own consumer group, and writes one outcome per input
to its own topic (``weir.<pipeline>.replay.<id>``): never the results topic,
never a dependent's topic; each also goes to the trace topic as a trace event
tagged with the replay id and variant.  Inputs run ``concurrency`` at a time.
Inside a replay, functions marked ``@side_effect`` are not called, token
streams are not published, and model spend does not count against live budgets.
The first record of the replay topic is its plan, so ``resume`` carries on from
the consumer group's committed offsets with the same sample, candidate and budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiokafka import TopicPartition

from weir.core.config import WeirSettings
from weir.core.errors import ConfigError, ReplayNotFoundError, WeirError
from weir.core.kafka import KafkaConnection
from weir.processors.endpoint import ModelEndpoint
from weir.processors.services import ModelServices
from weir.processors.substitution import substituting
from weir.replays.endpoints import candidate_endpoint, candidate_function
from weir.replays.recording import RecordedInput, Recording
from weir.replays.records import (
    PLAN_KEY,
    ReplayOutcome,
    ReplayPlan,
    in_sample,
    read_outcomes,
    read_plan,
)
from weir.schemas.messages import ModelCall, TraceEvent, now_ms
from weir.streams.context import AttemptScope
from weir.streams.conversation_store import ConversationStore
from weir.streams.executor import StepExecutor, encode_output, split_branch
from weir.streams.pipeline import Pipeline
from weir.streams.redaction import Redactor
from weir.streams.side_effects import ReplayTag, replaying_as
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, TopicSpec

__all__ = ["ReplayProgress", "StepReplay"]

ERROR_MAX_BYTES = 2048


@dataclass
class ReplayProgress:
    """Where a replay stands; passed to ``on_progress`` after every record read."""

    replay_id: str
    total: int
    """Records in the window (sampled or not)."""
    read: int = 0
    replayed: int = 0
    failed: int = 0
    spent_usd: Decimal = Decimal(0)
    stopped_by_budget: bool = False
    estimated_usd: Decimal = Decimal(0)
    """Dry run: what the sampled inputs would cost, priced from their live usage."""


class StepReplay:
    """One replay of ``plan``."""

    def __init__(
        self,
        settings: WeirSettings,
        pipeline: Pipeline,
        plan: ReplayPlan,
        *,
        endpoints: Iterable[ModelEndpoint] = (),
        concurrency: int = 4,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        """Inputs run at once."""
        self._settings = settings
        self._services = ModelServices(settings)
        """The replay's own model-layer state (breakers, secret cache), stopped when it ends."""
        self.pipeline = pipeline
        self.plan = plan
        self.recording = Recording(settings, pipeline, plan.step)
        self.topic = PipelineTopics(pipeline.name).step_replay(plan.replay_id)
        self._candidate_endpoint: ModelEndpoint | None = None
        self._candidate_fn: Callable[..., Any] | None = None
        self._conversations: ConversationStore | None = None
        if plan.endpoint is not None:
            self._candidate_endpoint = candidate_endpoint(plan.endpoint, pipeline, endpoints)
        if plan.variant is not None:
            self._candidate_fn = candidate_function(plan.variant)

    @classmethod
    async def create(
        cls,
        settings: WeirSettings,
        pipeline: Pipeline,
        *,
        step: str,
        since_ms: int,
        until_ms: int | None = None,
        sample: float = 1.0,
        endpoint: str | None = None,
        variant: str | None = None,
        budget_usd: Decimal | None = None,
        endpoints: Iterable[ModelEndpoint] = (),
        concurrency: int = 4,
    ) -> StepReplay:
        """A new replay of ``step`` (not started): checks options, fixes the window's offsets.

        ``endpoint`` names the candidate: one the pipeline's module defines, or one of
        ``endpoints`` (for pipelines built inside a function).
        """
        if step not in pipeline.steps:
            raise ConfigError(
                f"pipeline {pipeline.name!r} has no step {step!r}"
                f" (it has: {', '.join(pipeline.order)})"
            )
        if (endpoint is None) == (variant is None):
            raise ConfigError(
                "a replay needs exactly one candidate: --endpoint NAME or --variant module:function"
            )
        if not 0 < sample <= 1:
            raise ConfigError(f"--sample must be more than 0% and at most 100%, got {sample:.2%}")
        if budget_usd is not None and budget_usd <= 0:
            raise ConfigError("--budget must be a positive amount of USD")
        if until_ms is not None and until_ms <= since_ms:
            raise ConfigError("--until must be later than --since")
        recording = Recording(settings, pipeline, step)
        plan = ReplayPlan(
            replay_id=f"rs-{uuid.uuid4().hex[:12]}",
            pipeline=pipeline.name,
            step=step,
            since_ms=since_ms,
            until_ms=until_ms,
            sample=sample,
            endpoint=endpoint,
            variant=variant,
            budget_usd=budget_usd,
            ranges=tuple(await recording.ranges(since_ms, until_ms)),
            output_topics=tuple(recording.output_topics),
        )
        return cls(settings, pipeline, plan, endpoints=endpoints, concurrency=concurrency)

    @classmethod
    async def resume(
        cls,
        settings: WeirSettings,
        pipeline: Pipeline,
        replay_id: str,
        *,
        budget_usd: Decimal | None = None,
        endpoints: Iterable[ModelEndpoint] = (),
        concurrency: int = 4,
    ) -> StepReplay:
        """The replay ``replay_id`` as planned; ``run()`` carries on where it stopped.

        ``budget_usd`` replaces the planned budget (the spend so far counts against it).
        """
        topic = PipelineTopics(pipeline.name).step_replay(replay_id)
        plan = await read_plan(settings, topic)
        if plan is None:
            raise ReplayNotFoundError(
                f"no step replay {replay_id!r} of pipeline {pipeline.name!r} ({topic})"
            )
        if budget_usd is not None:
            plan = dataclasses.replace(plan, budget_usd=budget_usd)
        return cls(settings, pipeline, plan, endpoints=endpoints, concurrency=concurrency)

    @property
    def total(self) -> int:
        return sum(r.stop - r.start for r in self.plan.ranges)

    async def dry_run(
        self, on_progress: Callable[[ReplayProgress], None] | None = None
    ) -> ReplayProgress:
        """Count the sampled inputs and price them from the step's live usage, calling nothing."""
        progress = ReplayProgress(self.plan.replay_id, self.total)
        sampled: set[str] = set()
        async for item, _tp, _next in self.recording.inputs(self.plan.ranges):
            progress.read += 1
            if item is not None and in_sample(item.request_id, self.plan.sample):
                sampled.add(item.request_id)
                progress.replayed += 1
            if on_progress is not None:
                on_progress(progress)
        baseline = await self.recording.baseline(sampled, self.plan.since_ms)
        for b in baseline.values():
            # The candidate runs each input once: the calls of the attempt that answered
            # live are priced, not those of attempts that timed out before it.
            last = max((c.attempt for c in b.calls), default=0)
            for call in b.calls:
                if call.attempt == last and call.status == "SUCCESS":
                    progress.estimated_usd += self._price(call)
        return progress

    def _price(self, call: ModelCall) -> Decimal:
        """What ``call``'s usage costs on the candidate (its own cost for a function variant)."""
        if self._candidate_endpoint is None:
            return call.cost_usd
        price = self._candidate_endpoint.price(self._settings)
        return price.cost(call.input_tokens, call.output_tokens) if price else Decimal(0)

    async def run(
        self, on_progress: Callable[[ReplayProgress], None] | None = None
    ) -> ReplayProgress:
        """Replay the sampled inputs not replayed yet; stop early once the budget is spent.

        Up to ``concurrency`` inputs run at once.  Under a budget, an input starts beside
        others only while the spend so far plus theirs and its own (each priced at the
        dearest input yet) stays below it; past that, inputs run one at a time until the
        budget is spent, so it is overrun by one input's calls at most (or, when
        inputs cost more than the dearest seen, by that excess on those running).
        """
        plan = self.plan
        async with TopicAdmin(self._settings) as admin:
            # One partition: outcomes of a replay are read back in order, with the plan first.
            spec = TopicSpec(
                self.topic,
                1,
                self._settings.replication_factor,
                {
                    "cleanup.policy": "delete",
                    "retention.ms": str(self._settings.event_retention_ms),
                },
                keyed=False,
            )
            created = await admin.ensure([spec])
        producer = KafkaConnection.of(self._settings).producer(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await producer.start()
        await self._services.start()
        step = self.pipeline.steps[plan.step]
        if step.conversation is not None:  # the histories its inputs saw, read-only
            self._conversations = ConversationStore(
                self._settings,
                step.conversation,
                topic=PipelineTopics(self.pipeline.name).conversation(plan.step),
                step=plan.step,
            )
        progress = ReplayProgress(plan.replay_id, self.total)
        threads = ThreadPoolExecutor(
            max(4, self.concurrency), thread_name_prefix=f"weir-replay-{plan.step}"
        )
        running: dict[asyncio.Task[None], tuple[TopicPartition, int]] = {}
        try:
            if created:
                await producer.send_and_wait(self.topic, key=PLAN_KEY, value=plan.encode())
            else:
                previous = await read_outcomes(self._settings, self.topic)
                progress.replayed = len(previous)
                progress.failed = sum(o.status != "SUCCESS" for o in previous)
                progress.spent_usd = sum((o.cost_usd for o in previous), Decimal(0))
            executor = StepExecutor(
                self.pipeline.steps[plan.step],
                pipeline=self.pipeline.name,
                worker_id=f"replay-{plan.replay_id}",
                default_timeout_s=self._settings.step_timeout_s,
                threads=threads,
            )
            redactor = Redactor.from_settings(self._settings)
            dearest: Decimal | None = None
            # Per partition: offsets still running, and the offset after the last one read.
            # The committed position is the first still running (a crash re-runs only those).
            pending: dict[TopicPartition, set[int]] = {}
            read_to: dict[TopicPartition, int] = {}
            last_commit = time.monotonic()

            async def one(item: RecordedInput) -> None:
                nonlocal dearest
                outcome, event = await self._replay_one(executor, item, redactor)
                await asyncio.gather(
                    producer.send_and_wait(
                        self.topic, key=item.request_id.encode(), value=outcome.encode()
                    ),
                    producer.send_and_wait(
                        self._settings.trace_topic,
                        key=item.request_id.encode(),
                        value=event.encode(),
                    ),
                )
                progress.replayed += 1
                progress.failed += outcome.status != "SUCCESS"
                progress.spent_usd += outcome.cost_usd
                dearest = max(dearest or Decimal(0), outcome.cost_usd)

            async def settle_one() -> None:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    tp, offset = running.pop(task)
                    pending[tp].discard(offset)
                    task.result()  # a failure to write the outcome ends the replay
                    if on_progress is not None:
                        on_progress(progress)

            def affordable() -> bool:
                """Whether one more input may start now."""
                if plan.budget_usd is None:
                    return True
                if not running:
                    return progress.spent_usd < plan.budget_usd
                if dearest is None:
                    return False  # nothing priced yet: one at a time until something is
                ahead = dearest * (len(running) + 1)
                return progress.spent_usd + ahead < plan.budget_usd

            async for item, tp, next_offset in self.recording.inputs(
                plan.ranges, group=plan.consumer_group
            ):
                if item is not None and in_sample(item.request_id, plan.sample):
                    while running and (len(running) >= self.concurrency or not affordable()):
                        await settle_one()
                    if not affordable():
                        progress.stopped_by_budget = True
                        break
                    task = asyncio.create_task(one(item))
                    running[task] = (tp, item.offset)
                    pending.setdefault(tp, set()).add(item.offset)
                elif plan.budget_usd is not None and progress.spent_usd >= plan.budget_usd:
                    progress.stopped_by_budget = True
                    break
                progress.read += 1
                read_to[tp] = next_offset
                if time.monotonic() - last_commit > 1.0:
                    await self.recording.commit(plan.consumer_group, _positions(read_to, pending))
                    last_commit = time.monotonic()
                if on_progress is not None:
                    on_progress(progress)
            while running:
                await settle_one()
            if plan.budget_usd is not None and progress.spent_usd >= plan.budget_usd:
                progress.stopped_by_budget = True
            if read_to:
                await self.recording.commit(plan.consumer_group, _positions(read_to, pending))
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await producer.stop()
            await self._services.stop()
            if self._conversations is not None:
                await self._conversations.stop()
            threads.shutdown(wait=False, cancel_futures=True)
        return progress

    async def _replay_one(
        self, executor: StepExecutor, item: RecordedInput, redactor: Redactor
    ) -> tuple[ReplayOutcome, TraceEvent]:
        plan = self.plan
        ctx = executor.context(item.envelope)
        scope = AttemptScope(
            context=ctx,
            settings=self._settings,
            publish=_discard,
            lag=lambda: 0,
            services=self._services,
        )
        started_at, t0 = now_ms(), time.perf_counter()
        output: str | None = None
        error: WeirError | None = None
        with replaying_as(ReplayTag(plan.replay_id, plan.label)):
            try:
                if self._conversations is not None:
                    envelope = item.envelope
                    scope.history = await self._conversations.history_seen(
                        envelope.request, envelope.request_id, envelope.submitted_at
                    )
                if self._candidate_endpoint is not None:
                    with substituting(self._candidate_endpoint):
                        value = await executor.run(item.inputs, item.envelope, scope)
                else:
                    kwargs = executor.arguments(item.inputs, item.envelope, ctx, scope.history)
                    value = await executor.call(kwargs, scope, fn=self._candidate_fn)
                output = encode_output(split_branch(value)[0], step=plan.step)
            except WeirError as exc:
                error = exc
        outcome = ReplayOutcome(
            replay_id=plan.replay_id,
            variant=plan.label,
            request_id=item.request_id,
            partition=item.partition,
            offset=item.offset,
            status="SUCCESS" if error is None else "FAILURE",
            started_at=started_at,
            duration_ms=round((time.perf_counter() - t0) * 1000, 3),
            output=output,
            error_type=None if error is None else error.error_type,
            error_message=None
            if error is None
            else redactor.redact(str(error), max_bytes=ERROR_MAX_BYTES),
            calls=tuple(scope.calls),
        )
        event = outcome.trace_event(
            step=plan.step,
            pipeline=plan.pipeline,
            attempt=item.envelope.attempt,
            submitted_at=item.envelope.submitted_at,
            topic=self.recording.topic,
        )
        return outcome, event


def _positions(
    read_to: dict[TopicPartition, int], pending: dict[TopicPartition, set[int]]
) -> dict[TopicPartition, int]:
    """Where each partition carries on: its first input still running, else after the last read."""
    return {tp: min(pending.get(tp) or (end,)) for tp, end in read_to.items()}


async def _discard(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    """A replay publishes nothing on the pipeline's topics (no token streams to live clients)."""
