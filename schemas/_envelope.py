"""A value on its way between steps (``Envelope``): a compiled native class.

A request makes about six (its root step's input, each step's output, the ones read back
from step topics), and compiled code reads their fields dozens of times.  As a dataclass
each was a Python ``__init__`` (0.7 us from compiled code) and each field read a generic
attribute lookup; native, both are direct.  The model calls it carries stay a dataclass
(``schemas/_model_call.py``).
"""

from __future__ import annotations

import json
from typing import Any, Literal, final

from weir.core.errors import UndecodableError
from weir.schemas._codec import load_schema
from weir.schemas._envelope_codec import ENVELOPE_FIELDS, encode_fast, envelope_fields
from weir.schemas._model_call import ModelCall

__all__ = ["ENVELOPE_SCHEMA", "Envelope", "EnvelopeKind"]

ENVELOPE_SCHEMA = load_schema("envelope")

EnvelopeKind = Literal["VALUE", "SKIP", "JOINED", "FAILURE"]

_FIELDS = frozenset(ENVELOPE_FIELDS)


@final
class Envelope:
    """One value on its way from ``source`` to ``step``.

    Built, compared and copied (``replace``) by its fields, in ``ENVELOPE_FIELDS``' order.
    """

    __slots__ = (
        "_request_object",
        "attempt",
        "calls",
        "created_at",
        "error_message",
        "error_type",
        "failed_step",
        "first_failed_at",
        "inputs",
        "kind",
        "not_before",
        "options",
        "path",
        "payload",
        "pipeline",
        "replay",
        "request",
        "request_id",
        "source",
        "step",
        "submitted_at",
        "traceparent",
    )

    def __init__(
        self,
        request_id: str,
        pipeline: str,
        step: str,
        source: str,
        kind: EnvelopeKind,
        submitted_at: int,
        created_at: int,
        request: str,
        payload: str | None,
        attempt: int = 1,
        traceparent: str | None = None,
        options: dict[str, str] | None = None,
        path: list[str] | None = None,
        not_before: int = 0,
        first_failed_at: int | None = None,
        inputs: dict[str, str | None] | None = None,
        calls: list[ModelCall] | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        failed_step: str | None = None,
        replay: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.pipeline = pipeline
        self.step = step
        self.source = source
        self.kind: EnvelopeKind = kind
        self.submitted_at = submitted_at
        """Epoch milliseconds."""
        self.created_at = created_at
        """Epoch microseconds."""
        self.request = request
        self.payload = payload
        self.attempt = attempt
        self.traceparent = traceparent
        self.options: dict[str, str] = {} if options is None else options
        self.path: list[str] = [] if path is None else path
        self.not_before = not_before
        """Epoch milliseconds before which a retry must not start."""
        self.first_failed_at = first_failed_at
        self.inputs: dict[str, str | None] = {} if inputs is None else inputs
        """``JOINED``: every input's payload by source step."""
        self.calls: list[ModelCall] = [] if calls is None else calls
        self.error_type = error_type
        self.error_message = error_message
        self.failed_step = failed_step
        self.replay = replay
        self._request_object: dict[str, Any] | None = None
        """``request`` parsed, once (``request_object``); not on the wire, and not carried
        by ``replace`` (whose ``request`` may differ)."""

    def request_object(self) -> dict[str, Any]:
        """``request`` as a dict, parsed on first use and kept: every reader of this
        envelope (the step's context, its bound fields) shares the one parse."""
        parsed = self._request_object
        if parsed is None:
            parsed = self._request_object = json.loads(self.request)
        return parsed

    def with_request_object(self, parsed: dict[str, Any]) -> Envelope:
        """This envelope, knowing ``parsed`` is its ``request`` already parsed."""
        self._request_object = parsed
        return self

    def fields(self) -> tuple[Any, ...]:
        """The fields' values, in ``ENVELOPE_FIELDS``' order."""
        return (
            self.request_id,
            self.pipeline,
            self.step,
            self.source,
            self.kind,
            self.submitted_at,
            self.created_at,
            self.request,
            self.payload,
            self.attempt,
            self.traceparent,
            self.options,
            self.path,
            self.not_before,
            self.first_failed_at,
            self.inputs,
            self.calls,
            self.error_type,
            self.error_message,
            self.failed_step,
            self.replay,
        )

    def replace(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` (fields by name), as ``dataclasses.replace`` makes one:
        the values not changed are shared, the parsed request is not carried over."""
        new = _from_fields(self.fields())
        for name, value in changes.items():
            if name not in _FIELDS:
                raise TypeError(f"Envelope has no field {name!r}")
            setattr(new, name, value)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.fields() == other.fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        # Sizes, not texts: the request and payload may hold what must not be logged.
        return (
            f"Envelope(request_id={self.request_id!r}, pipeline={self.pipeline!r},"
            f" step={self.step!r}, source={self.source!r}, kind={self.kind!r},"
            f" attempt={self.attempt}, request={len(self.request)} chars,"
            f" payload={'None' if self.payload is None else f'{len(self.payload)} chars'})"
        )

    def encode(self) -> bytes:
        fast = encode_fast(ENVELOPE_SCHEMA.header, self)
        if fast is not None:
            return fast
        record = self.to_dict()
        return ENVELOPE_SCHEMA.encode(record)

    @staticmethod
    def decode(raw: bytes | None) -> Envelope:
        if not raw:
            raise UndecodableError("empty step message")
        if ENVELOPE_SCHEMA.is_framed(raw):
            fast = envelope_fields(raw)
            if fast is not None:
                return _from_fields(fast)
        record = ENVELOPE_SCHEMA.decode(raw)
        return Envelope.from_dict(record)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (join changelogs store waiting inputs this way)."""
        record = dict(zip(ENVELOPE_FIELDS, self.fields(), strict=True))
        record["calls"] = [c.to_record() for c in self.calls]
        return record

    @staticmethod
    def from_dict(record: dict[str, Any]) -> Envelope:
        calls = [ModelCall.from_record(c) for c in record.get("calls") or ()]
        return Envelope(**{**record, "calls": calls})


def _from_fields(f: tuple[Any, ...]) -> Envelope:
    """An envelope from its fields in ``ENVELOPE_FIELDS``' order."""
    return Envelope(
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        f[8],
        f[9],
        f[10],
        f[11],
        f[12],
        f[13],
        f[14],
        f[15],
        f[16],
        f[17],
        f[18],
        f[19],
        f[20],
    )
