"""Typed platform messages and their wire forms (Avro per ``*.avsc``, or JSON)."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from weir.core.errors import (
    PayloadTooLargeError,
    SchemaInvalidError,
    UndecodableError,
)
from weir.schemas._clock import now_ms, now_us
from weir.schemas._codec import MAGIC_BYTE, load_schema
from weir.schemas._envelope import ENVELOPE_SCHEMA, Envelope
from weir.schemas._envelope_codec import decode_trace_fast, encode_trace_fast
from weir.schemas._model_call import ModelCall, total_usage

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "ENVELOPE_SCHEMA",
    "REQUEST_SCHEMA",
    "RESULT_JSON_VERSION",
    "RESULT_SCHEMA",
    "TRACE_EVENT_SCHEMA",
    "DeadLetter",
    "Envelope",
    "ModelCall",
    "Request",
    "Result",
    "TraceEvent",
    "now_ms",
    "now_us",
    "total_usage",
]

REQUEST_SCHEMA = load_schema("request")
RESULT_SCHEMA = load_schema("result")
DEAD_LETTER_SCHEMA = load_schema("dead_letter")
TRACE_EVENT_SCHEMA = load_schema("trace_event")
_TRACE_EVENT_V1 = load_schema("trace_event_v1")
"""The trace event before ``replay_id`` and ``variant``: events written with it still decode."""


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        # pydantic-core parses a request several times faster than ``json`` and to the
        # same values (tested); what it refuses (nesting past its limit, a lone
        # surrogate) the standard parser decides, with its own message.
        value = pydantic_core.from_json(text)
    except ValueError:
        value = _json_loads(text, what)
    if not isinstance(value, dict):
        raise SchemaInvalidError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _json_loads(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UndecodableError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise UndecodableError(f"{what} is nested too deeply to decode") from exc


class Request(BaseModel):
    """A request to a pipeline, as submitted on its requests topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=256)
    pipeline: str
    payload: dict[str, Any]
    submitted_at: int = Field(default_factory=now_ms, ge=0)
    options: dict[str, str] = Field(default_factory=dict)
    traceparent: str | None = None

    def to_avro(self, *, schema_id: int | None = None) -> bytes:
        """The Avro form, framed with ``schema_id`` (a registry's id) or the fingerprint id."""
        record = self.model_dump()
        record["payload"] = json.dumps(self.payload, separators=(",", ":"))
        return REQUEST_SCHEMA.encode(record, schema_id=schema_id)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_wire(
        cls,
        raw: bytes | None,
        *,
        pipeline: str,
        key: bytes | None,
        max_bytes: int,
        writer: Any = None,
    ) -> Request:
        """Decode a requests-topic message in either format, or raise a ``MessageError``.

        JSON requests may omit ``pipeline`` (the topic names it) and ``request_id``
        (the message key, else a new id, is used); ``payload`` may be an object or
        a JSON string, as in the Avro form.  ``writer``: the schema an Avro request was
        written with, from a schema registry (``SchemaRegistry.writer``).
        """
        if raw is None or len(raw) == 0:
            raise UndecodableError("empty message: a request needs a JSON or Avro body")
        if len(raw) > max_bytes:
            raise PayloadTooLargeError(
                f"request is {len(raw)} bytes; the limit (max_payload_bytes) is {max_bytes}"
            )
        if raw[0] == MAGIC_BYTE:
            record: dict[str, Any] = REQUEST_SCHEMA.decode(raw, writer=writer)
        elif raw.lstrip()[:1] == b"{":
            record = _json_object(raw, "request")
        else:
            raise UndecodableError(
                "request is neither JSON (an object) nor Avro in the Confluent wire format "
                f"(first byte 0x{raw[0]:02x})"
            )
        if isinstance(record.get("payload"), str):
            record["payload"] = _json_object(record["payload"], "request payload")
        record.setdefault("pipeline", pipeline)
        if "request_id" not in record and key:
            named = key.decode("utf-8", errors="replace")
            payload = record.get("payload")
            # A conversation's requests are keyed by its id: that key names no request.
            if not (isinstance(payload, dict) and payload.get("conversation_id") == named):
                record["request_id"] = named
        try:
            request = cls.model_validate(record)
        except ValidationError as exc:
            raise SchemaInvalidError(f"invalid request: {_describe(exc)}") from exc
        if request.pipeline != pipeline:
            raise SchemaInvalidError(
                f"request names pipeline {request.pipeline!r} but was sent to {pipeline!r}"
            )
        return request


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_NO_COST = str(total_usage(())[2])
"""``cost_usd`` of a trace event without model calls."""


RESULT_JSON_VERSION = 2
"""Version of the JSON result form, in its ``schema_version`` field.

2: ``output`` is the step's output as a JSON value (object, array, number,
string, ...).  1 (no ``schema_version`` field): ``output`` was JSON *text* in a
string, as the Avro form still carries it (Avro has no type for any JSON value).
Readers accept both: a string ``output`` is ambiguous without the version.
"""


class Result(BaseModel):
    """The answer to one request on the pipeline's results topic.

    ``output`` holds the final step's output as JSON text in every form kept in
    memory; ``to_json``/``to_wire("json")`` put it on the wire as a JSON value.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str
    pipeline: str
    status: Literal["SUCCESS", "FAILURE"]
    output: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    failed_step: str | None = None
    path: list[str] = Field(default_factory=list)
    submitted_at: int
    completed_at: int
    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    calls: list[dict[str, Any]] = Field(default_factory=list)
    """Every model call of the request (``ModelCall`` records)."""
    replay: str | None = None

    @property
    def value(self) -> Any:
        """The decoded output (``None`` for failures)."""
        return None if self.output is None else json.loads(self.output)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``RESULT_JSON_VERSION``): ``output`` as a JSON value."""
        body = self.model_dump(mode="json")
        body["output"] = self.value
        body["schema_version"] = RESULT_JSON_VERSION
        return body

    def to_wire(self, fmt: Literal["json", "avro"], *, schema_id: int | None = None) -> bytes:
        """The result as written to the results topic; Avro framed with ``schema_id`` (its
        schema registry id) when given, else the schema's fingerprint id."""
        if fmt == "avro":
            record = self.model_dump()
            record["cost_usd"] = str(self.cost_usd)
            return RESULT_SCHEMA.encode(record, schema_id=schema_id)
        # The answer stage writes one per request: pydantic-core's parser and writer, not the
        # json module's (half the time; the same bytes as to_json's in compact form).
        body = self.model_dump()
        body["output"] = None if self.output is None else pydantic_core.from_json(self.output)
        body["schema_version"] = RESULT_JSON_VERSION
        return pydantic_core.to_json(body)

    def model_calls(self) -> list[ModelCall]:
        return [ModelCall.from_record(c) for c in self.calls]

    @classmethod
    def from_wire(cls, raw: bytes) -> Result:
        """A result in any form: Avro, JSON version 2 (output a value) or 1 (output text)."""
        if raw[:1] == bytes([MAGIC_BYTE]):
            return cls.model_validate(RESULT_SCHEMA.decode(raw))
        body = _json_object(raw, "result")
        version = body.pop("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SchemaInvalidError(f"invalid result: schema_version {version!r}")
        if version > RESULT_JSON_VERSION:
            raise SchemaInvalidError(
                f"result schema_version {version} is newer than this weir reads"
                f" (up to {RESULT_JSON_VERSION}): upgrade weir"
            )
        if version >= 2 and body.get("output") is not None:
            body["output"] = json.dumps(body["output"], separators=(",", ":"))
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise SchemaInvalidError(f"invalid result: {_describe(exc)}") from exc


@dataclass(slots=True)
class TraceEvent:
    """One step attempt, as written to the trace topic (``trace_event.avsc``)."""

    pipeline_id: str
    step_name: str
    request_id: str
    attempt: int
    status: Literal["SUCCESS", "FAILURE", "SKIPPED", "CACHE_HIT"]
    disposition: str
    """emitted, retry_scheduled, dead_lettered, fallback, skipped, rejected."""
    created_at: int
    started_at: int
    submitted_at: int
    duration_ms: float
    queue_wait_ms: float
    worker_id: str
    topic: str
    partition: int
    offset: int
    error_type: str | None = None
    error_message: str | None = None
    calls: list[ModelCall] = field(default_factory=list)
    trace_id: str | None = None
    span_id: str | None = None
    input: str | None = None
    output: str | None = None
    event_id: str = field(default_factory=lambda: os.urandom(16).hex())
    """128 random bits as 32 hex digits (a ``uuid4`` object costs more than encoding the event)."""
    replay_id: str = ""
    """The step replay this attempt ran in (``""``: live traffic)."""
    variant: str = ""
    """The replay's candidate, ``endpoint:<name>`` or ``variant:<module:function>``."""

    def to_record(self) -> dict[str, Any]:
        """The Avro record, with the attempt's model calls summarised."""
        tokens_in, tokens_out, cost = total_usage(self.calls)
        last = self.calls[-1] if self.calls else None
        return {
            "event_id": self.event_id,
            "pipeline_id": self.pipeline_id,
            "step_name": self.step_name,
            "request_id": self.request_id,
            "attempt": self.attempt,
            "status": self.status,
            "disposition": self.disposition,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "submitted_at": self.submitted_at,
            "duration_ms": self.duration_ms,
            "queue_wait_ms": self.queue_wait_ms,
            "worker_id": self.worker_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "endpoint": last.endpoint if last else None,
            "model": last.model if last else None,
            "provider": last.provider if last else None,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": str(cost),
            "usage_source": last.usage_source if last else None,
            "routing_rule": last.rule if last else None,
            "rules_version": last.rules_version if last else None,
            "calls": [c.to_record() for c in self.calls],
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "input": self.input,
            "output": self.output,
            "replay_id": self.replay_id,
            "variant": self.variant,
        }

    def encode(self) -> bytes:
        fast = encode_trace_fast(TRACE_EVENT_SCHEMA.header, self, _NO_COST)
        if fast is not None:
            return fast
        return TRACE_EVENT_SCHEMA.encode(self.to_record())

    @staticmethod
    def decode(raw: bytes) -> dict[str, Any]:
        """The Avro record of an encoded event (as the sink stores it)."""
        fast = decode_trace_fast(TRACE_EVENT_SCHEMA.header, raw)
        if fast is not None:
            return fast
        if _TRACE_EVENT_V1.is_framed(raw):
            # Written before replays were traced: resolved into today's schema (empty tags).
            return TRACE_EVENT_SCHEMA.decode(raw, writer=_TRACE_EVENT_V1.parsed)
        return TRACE_EVENT_SCHEMA.decode(raw)


_H = "__connect.errors."
_DLQ_HEADERS = {
    "source_topic": _H + "topic",
    "source_partition": _H + "partition",
    "source_offset": _H + "offset",
    "error_type": _H + "exception.class.name",
    "error_message": _H + "exception.message",
    "stacktrace": _H + "exception.stacktrace",
    "pipeline": _H + "connector.name",
    "worker_id": _H + "task.id",
    "step": _H + "stage",
    "attempt": "weir.attempt",
    "first_failed_at": "weir.first_failed_at",
    "last_failed_at": "weir.last_failed_at",
    "request_id": "weir.request_id",
    "payload_bytes": "weir.payload_bytes",
    "original_error_type": "weir.original_error_type",
}


class DeadLetter(BaseModel):
    """What a dead-letter record says about its failure (``dead_letter.avsc``).

    On the topic, the original key, value and headers are kept as they were and
    these fields travel as UTF-8 headers: Kafka Connect's ``__connect.errors.*``
    names where Connect has one, ``weir.*`` for the rest.
    """

    pipeline: str
    step: str
    error_type: str
    error_message: str
    stacktrace: str | None = None
    attempt: int = 1
    first_failed_at: int
    last_failed_at: int
    worker_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    request_id: str | None = None
    payload_bytes: int | None = None
    """Set on a bounded dead letter: the size of the record it stands for (no value)."""
    original_error_type: str | None = None
    """Set on a bounded dead letter: the error the record failed with."""
    key: bytes | None = None
    value: bytes | None = None

    @property
    def bounded(self) -> bool:
        """Whether this letter only points at its record (too large to carry)."""
        return self.payload_bytes is not None and self.value is None

    def headers(self) -> list[tuple[str, bytes]]:
        """The error headers to add to the original message's own headers."""
        out = []
        for attr, header in _DLQ_HEADERS.items():
            value = getattr(self, attr)
            if value is not None:
                out.append((header, str(value).encode()))
        out.append(("weir.error_type", self.error_type.encode()))
        return out

    @classmethod
    def from_message(
        cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> DeadLetter:
        """Rebuild the record from a dead-letter message."""
        by_name = {name: raw.decode("utf-8", "replace") for name, raw in headers}
        fields: dict[str, Any] = {
            attr: by_name[h] for attr, h in _DLQ_HEADERS.items() if h in by_name
        }
        return cls(key=key, value=value, **fields)
