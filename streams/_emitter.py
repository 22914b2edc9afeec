"""What an attempt of one step sends on: its output, a branch's choice, an escalation."""

from __future__ import annotations

from typing import Any

from weir.core.errors import BranchError, StepError
from weir.schemas._clock import now_us
from weir.schemas.messages import Envelope
from weir.streams._attempt import Attempt
from weir.streams._runtime import Runtime
from weir.streams.conversation import routing_key
from weir.streams.outbox import OutMessage
from weir.streams.review import Escalate, escalation_record
from weir.topics.names import ANSWER

__all__ = ["Emitter"]


class Emitter:
    """Routes a step's outputs: to its dependents' topics, the answer stage or review."""

    __slots__ = ("_keyed", "_rt", "_to", "dependents", "name")

    def __init__(self, runtime: Runtime, name: str) -> None:
        self._rt = runtime
        self.name = name
        self.dependents = runtime.pipeline.dependents(name)
        self._to = [(dep, runtime.topics.step(dep)) for dep in self.dependents]
        """Each dependent and its input topic (named once, not per output)."""
        self._keyed = runtime.pipeline.has_conversations

    def check_escalate(self, value: Any) -> Escalate | None:
        """``value`` when the step returned an ``Escalate`` (only a final step may)."""
        if not isinstance(value, Escalate):
            return None
        if self.dependents:
            raise StepError(
                f"step {self.name!r} returned Escalate but has dependents"
                f" ({', '.join(self.dependents)}): escalate from a final step"
            )
        return value

    def escalate(self, a: Attempt, escalate: Escalate, traceparent: str | None) -> list[OutMessage]:
        """To the review topic instead of the answer stage (``weir.streams.review``)."""
        base = a.base
        path = [*a.path, self.name]
        template = self._envelope(a, ANSWER, None, True, now_us(), traceparent, path)
        record = escalation_record(
            escalate, envelope=template, inputs=a.inputs, settings=self._rt.settings
        )
        return [OutMessage(self._rt.topics.reviews, base.request_id.encode(), record, None)]

    def check_branch(
        self, split: tuple[Any, tuple[str, ...] | None]
    ) -> tuple[Any, tuple[str, ...] | None]:
        """``split`` (output, branch targets), once every target is one of its dependents."""
        output, targets = split
        if targets is not None and (bad := [t for t in targets if t not in self.dependents]):
            raise BranchError(
                f"step {self.name!r} branched to {bad}, which do not depend on it"
                f" (its dependents: {list(self.dependents)})"
            )
        return output, targets

    def emit(
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
        if not self.dependents:
            answer = self._envelope(a, ANSWER, output, not skipped, created, traceparent, path)
            # Encoded only if it goes to the answers topic: the answer stage of this worker
            # takes it as the object (``Outbox.shortcut``) when it owns its partition.
            # Keyed by request id: the answer stage deduplicates per partition.
            rid = base.request_id.encode()
            return [OutMessage(rt.topics.answers, rid, None, None, decoded=answer)]
        key = self.key(base)
        out, keep = [], rt.settings.in_place_steps  # the object, for a batch running dep
        for dep, topic in self._to:
            take = not skipped and (targets is None or dep in targets)
            env = self._envelope(a, dep, output, take, created, traceparent, path)
            kept = env if keep else None
            out.append(OutMessage(topic, key, env.encode(), decoded=kept))
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

    def key(self, base: Envelope) -> bytes:
        """Every message of a request to a step: keyed by its conversation when it has one."""
        if self._keyed:
            return routing_key(base.request, base.request_id)
        return base.request_id.encode()
