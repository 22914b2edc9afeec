"""Fan-in: partial inputs of a step, kept per request id in a changelog-backed table."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from schemas.messages import Envelope
from streams.outbox import OutMessage
from streams.table import ChangelogTable

__all__ = ["JoinTable"]

OfferState = Literal["waiting", "complete", "duplicate"]


@dataclass(slots=True)
class _Join:
    since: float
    """Epoch seconds: first input's arrival, or the completion for a finished join."""
    inputs: dict[str, Envelope] | None
    """``None`` once the join completed: later copies of its inputs are duplicates."""


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
    (one branch failed and was never replayed) is dropped the same way.

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
    ) -> None:
        self.step = step
        self.expected = frozenset(expected)
        self.changelog = changelog
        self._done_ttl = done_ttl_s
        self._waiting_ttl = waiting_ttl_s
        self._table: ChangelogTable[_Join] = ChangelogTable(changelog, _encode, _decode)

    def offer(self, partition: int, envelope: Envelope) -> tuple[OfferState, dict[str, Envelope]]:
        """Add one input; on ``complete`` the second value holds every input."""
        entry = self._table.get(partition, envelope.request_id)
        if entry is None:
            entry = _Join(time.time(), {})
            self._table.put(partition, envelope.request_id, entry)
        if entry.inputs is None:
            return "duplicate", {}
        entry.inputs[envelope.source] = envelope
        if self.expected.issubset(entry.inputs):
            inputs = entry.inputs
            self._table.put(partition, envelope.request_id, _Join(time.time(), None))
            return "complete", inputs
        return "waiting", {}

    def changelog_message(self, partition: int, request_id: str) -> list[OutMessage]:
        """The changelog write of the request's entry (partial inputs or done marker)."""
        entry = self._table.get(partition, request_id)
        if entry is None:
            return []
        return [OutMessage(self.changelog, request_id.encode(), _encode(entry), None, partition)]

    def expire(self, now: float | None = None) -> list[OutMessage]:
        """Forget done markers and abandoned joins past their TTL; return their tombstones."""
        now = time.time() if now is None else now
        tombstones = []
        for partition in self._table.partitions():
            for request_id, entry in self._table.items(partition):
                ttl = self._done_ttl if entry.inputs is None else self._waiting_ttl
                if now - entry.since < ttl:
                    continue
                self._table.pop(partition, request_id)
                tombstones.append(
                    OutMessage(self.changelog, request_id.encode(), None, None, partition)
                )
        return tombstones

    def waiting(self, partition: int | None = None) -> int:
        """Joins still missing an input."""
        parts = self._table.partitions() if partition is None else [partition]
        return sum(
            1 for p in parts for _, entry in self._table.items(p) if entry.inputs is not None
        )

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns."""
        self._table.drop(partitions)

    async def restore(self, bootstrap: str, partitions: Iterable[int]) -> int:
        """Rebuild ``partitions`` from the changelog; return how many joins are waiting."""
        partitions = list(partitions)
        now = time.time()

        def keep(entry: _Join) -> bool:
            ttl = self._done_ttl if entry.inputs is None else self._waiting_ttl
            return now - entry.since < ttl

        await self._table.restore(bootstrap, partitions, keep=keep)
        return sum(self.waiting(p) for p in partitions)
