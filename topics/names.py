"""The one place that names every topic weir uses, and how each is configured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.pipeline import Pipeline
    from weir.config import WeirSettings

__all__ = ["INGRESS", "TRACES_TOPIC", "PipelineTopics", "TopicSpec", "topic_specs"]

INGRESS = "requests"
"""Stage name of the request validator: its dead letters go to ``<pipeline>.requests.dlq``."""
TRACES_TOPIC = "weir.traces"


@dataclass(frozen=True)
class TopicSpec:
    """A topic as weir creates it."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    """Topic-level configs (``cleanup.policy``, ``retention.ms``, ...)."""

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup.policy") == "compact"


@dataclass(frozen=True)
class PipelineTopics:
    """Names of one pipeline's topics; all are keyed by request id.

    >>> t = PipelineTopics("support")
    >>> t.requests, t.step("classify"), t.results, t.dead_letter("classify")
    ('weir.support.requests', 'weir.support.step.classify', 'weir.support.results', 'weir.support.dlq.classify')
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

    @property
    def consumer_group(self) -> str:
        return f"{self.prefix}.{self.pipeline}"


def topic_specs(pipeline: Pipeline, settings: WeirSettings) -> list[TopicSpec]:
    """Every topic ``pipeline`` needs, configured from ``settings``."""
    from streams.pipeline import RESULT_COLLECTOR

    names = PipelineTopics(pipeline.name)
    events = {"cleanup.policy": "delete", "retention.ms": str(settings.event_retention_ms)}
    state = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}

    def spec(name: str, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(name, settings.partitions, settings.replication_factor, dict(config))

    steps = list(pipeline.order)
    joins = [s for s in steps if pipeline.steps[s].is_join]
    if pipeline.needs_result_collector:
        steps.append(RESULT_COLLECTOR)
        joins.append(RESULT_COLLECTOR)
    specs = [
        spec(names.requests, events),
        spec(names.results, events),
        spec(names.dead_letter(INGRESS), events),
    ]
    specs += [spec(names.step(s), events) for s in steps]
    specs += [spec(names.dead_letter(s), events) for s in steps]
    # A join's changelog must match its input topic partition for partition: the
    # table for input partition N is restored from changelog partition N.
    specs += [spec(names.join_changelog(s), state) for s in joins]
    return specs
