"""The one place that names every topic weir uses, and how each is configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from weir.core.config import WeirSettings

DEAD_LETTER_TOPIC_MAX_BYTES = 1_048_588
"""``max.message.bytes`` of dead-letter topics: Kafka's default, set explicitly so that a
cluster with a lower broker default still takes every dead letter weir writes (at most
about 1 MB, its headers included; larger records are dead-lettered in a bounded form)."""

__all__ = [
    "ANSWER",
    "COSTS_TOPIC",
    "INGRESS",
    "PAUSES_TOPIC",
    "ROUTES_HISTORY_TOPIC",
    "ROUTES_TOPIC",
    "TRACES_TOPIC",
    "PipelineShape",
    "PipelineTopics",
    "TopicSpec",
    "global_topic_specs",
    "retry_tiers",
    "topic_specs",
]

INGRESS = "requests"
"""Stage name of the request validator: its dead letters go to ``weir.<pipeline>.dlq.requests``."""
ANSWER = "_answer"
"""Stage name of the answer stage, the only writer of a pipeline's results topic."""
TRACES_TOPIC = "weir.traces"
"""One trace event per step attempt, of every pipeline (key: request id)."""
ROUTES_TOPIC = "weir.routes"
"""Compacted: the rule set in force per router (key: router name)."""
ROUTES_HISTORY_TOPIC = "weir.routes.history"
"""Every rule set ever applied, in order (key: router name; kept forever)."""
COSTS_TOPIC = "weir.costs"
"""Spend of budgeted model calls (key: budget key); the budget ledger sums it."""
PAUSES_TOPIC = "weir.pauses"
"""An endpoint's ``Retry-After`` pauses, so every worker of a group waits (key: group)."""
COSTS_RETENTION_MS = 35 * 24 * 3600 * 1000
"""At least a month plus slack, so a monthly budget can be summed from the topic."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic as weir creates it."""

    name: str
    partitions: int
    replication_factor: int | None
    """``None``: chosen from the cluster's size when the topic is created (``TopicAdmin``)."""
    config: dict[str, str] = field(default_factory=dict)
    """Topic-level configs (``cleanup.policy``, ``retention.ms``, ...)."""
    keyed: bool = True
    """Keys must map to the same partition numbers as in the pipeline's other topics."""

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup.policy") == "compact"


@dataclass(frozen=True)
class PipelineTopics:
    """Names of one pipeline's topics; all are keyed by request id.

    >>> t = PipelineTopics("support")
    >>> t.requests, t.step("classify")
    ('weir.support.requests', 'weir.support.step.classify')
    >>> t.results, t.dead_letter("classify")
    ('weir.support.results', 'weir.support.dlq.classify')
    """

    pipeline: str
    prefix: str = "weir"

    @property
    def requests(self) -> str:
        return f"{self.prefix}.{self.pipeline}.requests"

    def step(self, step: str) -> str:
        """Input topic of ``step``: every dependency writes its output here."""
        return f"{self.prefix}.{self.pipeline}.step.{step}"

    @property
    def results(self) -> str:
        return f"{self.prefix}.{self.pipeline}.results"

    def dead_letter(self, step: str) -> str:
        """Dead-letter topic of ``step`` (``requests`` for bad requests)."""
        return f"{self.prefix}.{self.pipeline}.dlq.{step}"

    def join_changelog(self, step: str) -> str:
        """Compacted changelog of the fan-in table of ``step``."""
        return f"{self.prefix}.{self.pipeline}.join.{step}.changelog"

    def retry(self, step: str, tier: int) -> str:
        """Delayed retry topic ``tier`` (1-based) of ``step``."""
        return f"{self.prefix}.{self.pipeline}.retry.{step}.{tier}"

    @property
    def answers(self) -> str:
        """Input of the answer stage: final outputs and failures, before deduplication."""
        return f"{self.prefix}.{self.pipeline}.answers"

    @property
    def answered_changelog(self) -> str:
        """Compacted changelog of the request ids already answered (written transactionally)."""
        return f"{self.prefix}.{self.pipeline}.answered.changelog"

    @property
    def stream(self) -> str:
        """Token chunks of streaming model calls, in order per request."""
        return f"{self.prefix}.{self.pipeline}.stream"

    @property
    def journal(self) -> str:
        """Completed model calls by request, step, attempt and index (``weir.streams.journal``)."""
        return f"{self.prefix}.{self.pipeline}.journal"

    def cache(self, step: str) -> str:
        """Compacted table of ``step``'s cached outputs, keyed by input hash."""
        return f"{self.prefix}.{self.pipeline}.cache.{step}"

    def conversation(self, step: str) -> str:
        """Compacted table of ``step``'s conversations, keyed by conversation id."""
        return f"{self.prefix}.{self.pipeline}.conversation.{step}"

    @property
    def reviews(self) -> str:
        """Escalations to a person and what became of them (answered, expired), per request."""
        return f"{self.prefix}.{self.pipeline}.reviews"

    @property
    def replays(self) -> str:
        """Compacted record of dead letters already replayed (key: ``topic:partition:offset``)."""
        return f"{self.prefix}.{self.pipeline}.dlq.replays"

    @property
    def shadow(self) -> str:
        """Shadowed model calls: the primary's and the candidate's answers side by side."""
        return f"{self.prefix}.{self.pipeline}.shadow"

    def step_replay(self, replay_id: str) -> str:
        """A step replay's own output: its plan, then one outcome per replayed input."""
        return f"{self.prefix}.{self.pipeline}.replay.{replay_id}"

    def answers_transactional_id(self, partition: int) -> str:
        """One transactional producer per answers partition: a new owner fences the old one."""
        return f"{self.prefix}.{self.pipeline}.answers.{partition}"

    @property
    def consumer_group(self) -> str:
        return f"{self.prefix}.{self.pipeline}"


def retry_tiers(maximum_attempts: int, settings: WeirSettings) -> int:
    """How many delayed retry topics a step with this many attempts gets (0: no retries)."""
    if maximum_attempts == 1:
        return 0
    if maximum_attempts <= 0:  # unlimited attempts
        return settings.max_retry_topics
    return min(maximum_attempts - 1, settings.max_retry_topics)


class _Cache(Protocol):
    def topic_config(self) -> dict[str, str]: ...


class _Step(Protocol):
    @property
    def is_join(self) -> bool: ...

    @property
    def cache(self) -> _Cache | None: ...

    @property
    def conversation(self) -> _Cache | None: ...


class _Attempts(Protocol):
    @property
    def maximum_attempts(self) -> int: ...


class PipelineShape(Protocol):
    """What the topics of a pipeline depend on (``weir.streams.Pipeline`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def order(self) -> tuple[str, ...]: ...

    @property
    def steps(self) -> Mapping[str, _Step]: ...

    @property
    def needs_result_collector(self) -> bool: ...

    def retry_policy(self, step: str) -> _Attempts: ...


def topic_specs(pipeline: PipelineShape, settings: WeirSettings) -> list[TopicSpec]:
    """Every topic ``pipeline`` needs, configured from ``settings``."""
    names = PipelineTopics(pipeline.name)
    events = {"cleanup.policy": "delete", "retention.ms": str(settings.event_retention_ms)}
    state = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    # Dead letters carry the failed record as it is (up to MAX_MESSAGE_BYTES with headers);
    # stated explicitly so a cluster whose default is lower still takes them.
    dead = {**events, "max.message.bytes": str(DEAD_LETTER_TOPIC_MAX_BYTES)}
    journal = {
        "cleanup.policy": "delete",
        "retention.ms": str(int(settings.journal_retention_s * 1000)),
    }

    def spec(name: str, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(name, settings.partitions, settings.replication_factor, dict(config))

    steps = list(pipeline.order)
    joins = [s for s in steps if pipeline.steps[s].is_join]
    if pipeline.needs_result_collector:
        joins.append(ANSWER)
    specs = [
        spec(names.requests, events),
        spec(names.results, events),
        spec(names.answers, events),
        spec(names.stream, events),
        spec(names.shadow, events),
        spec(names.reviews, events),
        spec(names.journal, journal),
        spec(names.dead_letter(INGRESS), dead),
        spec(names.dead_letter(ANSWER), dead),
        spec(names.answered_changelog, state),
        spec(names.replays, state),
    ]
    specs += [spec(names.step(s), events) for s in steps]
    cached = [(s, c) for s in steps if (c := pipeline.steps[s].cache) is not None]
    specs += [spec(names.cache(s), c.topic_config()) for s, c in cached]
    talking = [(s, c) for s in steps if (c := pipeline.steps[s].conversation) is not None]
    specs += [spec(names.conversation(s), c.topic_config()) for s, c in talking]
    specs += [spec(names.dead_letter(s), dead) for s in steps]
    for s in steps:
        tiers = retry_tiers(pipeline.retry_policy(s).maximum_attempts, settings)
        specs += [spec(names.retry(s, t), events) for t in range(1, tiers + 1)]
    # A join's changelog must match its input topic partition for partition: the
    # table for input partition N is restored from changelog partition N.
    specs += [spec(names.join_changelog(s), state) for s in joins]
    return specs + global_topic_specs(settings)


def global_topic_specs(settings: WeirSettings) -> list[TopicSpec]:
    """Topics shared by every pipeline."""
    events = {"cleanup.policy": "delete", "retention.ms": str(settings.event_retention_ms)}
    rf = settings.replication_factor
    costs = {
        "cleanup.policy": "delete",
        "retention.ms": str(max(settings.event_retention_ms, COSTS_RETENTION_MS)),
    }
    # Rule sets are few and small: one partition keeps every change in one order.
    routes = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    history = {"cleanup.policy": "delete", "retention.ms": "-1"}
    # A pause matters for minutes at most (Retry-After is capped at 10 minutes).
    pauses = {"cleanup.policy": "delete", "retention.ms": str(3600 * 1000)}
    return [
        TopicSpec(settings.trace_topic, settings.partitions, rf, events, keyed=False),
        TopicSpec(COSTS_TOPIC, settings.partitions, rf, costs, keyed=False),
        TopicSpec(ROUTES_TOPIC, 1, rf, routes, keyed=False),
        TopicSpec(ROUTES_HISTORY_TOPIC, 1, rf, history, keyed=False),
        TopicSpec(PAUSES_TOPIC, 1, rf, pauses, keyed=False),
    ]
