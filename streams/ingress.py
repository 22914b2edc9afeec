"""The requests topic: validate each request, then hand it to the root steps.

A root step this worker runs is run right here, on the request's record (as if its
envelope had arrived on the step's input topic): no hop that only moves data.  Root
steps run elsewhere get their envelope on their input topic, as before.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from weir.core._cause import caused_by
from weir.core.errors import (
    MessageError,
    OutputTooLargeError,
    PayloadTooLargeError,
    SchemaInvalidError,
)
from weir.schemas._clock import now_ms, now_us
from weir.schemas.messages import Envelope, Request, TraceEvent
from weir.streams._runtime import Runtime, guess_request_id, make_record
from weir.streams.conversation import conversation_id_of, routing_key
from weir.streams.dead_letter import error_type_of
from weir.streams.outbox import MAX_MESSAGE_BYTES, Outcome, OutMessage, Owned
from weir.streams.tracing import TRACEPARENT_HEADER
from weir.topics.names import INGRESS

__all__ = ["REPLAY_HEADER", "Ingress", "RootHandler"]


class RootHandler(Protocol):
    """A root step's runner, handed the step's input record."""

    @property
    def batchable(self) -> bool: ...

    def prepare(
        self, record: ConsumerRecord[bytes, bytes], decoded: Envelope | None = None
    ) -> Coroutine[Any, Any, Outcome]: ...


REPLAY_HEADER = "weir.replay"
"""Set by ``weir dlq replay`` on re-injected messages: the replay's id."""


class Ingress:
    """Turns a valid request into one envelope per root step; dead-letters the rest.

    A rejected request whose id can still be read (from its body or key) is
    also answered with a FAILURE result, so a client waiting for it hears why.
    """

    def __init__(
        self,
        runtime: Runtime,
        local: Mapping[str, RootHandler] | None = None,
    ) -> None:
        self._rt = runtime
        self._local = local if local is not None else {}
        """Handlers of the root steps this worker runs (their runners' ``handle``), by step."""
        pipeline = runtime.pipeline
        self._roots = pipeline.root_steps
        self._keyed = pipeline.has_conversations  # one conversation, one partition
        # ``json.dumps(..., separators=...)`` builds an encoder per call: one, kept (the
        # same text, byte for byte).
        self._compact = json.JSONEncoder(separators=(",", ":")).encode
        self._fields = [
            (root, b)
            for root in self._roots
            for b in pipeline.steps[root].bindings
            if b.source == "field"
        ]

    @property
    def batchable(self) -> bool:
        """No root step run here waits: a fetched batch of requests is run in one go."""
        return all(root.batchable for root in self._local.values())

    async def handle(self, record: ConsumerRecord[bytes, bytes], owned: Owned) -> None:
        outcome = await self.prepare(record)
        await outcome.deliver(self._rt.outbox, owned)

    async def prepare(self, record: ConsumerRecord[bytes, bytes]) -> Outcome:
        """Validate the request and run the root steps this worker runs; what to write."""
        rt = self._rt
        try:
            request = Request.from_wire(
                record.value,
                pipeline=rt.pipeline.name,
                key=record.key,
                max_bytes=rt.settings.max_payload_bytes,
                writer=None if rt.registry is None else await rt.registry.writer(record.value),
            )
            self._check_fields(request)
        except MessageError as exc:
            return Outcome(self._rejected(record, exc))
        payload = self._compact(request.payload)
        replay = _header(record, REPLAY_HEADER)
        # W3C trace context of the producer: in the request, else in a Kafka header.
        traceparent = request.traceparent or _header(record, TRACEPARENT_HEADER)
        created = now_us()
        key = request.request_id.encode()
        if self._keyed:
            key = routing_key(payload, request.request_id)
        out = []
        here = []
        parsed: dict[str, Any] | None = request.payload  # the first root run here takes it
        for root in self._roots:
            env = Envelope(
                request_id=request.request_id,
                pipeline=rt.pipeline.name,
                step=root,
                source="",
                kind="VALUE",
                submitted_at=request.submitted_at,
                created_at=created,
                request=payload,
                payload=None,
                traceparent=traceparent,
                options=request.options,
                replay=replay,
            )
            encoded = env.encode()
            runner = self._local.get(root)
            if runner is not None and len(encoded) <= MAX_MESSAGE_BYTES:
                # The root step's input, as its runner would have read it from its topic;
                # dead letters and trace events keep this record's real coordinates (the
                # requests topic), so a bounded dead letter points at a record that exists.
                step_record = make_record(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp,
                    key,
                    encoded,
                    [],
                )
                if parsed is not None:
                    # The request as the step's context and bound fields read it: parsed
                    # once, here (a second root parses its own: steps may change it).
                    env.with_request_object(parsed)
                    parsed = None
                # Handed over as the object it was encoded from: no decode of what was
                # just encoded (the bytes are kept for dead letters and the size check).
                here.append(runner.prepare(step_record, env))
            else:
                out.append(OutMessage(rt.topics.step(root), key, encoded))
        parts: list[Outcome] = []
        if len(here) == 1:
            parts = [await here[0]]
        elif here:
            parts = list(await asyncio.gather(*here))

        def too_large(exc: OutputTooLargeError) -> list[OutMessage]:
            too_large = PayloadTooLargeError(
                f"request is too large to travel between steps ({exc}); lower its size or"
                " max_payload_bytes"
            )
            return self._rejected(record, too_large)

        return Outcome(out, too_large=too_large if out else None, parts=parts)

    def _check_fields(self, request: Request) -> None:
        """Reject at the door what a root step could not take.

        The client then hears about it from the requests topic, not from a step.
        """
        if self._keyed:
            conversation_id_of(request.payload)  # a clear error for an unusable id
        model = self._rt.pipeline.input_model
        if model is not None:
            try:
                model.model_validate(request.payload)
            except ValidationError as exc:
                raise caused_by(
                    SchemaInvalidError(f"request payload does not match {model.__name__}: {exc}"),
                    exc,
                ) from exc
        missing = []
        for root, b in self._fields:
            if b.name not in request.payload:
                if b.required:
                    missing.append(f"{b.name} (step {root})")
            elif b.adapter is not None:
                try:
                    b.adapter.validate_python(request.payload[b.name])
                except ValidationError as exc:
                    raise caused_by(
                        SchemaInvalidError(
                            f"request field {b.name!r} (step {root}): {exc.errors()[0]['msg']}"
                        ),
                        exc,
                    ) from exc
        if missing:
            raise SchemaInvalidError(f"request payload is missing field(s): {', '.join(missing)}")

    def _rejected(
        self, record: ConsumerRecord[bytes, bytes], error: MessageError
    ) -> list[OutMessage]:
        rt = self._rt
        request_id = guess_request_id(record)
        error_type = error_type_of(error)
        rt.stats.dead_lettered += 1
        rt.stats.failed(error_type)
        dead = rt.dead_letters.message(
            rt.topics.dead_letter(INGRESS), record, step=INGRESS, error=error, request_id=request_id
        )
        out = [dead]
        created = now_us()
        if request_id is not None:
            out.append(
                rt.failure_envelope(
                    request_id=request_id,
                    step=INGRESS,
                    error_type=error_type,
                    error_message=str(error),
                    base=None,
                    calls=[],
                    traceparent=None,
                    created_at=created,
                )
            )
        ended = now_ms()
        out += rt.trace(
            TraceEvent(
                pipeline_id=rt.pipeline.name,
                step_name=INGRESS,
                request_id=request_id or "",
                attempt=1,
                status="FAILURE",
                disposition="rejected",
                created_at=ended,
                started_at=ended,
                submitted_at=record.timestamp,
                duration_ms=0.0,
                queue_wait_ms=max(0.0, time.time() * 1000 - record.timestamp),
                worker_id=rt.settings.worker_id,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error_type=error_type,
                error_message=str(error),  # cut and redacted by rt.trace
            )
        )
        return out


def _header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return str(value.decode("utf-8", "replace"))
    return None
