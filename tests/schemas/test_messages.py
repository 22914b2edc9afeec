"""Typed messages: requests in both wire forms, results, envelopes and dead-letter headers."""

import dataclasses
import json
from typing import Any

import pytest

from weir.core.errors import (
    MessageError,
    PayloadTooLargeError,
    SchemaInvalidError,
    UndecodableError,
)
from weir.schemas._codec import load_schema
from weir.schemas.messages import (
    DEAD_LETTER_SCHEMA,
    ENVELOPE_SCHEMA,
    RESULT_JSON_VERSION,
    RESULT_SCHEMA,
    TRACE_EVENT_SCHEMA,
    DeadLetter,
    Envelope,
    Request,
    Result,
    TraceEvent,
    now_ms,
)

LIMIT = 1 << 20


def _from_wire(raw: bytes | None, key: bytes | None = None, max_bytes: int = LIMIT) -> Request:
    return Request.from_wire(raw, pipeline="support", key=key, max_bytes=max_bytes)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- Request.from_wire: accepted ----------------------------------------------------------------


def test_json_request_with_payload_object() -> None:
    before = now_ms()
    request = _from_wire(_json({"payload": {"text": "hi", "n": [1, 2]}}), key=b"key-1")
    assert request.payload == {"text": "hi", "n": [1, 2]}
    assert request.pipeline == "support"
    assert request.request_id == "key-1"
    assert before <= request.submitted_at <= now_ms()
    assert request.options == {} and request.traceparent is None


def test_json_request_with_payload_as_json_string() -> None:
    raw = _json({"payload": json.dumps({"text": "hi"}), "request_id": "r-9"})
    request = _from_wire(raw)
    assert request.payload == {"text": "hi"}
    assert request.request_id == "r-9"


def test_json_request_with_every_field() -> None:
    record = {
        "request_id": "r-1",
        "pipeline": "support",
        "payload": {"text": "hi"},
        "submitted_at": 123,
        "options": {"latency_sla": "fast"},
        "traceparent": "00-abc-def-01",
    }
    request = _from_wire(b"  \n" + _json(record), key=b"ignored")
    assert request.model_dump() == record


def test_request_id_in_the_body_wins_over_the_key() -> None:
    assert _from_wire(_json({"payload": {}, "request_id": "body"}), key=b"key").request_id == "body"


def test_request_without_id_or_key_gets_a_fresh_id() -> None:
    first, second = _from_wire(_json({"payload": {}})), _from_wire(_json({"payload": {}}))
    assert len(first.request_id) == 32 and first.request_id != second.request_id


def test_non_utf8_key_still_gives_a_request_id() -> None:
    assert _from_wire(_json({"payload": {}}), key=b"\xffk").request_id == "\ufffdk"


def test_avro_request_roundtrip() -> None:
    original = Request(
        request_id="r-1",
        pipeline="support",
        payload={"text": "héllo", "nested": {"a": [1, None, True]}},
        submitted_at=42,
        options={"latency_sla": "fast"},
        traceparent="00-abc",
    )
    raw = original.to_avro()
    assert raw[0] == 0
    assert _from_wire(raw, key=b"other") == original


def test_json_request_roundtrip() -> None:
    original = Request(pipeline="support", payload={"text": "hi"})
    assert _from_wire(original.to_json()) == original


def test_request_exactly_at_the_size_limit_is_accepted() -> None:
    text = "x" * (1024 - len(_json({"payload": {"text": ""}})))
    raw = _json({"payload": {"text": text}})
    assert len(raw) == 1024
    assert _from_wire(raw, max_bytes=1024).payload["text"] == text
    with pytest.raises(PayloadTooLargeError):
        _from_wire(raw, max_bytes=1023)


# -- Request.from_wire: rejected ----------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, b""])
def test_empty_message_is_undecodable(raw: bytes | None) -> None:
    with pytest.raises(UndecodableError, match="empty"):
        _from_wire(raw)


def test_too_large_message_names_both_sizes() -> None:
    raw = _json({"payload": {"text": "x" * 2000}})
    with pytest.raises(PayloadTooLargeError) as info:
        _from_wire(raw, max_bytes=1024)
    assert str(len(raw)) in str(info.value) and "1024" in str(info.value)
    assert info.value.error_type == "payload_too_large"
    assert isinstance(info.value, MessageError) and not info.value.retriable


@pytest.mark.parametrize("raw", [b'"text"', b"42", b"null", b"true", b"[1, 2]", b"[]", b"hello"])
def test_json_that_is_not_an_object_is_rejected(raw: bytes) -> None:
    with pytest.raises(UndecodableError) as info:
        _from_wire(raw)
    assert "neither JSON" in str(info.value)


@pytest.mark.parametrize("raw", [b"{", b'{"payload": }', b'{"payload": {}} trailing', b"{\xff}"])
def test_broken_json_object_is_undecodable(raw: bytes) -> None:
    with pytest.raises(UndecodableError, match="not valid JSON"):
        _from_wire(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"payload": {"x": "\\ud800", "y": "\\u00e9\xc3\xa9"}}',  # a lone surrogate, escaped
        b'{"payload": {"deep": ' + b"[" * 400 + b"]" * 400 + b"}}",  # past pydantic-core's limit
        b'{"payload": {"a": 1, "a": 2, "big": 123456789012345678901234567890, "f": 1e400}}',
        b'{"payload": {"f": [0.1, -0.0, 4.9e-324, 1.7976931348623157e308, NaN, -Infinity]}}',
    ],
)
def test_a_request_decodes_to_what_the_standard_json_parser_reads(raw: bytes) -> None:
    # The fast parser's values, or the standard parser where the fast one refuses.
    expected = json.loads(raw)["payload"]
    assert repr(_from_wire(raw).payload) == repr(expected)


@pytest.mark.parametrize("payload", [[1, 2], "[1, 2]", 42, "42", None, "null"])
def test_payload_that_is_not_an_object_is_schema_invalid(payload: Any) -> None:
    with pytest.raises(SchemaInvalidError):
        _from_wire(_json({"payload": payload}))


def test_payload_string_that_is_not_json_is_undecodable() -> None:
    with pytest.raises(UndecodableError, match="request payload is not valid JSON"):
        _from_wire(_json({"payload": "hello there"}))


def test_missing_payload_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalidError, match="payload"):
        _from_wire(_json({"request_id": "r-1"}))


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_wrong_pipeline_name_is_schema_invalid(fmt: str) -> None:
    request = Request(pipeline="billing", payload={})
    raw = request.to_avro() if fmt == "avro" else request.to_json()
    with pytest.raises(SchemaInvalidError) as info:
        _from_wire(raw)
    assert "'billing'" in str(info.value) and "'support'" in str(info.value)


def test_unknown_field_is_schema_invalid() -> None:
    with pytest.raises(SchemaInvalidError) as info:
        _from_wire(_json({"payload": {}, "colour": "red"}))
    assert "colour" in str(info.value)


@pytest.mark.parametrize(
    "record",
    [
        {"payload": {}, "request_id": ""},
        {"payload": {}, "request_id": 5},
        {"payload": {}, "submitted_at": -1},
        {"payload": {}, "options": {"a": 1}},
    ],
)
def test_invalid_field_values_are_schema_invalid(record: dict[str, Any]) -> None:
    with pytest.raises(SchemaInvalidError, match="invalid request"):
        _from_wire(_json(record))


@pytest.mark.parametrize("where", ["body", "payload string"])
def test_deeply_nested_json_is_a_message_error(where: str) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    if where == "body":
        raw = b'{"payload": ' + nested.encode() + b"}"
    else:
        raw = _json({"payload": nested})
    with pytest.raises(MessageError):
        _from_wire(raw)


# -- Result ---------------------------------------------------------------------------------------

_SUCCESS = Result(
    request_id="r-1",
    pipeline="support",
    status="SUCCESS",
    # Compact, as steps encode their output: the JSON form re-encodes the value so.
    output=json.dumps({"answer": "42", "sources": ["a"]}, separators=(",", ":")),
    path=["classify", "answer"],
    submitted_at=1_000,
    completed_at=1_250,
    latency_ms=250.5,
)
_FAILURE = Result(
    request_id="r-2",
    pipeline="support",
    status="FAILURE",
    error_type="step_timeout",
    error_message="step 'answer' did not finish within 60s",
    failed_step="answer",
    submitted_at=1_000,
    completed_at=61_000,
    latency_ms=60_000.0,
)


@pytest.mark.parametrize("fmt", ["json", "avro"])
@pytest.mark.parametrize("result", [_SUCCESS, _FAILURE], ids=["success", "failure"])
def test_result_roundtrip(fmt: str, result: Result) -> None:
    raw = result.to_wire(fmt)  # type: ignore[arg-type]
    assert RESULT_SCHEMA.is_framed(raw) == (fmt == "avro")
    assert Result.from_wire(raw) == result


def test_result_value_decodes_the_output() -> None:
    assert _SUCCESS.value == {"answer": "42", "sources": ["a"]}
    assert _FAILURE.value is None


def test_json_result_follows_the_avro_schema_field_names_then_its_version() -> None:
    fields = [f["name"] for f in RESULT_SCHEMA.definition["fields"]]
    assert list(json.loads(_SUCCESS.to_wire("json"))) == [*fields, "schema_version"]


@pytest.mark.parametrize(
    "value", [{"total": 28.5, "available": True}, [1, "a"], 3, 2.5, "plain text", True]
)
def test_json_result_carries_the_output_as_a_json_value(value: object) -> None:
    result = _SUCCESS.model_copy(update={"output": json.dumps(value)})
    body = json.loads(result.to_wire("json"))
    assert body["output"] == value and body["schema_version"] == RESULT_JSON_VERSION == 2
    assert body == result.to_json()  # the wire and the CLI's --json say the same
    assert Result.from_wire(result.to_wire("json")).value == value


def test_avro_result_keeps_the_output_as_json_text() -> None:
    decoded = RESULT_SCHEMA.decode(_SUCCESS.to_wire("avro"))
    assert decoded["output"] == _SUCCESS.output and isinstance(decoded["output"], str)


def test_version_1_json_results_still_read() -> None:
    # Written before schema_version 2: output is JSON text, and there is no version field.
    old = json.loads(_SUCCESS.model_dump_json())
    assert isinstance(old["output"], str) and "schema_version" not in old
    assert Result.from_wire(json.dumps(old).encode()).value == {"answer": "42", "sources": ["a"]}
    # A string that is itself JSON text stays a string in version 2.
    text = json.dumps({"output": '{"a": 1}', "schema_version": 2} | _minimal())
    assert Result.from_wire(text.encode()).value == '{"a": 1}'


def _minimal() -> dict[str, object]:
    return {
        "request_id": "r",
        "pipeline": "p",
        "status": "SUCCESS",
        "submitted_at": 1,
        "completed_at": 2,
        "latency_ms": 1.0,
    }


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_unknown_result_versions_are_refused(version: object) -> None:
    raw = json.dumps({**_minimal(), "output": 1, "schema_version": version}).encode()
    with pytest.raises(SchemaInvalidError, match="schema_version"):
        Result.from_wire(raw)


@pytest.mark.parametrize("raw", [b"not json", b"{}", b'{"request_id": "r"}'])
def test_invalid_result_is_a_message_error(raw: bytes) -> None:
    with pytest.raises(MessageError):
        Result.from_wire(raw)


# -- Envelope -------------------------------------------------------------------------------------


def test_envelope_roundtrip() -> None:
    envelope = Envelope(
        request_id="r-1",
        pipeline="support",
        step="answer",
        source="classify",
        kind="VALUE",
        submitted_at=1_000,
        created_at=1_000_123,
        request='{"text":"hi"}',
        payload='"balance"',
        attempt=2,
        traceparent="00-abc",
        options={"k": "v"},
        path=["classify"],
    )
    raw = envelope.encode()
    assert ENVELOPE_SCHEMA.is_framed(raw)
    assert Envelope.decode(raw) == envelope


@pytest.mark.parametrize("raw", [None, b""])
def test_empty_envelope_is_undecodable(raw: bytes | None) -> None:
    with pytest.raises(UndecodableError):
        Envelope.decode(raw)


# -- DeadLetter -----------------------------------------------------------------------------------

_DEAD = DeadLetter(
    pipeline="support",
    step="answer",
    error_type="step_error",
    error_message="step 'answer' raised ValueError: boom — ünïcode",
    stacktrace="Traceback (most recent call last):\n  ...",
    attempt=3,
    first_failed_at=1_000,
    last_failed_at=3_000,
    worker_id="host-1234",
    source_topic="weir.support.step.answer",
    source_partition=2,
    source_offset=987_654_321_000,
    request_id="r-1",
    key=b"r-1",
    value=b"\x00\x01original bytes",
)

_CONNECT_HEADERS = {
    "__connect.errors.topic": "weir.support.step.answer",
    "__connect.errors.partition": "2",
    "__connect.errors.offset": "987654321000",
    "__connect.errors.exception.class.name": "step_error",
    "__connect.errors.exception.message": "step 'answer' raised ValueError: boom — ünïcode",
    "__connect.errors.exception.stacktrace": "Traceback (most recent call last):\n  ...",
    "__connect.errors.connector.name": "support",
    "__connect.errors.task.id": "host-1234",
    "__connect.errors.stage": "answer",
}


def test_dead_letter_headers_use_kafka_connect_names() -> None:
    headers = dict(_DEAD.headers())
    assert all(isinstance(v, bytes) for v in headers.values())
    decoded = {name: value.decode() for name, value in headers.items()}
    assert {k: v for k, v in decoded.items() if k.startswith("__connect.errors.")} == (
        _CONNECT_HEADERS
    )
    assert {k: v for k, v in decoded.items() if not k.startswith("__connect.errors.")} == {
        "weir.attempt": "3",
        "weir.first_failed_at": "1000",
        "weir.last_failed_at": "3000",
        "weir.request_id": "r-1",
        "weir.error_type": "step_error",
    }
    assert len(_DEAD.headers()) == len(headers)  # no duplicate names


def test_dead_letter_headers_roundtrip() -> None:
    own_headers = [("traceparent", b"00-abc"), ("content-type", b"application/json")]
    rebuilt = DeadLetter.from_message(_DEAD.key, _DEAD.value, own_headers + _DEAD.headers())
    assert rebuilt == _DEAD


def test_dead_letter_without_optional_fields_omits_their_headers() -> None:
    minimal = _DEAD.model_copy(update={"stacktrace": None, "request_id": None})
    names = [name for name, _ in minimal.headers()]
    assert "__connect.errors.exception.stacktrace" not in names
    assert "weir.request_id" not in names
    assert DeadLetter.from_message(minimal.key, minimal.value, minimal.headers()) == minimal


def test_dead_letter_follows_its_avro_schema() -> None:
    record = _DEAD.model_dump()
    assert list(record) == [f["name"] for f in DEAD_LETTER_SCHEMA.definition["fields"]]
    assert DEAD_LETTER_SCHEMA.decode(DEAD_LETTER_SCHEMA.encode(record)) == record


def test_trace_events_written_before_replay_tags_still_decode_with_empty_tags() -> None:
    """An event framed with the previous trace schema (no ``replay_id``/``variant``)."""
    old = load_schema("trace_event_v1")
    event = TraceEvent(
        pipeline_id="p",
        step_name="s",
        request_id="r-1",
        attempt=1,
        status="SUCCESS",
        disposition="emitted",
        created_at=2,
        started_at=1,
        submitted_at=0,
        duration_ms=1.5,
        queue_wait_ms=0.0,
        worker_id="w",
        topic="t",
        partition=0,
        offset=7,
    )
    record = event.to_record()
    raw = old.encode({k: v for k, v in record.items() if k not in {"replay_id", "variant"}})
    assert old.schema_id != TRACE_EVENT_SCHEMA.schema_id
    assert TraceEvent.decode(raw) == record | {"replay_id": "", "variant": ""}
    tagged = dataclasses.replace(event, replay_id="rs-1", variant="endpoint:b").encode()
    assert TraceEvent.decode(tagged)["replay_id"] == "rs-1"
    assert TraceEvent.decode(tagged)["variant"] == "endpoint:b"
