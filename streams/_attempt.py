"""A step attempt's inputs, and what its record writes instead when its output cannot travel."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from weir.core.errors import OutputTooLargeError
from weir.schemas.messages import Envelope, ModelCall, TraceEvent
from weir.streams._runtime import Record
from weir.streams.outbox import OutMessage

if TYPE_CHECKING:
    from weir.streams.runner import StepRunner

__all__ = ["Attempt", "TooLarge"]


@dataclasses.dataclass(slots=True)
class Attempt:
    """Inputs of one attempt, whatever way they arrived (direct, joined, retried)."""

    base: Envelope
    """The envelope the attempt continues: request, options, trace context, attempt number."""
    inputs: dict[str, str | None]
    """Outputs of the dependencies that produced, by step name (skipped ones are absent)."""
    path: list[str]
    calls: list[ModelCall]
    skipped: bool
    """Every dependency was skipped: so is this step."""
    completed_join: bool
    missing: tuple[str, ...] = ()
    """Dependencies skipped for this request while others produced."""


class TooLarge:
    """``Outcome.too_large`` of one record: ``StepRunner.too_large`` with its arguments.

    An object, not a closure: a closure over the runner's frame costs a cell per variable
    it reads, on every record, for a path taken almost never.
    """

    __slots__ = ("attempt", "env", "event", "record", "runner")

    def __init__(
        self,
        runner: StepRunner,
        record: Record,
        env: Envelope,
        attempt: Attempt | None,
        event: TraceEvent | None,
    ) -> None:
        self.runner = runner
        self.record = record
        self.env = env
        self.attempt = attempt
        self.event = event

    def __call__(self, exc: OutputTooLargeError) -> list[OutMessage]:
        return self.runner.too_large(exc, self.record, self.env, self.attempt, self.event)
