"""The requests topic: validate each request, then hand it to the root steps."""

from __future__ import annotations

import json
import time

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas.messages import Envelope, Request, TraceEvent, now_ms, now_us
from streams._runtime import Runtime, guess_request_id
from streams.dead_letter import error_type_of
from streams.outbox import OutMessage, Owned
from streams.tracing import TRACEPARENT_HEADER
from topics.names import INGRESS
from weir.errors import (
    MessageError,
    OutputTooLargeError,
    PayloadTooLargeError,
    SchemaInvalidError,
)

__all__ = ["REPLAY_HEADER", "Ingress"]

REPLAY_HEADER = "weir.replay"
"""Set by ``weir dlq replay`` on re-injected messages: the replay's id."""


class Ingress:
    """Turns a valid request into one envelope per root step; dead-letters the rest.

    A rejected request whose id can still be read (from its body or key) is
    also answered with a FAILURE result, so a client waiting for it hears why.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        pipeline = runtime.pipeline
        self._roots = pipeline.root_steps
        self._fields = [
            (root, b)
            for root in self._roots
            for b in pipeline.steps[root].bindings
            if b.source == "field"
        ]

    async def handle(self, record: ConsumerRecord[bytes, bytes], owned: Owned) -> None:
        rt = self._rt
        try:
            request = Request.from_wire(
                record.value,
                pipeline=rt.pipeline.name,
                key=record.key,
                max_bytes=rt.settings.max_payload_bytes,
            )
            self._check_fields(request)
        except MessageError as exc:
            await rt.outbox.send_all(self._rejected(record, exc), owned=owned)
            return
        payload = json.dumps(request.payload, separators=(",", ":"))
        replay = _header(record, REPLAY_HEADER)
        # W3C trace context of the producer: in the request, else in a Kafka header.
        traceparent = request.traceparent or _header(record, TRACEPARENT_HEADER)
        created = now_us()
        key = request.request_id.encode()
        out = []
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
            out.append(
                OutMessage(rt.topics.step(root), key, env.encode())
            )
        try:
            await rt.outbox.send_all(out, owned=owned)
        except OutputTooLargeError as exc:
            too_large = PayloadTooLargeError(
                f"request is too large to travel between steps ({exc}); lower its size or"
                " max_payload_bytes"
            )
            await rt.outbox.send_all(self._rejected(record, too_large), owned=owned)

    def _check_fields(self, request: Request) -> None:
        """Reject at the door what a root step could not take.

        The client then hears about it from the requests topic, not from a step.
        """
        model = self._rt.pipeline.input_model
        if model is not None:
            try:
                model.model_validate(request.payload)
            except ValidationError as exc:
                raise SchemaInvalidError(
                    f"request payload does not match {model.__name__}: {exc}"
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
                    raise SchemaInvalidError(
                        f"request field {b.name!r} (step {root}): {exc.errors()[0]['msg']}"
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
                error_message=str(error)[:1000],
            )
        )
        return out


def _header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return str(value.decode("utf-8", "replace"))
    return None
