"""Reading a pipeline's dead-letter topics, and replaying records at the step that failed.

A replay re-injects only the failed branch: a step's dead letter goes back to
that step's input topic (attempt count reset, tagged with the replay's id), so
the steps before it do not run again.  A rejected request goes back to the
requests topic.  Every replayed record is remembered on the pipeline's
compacted ``dlq.replays`` topic, so running the same replay twice does not
re-inject it (``again=True`` does).  Results of replayed requests carry their
original request id and the replay id; the answer stage lets a replayed
request that had failed be answered once more.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.messages import DeadLetter, Envelope, now_ms, now_us
from streams._runtime import Record
from streams.ingress import REPLAY_HEADER
from topics._aiokafka import read_until, retrying, rewind, stop_consumer
from topics.admin import TopicAdmin
from topics.names import ANSWER, INGRESS, PipelineTopics
from weir.config import WeirSettings
from weir.errors import ConfigError, MessageError, WeirError

__all__ = ["DeadLetterEntry", "DeadLetterQueue", "ReplayReport", "parse_since"]

_ID = re.compile(r"^(?P<pipeline>[^/]+)/(?P<step>[^/]+)/(?P<partition>\d+)/(?P<offset>\d+)$")


@dataclass(frozen=True)
class DeadLetterEntry:
    """One record of a dead-letter topic."""

    pipeline: str
    step: str
    partition: int
    offset: int
    timestamp: int
    """When it was dead-lettered (record timestamp, epoch milliseconds)."""
    letter: DeadLetter
    replayed_by: str | None = None
    """Id of the replay that re-injected it already, if any."""

    @property
    def id(self) -> str:
        """``<pipeline>/<step>/<partition>/<offset>``: what ``weir dlq show`` takes."""
        return f"{self.pipeline}/{self.step}/{self.partition}/{self.offset}"

    @property
    def marker_key(self) -> bytes:
        return f"{self.step}:{self.partition}:{self.offset}".encode()


@dataclass
class ReplayReport:
    replay_id: str
    replayed: list[str] = field(default_factory=list)
    """Ids of the entries re-injected (or that would be, in a dry run)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Entry id -> why it cannot be replayed."""
    already: int = 0
    """Entries left alone because an earlier replay re-injected them."""


def parse_since(text: str, *, now: float | None = None) -> int:
    """``30m``, ``2h``, ``7d`` ago, or an ISO-8601 time, as epoch milliseconds.

    >>> parse_since("2h", now=10_000.0)
    2800000
    """
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int((now - float(match.group(1)) * scale) * 1000)
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"--since {text!r} is neither a duration (30m, 2h, 7d) nor an ISO time"
            " (2026-11-25T14:00:00)"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class DeadLetterQueue:
    """The dead-letter topics of one pipeline."""

    def __init__(self, settings: WeirSettings, pipeline: str) -> None:
        self._settings = settings
        self.pipeline = pipeline
        self.topics = PipelineTopics(pipeline)

    async def steps(self) -> list[str]:
        """Stages that have a dead-letter topic, in name order."""
        prefix = self.topics.dead_letter("")
        async with TopicAdmin(self._settings) as admin:
            names = await admin.list()
        steps = sorted(
            t[len(prefix) :] for t in names if t.startswith(prefix) and t != self.topics.replays
        )
        if not steps:
            raise WeirError(
                f"pipeline {self.pipeline!r} has no dead-letter topics ({prefix}*): is the"
                " name right, and has a worker for it ever started?"
            )
        return steps

    async def entries(
        self,
        *,
        step: str | None = None,
        error_type: str | None = None,
        since_ms: int | None = None,
    ) -> list[DeadLetterEntry]:
        """Every dead letter matching the filters, oldest first per step."""
        steps = await self.steps()
        if step is not None:
            if step not in steps:
                raise WeirError(
                    f"pipeline {self.pipeline!r} has no dead-letter topic for step {step!r}"
                    f" (it has: {', '.join(steps)})"
                )
            steps = [step]
        replayed = await self._replayed()
        out = []
        for s in steps:
            for entry in await self._read(s, replayed):
                if error_type is not None and entry.letter.error_type != error_type:
                    continue
                if since_ms is not None and entry.timestamp < since_ms:
                    continue
                out.append(entry)
        return out

    async def get(self, entry_id: str) -> DeadLetterEntry:
        match = _ID.match(entry_id)
        if match is None or match.group("pipeline") != self.pipeline:
            raise WeirError(
                f"{entry_id!r} is not a dead-letter id of pipeline {self.pipeline!r};"
                " ids look like <pipeline>/<step>/<partition>/<offset> (see 'weir dlq list')"
            )
        step, partition, offset = (
            match.group("step"),
            int(match.group("partition")),
            int(match.group("offset")),
        )
        for entry in await self._read(step, await self._replayed(), only=(partition, offset)):
            return entry
        raise WeirError(f"no dead letter {entry_id} (expired by retention, or a wrong offset?)")

    async def replay(
        self,
        entries: Iterable[DeadLetterEntry],
        *,
        dry_run: bool = False,
        again: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> ReplayReport:
        """Re-inject ``entries`` at their failed step; return what was done."""
        report = ReplayReport(replay_id=f"rp-{uuid.uuid4().hex[:12]}")
        plan: list[tuple[DeadLetterEntry, str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        for entry in entries:
            if entry.replayed_by is not None and not again:
                report.already += 1
                continue
            try:
                value = entry.letter.value
                if entry.letter.bounded:
                    value = await self._original(entry.letter)
                plan.append((entry, *self._target(entry, report.replay_id, value)))
            except (MessageError, _NotReplayable) as exc:
                report.skipped[entry.id] = str(exc)
        if dry_run:
            report.replayed = [entry.id for entry, *_ in plan]
            return report
        if not plan:
            return report
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await producer.start()
        try:
            marker = json.dumps({"replay": report.replay_id, "at": now_ms()}).encode()
            for entry, topic, key, value, headers in plan:
                await producer.send_and_wait(topic, value=value, key=key, headers=headers)
                # Remembered once the re-injection is acknowledged, so a crash in between
                # can at worst replay an entry twice (the answer stage answers it once).
                await producer.send_and_wait(
                    self.topics.replays, key=entry.marker_key, value=marker
                )
                report.replayed.append(entry.id)
                if on_progress is not None:
                    on_progress(1)
        finally:
            await producer.stop()
        return report

    # -- internals ------------------------------------------------------------------

    async def _original(self, letter: DeadLetter) -> bytes:
        """The record a bounded dead letter points at, read back from its source topic."""
        where = f"{letter.source_topic} partition {letter.source_partition}"
        found = await self._records(
            letter.source_topic, only=(letter.source_partition, letter.source_offset)
        )
        if not found or found[0].value is None:
            raise _NotReplayable(
                f"the dead letter is bounded and its record ({where} offset"
                f" {letter.source_offset}) is no longer there (retention)"
            )
        return bytes(found[0].value)

    def _target(
        self, entry: DeadLetterEntry, replay_id: str, value: bytes | None
    ) -> tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]:
        """``(topic, key, value, headers)`` that re-injects ``entry`` (``value``: its record)."""
        letter = entry.letter
        if value is None:
            raise _NotReplayable("the dead letter has no value")
        if entry.step == INGRESS:
            headers = [(REPLAY_HEADER, replay_id.encode())]
            return self.topics.requests, letter.key, value, headers
        if entry.step == ANSWER:
            raise _NotReplayable("an undecodable answers-topic message cannot be replayed")
        env = Envelope.decode(value)
        env = dataclasses.replace(
            env,
            attempt=1,
            not_before=0,
            first_failed_at=None,
            replay=replay_id,
            created_at=now_us(),
        )
        return self.topics.step(entry.step), env.request_id.encode(), env.encode(), []

    async def _replayed(self) -> dict[bytes, str]:
        """Marker key -> replay id, from the compacted replays topic."""
        out: dict[bytes, str] = {}
        for record in await self._records(self.topics.replays):
            if record.key is None:
                continue
            if record.value is None:
                out.pop(record.key, None)
            else:
                out[record.key] = json.loads(record.value).get("replay", "?")
        return out

    async def _read(
        self,
        step: str,
        replayed: dict[bytes, str],
        only: tuple[int, int] | None = None,
    ) -> list[DeadLetterEntry]:
        out = []
        for record in await self._records(self.topics.dead_letter(step), only=only):
            letter = DeadLetter.from_message(record.key, record.value, list(record.headers or ()))
            entry = DeadLetterEntry(
                pipeline=self.pipeline,
                step=step,
                partition=record.partition,
                offset=record.offset,
                timestamp=record.timestamp,
                letter=letter,
            )
            out.append(dataclasses.replace(entry, replayed_by=replayed.get(entry.marker_key)))
        return out

    async def _records(self, topic: str, only: tuple[int, int] | None = None) -> list[Record]:
        """Everything on ``topic`` up to its current end (or the one record ``only``)."""
        async with TopicAdmin(self._settings) as admin:
            count = (await admin.partitions([topic])).get(topic, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(count)]
            if only is not None:
                tps = [tp for tp in tps if tp.partition == only[0]]
            if not tps:
                return []
            consumer.assign(tps)
            end = await retrying(lambda: consumer.end_offsets(tps), what=f"reading {topic}")
            await rewind(consumer, tps)
            if only is not None:
                consumer.seek(tps[0], only[1])
            records: list[Record] = []
            for tp in tps:
                async for record in read_until(consumer, tp, end[tp]):
                    if only is not None:
                        return [record] if record.offset == only[1] else []
                    records.append(record)
            return records
        finally:
            await stop_consumer(consumer)


class _NotReplayable(Exception):
    """Why one dead letter cannot be replayed (reported per entry)."""
