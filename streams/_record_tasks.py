"""Running fetched records: one task per record, or one per batch of an inline stage.

Every record ends finished (its offset may be committed) or handed back (cancelled, or
its partition lost: redelivered); one whose handling raises is dead-lettered (parked) so
it cannot hold its partition back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from functools import partial

from aiokafka import TopicPartition

from weir.core.errors import WeirError
from weir.schemas.messages import now_us
from weir.streams._in_place import InPlace, Landing
from weir.streams._partitions import Partitions
from weir.streams._runtime import Record, Runtime, guess_request_id
from weir.streams.dead_letter import error_type_of
from weir.streams.offsets import PartitionOffsets
from weir.streams.outbox import Abandoned, Outcome, OutMessage, Owned
from weir.topics.names import ANSWER

__all__ = ["Handler", "Preparer", "RecordTasks", "Route"]

log = logging.getLogger("weir.worker")

Handler = Callable[[Record, Owned], Awaitable[None]]
Preparer = Callable[[Record], Awaitable[Outcome]]
_Work = tuple[str, Record, Callable[[], Awaitable[Outcome]]]
"""A record to prepare: its stage, the record, and the call that prepares it."""


@dataclass(frozen=True)
class Route:
    """The stage a topic's records go to."""

    stage: str
    handle: Handler
    delayed: bool = False
    """A retry topic: records wait until their ``weir.not_before`` time."""
    prepare: Preparer | None = None
    """Set when the stage never waits on its own (inline steps): a fetched batch of its
    records runs in one task and is sent once, not as a task and a send per record."""


class RecordTasks:
    """Runs the records the fetch loop takes, and parks the ones whose handling raised."""

    def __init__(
        self,
        runtime: Runtime,
        partitions: Partitions,
        pack: Callable[[list[OutMessage]], list[OutMessage]],
        in_place: InPlace | None = None,
    ) -> None:
        self._runtime = runtime
        self._partitions = partitions
        self._pack = pack
        """Packs a batch's trace events per trace partition (``weir.streams._trace_batch``)."""
        self._in_place = in_place
        """Runs the next steps of a batch's outputs in its task (``weir.streams._in_place``)."""

    def start(self, tp: TopicPartition, record: Record, route: Route) -> None:
        """Run one record in its own task (its slot already taken)."""
        tracker = self._partitions.offsets[tp]
        tracker.track(record.offset)
        task = asyncio.create_task(self.process(tp, record, route.handle, route.stage, tracker))
        self._partitions.inflight[tp].add(task)

    def start_batch(
        self,
        tp: TopicPartition,
        records: list[Record],
        route: Route,
        slots: int,
        *,
        skipped: Collection[int] = (),
    ) -> None:
        """Run a batch of an inline stage in one task (its ``slots`` already taken).

        ``skipped``: offsets among ``records`` that this worker ran in place
        (``InPlace.skips``): finished at once, not run again.
        """
        tracker = self._partitions.offsets[tp]
        for record in records:
            tracker.track(record.offset)
        if skipped:
            for offset in skipped:
                tracker.finish(offset)
            records = [r for r in records if r.offset not in skipped]
        if not records:
            return
        task = asyncio.create_task(self.process_batch(tp, records, route, tracker, slots))
        self._partitions.inflight[tp].add(task)

    def skips(self, record: Record) -> bool:
        """A record this worker marked and ran in place (see ``weir.streams._in_place``)."""
        return self._in_place is not None and self._in_place.skips(record)

    async def park(self, stage: str, record: Record, error: Exception, owned: Owned) -> None:
        """Dead-letter a record whose handling raised unexpectedly.

        Its request is answered with a FAILURE when its id can be read, so the
        client is not left waiting (not from the answer stage itself, which
        would only be handed the failure again).  A record that cannot go to
        the dead-letter topic as it is (too large, refused) goes in its bounded
        form; one that cannot go at all is logged with its coordinates and let
        go, so that no record holds its partition back for good.
        """
        error_type = error_type_of(error)
        self._runtime.stats.dead_lettered += 1
        self._runtime.stats.failed(error_type)
        letters = self._runtime.dead_letters
        topic = self._runtime.topics.dead_letter(stage)
        request_id = guess_request_id(record)
        failure = []
        if stage != ANSWER and request_id is not None:
            failure.append(
                self._runtime.failure_envelope(
                    request_id=request_id,
                    step=stage,
                    error_type=error_type,
                    error_message=f"weir failed handling the message: {type(error).__name__}"
                    if error_type == "internal_error"
                    else str(error),
                    base=None,
                    calls=[],
                    traceparent=None,
                    created_at=now_us(),
                )
            )
        # A letter the topic refuses as too large goes in its bounded form (the outbox
        # sends its fallback); what cannot go at all is let go after the patience.
        letter = letters.message(topic, record, step=stage, error=error, request_id=request_id)
        patience = self._runtime.settings.dead_letter_patience_s
        try:
            async with asyncio.timeout(patience):
                await self._runtime.outbox.send_all([letter, *failure], owned=owned)
            return
        except (asyncio.CancelledError, Abandoned):
            raise
        except TimeoutError:
            log.error(
                "could not dead-letter %s@%d within %gs; letting it go (it stays on its"
                " topic until retention removes it)",
                record.topic,
                record.offset,
                patience,
            )
        except Exception as exc:
            log.error(
                "dead letter of %s@%d refused (%s); letting it go", record.topic, record.offset, exc
            )
        self._runtime.stats.dead_letter_failures += 1

    async def process(
        self,
        tp: TopicPartition,
        record: Record,
        handle: Handler,
        stage: str,
        tracker: PartitionOffsets,
    ) -> None:
        self._runtime.stats.received += 1

        def owned() -> bool:
            return tp in self._partitions.assigned

        try:
            try:
                await handle(record, owned)
            except (asyncio.CancelledError, Abandoned):
                raise
            except Exception as exc:
                # A bug in weir itself, or a dead letter its handler could not write.  Left
                # unfinished, this record would hold back the partition's commits for good
                # and fail again after every restart; park it.
                await self._failed(tp, stage, record, exc, owned)
            self._runtime.stats.completed += 1
            # The tracker this record was taken under: after a re-assignment the partition
            # has a new one, which this record must not advance.
            tracker.finish(record.offset)
        except (asyncio.CancelledError, Abandoned):
            pass  # not finished: the offset stays uncommitted and is redelivered
        except Exception:
            # Redelivering would fail the same way after every restart: let it go, loudly.
            log.exception("could not dead-letter %s@%d; letting it go", tp, record.offset)
            self._runtime.stats.dead_letter_failures += 1
            tracker.finish(record.offset)
        finally:
            self._partitions.finished(tp, 1)

    async def process_batch(
        self,
        tp: TopicPartition,
        records: list[Record],
        route: Route,
        tracker: PartitionOffsets,
        slots: int,
    ) -> None:
        """Run a batch of records, then send all they must write at once.

        The same guarantees as ``process`` per record: a record whose handling raises is
        parked alone; when the batch's send is refused (a message too large), every
        record's outcome is delivered on its own, so only the offending request fails.
        Outputs for steps run in place (``weir.streams._in_place``) are run here once
        acknowledged, round after round; the batch's offsets are finished after the last.
        """
        prepare = route.prepare
        assert prepare is not None

        def owned() -> bool:
            return tp in self._partitions.assigned

        try:
            landings = await self._round(
                tp, [(route.stage, r, partial(prepare, r)) for r in records], owned
            )
            while landings:
                in_place = self._in_place
                assert in_place is not None
                work: list[_Work] = []
                for ld in landings:
                    record = ld.record()
                    work.append(
                        (ld.stage, record, partial(in_place.stage(ld), record, ld.envelope))
                    )
                landings = await self._round(tp, work, owned)
            for record in records:
                tracker.finish(record.offset)
        except (asyncio.CancelledError, Abandoned):
            pass  # not finished: the offsets stay uncommitted and are redelivered
        except Exception:
            log.exception("could not dead-letter a record of %s; letting the batch go", tp)
            self._runtime.stats.dead_letter_failures += 1
            for record in records:
                tracker.finish(record.offset)
        finally:
            self._partitions.finished(tp, slots)

    async def _round(
        self,
        tp: TopicPartition,
        work: list[_Work],
        owned: Owned,
    ) -> list[Landing]:
        """Prepare each record (in order), send everything; the outputs to run in place next."""
        stats = self._runtime.stats
        stats.received += len(work)
        outbox = self._runtime.outbox
        outcomes: list[tuple[str, Record, Outcome]] = []
        for stage, record, prepare in work:
            try:
                outcomes.append((stage, record, await prepare()))
            except (asyncio.CancelledError, Abandoned):
                raise
            except Exception as exc:
                await self._failed(tp, stage, record, exc, owned)
        messages = [m for *_, outcome in outcomes for m in outcome.messages()]
        landings: list[Landing] = []
        if self._in_place is not None:
            messages, landings = self._in_place.mark(messages)
        try:
            await outbox.send_all(self._pack(messages), owned=owned)
        except (asyncio.CancelledError, Abandoned):
            raise
        except Exception:
            # Each on its own, unmarked: what must run next goes by its topic (a marked
            # copy that did land is skipped here, and this one is read instead).
            landings = []
            for stage, record, outcome in outcomes:
                try:
                    await outcome.deliver(outbox, owned)
                except (asyncio.CancelledError, Abandoned):
                    raise
                except Exception as exc:
                    await self._failed(tp, stage, record, exc, owned)
        stats.completed += len(work)
        return landings

    async def _failed(
        self, tp: TopicPartition, stage: str, record: Record, exc: Exception, owned: Owned
    ) -> None:
        """A record whose handling raised: park it (see ``process``)."""
        if isinstance(exc, WeirError):
            log.warning("could not finish %s@%d: %s", tp, record.offset, exc)
        else:
            log.exception("unexpected error handling %s@%d", tp, record.offset)
        await self.park(stage, record, exc, owned)
