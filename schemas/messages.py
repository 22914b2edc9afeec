"""Typed platform messages and their wire forms (Avro per ``*.avsc``, or JSON)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas._codec import MAGIC_BYTE, load_schema
from weir.errors import (
    PayloadTooLargeError,
    SchemaInvalidError,
    UndecodableError,
)

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "ENVELOPE_SCHEMA",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "DeadLetter",
    "Envelope",
    "Request",
    "Result",
    "now_ms",
    "now_us",
]

REQUEST_SCHEMA = load_schema("request")
ENVELOPE_SCHEMA = load_schema("envelope")
RESULT_SCHEMA = load_schema("result")
DEAD_LETTER_SCHEMA = load_schema("dead_letter")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def now_us() -> int:
    return time.time_ns() // 1_000


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UndecodableError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise UndecodableError(f"{what} is nested too deeply to decode") from exc
    if not isinstance(value, dict):
        raise SchemaInvalidError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


class Request(BaseModel):
    """A request to a pipeline, as submitted on its requests topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=256)
    pipeline: str
    payload: dict[str, Any]
    submitted_at: int = Field(default_factory=now_ms, ge=0)
    options: dict[str, str] = Field(default_factory=dict)
    traceparent: str | None = None

    def to_avro(self) -> bytes:
        record = self.model_dump()
        record["payload"] = json.dumps(self.payload, separators=(",", ":"))
        return REQUEST_SCHEMA.encode(record)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_wire(
        cls, raw: bytes | None, *, pipeline: str, key: bytes | None, max_bytes: int
    ) -> Request:
        """Decode a requests-topic message in either format, or raise a ``MessageError``.

        JSON requests may omit ``pipeline`` (the topic names it) and ``request_id``
        (the message key, else a new id, is used); ``payload`` may be an object or
        a JSON string, as in the Avro form.
        """
        if raw is None or len(raw) == 0:
            raise UndecodableError("empty message: a request needs a JSON or Avro body")
        if len(raw) > max_bytes:
            raise PayloadTooLargeError(
                f"request is {len(raw)} bytes; the limit (max_payload_bytes) is {max_bytes}"
            )
        if raw[0] == MAGIC_BYTE:
            record: dict[str, Any] = REQUEST_SCHEMA.decode(raw)
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
            record["request_id"] = key.decode("utf-8", errors="replace")
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


@dataclass(slots=True)
class Envelope:
    """One value on its way from ``source`` to ``step`` (hot path: a plain dataclass)."""

    request_id: str
    pipeline: str
    step: str
    source: str
    kind: Literal["VALUE", "SKIP"]
    submitted_at: int
    created_at: int
    request: str
    payload: str | None
    attempt: int = 1
    traceparent: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        return ENVELOPE_SCHEMA.encode(
            {
                "request_id": self.request_id,
                "pipeline": self.pipeline,
                "step": self.step,
                "source": self.source,
                "kind": self.kind,
                "attempt": self.attempt,
                "submitted_at": self.submitted_at,
                "created_at": self.created_at,
                "traceparent": self.traceparent,
                "request": self.request,
                "options": self.options,
                "path": self.path,
                "payload": self.payload,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> Envelope:
        if not raw:
            raise UndecodableError("empty step message")
        return cls(**ENVELOPE_SCHEMA.decode(raw))


class Result(BaseModel):
    """The answer to one request on the pipeline's results topic."""

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

    @property
    def value(self) -> Any:
        """The decoded output (``None`` for failures)."""
        return None if self.output is None else json.loads(self.output)

    def to_wire(self, fmt: Literal["json", "avro"]) -> bytes:
        if fmt == "avro":
            return RESULT_SCHEMA.encode(self.model_dump())
        return self.model_dump_json().encode()

    @classmethod
    def from_wire(cls, raw: bytes) -> Result:
        if raw[:1] == bytes([MAGIC_BYTE]):
            return cls.model_validate(RESULT_SCHEMA.decode(raw))
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise SchemaInvalidError(f"invalid result: {_describe(exc)}") from exc


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
    key: bytes | None = None
    value: bytes | None = None


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
