"""One step as a stream processor: join its inputs, run an attempt, route what comes out.

An attempt ends in exactly one of:

* **emitted**: the output goes to the step's dependents (or the answer stage);
* **retry_scheduled**: the inputs go to the step's delayed retry topic;
* **fallback**: attempts are exhausted and the step's ``Fallback`` is emitted;
* **dead_lettered**: the input goes to the step's dead-letter topic and the
  answer stage is told the request failed here.

Every attempt also emits one trace event; all of an attempt's messages are
sent together and acknowledged before its input offset may be committed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from weir.core.errors import (
    JoinInputSkippedError,
    MessageError,
    OutputTooLargeError,
    SchemaInvalidError,
    WeirError,
)
from weir.schemas._clock import now_ms
from weir.schemas.messages import Envelope
from weir.streams._attempt import Attempt, TooLarge
from weir.streams._attempt_trace import AttemptTrace
from weir.streams._emitter import Emitter
from weir.streams._failures import NOT_BEFORE_HEADER, Failures
from weir.streams._runtime import TRACE_ERROR_MAX_BYTES, Record, Runtime, merge_calls
from weir.streams.cache import StepCache
from weir.streams.context import AttemptScope
from weir.streams.conversation_store import ConversationStore
from weir.streams.dependencies import join_skipped_message
from weir.streams.executor import StepExecutor, encode_output, split_branch
from weir.streams.join import JoinTable, eviction_messages
from weir.streams.outbox import Outcome, OutMessage, Owned
from weir.streams.review import Escalate
from weir.streams.tracing import mark_failed, span_ids, traceparent_of

__all__ = ["NOT_BEFORE_HEADER", "StepRunner"]

log = logging.getLogger("weir.worker")

_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


class StepRunner:
    """Handles the input and retry topics of one step."""

    def __init__(self, runtime: Runtime, step: str, executor: StepExecutor) -> None:
        self._rt = runtime
        pipeline = runtime.pipeline
        self.step = pipeline.steps[step]
        self.name = step
        self._executor = executor
        self._out = Emitter(runtime, step)
        self._failures = Failures(runtime, step, executor, self._out)
        self.cache: StepCache | None = None
        if self.step.cache is not None:
            self.cache = StepCache(
                runtime.settings,
                self.step.cache,
                topic=runtime.topics.cache(step),
                step=step,
            )
        self.conversations: ConversationStore | None = None
        if self.step.conversation is not None:
            self.conversations = ConversationStore(
                runtime.settings,
                self.step.conversation,
                topic=runtime.topics.conversation(step),
                step=step,
            )
        self._lag = functools.partial(runtime.lag, step)
        self.join: JoinTable | None = None
        if self.step.is_join:
            self.join = JoinTable(
                step,
                self.step.depends_on,
                runtime.topics.join_changelog(step),
                done_ttl_s=runtime.settings.answer_dedup_window_s,
                waiting_ttl_s=runtime.settings.join_ttl_s,
                max_waiting=runtime.settings.max_waiting_joins,
            )

    @property
    def topics(self) -> list[str]:
        """The step's input topic, then its retry topics."""
        t, tiers = self._rt.topics, self._failures.tiers
        return [t.step(self.name)] + [t.retry(self.name, n) for n in range(1, tiers + 1)]

    # -- one record -----------------------------------------------------------------

    @property
    def batchable(self) -> bool:
        """Its attempts never wait (a synchronous ``inline=True`` step): a fetched batch of
        its records is run in one go, not as a task per record."""
        return self.step.inline and not self.step.is_async and not self.step.log_io

    async def handle(self, record: Record, owned: Owned) -> None:
        outcome = await self.prepare(record)
        await outcome.deliver(self._rt.outbox, owned)

    async def prepare(
        self,
        record: Record,
        decoded: Envelope | None = None,
        *,
        landed: Callable[[], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Run the record's attempt (if it completes one); return what it must write.

        ``decoded``: the record's envelope, when the caller has it as an object already
        (the ingress, for a root step run on the request's record).  ``landed``: awaited
        before a failure names the record's offset, when the record may be on its way
        still (run in place ahead of its acknowledgement, ``weir.streams._in_place``).
        """
        rt = self._rt
        try:
            env = decoded if decoded is not None else Envelope.decode(record.value)
            if env.pipeline != rt.pipeline.name or env.step != self.name:
                raise SchemaInvalidError(
                    f"envelope for {env.pipeline}/{env.step} arrived on {record.topic}"
                    f" (step {self.name} of {rt.pipeline.name})"
                )
            if env.kind == "FAILURE":
                raise SchemaInvalidError("a FAILURE envelope cannot be a step's input")
        except MessageError as exc:
            return Outcome(self._failures.undecodable(record, exc))
        attempt, joined = self._gather(record, env)
        out: list[OutMessage] = []
        event: AttemptTrace | None = None
        if attempt is not None:
            out, event = await self._run(record, attempt, landed)
        if self.join is not None and env.kind != "JOINED":
            # A waiting join's inputs or a completed one's done marker (``joined``: not for a
            # duplicate); and the requests of joins this one pushed over the cap end here.
            out += self.join.changelog_message(record.partition, env.request_id) if joined else []
            out += eviction_messages(rt, self.join)
        if event is not None:
            out += rt.trace(event)

        return Outcome(out, too_large=TooLarge(self, record, env, attempt, event))

    def too_large(
        self,
        exc: OutputTooLargeError,
        record: Record,
        env: Envelope,
        attempt: Attempt | None,
        event: AttemptTrace | None,
    ) -> list[OutMessage]:
        """What to write when the attempt worked (or a join waits) but what it must write
        cannot travel: the request fails here."""
        rt = self._rt
        rt.stats.failed(exc.error_type)
        a = attempt
        if a is None:  # a waiting join's inputs outgrew one message
            a = Attempt(env, {}, list(env.path), env.calls, False, False)
        failed = self._failures.fail_request(record, a, exc, a.base.traceparent)
        if event is not None:
            event.status, event.disposition = "FAILURE", "dead_lettered"
            event.error_type, event.error_message = exc.error_type, str(exc)
            failed += rt.trace(event)
        return failed

    def _gather(self, record: Record, env: Envelope) -> tuple[Attempt | None, bool]:
        if env.kind == "JOINED":  # a retry or replay of a completed join: the inputs that ran
            inputs = dict(env.inputs)
            missing = self._missing(inputs)
            return Attempt(env, inputs, list(env.path), env.calls, False, False, missing), False
        if self.join is None:
            inputs = {env.source: env.payload} if env.source else {}
            # The envelope's own path: nothing changes an attempt's path in place.
            return Attempt(env, inputs, env.path, env.calls, env.kind == "SKIP", False), False
        state, got = self.join.offer(record.partition, env)
        if state == "duplicate":
            # It writes nothing, not even the marker (``JoinTable.changelog_message``: why).
            self._rt.stats.duplicates += 1
            return None, False
        if state == "waiting":
            return None, True
        envelopes = list(got.values())
        produced = {src: e.payload for src, e in got.items() if e.kind == "VALUE"}
        attempt = Attempt(
            base=env,
            inputs=produced,
            path=self._rt.merge_paths(e.path for e in envelopes),
            calls=merge_calls(*(e.calls for e in envelopes)),
            skipped=not produced,
            completed_join=True,
            missing=self._missing(produced),
        )
        return attempt, True

    def _missing(self, inputs: dict[str, str | None]) -> tuple[str, ...]:
        return tuple(d for d in self.step.depends_on if d not in inputs)

    # -- the attempt ----------------------------------------------------------------

    async def _run(
        self, record: Record, a: Attempt, landed: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[list[OutMessage], AttemptTrace | None]:
        """Run one attempt; return its messages and its trace event (none for a skip)."""
        rt = self._rt
        if a.skipped:
            return self._out.emit(a, output=None, targets=(), traceparent=a.base.traceparent), None
        base = a.base
        started_ms = now_ms()
        queue_wait = max(0.0, started_ms - max(base.created_at / 1000, base.not_before))
        ctx = self._executor.context(base)
        scope = AttemptScope(
            context=ctx,
            settings=rt.settings,
            publish=self._publish,
            lag=self._lag,
            tracing=rt.tracing,
            services=rt.services,
            journal=rt.journal,
        )
        rt.stats.attempts += 1
        error: WeirError | None = None
        escalate: Escalate | None = None
        hit = False
        encoded: str | None = None
        targets: tuple[str, ...] | None = None
        said: list[OutMessage] | None = None  # the conversation's new turns
        t0 = time.perf_counter()
        # Unrecorded spans only carry ids: made after the attempt, without a span object.
        recording = rt.tracing.recording
        block = (
            rt.tracing.span(
                f"{rt.pipeline.name}.{self.name}",
                parent=base.traceparent,
                attributes={
                    "weir.pipeline": rt.pipeline.name,
                    "weir.step": self.name,
                    "weir.request_id": base.request_id,
                    "weir.attempt": base.attempt,
                    "messaging.system": "kafka",
                    "messaging.destination.name": record.topic,
                    "messaging.kafka.message.offset": record.offset,
                },
            )
            if recording
            else _NO_SPAN
        )
        with block as span:
            try:
                if a.missing and self.step.joins == "all":
                    # Never a null answer: the join cannot run, so the request fails here.
                    raise JoinInputSkippedError(join_skipped_message(self.name, list(a.missing)))
                if self.conversations is None:
                    encoded, targets, escalate, hit = await self._outcome(a, scope)
                else:
                    (encoded, targets, escalate, hit), said = await self.conversations.around(
                        base.request, base.request_id, scope, lambda: self._outcome(a, scope)
                    )
            except WeirError as exc:
                error = exc
                if span is not None:
                    # The span's status leaves the worker over OTLP: redacted like the event.
                    message = rt.redact_error(str(exc), TRACE_ERROR_MAX_BYTES)
                    mark_failed(span, exc.error_type, message)
            if recording:
                traceparent = traceparent_of(span, base.traceparent)
                trace_id, span_id = span_ids(span, base.traceparent)
            else:
                trace_id, span_id, traceparent = rt.tracing.ids(base.traceparent)
        duration = (time.perf_counter() - t0) * 1000
        # Most attempts make no model call: their calls are the inputs', as they came.
        calls = merge_calls(a.calls, scope.calls) if scope.calls else a.calls
        event = rt.attempt_trace(
            self.name,
            record,
            base,
            started_ms,
            duration,
            queue_wait,
            list(scope.calls),
            trace_id,
            span_id,
        )
        if error is not None:
            event.status = "FAILURE"
        if self.step.log_io:
            event.input = await rt.redacted(a.inputs or ctx.request)
            if encoded is not None:
                event.output = await rt.redacted(encoded)
        a.calls = calls
        if hit:
            event.status = "CACHE_HIT"  # costs nothing: no call was made
        if error is None and escalate is not None:
            event.disposition = "escalated"
            out = self._out.escalate(a, escalate, traceparent)
        elif error is None:
            out = self._out.emit(a, output=encoded, targets=targets, traceparent=traceparent)
        else:
            if landed is not None:
                await landed()  # a dead letter names where its record is
            out = await self._failures.failed(record, a, error, event, ctx, scope, traceparent)
        if said and error is None:
            out += said
        return out, event

    async def _outcome(
        self, a: Attempt, scope: AttemptScope
    ) -> tuple[str, tuple[str, ...] | None, Escalate | None, bool]:
        """Run the step (or find its output cached): ``(output JSON, targets, escalate, hit)``."""
        base = a.base
        cache = self.cache
        if cache is None:
            executor = self._executor
            if executor.runs_inline:  # no coroutine to await: the common cheap step
                value = executor.run_inline(a.inputs, base, scope)
            else:
                value = await executor.run(a.inputs, base, scope)
            return (*self._checked(value), False)
        computed: list[tuple[str, tuple[str, ...] | None, Escalate | None]] = []

        async def compute() -> str | None:
            computed.append(self._checked(await self._executor.run(a.inputs, base, scope)))
            encoded, targets, escalate = computed[0]
            return encoded if targets is None and escalate is None else None

        arguments: Any = None
        if cache.cache.key is not None:
            arguments = self._executor.arguments(a.inputs, base, scope.context)
        key = cache.key_of(a.inputs, base.request, arguments)
        found, hit = await cache.run(key, compute, self._publish)
        if hit and found is not None:
            return found, None, None, True
        return (*computed[0], False)

    def _checked(self, value: Any) -> tuple[str, tuple[str, ...] | None, Escalate | None]:
        """A step's return value as ``(output JSON, targets, escalate)``, once it is valid."""
        escalate = self._out.check_escalate(value)
        output, targets = self._out.check_branch(split_branch(value))
        return encode_output(None if escalate else output, step=self.name), targets, escalate

    async def _publish(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._rt.outbox.send_all([OutMessage(topic, key, value, headers)], owned=lambda: True)
