"""Fan-in: partial inputs of a step, kept per request id in a changelog-backed table."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from weir.core.errors import JoinEvictedError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Envelope, now_us
from weir.streams.outbox import OutMessage
from weir.streams.table import ChangelogTable

if TYPE_CHECKING:
    from weir.streams._runtime import Runtime

__all__ = ["Evicted", "JoinTable", "eviction_messages"]

OfferState = Literal["waiting", "complete", "duplicate"]


@dataclass(slots=True)
class _Join:
    since: float
    """Epoch seconds: first input's arrival, or the completion for a finished join."""
    inputs: dict[str, Envelope] | None
    """``None`` once the join completed: later copies of its inputs are duplicates."""


@dataclass(slots=True, frozen=True)
class Evicted:
    """A join that stopped waiting: its request ends with a ``join_evicted`` FAILURE."""

    partition: int
    request_id: str
    arrived: dict[str, Envelope]
    missing: tuple[str, ...]
    reason: str


def _encode(entry: _Join) -> bytes:
    if entry.inputs is None:
        return json.dumps({"done": entry.since}).encode()
    inputs = {src: env.to_dict() for src, env in entry.inputs.items()}
    return json.dumps({"since": entry.since, "inputs": inputs}).encode()


def _decode(raw: bytes) -> _Join:
    body = json.loads(raw)
    if "done" in body:
        return _Join(float(body["done"]), None)
    inputs = {src: Envelope.from_dict(fields) for src, fields in body["inputs"].items()}
    return _Join(float(body.get("since", time.time())), inputs)


class JoinTable:
    """Inputs that arrived for a join step, by input partition and request id.

    Every change is written (by the caller, with the input's other messages) to
    a compacted changelog topic, partition for partition with the step's input
    topic, before the input message counts as done.  A completed join leaves a
    *done* marker for ``done_ttl_s`` so that a
    redelivered copy of one of its inputs (at-least-once delivery after a
    crash) is recognised instead of opening a join that never completes; then
    a tombstone removes it.  A join still incomplete after ``waiting_ttl_s``
    (one branch failed and was never replayed), or the oldest one once more
    than ``max_waiting`` wait, is *evicted*: it becomes a done marker (so a
    late input is a duplicate, not a new wait) and ``take_evicted`` hands it
    to the caller, which ends its request with a FAILURE.  Memory is bounded
    by ``max_waiting`` waiting joins plus the done markers of ``done_ttl_s``.

    Only the event loop's own thread touches the table, and ``offer`` is
    synchronous, so exactly one of several concurrent inputs completes a join.
    """

    def __init__(
        self,
        step: str,
        expected: Iterable[str],
        changelog: str,
        *,
        done_ttl_s: float,
        waiting_ttl_s: float,
        max_waiting: int = 100_000,
    ) -> None:
        self.step = step
        self.order = tuple(expected)
        self.expected = frozenset(self.order)
        self.changelog = changelog
        self._done_ttl = done_ttl_s
        self._waiting_ttl = waiting_ttl_s
        self._max_waiting = max_waiting
        self._table: ChangelogTable[_Join] = ChangelogTable(changelog, _encode, _decode)
        self._waiting: dict[tuple[int, str], None] = {}
        """Waiting joins, oldest first (a dict keeps insertion order)."""
        self._evicted: list[Evicted] = []

    def offer(self, partition: int, envelope: Envelope) -> tuple[OfferState, dict[str, Envelope]]:
        """Add one input; on ``complete`` the second value holds every input."""
        entry = self._table.get(partition, envelope.request_id)
        if entry is None:
            entry = _Join(time.time(), {})
            self._table.put(partition, envelope.request_id, entry)
            self._waiting[(partition, envelope.request_id)] = None
            while len(self._waiting) > self._max_waiting:
                p, rid = next(iter(self._waiting))
                self._evict(p, rid, f"more than {self._max_waiting} joins were waiting")
        if entry.inputs is None:
            return "duplicate", {}
        entry.inputs[envelope.source] = envelope
        if self.expected.issubset(entry.inputs):
            inputs = entry.inputs
            self._table.put(partition, envelope.request_id, _Join(time.time(), None))
            self._waiting.pop((partition, envelope.request_id), None)
            return "complete", inputs
        return "waiting", {}

    def _evict(self, partition: int, request_id: str, reason: str) -> None:
        self._waiting.pop((partition, request_id), None)
        entry = self._table.get(partition, request_id)
        if entry is None or entry.inputs is None:
            return
        self._table.put(partition, request_id, _Join(time.time(), None))
        missing = tuple(s for s in self.order if s not in entry.inputs)
        self._evicted.append(Evicted(partition, request_id, entry.inputs, missing, reason))

    def take_evicted(self) -> list[Evicted]:
        """Joins evicted since the last call (their changelog entries are done markers now)."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def changelog_message(self, partition: int, request_id: str) -> list[OutMessage]:
        """The changelog write of the request's entry (partial inputs or done marker).

        For the input whose ``offer`` changed the entry, never for a ``duplicate``: the done
        marker it found may be of a join completed a moment ago whose outputs are not yet
        written, and a marker written before them could outlive a crash that loses them.
        """
        entry = self._table.get(partition, request_id)
        if entry is None:
            return []
        value = _encode(entry)
        done = entry.inputs is None
        return [OutMessage(self.changelog, request_id.encode(), value, None, partition, after=done)]

    def expire(self, now: float | None = None) -> list[OutMessage]:
        """Forget done markers past their TTL (returning their tombstones); evict joins
        that waited longer than theirs (see ``take_evicted``)."""
        now = time.time() if now is None else now
        tombstones = []
        for partition in self._table.partitions():
            for request_id, entry in self._table.items(partition):
                ttl = self._done_ttl if entry.inputs is None else self._waiting_ttl
                if now - entry.since < ttl:
                    continue
                if entry.inputs is not None:
                    self._evict(partition, request_id, f"it waited longer than {ttl:g}s")
                    continue
                self._table.pop(partition, request_id)
                tombstones.append(
                    OutMessage(self.changelog, request_id.encode(), None, None, partition)
                )
        return tombstones

    def waiting(self, partition: int | None = None) -> int:
        """Joins still missing an input."""
        if partition is None:
            return len(self._waiting)
        return sum(1 for p, _ in self._waiting if p == partition)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        gone = set(partitions)
        self._table.drop(gone)
        self._waiting = {k: None for k in self._waiting if k[0] not in gone}
        self._evicted = [e for e in self._evicted if e.partition not in gone]

    async def restore(self, kafka: KafkaConnection, partitions: Iterable[int]) -> int:
        """Rebuild ``partitions`` from the changelog; return how many joins are waiting."""
        partitions = list(partitions)
        now = time.time()

        def keep(entry: _Join) -> bool:
            ttl = self._done_ttl if entry.inputs is None else self._waiting_ttl
            return now - entry.since < ttl

        await self._table.restore(kafka, partitions, keep=keep)
        self._waiting = {k: None for k in self._waiting if k[0] not in set(partitions)}
        restored = sorted(
            (entry.since, p, rid)
            for p in partitions
            for rid, entry in self._table.items(p)
            if entry.inputs is not None
        )
        for _, p, rid in restored:
            self._waiting[(p, rid)] = None
        while len(self._waiting) > self._max_waiting:
            p, rid = next(iter(self._waiting))
            self._evict(p, rid, f"more than {self._max_waiting} joins were waiting")
        return sum(self.waiting(p) for p in partitions)


def eviction_messages(rt: Runtime, table: JoinTable) -> list[OutMessage]:
    """For each join ``table`` evicted: its done marker, and its request's FAILURE."""
    out: list[OutMessage] = []
    for e in table.take_evicted():
        rt.stats.failed(JoinEvictedError.error_type)
        base = next(iter(e.arrived.values()), None)
        message = (
            f"step {table.step!r} stopped waiting for {', '.join(map(repr, e.missing))}"
            f" (it had {', '.join(map(repr, e.arrived)) or 'nothing'}): {e.reason}"
        )
        out += table.changelog_message(e.partition, e.request_id)
        out.append(
            rt.failure_envelope(
                request_id=e.request_id,
                step=table.step,
                error_type=JoinEvictedError.error_type,
                error_message=message,
                base=base,
                calls=[],
                traceparent=base.traceparent if base is not None else None,
                created_at=now_us(),
            )
        )
    return out
