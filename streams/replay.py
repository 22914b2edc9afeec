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

import contextlib
import dataclasses
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.core.config import WeirSettings
from weir.core.errors import ConfigError, MessageError, WeirError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import DeadLetter, Envelope, now_ms, now_us
from weir.streams._runtime import Record
from weir.streams.ingress import REPLAY_HEADER
from weir.topics._aiokafka import read_until, retrying, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import ANSWER, INGRESS, PipelineTopics

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DeadLetterEntry",
    "DeadLetterPage",
    "DeadLetterQueue",
    "ReplayReport",
    "parse_since",
]

DEFAULT_PAGE_SIZE = 100
"""Entries ``weir dlq list`` shows when no ``--limit`` is given."""

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


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of ``DeadLetterQueue.page``."""

    entries: list[DeadLetterEntry]
    next_after: str | None
    """Pass as ``after`` for the next page; ``None`` when this page is the last."""


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
        """Every dead letter matching the filters, oldest first per step (for replays)."""
        out = [
            entry async for entry in self.scan(step=step, error_type=error_type, since_ms=since_ms)
        ]
        return await self._with_markers(out)

    async def page(
        self,
        *,
        step: str | None = None,
        error_type: str | None = None,
        since_ms: int | None = None,
        after: str | None = None,
        skip: int = 0,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> DeadLetterPage:
        """Up to ``limit`` dead letters in (step, partition, offset) order, read as a stream.

        ``after`` (an entry id, e.g. the previous page's ``next_after``) starts
        just past that entry by seeking, without reading what came before;
        ``skip`` passes over that many matching entries first.  Memory holds one
        page and the consumer's fetch buffer, however long the topics are.
        """
        if limit < 1 or skip < 0:
            raise ConfigError("a page needs limit >= 1 and skip >= 0")
        out: list[DeadLetterEntry] = []
        more = False
        # aclosing: leaving early stops the scan's consumer now, not whenever it is collected.
        scan = self.scan(step=step, error_type=error_type, since_ms=since_ms, after=after)
        async with contextlib.aclosing(scan):
            async for entry in scan:
                if skip:
                    skip -= 1
                    continue
                if len(out) == limit:
                    more = True
                    break
                out.append(entry)
        return DeadLetterPage(await self._with_markers(out), out[-1].id if more else None)

    async def scan(
        self,
        *,
        step: str | None = None,
        error_type: str | None = None,
        since_ms: int | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[DeadLetterEntry]:
        """Matching dead letters one at a time (``replayed_by`` not filled in)."""
        steps = await self.steps()
        if step is not None:
            if step not in steps:
                raise WeirError(
                    f"pipeline {self.pipeline!r} has no dead-letter topic for step {step!r}"
                    f" (it has: {', '.join(steps)})"
                )
            steps = [step]
        start = self._position(after) if after is not None else None
        async for entry in self._entries(steps, error_type, since_ms, start):
            yield entry

    async def _entries(
        self,
        steps: list[str],
        error_type: str | None,
        since_ms: int | None,
        start: tuple[str, int, int] | None,
    ) -> AsyncGenerator[DeadLetterEntry]:
        for s in steps:
            if start is not None and s < start[0]:
                continue
            topic = self.topics.dead_letter(s)
            async for record in self._stream(topic, since_ms=since_ms, after=start, step=s):
                letter = DeadLetter.from_message(
                    record.key, record.value, list(record.headers or ())
                )
                if error_type is not None and letter.error_type != error_type:
                    continue
                yield DeadLetterEntry(
                    pipeline=self.pipeline,
                    step=s,
                    partition=record.partition,
                    offset=record.offset,
                    timestamp=record.timestamp,
                    letter=letter,
                )

    def _position(self, entry_id: str) -> tuple[str, int, int]:
        match = _ID.match(entry_id)
        if match is None or match.group("pipeline") != self.pipeline:
            raise WeirError(
                f"--after {entry_id!r} is not a dead-letter id of pipeline {self.pipeline!r};"
                " ids look like <pipeline>/<step>/<partition>/<offset>"
            )
        return match.group("step"), int(match.group("partition")), int(match.group("offset"))

    async def _stream(
        self,
        topic: str,
        *,
        since_ms: int | None,
        after: tuple[str, int, int] | None,
        step: str,
    ) -> AsyncIterator[Record]:
        """``topic``'s records partition by partition, from where the filters say."""
        async with TopicAdmin(self._settings) as admin:
            count = (await admin.partitions([topic])).get(topic, 0)
        consumer = KafkaConnection.of(self._settings).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            for partition in range(count):
                first = 0
                if after is not None and after[0] == step:
                    if partition < after[1]:
                        continue
                    if partition == after[1]:
                        first = after[2] + 1
                tp = TopicPartition(topic, partition)
                # One partition at a time: the fetch buffer is the only read-ahead.
                consumer.assign([tp])
                begin, end = await _bounds(consumer, tp)
                first = max(first, begin)
                if since_ms is not None:
                    found = (await consumer.offsets_for_times({tp: since_ms})).get(tp)
                    first = max(first, found.offset if found is not None else end)
                if first >= end:
                    continue
                consumer.seek(tp, first)
                async for record in read_until(consumer, tp, end):
                    if since_ms is None or record.timestamp >= since_ms:
                        yield record
        finally:
            await stop_consumer(consumer)

    async def _with_markers(self, entries: list[DeadLetterEntry]) -> list[DeadLetterEntry]:
        """``entries`` with ``replayed_by`` filled in from the replays topic."""
        if not entries:
            return entries
        replayed = await self._replayed({e.marker_key for e in entries})
        return [dataclasses.replace(e, replayed_by=replayed.get(e.marker_key)) for e in entries]

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
        if step not in await self.steps():
            raise WeirError(f"pipeline {self.pipeline!r} has no dead-letter topic for {step!r}")
        scan = self._entries([step], None, None, (step, partition, offset - 1))
        async with contextlib.aclosing(scan):
            found = await anext(scan, None)
        if found is not None and (found.partition, found.offset) == (partition, offset):
            return (await self._with_markers([found]))[0]
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
        producer = KafkaConnection.of(self._settings).producer(
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
        tp = TopicPartition(letter.source_topic, letter.source_partition)
        consumer = KafkaConnection.of(self._settings).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            begin, end = await _bounds(consumer, tp)
            value = None
            if begin <= letter.source_offset < end:
                consumer.seek(tp, letter.source_offset)
                async for record in read_until(consumer, tp, letter.source_offset + 1):
                    value = record.value
        finally:
            await stop_consumer(consumer)
        if value is None:
            raise _NotReplayable(
                f"the dead letter is bounded and its record ({where} offset"
                f" {letter.source_offset}) is no longer there (retention)"
            )
        return bytes(value)

    def _target(
        self, entry: DeadLetterEntry, replay_id: str, value: bytes | None
    ) -> tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]:
        """``(topic, key, value, headers)`` that re-injects ``entry`` (``value``: its record)."""
        letter = entry.letter
        if value is None:
            raise _NotReplayable("the dead letter has no value")
        if entry.step == INGRESS or (
            letter.bounded and letter.source_topic == self.topics.requests
        ):
            # A request (a root step ran on the requests topic's record): it goes through
            # the ingress again.
            headers = [(REPLAY_HEADER, replay_id.encode())]
            return self.topics.requests, letter.key, value, headers
        if entry.step == ANSWER:
            raise _NotReplayable("an undecodable answers-topic message cannot be replayed")
        env = Envelope.decode(value)
        env = env.replace(
            attempt=1,
            not_before=0,
            first_failed_at=None,
            replay=replay_id,
            created_at=now_us(),
        )
        return self.topics.step(entry.step), env.request_id.encode(), env.encode(), []

    async def _replayed(self, keys: set[bytes] | None = None) -> dict[bytes, str]:
        """Marker key -> replay id, from the compacted replays topic (only ``keys``, if given)."""
        out: dict[bytes, str] = {}
        async for record in self._stream(
            self.topics.replays, since_ms=None, after=None, step=self.topics.replays
        ):
            if record.key is None or (keys is not None and record.key not in keys):
                continue
            if record.value is None:
                out.pop(record.key, None)
            else:
                out[record.key] = json.loads(record.value).get("replay", "?")
        return out


async def _bounds(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, int]:
    """``(first offset, end offset)`` of ``tp``."""
    begin = await retrying(lambda: consumer.beginning_offsets([tp]), what=f"starts of {tp}")
    end = await retrying(lambda: consumer.end_offsets([tp]), what=f"ends of {tp}")
    return int(begin[tp]), int(end[tp])


class _NotReplayable(Exception):
    """Why one dead letter cannot be replayed (reported per entry)."""
