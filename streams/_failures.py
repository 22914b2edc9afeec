"""When an attempt of one step fails: a retry, the step's fallback, or a dead letter."""

from __future__ import annotations

import logging
import random

from weir.core.errors import MessageError, WeirError
from weir.schemas._clock import now_ms, now_us
from weir.schemas.messages import Envelope
from weir.streams._attempt import Attempt
from weir.streams._attempt_trace import AttemptTrace
from weir.streams._emitter import Emitter
from weir.streams._runtime import Record, Runtime, merge_calls
from weir.streams.context import AttemptScope, StepContext
from weir.streams.dead_letter import error_type_of
from weir.streams.executor import StepExecutor, encode_output, split_branch
from weir.streams.outbox import OutMessage
from weir.topics.names import retry_tiers

__all__ = ["NOT_BEFORE_HEADER", "Failures"]

log = logging.getLogger("weir.worker")

NOT_BEFORE_HEADER = "weir.not_before"
"""On retry-topic messages: epoch milliseconds before which the retry must not start."""


class Failures:
    """Decides what a failed attempt of one step becomes, and builds its messages."""

    def __init__(self, runtime: Runtime, name: str, executor: StepExecutor, out: Emitter) -> None:
        self._rt = runtime
        self.name = name
        self._executor = executor
        self._out = out
        self._fallback = runtime.pipeline.steps[name].fallback
        self._policy = runtime.pipeline.retry_policy(name)
        self.tiers = retry_tiers(self._policy.maximum_attempts, runtime.settings)
        self._rng = random.Random()

    async def failed(
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
            retry = self.as_replayable(a, traceparent).replace(
                attempt=base.attempt + 1,
                not_before=due,
                first_failed_at=first_failed,
            )
            tier = min(base.attempt, self.tiers)
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
                    self._out.key(base),
                    retry.encode(),
                    [(NOT_BEFORE_HEADER, str(due).encode())],
                )
            ]
        fallback = self._fallback
        if fallback is not None:
            try:
                value = fallback.value
                if fallback.function is not None:
                    kwargs = self._executor.arguments(a.inputs, base, ctx)
                    value = await self._executor.call(kwargs, scope, fn=fallback.function)
                output, targets = self._out.check_branch(split_branch(value))
                encoded = encode_output(output, step=self.name)
            except WeirError as exc:
                log.warning("fallback of step %s failed too: %s", self.name, exc)
                error = exc
            else:
                rt.stats.fallbacks += 1
                event.disposition = "fallback"
                a.calls = merge_calls(a.calls, scope.calls)
                return self._out.emit(a, output=encoded, targets=targets, traceparent=traceparent)
        event.disposition = "dead_lettered"
        return self.fail_request(record, a, error, traceparent, first_failed)

    def fail_request(
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
            value=self.as_replayable(a, traceparent).encode() if a.completed_join else None,
            request_id=base.request_id,
            attempt=base.attempt,
            first_failed_at=first_failed_at,
        )
        failure = rt.failure_envelope(
            request_id=base.request_id,
            step=self.name,
            error_type=error.error_type,
            error_message=str(error),
            base=base.replace(path=a.path),
            calls=a.calls,
            traceparent=traceparent,
            created_at=now_us(),
        )
        return [dead, failure]

    def as_replayable(self, a: Attempt, traceparent: str | None) -> Envelope:
        """The attempt's inputs as one envelope this step can consume again (retry, replay)."""
        base = a.base
        if a.completed_join or base.kind == "JOINED":
            return base.replace(
                source="",
                kind="JOINED",
                payload=None,
                inputs=a.inputs,
                path=a.path,
                calls=a.calls,
                traceparent=traceparent,
                created_at=now_us(),
            )
        return base.replace(calls=a.calls, traceparent=traceparent, created_at=now_us())

    def undecodable(self, record: Record, error: MessageError) -> list[OutMessage]:
        rt = self._rt
        rt.stats.dead_lettered += 1
        rt.stats.failed(error_type_of(error))
        log.warning("dead-lettering %s@%d: %s", record.topic, record.offset, error)
        return [
            rt.dead_letters.message(
                rt.topics.dead_letter(self.name), record, step=self.name, error=error
            )
        ]
