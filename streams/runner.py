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
import dataclasses
import functools
import logging
import random
import time
from typing import Any

from weir.core.errors import (
    BranchError,
    JoinInputSkippedError,
    MessageError,
    OutputTooLargeError,
    SchemaInvalidError,
    StepError,
    WeirError,
)
from weir.schemas.messages import Envelope, now_ms, now_us
from weir.streams._attempt import Attempt, TooLarge
from weir.streams._attempt_trace import AttemptTrace
from weir.streams._runtime import TRACE_ERROR_MAX_BYTES, Record, Runtime, merge_calls
from weir.streams.cache import StepCache
from weir.streams.context import AttemptScope, StepContext
from weir.streams.conversation import routing_key
from weir.streams.conversation_store import ConversationStore
from weir.streams.dead_letter import error_type_of
from weir.streams.dependencies import join_skipped_message
from weir.streams.executor import StepExecutor, encode_output, split_branch
from weir.streams.join import JoinTable, eviction_messages
from weir.streams.outbox import Outcome, OutMessage, Owned
from weir.streams.review import Escalate, escalation_record
from weir.streams.tracing import mark_failed, span_ids, traceparent_of
from weir.topics.names import ANSWER, retry_tiers

__all__ = ["NOT_BEFORE_HEADER", "StepRunner"]

log = logging.getLogger("weir.worker")

_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()

NOT_BEFORE_HEADER = "weir.not_before"
"""On retry-topic messages: epoch milliseconds before which the retry must not start."""


class StepRunner:
    """Handles the input and retry topics of one step."""

    def __init__(self, runtime: Runtime, step: str, executor: StepExecutor) -> None:
        self._rt = runtime
        pipeline = runtime.pipeline
        self.step = pipeline.steps[step]
        self.name = step
        self._executor = executor
        self._dependents = pipeline.dependents(step)
        self._policy = pipeline.retry_policy(step)
        self._tiers = retry_tiers(self._policy.maximum_attempts, runtime.settings)
        self._rng = random.Random()
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
        self._keyed = pipeline.has_conversations
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
        t = self._rt.topics
        return [t.step(self.name)] + [t.retry(self.name, n) for n in range(1, self._tiers + 1)]

    # -- one record -----------------------------------------------------------------

    @property
    def batchable(self) -> bool:
        """Its attempts never wait (a synchronous ``inline=True`` step): a fetched batch of
        its records is run in one go, not as a task per record."""
        return self.step.inline and not self.step.is_async and not self.step.log_io

    async def handle(self, record: Record, owned: Owned) -> None:
        outcome = await self.prepare(record)
        await outcome.deliver(self._rt.outbox, owned)

    async def prepare(self, record: Record, decoded: Envelope | None = None) -> Outcome:
        """Run the record's attempt (if it completes one); return what it must write.

        ``decoded``: the record's envelope, when the caller has it as an object already
        (the ingress, for a root step run on the request's record).
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
            return Outcome(self._undecodable(record, exc))
        attempt, joined = self._gather(record, env)
        out: list[OutMessage] = []
        event: AttemptTrace | None = None
        if attempt is not None:
            out, event = await self._run(record, attempt)
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
        failed = self._fail_request(record, a, exc, a.base.traceparent)
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
        self, record: Record, a: Attempt
    ) -> tuple[list[OutMessage], AttemptTrace | None]:
        """Run one attempt; return its messages and its trace event (none for a skip)."""
        rt = self._rt
        if a.skipped:
            return self._emit(a, output=None, targets=(), traceparent=a.base.traceparent), None
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
            out = self._escalate(a, escalate, traceparent)
        elif error is None:
            out = self._emit(a, output=encoded, targets=targets, traceparent=traceparent)
        else:
            out = await self._failed(record, a, error, event, ctx, scope, traceparent)
        if said and error is None:
            out += said
        return out, event

    async def _outcome(
        self, a: Attempt, scope: AttemptScope
    ) -> tuple[str, tuple[str, ...] | None, Escalate | None, bool]:
        """Run the step (or find its output cached): ``(output JSON, targets, escalate, hit)``."""
        base = a.base
        computed: list[tuple[str, tuple[str, ...] | None, Escalate | None]] = []

        async def compute() -> str | None:
            value = await self._executor.run(a.inputs, base, scope)
            escalate = self._check_escalate(value)
            output, targets = self._check_branch(split_branch(value))
            encoded = encode_output(None if escalate else output, step=self.name)
            computed.append((encoded, targets, escalate))
            return encoded if targets is None and escalate is None else None

        cache = self.cache
        if cache is None:
            await compute()
            return (*computed[0], False)
        arguments: Any = None
        if cache.cache.key is not None:
            arguments = self._executor.arguments(a.inputs, base, scope.context)
        key = cache.key_of(a.inputs, base.request, arguments)
        found, hit = await cache.run(key, compute, self._publish)
        if hit and found is not None:
            return found, None, None, True
        return (*computed[0], False)

    def _check_escalate(self, value: Any) -> Escalate | None:
        if not isinstance(value, Escalate):
            return None
        if self._dependents:
            raise StepError(
                f"step {self.name!r} returned Escalate but has dependents"
                f" ({', '.join(self._dependents)}): escalate from a final step"
            )
        return value

    def _escalate(
        self, a: Attempt, escalate: Escalate, traceparent: str | None
    ) -> list[OutMessage]:
        """To the review topic instead of the answer stage (``weir.streams.review``)."""
        base = a.base
        template = Envelope(
            request_id=base.request_id,
            pipeline=base.pipeline,
            step=ANSWER,
            source=self.name,
            kind="VALUE",
            submitted_at=base.submitted_at,
            created_at=now_us(),
            request=base.request,
            payload=None,
            traceparent=traceparent,
            options=base.options,
            path=[*a.path, self.name],
            calls=a.calls,
            replay=base.replay,
        )
        record = escalation_record(
            escalate, envelope=template, inputs=a.inputs, settings=self._rt.settings
        )
        return [OutMessage(self._rt.topics.reviews, base.request_id.encode(), record, None)]

    def _check_branch(
        self, split: tuple[Any, tuple[str, ...] | None]
    ) -> tuple[Any, tuple[str, ...] | None]:
        output, targets = split
        if targets is not None and (bad := [t for t in targets if t not in self._dependents]):
            raise BranchError(
                f"step {self.name!r} branched to {bad}, which do not depend on it"
                f" (its dependents: {list(self._dependents)})"
            )
        return output, targets

    async def _failed(
        self,
        record: Record,
        a: Attempt,
        error: WeirError,
        event: AttemptTrace,
        ctx: StepContext,
        scope: AttemptScope,
        traceparent: str | None,
    ) -> list[OutMessage]:
        rt = self._rt
        base = a.base
        error_type = error_type_of(error)
        event.error_type = error_type
        event.error_message = str(error)  # cut and redacted by rt.trace
        rt.stats.failed(error_type)
        first_failed = base.first_failed_at or now_ms()
        if self._policy.should_retry(error, base.attempt):
            delay = self._policy.delay(base.attempt, self._rng)
            due = now_ms() + int(delay * 1000)
            retry = dataclasses.replace(
                self._as_replayable(a, traceparent),
                attempt=base.attempt + 1,
                not_before=due,
                first_failed_at=first_failed,
            )
            tier = min(base.attempt, self._tiers)
            rt.stats.retried += 1
            event.disposition = "retry_scheduled"
            log.info(
                "step %s attempt %d of %s failed (%s); retrying in %.1fs",
                self.name,
                base.attempt,
                base.request_id,
                error_type,
                delay,
            )
            return [
                OutMessage(
                    rt.topics.retry(self.name, tier),
                    self._key(base),
                    retry.encode(),
                    [(NOT_BEFORE_HEADER, str(due).encode())],
                )
            ]
        fallback = self.step.fallback
        if fallback is not None:
            try:
                value = fallback.value
                if fallback.function is not None:
                    kwargs = self._executor.arguments(a.inputs, base, ctx)
                    value = await self._executor.call(kwargs, scope, fn=fallback.function)
                output, targets = self._check_branch(split_branch(value))
                encoded = encode_output(output, step=self.name)
            except WeirError as exc:
                log.warning("fallback of step %s failed too: %s", self.name, exc)
                error = exc
            else:
                rt.stats.fallbacks += 1
                event.disposition = "fallback"
                a.calls = merge_calls(a.calls, scope.calls)
                return self._emit(a, output=encoded, targets=targets, traceparent=traceparent)
        event.disposition = "dead_lettered"
        return self._fail_request(record, a, error, traceparent, first_failed)

    def _fail_request(
        self,
        record: Record,
        a: Attempt,
        error: WeirError,
        traceparent: str | None,
        first_failed_at: int | None = None,
    ) -> list[OutMessage]:
        """Dead-letter the attempt's input and tell the answer stage the request failed here."""
        rt = self._rt
        base = a.base
        rt.stats.dead_lettered += 1
        log.warning(
            "dead-lettering %s at step %s after %d attempt(s): %s",
            base.request_id,
            self.name,
            base.attempt,
            error,
        )
        # The dead letter must replay this attempt on its own: a join's completing input
        # alone would wait for inputs that were consumed, so joins store all of them.
        dead = rt.dead_letters.message(
            rt.topics.dead_letter(self.name),
            record,
            step=self.name,
            error=error,
            value=self._as_replayable(a, traceparent).encode() if a.completed_join else None,
            request_id=base.request_id,
            attempt=base.attempt,
            first_failed_at=first_failed_at,
        )
        failure = rt.failure_envelope(
            request_id=base.request_id,
            step=self.name,
            error_type=error.error_type,
            error_message=str(error),
            base=dataclasses.replace(base, path=a.path),
            calls=a.calls,
            traceparent=traceparent,
            created_at=now_us(),
        )
        return [dead, failure]

    def _as_replayable(self, a: Attempt, traceparent: str | None) -> Envelope:
        """The attempt's inputs as one envelope this step can consume again (retry, replay)."""
        base = a.base
        if a.completed_join or base.kind == "JOINED":
            return dataclasses.replace(
                base,
                source="",
                kind="JOINED",
                payload=None,
                inputs=a.inputs,
                path=a.path,
                calls=a.calls,
                traceparent=traceparent,
                created_at=now_us(),
            )
        return dataclasses.replace(
            base, calls=a.calls, traceparent=traceparent, created_at=now_us()
        )

    # -- what comes out -------------------------------------------------------------

    def _emit(
        self,
        a: Attempt,
        *,
        output: str | None,
        targets: tuple[str, ...] | None,
        traceparent: str | None,
    ) -> list[OutMessage]:
        """The step's output (or its skip) to its dependents, or to the answer stage."""
        rt = self._rt
        base = a.base
        skipped = output is None and targets == ()
        path = a.path if skipped else [*a.path, self.name]
        created = now_us()
        if not self._dependents:
            answer = self._envelope(a, ANSWER, output, not skipped, created, traceparent, path)
            # Encoded only if it goes to the answers topic: the answer stage of this worker
            # takes it as the object (``Outbox.shortcut``) when it owns its partition.
            # Keyed by request id: the answer stage deduplicates per partition.
            rid = base.request_id.encode()
            return [OutMessage(rt.topics.answers, rid, None, None, decoded=answer)]
        key = self._key(base)
        out, keep = [], rt.settings.in_place_steps  # the object, for a batch running dep
        for dep in self._dependents:
            take = not skipped and (targets is None or dep in targets)
            env = self._envelope(a, dep, output, take, created, traceparent, path)
            kept = env if keep else None
            out.append(OutMessage(rt.topics.step(dep), key, env.encode(), None, decoded=kept))
        return out

    def _envelope(
        self,
        a: Attempt,
        to: str,
        output: str | None,
        take: bool,
        created: int,
        traceparent: str | None,
        path: list[str],
    ) -> Envelope:
        """The output (or a skip) on its way to ``to``; it carries the traceparent, so no
        header does (a method, not a closure: a closure's cells are objects per attempt)."""
        base = a.base
        return Envelope(
            base.request_id,
            base.pipeline,
            to,
            self.name,
            "VALUE" if take else "SKIP",
            base.submitted_at,
            created,
            base.request,
            output if take else None,
            traceparent=traceparent,
            options=base.options,
            path=path,
            calls=a.calls,
            replay=base.replay,
        )

    def _key(self, base: Envelope) -> bytes:
        """Every message of a request to a step: keyed by its conversation when it has one."""
        if self._keyed:
            return routing_key(base.request, base.request_id)
        return base.request_id.encode()

    def _undecodable(self, record: Record, error: MessageError) -> list[OutMessage]:
        rt = self._rt
        rt.stats.dead_lettered += 1
        rt.stats.failed(error_type_of(error))
        log.warning("dead-lettering %s@%d: %s", record.topic, record.offset, error)
        return [
            rt.dead_letters.message(
                rt.topics.dead_letter(self.name), record, step=self.name, error=error
            )
        ]

    async def _publish(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._rt.outbox.send_all([OutMessage(topic, key, value, headers)], owned=lambda: True)
