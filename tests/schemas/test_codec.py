"""Avro in the Confluent wire format: framing, schema ids, round trips, corrupt input."""

import io
import json
import random
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from weir import schemas
from weir.core.errors import MessageError, SchemaInvalidError, UndecodableError
from weir.schemas import (
    DEAD_LETTER_SCHEMA,
    ENVELOPE_SCHEMA,
    MAGIC_BYTE,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    TRACE_EVENT_SCHEMA,
    AvroSchema,
    load_schema,
)
from weir.schemas.messages import Request

SCHEMA_DIR = Path(schemas.__file__).parent
SCHEMAS = {
    "request": REQUEST_SCHEMA,
    "envelope": ENVELOPE_SCHEMA,
    "result": RESULT_SCHEMA,
    "dead_letter": DEAD_LETTER_SCHEMA,
    "trace_event": TRACE_EVENT_SCHEMA,
}

CALL: dict[str, Any] = {
    "step": "draft",
    "attempt": 2,
    "endpoint": "gpt-4o-mini",
    "provider": "openai",
    "model": "gpt-4o-mini-2024-07-18",
    "operation": "chat",
    "status": "SUCCESS",
    "error_type": None,
    "input_tokens": 1234,
    "output_tokens": 56,
    "usage_source": "provider",
    "cost_usd": "0.0002187",
    "started_at": 1_700_000_000_100,
    "duration_ms": 812.5,
    "ttft_ms": 140.25,
    "streamed": True,
    "rule": "short-english",
    "rules_version": 7,
    "fallback_from": None,
}

# Complete records (every field present, defaults spelled out) as they decode.
RECORDS: dict[str, dict[str, Any]] = {
    "request": {
        "request_id": "r-1",
        "pipeline": "support",
        "payload": '{"text":"héllo"}',
        "submitted_at": 1_700_000_000_000,
        "options": {"latency_sla": "fast"},
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    "envelope": {
        "request_id": "r-1",
        "pipeline": "support",
        "step": "classify",
        "source": "",
        "kind": "SKIP",
        "attempt": 3,
        "submitted_at": 1_700_000_000_000,
        "created_at": 1_700_000_000_000_123,
        "traceparent": None,
        "request": '{"text":"hi"}',
        "options": {},
        "path": ["a", "b"],
        "payload": None,
        "not_before": 1_700_000_002_000,
        "first_failed_at": 1_700_000_001_000,
        "inputs": {"a": '{"x":1}', "b": None},
        "calls": [CALL],
        "error_type": None,
        "error_message": None,
        "failed_step": None,
        "replay": "rp-1",
    },
    "result": {
        "request_id": "r-1",
        "pipeline": "support",
        "status": "FAILURE",
        "output": None,
        "error_type": "step_error",
        "error_message": "boom",
        "failed_step": "classify",
        "path": ["classify"],
        "submitted_at": 1_700_000_000_000,
        "completed_at": 1_700_000_000_250,
        "latency_ms": 250.125,
        "input_tokens": 1234,
        "output_tokens": 56,
        "cost_usd": "0.0002187",
        "calls": [CALL],
        "replay": None,
    },
    "dead_letter": {
        "pipeline": "support",
        "step": "requests",
        "error_type": "undecodable",
        "error_message": "not JSON",
        "stacktrace": "Traceback ...",
        "attempt": 1,
        "first_failed_at": 1_700_000_000_000,
        "last_failed_at": 1_700_000_000_500,
        "worker_id": "host-1",
        "source_topic": "weir.support.requests",
        "source_partition": 3,
        "source_offset": 2**40,
        "request_id": None,
        "payload_bytes": 2_000_000,
        "original_error_type": "schema_invalid",
        "key": b"r-1",
        "value": b"\x00\xff garbage",
    },
    "trace_event": {
        "event_id": "e-1",
        "pipeline_id": "support",
        "step_name": "draft",
        "request_id": "r-1",
        "attempt": 2,
        "status": "FAILURE",
        "disposition": "retry_scheduled",
        "error_type": "model_timeout",
        "error_message": "gpt-4o-mini did not answer within 30s",
        "created_at": 1_700_000_001_000,
        "started_at": 1_700_000_000_100,
        "submitted_at": 1_700_000_000_000,
        "duration_ms": 900.0,
        "queue_wait_ms": 12.5,
        "worker_id": "host-1",
        "topic": "weir.support.step.draft",
        "partition": 1,
        "offset": 42,
        "endpoint": "gpt-4o-mini",
        "model": "gpt-4o-mini-2024-07-18",
        "provider": "openai",
        "input_tokens": 1234,
        "output_tokens": 56,
        "cost_usd": "0.0002187",
        "usage_source": "provider",
        "routing_rule": "short-english",
        "rules_version": 7,
        "calls": [CALL],
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "input": None,
        "output": None,
        "replay_id": "rs-0123456789ab",
        "variant": "endpoint:candidate",
    },
}

_AVRO_EMPTY = 0xC15D213AA4D7A795


def _rabin_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_AVRO_EMPTY if fp & 1 else 0)
        table.append(fp)
    return table


_RABIN = _rabin_table()


def _crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint exactly as the Avro specification writes it."""
    fp = _AVRO_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _RABIN[(fp ^ byte) & 0xFF]
    return fp


def _canonical(name: str) -> str:
    definition = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return to_parsing_canonical_form(definition)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_id_is_low_31_bits_of_fastavro_crc64_fingerprint(name: str) -> None:
    # fastavro's hex string lists the fingerprint's bytes little-endian first.
    raw = bytes.fromhex(fingerprint(_canonical(name), "CRC-64-AVRO"))
    expected = int.from_bytes(raw, "little") & 0x7FFFFFFF
    assert SCHEMAS[name].schema_id == expected
    assert load_schema(name).schema_id == expected


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_id_is_low_31_bits_of_the_specs_rabin_fingerprint(name: str) -> None:
    assert SCHEMAS[name].schema_id == _crc64_avro(_canonical(name).encode()) & 0x7FFFFFFF


def test_reference_rabin_matches_fastavro_up_to_byte_order() -> None:
    # Guards the reference implementation above: same 64 bits, fastavro prints them little-endian.
    for name in SCHEMAS:
        canonical = _canonical(name)
        ours = _crc64_avro(canonical.encode()).to_bytes(8, "little").hex()
        assert ours == fingerprint(canonical, "CRC-64-AVRO")


def test_schema_ids_are_distinct() -> None:
    assert len({s.schema_id for s in SCHEMAS.values()}) == len(SCHEMAS)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_confluent_framing(name: str) -> None:
    schema = SCHEMAS[name]
    raw = schema.encode(RECORDS[name])
    assert raw[0] == MAGIC_BYTE == 0
    assert struct.unpack(">I", raw[1:5])[0] == schema.schema_id
    assert int.from_bytes(raw[1:5], "big") == schema.schema_id
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema.definition), RECORDS[name])
    assert raw[5:] == body.getvalue()
    assert schema.is_framed(raw)
    assert not schema.is_framed(raw[:4])
    for other in SCHEMAS.values():
        if other is not schema:
            assert not other.is_framed(raw)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_roundtrip(name: str) -> None:
    schema = SCHEMAS[name]
    assert schema.decode(schema.encode(RECORDS[name])) == RECORDS[name]


def test_roundtrip_fills_defaults() -> None:
    minimal = {
        k: v for k, v in RECORDS["envelope"].items() if k not in {"attempt", "options", "path"}
    }
    minimal["traceparent"] = None
    decoded = ENVELOPE_SCHEMA.decode(ENVELOPE_SCHEMA.encode(minimal))
    assert decoded["attempt"] == 1 and decoded["options"] == {} and decoded["path"] == []


def test_schemas_are_the_shipped_avsc_files() -> None:
    for name, schema in SCHEMAS.items():
        assert isinstance(schema, AvroSchema)
        assert schema.name == name
        assert schema.definition == json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        assert schema.definition["namespace"] == "dev.weir"


def test_encode_json_is_compact_utf8() -> None:
    raw = REQUEST_SCHEMA.encode_json(RECORDS["request"])
    assert json.loads(raw) == RECORDS["request"]
    assert "héllo".encode() in raw  # not \u-escaped
    assert b": " not in raw and b", " not in raw


def test_unknown_schema_id_is_undecodable() -> None:
    raw = ENVELOPE_SCHEMA.encode(RECORDS["envelope"])
    with pytest.raises(UndecodableError) as info:
        REQUEST_SCHEMA.decode(raw)
    assert str(ENVELOPE_SCHEMA.schema_id) in str(info.value)
    assert str(REQUEST_SCHEMA.schema_id) in str(info.value)


def test_request_from_wire_with_another_schemas_message_is_undecodable() -> None:
    raw = RESULT_SCHEMA.encode(RECORDS["result"])
    with pytest.raises(UndecodableError):
        Request.from_wire(raw, pipeline="support", key=None, max_bytes=1 << 20)


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_truncated_body_is_undecodable(cut: int) -> None:
    raw = REQUEST_SCHEMA.encode(RECORDS["request"])
    with pytest.raises(UndecodableError):
        REQUEST_SCHEMA.decode(raw[:-cut])


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x01\x02\x03", b'{"a": 1}'])
def test_short_or_unframed_input_is_undecodable(raw: bytes) -> None:
    with pytest.raises(UndecodableError):
        REQUEST_SCHEMA.decode(raw)


def test_header_only_is_undecodable() -> None:
    with pytest.raises(UndecodableError):
        REQUEST_SCHEMA.decode(REQUEST_SCHEMA.encode(RECORDS["request"])[:5])


def test_encoding_a_record_that_does_not_fit_is_schema_invalid() -> None:
    record = dict(RECORDS["request"])
    del record["pipeline"]
    with pytest.raises(SchemaInvalidError, match="request"):
        REQUEST_SCHEMA.encode(record)
    with pytest.raises(SchemaInvalidError):
        REQUEST_SCHEMA.encode({**RECORDS["request"], "submitted_at": "yesterday"})


def test_validate_names_the_field_that_does_not_fit() -> None:
    REQUEST_SCHEMA.validate(RECORDS["request"])
    with pytest.raises(SchemaInvalidError) as info:
        REQUEST_SCHEMA.validate({**RECORDS["request"], "submitted_at": "yesterday"})
    assert "submitted_at" in str(info.value)


def _from_wire_outcome(raw: bytes) -> str:
    try:
        Request.from_wire(raw, pipeline="support", key=b"k", max_bytes=1 << 20)
    except (UndecodableError, SchemaInvalidError) as exc:
        assert isinstance(exc, MessageError)
        return type(exc).__name__
    return "ok"


def test_random_bytes_only_ever_raise_message_errors() -> None:
    rng = random.Random(20240611)
    header = REQUEST_SCHEMA.encode(RECORDS["request"])[:5]
    outcomes = set()
    for _ in range(300):
        body = rng.randbytes(rng.randrange(0, 80))
        for raw in (body, header + body, b"{" + body, b"\x00" + body):
            if raw:
                outcomes.add(_from_wire_outcome(raw))
    assert "UndecodableError" in outcomes


def test_mutated_avro_requests_only_ever_raise_message_errors() -> None:
    rng = random.Random(7)
    valid = Request(
        request_id="r-1",
        pipeline="support",
        payload={"text": "hi", "n": [1, 2, {"x": None}]},
        options={"k": "v"},
        traceparent="00-ab",
    ).to_avro()
    outcomes = set()
    for _ in range(300):
        raw = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(5, len(raw) + 1)
            match rng.randrange(3):
                case 0 if pos < len(raw):
                    raw[pos] = rng.randrange(256)
                case 1:
                    del raw[pos:]
                case _:
                    raw[pos:pos] = rng.randbytes(rng.randrange(1, 5))
        outcomes.add(_from_wire_outcome(bytes(raw)))
    assert "UndecodableError" in outcomes
