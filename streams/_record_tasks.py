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
from weir.schemas._clock import now_us
from weir.streams._attempt_trace import AttemptTrace
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
_Work = tuple[str, Record, Callable[[], Awaitable[Outcome]], Landing | None]
"""A record to prepare: its stage, the record, the call that prepares it, and the landing
it was sent as when the batch runs it in place."""
_Done = tuple[str, Record, Outcome, Landing | None]
"""A prepared record: its stage, the record, what it must write, and its landing."""

_Held = tuple[Landing, OutMessage, AttemptTrace]
"""A trace event held back until its record lands: the landing, its message, the event."""

RUN_AHEAD_MAX_BYTES = 100_000
"""A round whose messages are all at most this large runs its in-place outputs before its
send is acknowledged (``RecordTasks._runs_ahead``): a tenth of what Kafka takes by default."""


async def _all_sent(sending: list[asyncio.Task[list[Landing]]]) -> None:
    """Until every send run ahead is over; then the first failure is raised."""
    await asyncio.wait(sending)
    for task in sending:
        if task.cancelled():
            raise Abandoned("a send of the batch was cancelled")
        error = task.exception()
        if error is not None:
            raise error


def _placed(message: OutMessage, event: AttemptTrace, landing: Landing) -> OutMessage:
    """A trace event's message naming where its record landed."""
    event.partition, event.offset = landing.partition, landing.offset
    return message.with_value(event.encode())


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
        Outputs for steps run in place (``weir.streams._in_place``) are run here, round
        after round: at once when the round's messages are all small (``_runs_ahead``),
        its send going on in a task, else once acknowledged.  The batch's offsets are
        finished after every send is acknowledged.
        """
        prepare = route.prepare
        assert prepare is not None

        def owned() -> bool:
            return tp in self._partitions.assigned

        sending: list[asyncio.Task[list[Landing]]] = []
        held: list[_Held] = []
        in_place = self._in_place
        if len(records) > self._runtime.settings.in_place_max_batch:
            in_place = None  # a worker under load: reading back costs less (see the setting)
        try:
            work: list[_Work] = [(route.stage, r, partial(prepare, r), None) for r in records]
            stats = self._runtime.stats
            while work:
                done = await self._prepare(tp, work, owned)
                messages = self._messages(done, held)
                landings: list[Landing] = []
                if in_place is not None:
                    messages, landings = in_place.mark(messages)
                if landings and self._runs_ahead(messages):
                    send = self._send(tp, done, messages, landings, owned)
                    sending.append(asyncio.create_task(send))
                    stats.ran_ahead += len(landings)
                else:
                    landings = await self._send(tp, done, messages, landings, owned)
                stats.in_place += len(landings)
                work = [self._next(ld) for ld in landings]
            if sending:
                await _all_sent(sending)
            if held:
                await self._send_held(held, owned)
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
            for task in sending:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: the first failure was raised already
            self._partitions.finished(tp, slots)

    def _runs_ahead(self, messages: list[OutMessage]) -> bool:
        """Whether the next round may run before this one's send is acknowledged.

        Only when every message is small: the broker then refuses none as too large, so
        the send either lands or is abandoned with the batch; a refused send would have
        to go again unmarked after the next step ran (run twice).  Not while spans are
        recorded: a span names its record's offset when it starts.
        """
        if self._runtime.tracing.recording:
            return False
        return all(m.value is not None and len(m.value) <= RUN_AHEAD_MAX_BYTES for m in messages)

    def _next(self, landing: Landing) -> _Work:
        """The work of running ``landing``'s step on its record (landed or on its way)."""
        in_place = self._in_place
        assert in_place is not None
        record = landing.record()
        run = partial(in_place.stage(landing), record, landing.envelope, landed=landing.wait)
        return (landing.stage, record, run, landing)

    async def _prepare(self, tp: TopicPartition, work: list[_Work], owned: Owned) -> list[_Done]:
        """Prepare each record of a round, in order (parking the ones that raise)."""
        self._runtime.stats.received += len(work)
        done: list[_Done] = []
        for stage, record, prepare, landing in work:
            try:
                done.append((stage, record, await prepare(), landing))
            except (asyncio.CancelledError, Abandoned):
                raise
            except Exception as exc:
                await self._failed(tp, stage, record, exc, owned, landing)
        return done

    @staticmethod
    def _messages(done: list[_Done], held: list[_Held]) -> list[OutMessage]:
        """A round's messages, less the trace events naming a record not landed yet (held)."""
        messages: list[OutMessage] = []
        for _, _, outcome, landing in done:
            if landing is None:
                messages += outcome.messages()
                continue
            for m in outcome.messages():
                event = m.decoded
                if isinstance(event, AttemptTrace) and event.offset < 0:
                    if landing.settled:
                        m = _placed(m, event, landing)
                    else:
                        held.append((landing, m, event))
                        continue
                messages.append(m)
        return messages

    async def _send(
        self,
        tp: TopicPartition,
        done: list[_Done],
        messages: list[OutMessage],
        landings: list[Landing],
        owned: Owned,
    ) -> list[Landing]:
        """Send a round's messages; the landings whose steps run next.

        When the send is refused, each record's outcome goes on its own, unmarked: what
        must run next goes by its topic (a marked copy that did land is skipped there,
        and this one is read instead).
        """
        outbox = self._runtime.outbox
        marked = landings
        try:
            await outbox.send_all(self._pack(messages), owned=owned)
        except (asyncio.CancelledError, Abandoned):
            raise
        except Exception:
            landings = []
            for stage, record, outcome, landed in done:
                try:
                    if landed is not None:
                        await landed.wait()  # its dead letter names where it is
                    await outcome.deliver(outbox, owned)
                except (asyncio.CancelledError, Abandoned):
                    raise
                except Exception as exc:
                    await self._failed(tp, stage, record, exc, owned, landed)
        finally:
            # Landed ones are settled already; the rest never will be (refused, abandoned).
            for landing in marked:
                landing.settle()
        self._runtime.stats.completed += len(done)
        return landings

    async def _send_held(self, held: list[_Held], owned: Owned) -> None:
        """Send the trace events held back until their records landed (every send is over)."""
        messages = [_placed(m, event, landing) for landing, m, event in held]
        try:
            await self._runtime.outbox.send_all(self._pack(messages), owned=owned)
        except (asyncio.CancelledError, Abandoned):
            raise
        except Exception:
            log.exception("could not send %d trace event(s); letting them go", len(messages))

    async def _failed(
        self,
        tp: TopicPartition,
        stage: str,
        record: Record,
        exc: Exception,
        owned: Owned,
        landing: Landing | None = None,
    ) -> None:
        """A record whose handling raised: park it (see ``process``)."""
        if landing is not None:
            await landing.wait()  # its dead letter names where it is
        if isinstance(exc, WeirError):
            log.warning("could not finish %s@%d: %s", tp, record.offset, exc)
        else:
            log.exception("unexpected error handling %s@%d", tp, record.offset)
        await self.park(stage, record, exc, owned)
