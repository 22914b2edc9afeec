"""Hand-written Avro codecs for envelopes and trace events without model calls (hot path).

fastavro's ``schemaless_writer``/``reader`` cost 20-35 us per envelope on this kind of
machine, mostly per-call set-up; a worker encodes and decodes several envelopes per
request.  This module writes and reads the same bytes (``schemas/envelope.avsc``, the
Confluent framing included) for envelopes whose ``calls`` array is empty, in a few
microseconds.  Anything else — model calls, or bytes this reader does not expect —
returns ``None`` and the caller uses fastavro, which also produces the error messages.
Trace events without model calls are written the same way.
``tests/schemas/test_envelope_codec.py`` checks byte-for-byte agreement with fastavro.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["decode_fast", "decode_trace_fast", "encode_fast", "encode_trace_fast"]

_KINDS = ("VALUE", "SKIP", "JOINED", "FAILURE")
_KIND_INDEX = {k: i for i, k in enumerate(_KINDS)}


def _long(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _string(out: bytearray, s: str) -> None:
    b = s.encode()
    n = len(b) << 1
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    out += b


def _opt_string(out: bytearray, s: str | None) -> None:
    if s is None:
        out.append(0)
    else:
        out.append(2)
        _string(out, s)


def encode_fast(header: bytes, e: Any) -> bytes | None:
    """The framed Avro bytes of envelope ``e``; ``None``: let fastavro encode it."""
    if e.calls:
        return None
    try:
        return _encode(header, e)
    except (KeyError, TypeError, AttributeError, UnicodeEncodeError):
        return None  # fastavro says what does not fit the schema


def _encode(header: bytes, e: Any) -> bytes:
    out = bytearray(header)
    _string(out, e.request_id)
    _string(out, e.pipeline)
    _string(out, e.step)
    _string(out, e.source)
    out.append(_KIND_INDEX[e.kind] << 1)
    _long(out, e.attempt)
    _long(out, e.not_before)
    if e.first_failed_at is None:
        out.append(0)
    else:
        out.append(2)
        _long(out, e.first_failed_at)
    _long(out, e.submitted_at)
    _long(out, e.created_at)
    _opt_string(out, e.traceparent)
    _string(out, e.request)
    options = e.options
    if options:
        _long(out, len(options))
        for k, v in options.items():
            _string(out, k)
            _string(out, v)
    out.append(0)
    path = e.path
    if path:
        _long(out, len(path))
        for step in path:
            _string(out, step)
    out.append(0)
    _opt_string(out, e.payload)
    inputs = e.inputs
    if inputs:
        _long(out, len(inputs))
        for k, v in inputs.items():
            _string(out, k)
            _opt_string(out, v)
    out.append(0)
    out.append(0)  # calls: empty array
    _opt_string(out, e.error_type)
    _opt_string(out, e.error_message)
    _opt_string(out, e.failed_step)
    _opt_string(out, e.replay)
    return bytes(out)


class _Unsupported(Exception):
    pass


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def long(self) -> int:
        buf, pos = self.buf, self.pos
        b = buf[pos]
        pos += 1
        if b < 0x80:
            self.pos = pos
            return (b >> 1) ^ -(b & 1)
        n = b & 0x7F
        shift = 7
        while b & 0x80:
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
        self.pos = pos
        return (n >> 1) ^ -(n & 1)

    def string(self) -> str:
        buf, start = self.buf, self.pos
        b = buf[start]
        if b < 0x80:
            size = (b >> 1) ^ -(b & 1)
            start += 1
        else:
            size = self.long()
            start = self.pos
        end = start + size
        if size < 0 or end > len(buf):
            raise _Unsupported
        self.pos = end
        return buf[start:end].decode()

    def opt_string(self) -> str | None:
        branch = self.long()
        if branch == 0:
            return None
        if branch != 1:
            raise _Unsupported
        return self.string()

    def block_count(self) -> int:
        count = self.long()
        if count < 0:  # a block with its byte size: fastavro never writes these
            raise _Unsupported
        return count


def decode_fast(raw: bytes) -> dict[str, Any] | None:
    """The envelope's fields, from framed Avro bytes; ``None``: let fastavro decode it."""
    try:
        r = _Reader(raw, 5)
        record: dict[str, Any] = {
            "request_id": r.string(),
            "pipeline": r.string(),
            "step": r.string(),
            "source": r.string(),
        }
        kind = r.long()
        if not 0 <= kind < len(_KINDS):
            return None
        record["kind"] = _KINDS[kind]
        record["attempt"] = r.long()
        record["not_before"] = r.long()
        branch = r.long()
        if branch not in (0, 1):
            return None
        record["first_failed_at"] = r.long() if branch else None
        record["submitted_at"] = r.long()
        record["created_at"] = r.long()
        record["traceparent"] = r.opt_string()
        record["request"] = r.string()
        options: dict[str, str] = {}
        while count := r.block_count():
            for _ in range(count):
                key = r.string()
                options[key] = r.string()
        record["options"] = options
        path: list[str] = []
        while count := r.block_count():
            for _ in range(count):
                path.append(r.string())
        record["path"] = path
        record["payload"] = r.opt_string()
        inputs: dict[str, str | None] = {}
        while count := r.block_count():
            for _ in range(count):
                key = r.string()
                inputs[key] = r.opt_string()
        record["inputs"] = inputs
        if r.long() != 0:  # model calls: fastavro reads those
            return None
        record["calls"] = []
        record["error_type"] = r.opt_string()
        record["error_message"] = r.opt_string()
        record["failed_step"] = r.opt_string()
        record["replay"] = r.opt_string()
        if r.pos > len(raw):
            return None
        return record
    except (IndexError, UnicodeDecodeError, _Unsupported):
        return None


_DOUBLE = struct.Struct("<d")


def encode_trace_fast(header: bytes, ev: Any, no_cost: str) -> bytes | None:
    """The framed Avro bytes of trace event ``ev`` without model calls (else ``None``).

    ``no_cost`` is the ``cost_usd`` text of an attempt that made no call.
    """
    if ev.calls:
        return None
    try:
        out = bytearray(header)
        _string(out, ev.event_id)
        _string(out, ev.pipeline_id)
        _string(out, ev.step_name)
        _string(out, ev.request_id)
        _long(out, ev.attempt)
        _string(out, ev.status)
        _string(out, ev.disposition)
        _opt_string(out, ev.error_type)
        _opt_string(out, ev.error_message)
        _long(out, ev.created_at)
        _long(out, ev.started_at)
        _long(out, ev.submitted_at)
        out += _DOUBLE.pack(ev.duration_ms)
        out += _DOUBLE.pack(ev.queue_wait_ms)
        _string(out, ev.worker_id)
        _string(out, ev.topic)
        _long(out, ev.partition)
        _long(out, ev.offset)
        out += b"\x00\x00\x00\x00\x00"  # endpoint, model, provider: null; no tokens in/out
        _string(out, no_cost)
        out += b"\x00\x00\x00\x00"  # usage_source, routing_rule, rules_version: null; no calls
        _opt_string(out, ev.trace_id)
        _opt_string(out, ev.span_id)
        _opt_string(out, ev.input)
        _opt_string(out, ev.output)
        _string(out, ev.replay_id)
        _string(out, ev.variant)
        return bytes(out)
    except (TypeError, AttributeError, UnicodeEncodeError, struct.error):
        return None


def decode_trace_fast(header: bytes, raw: bytes) -> dict[str, Any] | None:
    """The Avro record of a trace event without model calls (else ``None``: use fastavro)."""
    if raw[:5] != header:
        return None
    try:
        r = _Reader(raw, 5)
        string, opt, long = r.string, r.opt_string, r.long
        record: dict[str, Any] = {
            "event_id": string(),
            "pipeline_id": string(),
            "step_name": string(),
            "request_id": string(),
            "attempt": long(),
            "status": string(),
            "disposition": string(),
            "error_type": opt(),
            "error_message": opt(),
            "created_at": long(),
            "started_at": long(),
            "submitted_at": long(),
        }
        pos = r.pos
        record["duration_ms"], record["queue_wait_ms"] = _TWO_DOUBLES.unpack_from(raw, pos)
        r.pos = pos + 16
        record["worker_id"] = string()
        record["topic"] = string()
        record["partition"] = long()
        record["offset"] = long()
        record["endpoint"] = opt()
        record["model"] = opt()
        record["provider"] = opt()
        record["input_tokens"] = long()
        record["output_tokens"] = long()
        record["cost_usd"] = string()
        record["usage_source"] = opt()
        record["routing_rule"] = opt()
        branch = long()
        if branch not in (0, 1):
            return None
        record["rules_version"] = long() if branch else None
        if long() != 0:  # model calls: fastavro reads those
            return None
        record["calls"] = []
        record["trace_id"] = opt()
        record["span_id"] = opt()
        record["input"] = opt()
        record["output"] = opt()
        record["replay_id"] = string()
        record["variant"] = string()
        if r.pos != len(raw):
            return None
        return record
    except (IndexError, UnicodeDecodeError, _Unsupported, struct.error):
        return None


_TWO_DOUBLES = struct.Struct("<dd")
