"""The answer stage: the only writer of a pipeline's results topic.

Steps run at least once: after a crash, work past the last committed offset is
redone, so a final step may produce its output twice.  The answer stage makes
the *answer* exactly-once anyway.  It remembers, per partition, the request
ids it has answered, in a compacted changelog; each result and its
"answered" marker are written in one Kafka transaction, so after any crash
either both exist or neither does.  A duplicate that arrives later finds the
marker and is dropped.  Each answers partition has its own transactional id,
so a worker that takes a partition over fences the one that had it; taking
it over also settles any transaction the old owner left open, which is why
the answered ids are read back only after that.  Answered ids are remembered
for ``answer_dedup_window_s``: the guarantee holds for duplicates that arrive
within that window (redeliveries after a crash or rebalance arrive within
seconds to minutes).

Replays: a request that was answered with a FAILURE may be answered once more
by a dead-letter replay (its envelopes carry the replay id); a SUCCESS is final.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pydantic_core

from weir.core.errors import MessageError, OutputTooLargeError, SchemaInvalidError
from weir.core.kafka import KafkaConnection
from weir.schemas._clock import now_ms, now_us
from weir.schemas._result_codec import ResultFields
from weir.schemas.messages import Envelope, ModelCall, total_usage
from weir.streams._answer_writer import AnswerWriter
from weir.streams._runtime import Record, Runtime, make_record, merge_calls
from weir.streams.join import JoinTable, eviction_messages
from weir.streams.outbox import MAX_MESSAGE_BYTES, Abandoned, OutMessage, Owned
from weir.streams.table import ChangelogTable
from weir.topics.names import ANSWER

__all__ = ["AnswerStage"]

log = logging.getLogger("weir.answer")


class _Answered(NamedTuple):
    """A tuple of plain values: the collector stops tracking it, so the thousands a busy
    worker remembers cost full collections nothing to walk."""

    status: str
    """``S`` or ``F``."""
    replay: str | None
    at: float
    """Epoch seconds."""


def _encode(a: _Answered) -> bytes:
    return pydantic_core.to_json({"s": a.status, "r": a.replay, "t": a.at})


def _decode(raw: bytes) -> _Answered:
    body = json.loads(raw)
    return _Answered(str(body["s"]), body.get("r"), float(body["t"]))


def _admits(previous: _Answered | None, result: ResultFields) -> bool:
    if previous is None:
        return True
    if previous.status == "S":
        return False
    return result.replay is not None and result.replay != previous.replay


class AnswerStage:
    """Joins the final steps' outputs (when there are several), dedups, writes results."""

    def __init__(self, runtime: Runtime, owns: Callable[[int], bool]) -> None:
        self._rt = runtime
        self._owns = owns
        topics = runtime.topics
        self.topic = topics.answers
        self._finals = runtime.pipeline.final_steps
        self.join: JoinTable | None = None
        if runtime.pipeline.needs_result_collector:
            self.join = JoinTable(
                ANSWER,
                self._finals,
                topics.join_changelog(ANSWER),
                done_ttl_s=runtime.settings.answer_dedup_window_s,
                waiting_ttl_s=runtime.settings.join_ttl_s,
                max_waiting=runtime.settings.max_waiting_joins,
            )
        # Capped: past answered_max_per_partition the oldest ids are forgotten in memory
        # (the changelog keeps their markers); see "Limits" in the README.
        self._answered: ChangelogTable[_Answered] = ChangelogTable(
            topics.answered_changelog,
            _encode,
            _decode,
            max_per_partition=runtime.settings.answered_max_per_partition,
        )
        self._writers: dict[int, AnswerWriter] = {}

    # -- ownership ------------------------------------------------------------------

    async def assigned(self, partitions: Iterable[int]) -> None:
        partitions = list(partitions)
        # Writers first: registering the transactional ids settles whatever the previous
        # owner left open (committed or aborted), so the restore below sees all of it.
        for p in partitions:
            if p not in self._writers:
                writer = AnswerWriter(self._rt, p, self._answered, functools.partial(self._owns, p))
                await writer.start()
                self._writers[p] = writer
        window = self._rt.settings.answer_dedup_window_s
        now = time.time()
        remembered = await self._answered.restore(
            KafkaConnection.of(self._rt.settings), partitions, keep=lambda a: now - a.at < window
        )
        for p in partitions:
            self._writers[p].known_until = self._answered.ends.get(p, 0)
        waiting = 0
        if self.join is not None:
            waiting = await self.join.restore(KafkaConnection.of(self._rt.settings), partitions)
        self._report_evictions()
        log.info(
            "answer stage took partitions %s (%d answered ids remembered, %d joins waiting)",
            sorted(partitions),
            remembered,
            waiting,
        )

    def remembered(self) -> dict[int, int]:
        """Answered ids held in memory, per answers partition owned."""
        return {p: self._answered.size(p) for p in self._answered.partitions()}

    def _report_evictions(self) -> None:
        evicted = self._answered.evicted
        if evicted != self._rt.stats.answered_ids_forgotten:
            if not self._rt.stats.answered_ids_forgotten:
                log.warning(
                    "more than %d answered ids on one answers partition within the dedup"
                    " window (answered_max_per_partition): the oldest are forgotten early; a"
                    " duplicate of one of them arriving now would be answered again",
                    self._answered.max_per_partition,
                )
            self._rt.stats.answered_ids_forgotten = evicted

    async def revoked(self, partitions: Iterable[int]) -> None:
        partitions = list(partitions)
        for p in partitions:
            writer = self._writers.pop(p, None)
            if writer is not None:
                await writer.stop()
        self._answered.drop(partitions)
        if self.join is not None:
            self.join.drop(partitions)

    async def stop(self) -> None:
        await self.revoked(list(self._writers))

    def expire(self) -> list[OutMessage]:
        """Tombstones of expired entries, and FAILUREs for evicted joins (via the answers
        topic, so each is answered like any other)."""
        if self.join is None:
            return []
        return self.join.expire() + eviction_messages(self._rt, self.join)

    # -- one record -----------------------------------------------------------------

    async def take(self, message: OutMessage, partition: int) -> bool:
        """Answer a final step's message of this worker without the answers-topic hop.

        Only for a partition whose answered ids are restored here (``owns``) and whose
        writer runs; the result and its marker go out in the same transaction as from
        the topic, so a duplicate is dropped the same way.  ``False``: not taken (not
        ours, or given up while it was written): send it to the answers topic.
        """
        if not self._owns(partition) or partition not in self._writers:
            return False
        # Not encoded when handed over (``OutMessage.decoded``): the record only stands
        # for where the envelope would have been read from.
        record = make_record(
            self.topic,
            partition,
            -1,
            now_ms(),
            message.key,
            message.value or b"",
            list(message.headers or ()),
        )
        try:
            decoded = message.decoded if isinstance(message.decoded, Envelope) else None
            await self.handle(record, lambda: self._owns(partition), decoded)
        except Abandoned:
            return False
        return True

    async def handle(self, record: Record, owned: Owned, decoded: Envelope | None = None) -> None:
        """Answer one envelope of the answers topic (``decoded``: it, handed over in process)."""
        rt = self._rt
        try:
            env = decoded if decoded is not None else Envelope.decode(record.value)
            if env.pipeline != rt.pipeline.name:
                raise SchemaInvalidError(f"envelope of pipeline {env.pipeline!r} on {record.topic}")
        except MessageError as exc:
            rt.stats.dead_lettered += 1
            dead = rt.dead_letters.message(
                rt.topics.dead_letter(ANSWER), record, step=ANSWER, error=exc
            )
            await rt.outbox.send_all([dead], owned=owned)
            return
        result, joined = self._result(record, env)
        if result is not None:
            await self._answer(record.partition, result)
        if self.join is not None and env.kind != "FAILURE":
            # A duplicate writes nothing (see ``StepRunner._gather``): the done marker it
            # found may be of a join whose answer is still being written.
            changes = (
                self.join.changelog_message(record.partition, env.request_id) if joined else []
            )
            changes += eviction_messages(rt, self.join)
            await rt.outbox.send_all(changes, owned=owned)

    def _result(self, record: Record, env: Envelope) -> tuple[ResultFields | None, bool]:
        """The result ``env`` makes (``None``: a join still waits, or a duplicate), and whether
        it changed the join table of several final steps."""
        if env.kind == "FAILURE":
            return self._build(env, "FAILURE", None, list(env.path), env.calls), False
        if self.join is None:
            output = env.payload if env.kind == "VALUE" else None
            return self._build(env, "SUCCESS", output, list(env.path), env.calls), False
        state, got = self.join.offer(record.partition, env)
        if state == "duplicate":
            self._rt.stats.duplicates += 1
            return None, False
        if state == "waiting":
            return None, True
        produced = {s: got[s] for s in self._finals if got[s].kind == "VALUE"}
        if len(produced) == 1:
            output = next(iter(produced.values())).payload
        elif produced:
            output = json.dumps({s: json.loads(e.payload or "null") for s, e in produced.items()})
        else:
            output = None
        envs = list(got.values())
        path = self._rt.merge_paths(e.path for e in envs)
        calls = merge_calls(*(e.calls for e in envs))
        return self._build(env, "SUCCESS", output, path, calls), True

    def _build(
        self,
        env: Envelope,
        status: str,
        output: str | None,
        path: list[str],
        calls: list[ModelCall],
    ) -> ResultFields:
        tokens_in, tokens_out, cost = total_usage(calls)
        completed = now_ms()
        return ResultFields(
            request_id=env.request_id,
            pipeline=env.pipeline,
            status=status,  # type: ignore[arg-type]
            output=output,
            error_type=env.error_type,
            error_message=env.error_message,
            failed_step=env.failed_step,
            path=path,
            submitted_at=env.submitted_at,
            completed_at=completed,
            latency_ms=now_us() / 1000 - env.submitted_at,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=cost,
            calls=[c.to_record() for c in calls],
            replay=env.replay,
        )

    async def _answer(self, p: int, result: ResultFields) -> None:
        rt = self._rt
        previous = self._answered.get(p, result.request_id)
        if not _admits(previous, result):
            rt.stats.duplicates += 1
            return
        writer = self._writers.get(p)
        if writer is None:
            raise Abandoned(f"answers partition {p} is not owned")
        wire = result.to_wire(rt.settings.results_format, schema_id=rt.result_schema_id)
        if len(wire) > MAX_MESSAGE_BYTES:
            result = dataclasses.replace(
                result,
                status="FAILURE",
                output=None,
                calls=[],
                error_type=OutputTooLargeError.error_type,
                error_message=f"the result is {len(wire)} bytes; Kafka takes at most"
                f" {MAX_MESSAGE_BYTES}",
            )
            wire = result.to_wire(rt.settings.results_format, schema_id=rt.result_schema_id)
        # Claimed before the write, so a concurrent duplicate is dropped right away.
        claim = _Answered("S" if result.status == "SUCCESS" else "F", result.replay, time.time())
        self._answered.put(p, result.request_id, claim)
        try:
            await writer.write(
                result.request_id,
                [
                    OutMessage(
                        rt.topics.results,
                        result.request_id.encode(),
                        wire,
                        None,
                        p,
                    ),
                    OutMessage(
                        rt.topics.answered_changelog,
                        result.request_id.encode(),
                        _encode(claim),
                        None,
                        p,
                    ),
                ],
            )
        except BaseException:
            if previous is None:
                self._answered.pop(p, result.request_id)
            else:
                self._answered.put(p, result.request_id, previous)
            raise
        rt.stats.results += 1
        self._report_evictions()
        cutoff = time.time() - rt.settings.answer_dedup_window_s
        writer.forget(self._answered.oldest(p, lambda a: a.at < cutoff, limit=100), self._answered)
