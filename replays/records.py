"""What a step replay writes to its own topic: its plan first, then one outcome per input.

The topic is ``weir.<pipeline>.replay.<id>`` (one partition, so the plan comes first).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from aiokafka import TopicPartition

from weir.core.config import WeirSettings
from weir.core.errors import MessageError, ReplayNotFoundError
from weir.core.kafka import KafkaConnection
from weir.processors.shadow import in_share
from weir.replays.recording import PartitionRange
from weir.schemas.messages import ModelCall, TraceEvent, now_ms, total_usage
from weir.topics._aiokafka import read_until, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = [
    "PLAN_KEY",
    "ReplayOutcome",
    "ReplayPlan",
    "find_replay",
    "in_sample",
    "read_outcomes",
    "read_plan",
]

PLAN_KEY = b"plan"
"""Key of the plan record."""


def in_sample(request_id: str, share: float) -> bool:
    """Whether ``request_id`` is in a ``share`` sample (the same answer every time it is asked).

    The same choice as a live shadow's share, so a replay and a shadow of one share
    cover the same requests.

    >>> in_sample("r1", 1.0), in_sample("r1", 0.0)
    (True, False)
    """
    return in_share(request_id, share)


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay runs, over which inputs; the first record of its topic."""

    replay_id: str
    pipeline: str
    step: str
    since_ms: int
    until_ms: int | None
    sample: float
    """Share of the window's inputs replayed, 0 < sample <= 1."""
    endpoint: str | None
    variant: str | None
    """``module:function`` run in place of the step function."""
    budget_usd: Decimal | None
    ranges: tuple[PartitionRange, ...]
    output_topics: tuple[str, ...] = ()
    """Where the step's live outputs are recorded (the comparison's baseline)."""
    created_at: int = field(default_factory=now_ms)

    @property
    def label(self) -> str:
        """``endpoint:<name>`` or ``variant:<module:function>``."""
        return f"endpoint:{self.endpoint}" if self.endpoint else f"variant:{self.variant}"

    @property
    def consumer_group(self) -> str:
        return f"{PipelineTopics(self.pipeline).consumer_group}.replay.{self.replay_id}"

    def encode(self) -> bytes:
        body = asdict(self)
        body["budget_usd"] = None if self.budget_usd is None else str(self.budget_usd)
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ReplayPlan:
        body = json.loads(raw)
        body["ranges"] = tuple(PartitionRange(**r) for r in body["ranges"])
        body["output_topics"] = tuple(body.get("output_topics", ()))
        if body["budget_usd"] is not None:
            body["budget_usd"] = Decimal(body["budget_usd"])
        return cls(**body)


@dataclass(frozen=True)
class ReplayOutcome:
    """What the candidate did with one recorded input (one record of the replay topic)."""

    replay_id: str
    variant: str
    request_id: str
    partition: int
    offset: int
    status: str
    """``SUCCESS`` or ``FAILURE``."""
    started_at: int
    duration_ms: float
    output: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    """Redacted like trace events."""
    calls: tuple[ModelCall, ...] = ()

    @property
    def cost_usd(self) -> Decimal:
        return total_usage(self.calls)[2]

    def trace_event(
        self, *, pipeline: str, step: str, attempt: int, submitted_at: int, topic: str
    ) -> TraceEvent:
        """This outcome as the trace event of an attempt, tagged with its replay and variant."""
        return TraceEvent(
            pipeline_id=pipeline,
            step_name=step,
            request_id=self.request_id,
            attempt=attempt,
            status="SUCCESS" if self.status == "SUCCESS" else "FAILURE",
            disposition="replayed",
            created_at=now_ms(),
            started_at=self.started_at,
            submitted_at=submitted_at,
            duration_ms=self.duration_ms,
            queue_wait_ms=0.0,
            worker_id=f"replay-{self.replay_id}",
            topic=topic,
            partition=self.partition,
            offset=self.offset,
            error_type=self.error_type,
            error_message=self.error_message,
            calls=list(self.calls),
            replay_id=self.replay_id,
            variant=self.variant,
        )

    def encode(self) -> bytes:
        body = asdict(self)
        body["calls"] = [c.to_record() for c in self.calls]
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ReplayOutcome:
        body = json.loads(raw)
        body["calls"] = tuple(ModelCall.from_record(c) for c in body["calls"])
        return cls(**body)


async def read_plan(settings: WeirSettings, topic: str) -> ReplayPlan | None:
    plan, _ = await _read(settings, topic, plan_only=True)
    return plan


async def read_outcomes(settings: WeirSettings, topic: str) -> list[ReplayOutcome]:
    """Every outcome of a replay topic, one per input (a re-run after a crash counts once)."""
    _, outcomes = await _read(settings, topic, plan_only=False)
    return outcomes


async def _read(
    settings: WeirSettings, topic: str, *, plan_only: bool
) -> tuple[ReplayPlan | None, list[ReplayOutcome]]:
    tp = TopicPartition(topic, 0)
    consumer = KafkaConnection.of(settings).consumer(enable_auto_commit=False)
    await consumer.start()
    plan: ReplayPlan | None = None
    seen: dict[tuple[int, int], ReplayOutcome] = {}
    try:
        async with TopicAdmin(settings) as admin:
            if topic not in await admin.list():
                return None, []
        consumer.assign([tp])
        end = int((await consumer.end_offsets([tp]))[tp])
        consumer.seek(tp, int((await consumer.beginning_offsets([tp]))[tp]))
        async for record in read_until(consumer, tp, end):
            if record.value is None:
                continue
            try:
                if record.key == PLAN_KEY:
                    plan = ReplayPlan.decode(record.value)
                    if plan_only:
                        break
                    continue
                outcome = ReplayOutcome.decode(record.value)
            except (ValueError, TypeError, KeyError, MessageError):
                continue  # not written by a replay: nothing to compare
            seen[(outcome.partition, outcome.offset)] = outcome
    finally:
        await stop_consumer(consumer)
    return plan, list(seen.values())


async def find_replay(settings: WeirSettings, replay_id: str) -> tuple[ReplayPlan, str]:
    """The plan of replay ``replay_id`` and its topic, whatever its pipeline."""
    suffix = f".replay.{replay_id}"
    async with TopicAdmin(settings) as admin:
        topics = [t for t in await admin.list() if t.endswith(suffix)]
    for topic in topics:
        plan = await read_plan(settings, topic)
        if plan is not None and PipelineTopics(plan.pipeline).step_replay(replay_id) == topic:
            return plan, topic
    raise ReplayNotFoundError(
        f"no step replay {replay_id!r}: no topic *{suffix} holds its plan (a wrong id, or its"
        " topic expired by retention)"
    )
