"""The hand-written envelope codec writes and reads exactly what fastavro does."""

from __future__ import annotations

import dataclasses
import io
import random
from decimal import Decimal

import fastavro
import pytest

from weir.schemas._envelope_codec import (
    ENVELOPE_FIELDS,
    decode_fast,
    decode_trace_fast,
    encode_fast,
    envelope_fields,
)
from weir.schemas.messages import (
    ENVELOPE_SCHEMA,
    TRACE_EVENT_SCHEMA,
    Envelope,
    ModelCall,
    TraceEvent,
)


def _fastavro_bytes(env: Envelope) -> bytes:
    buf = io.BytesIO()
    buf.write(ENVELOPE_SCHEMA.header)
    record = {
        "request_id": env.request_id,
        "pipeline": env.pipeline,
        "step": env.step,
        "source": env.source,
        "kind": env.kind,
        "attempt": env.attempt,
        "not_before": env.not_before,
        "first_failed_at": env.first_failed_at,
        "submitted_at": env.submitted_at,
        "created_at": env.created_at,
        "traceparent": env.traceparent,
        "request": env.request,
        "options": env.options,
        "path": env.path,
        "payload": env.payload,
        "inputs": env.inputs,
        "calls": [c.to_record() for c in env.calls],
        "error_type": env.error_type,
        "error_message": env.error_message,
        "failed_step": env.failed_step,
        "replay": env.replay,
    }
    fastavro.schemaless_writer(buf, ENVELOPE_SCHEMA.parsed, record)
    return buf.getvalue()


def _text(rng: random.Random) -> str:
    alphabet = 'abc-_.{}":,é€😀 \n0123456789'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))


def _maybe(rng: random.Random) -> str | None:
    return None if rng.random() < 0.5 else _text(rng)


def _envelope(rng: random.Random) -> Envelope:
    return Envelope(
        request_id=_text(rng),
        pipeline=_text(rng),
        step=_text(rng),
        source=_text(rng),
        kind=rng.choice(["VALUE", "SKIP", "JOINED", "FAILURE"]),  # type: ignore[arg-type]
        submitted_at=rng.randrange(0, 2**41),
        created_at=rng.choice([0, 1, -1, 2**52, rng.randrange(-(2**63), 2**63)]),
        request=_text(rng),
        payload=_maybe(rng),
        attempt=rng.choice([1, 2, 63, 64, 2**31 - 1, -(2**31)]),
        traceparent=_maybe(rng),
        options={_text(rng): _text(rng) for _ in range(rng.randrange(0, 4))},
        path=[_text(rng) for _ in range(rng.randrange(0, 5))],
        not_before=rng.randrange(0, 2**45),
        first_failed_at=None if rng.random() < 0.5 else rng.randrange(0, 2**45),
        inputs={_text(rng): _maybe(rng) for _ in range(rng.randrange(0, 4))},
        error_type=_maybe(rng),
        error_message=_maybe(rng),
        failed_step=_maybe(rng),
        replay=_maybe(rng),
    )


def test_same_bytes_as_fastavro_both_ways() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        env = _envelope(rng)
        expected = _fastavro_bytes(env)
        assert encode_fast(ENVELOPE_SCHEMA.header, env) == expected
        assert env.encode() == expected
        assert decode_fast(expected) == ENVELOPE_SCHEMA.decode(expected)
        assert Envelope.decode(expected) == env


def test_model_calls_and_odd_bytes_go_to_fastavro() -> None:
    env = _envelope(random.Random(1))
    env.calls = [
        ModelCall(
            step="s",
            attempt=1,
            endpoint="e",
            model="m",
            provider="p",
            operation="chat",
            started_at=1,
            duration_ms=2.0,
            input_tokens=3,
            output_tokens=4,
            cost_usd=Decimal("0.01"),
            usage_source="provider",
            status="SUCCESS",
        )
    ]
    assert encode_fast(ENVELOPE_SCHEMA.header, env) is None
    raw = env.encode()
    assert decode_fast(raw) is None
    assert Envelope.decode(raw) == env
    # Truncated and corrupt bodies are left to fastavro (which raises UndecodableError).
    plain = _envelope(random.Random(2)).encode()
    for cut in range(5, len(plain)):
        assert decode_fast(plain[:cut]) is None


def test_trace_events_same_bytes_as_fastavro() -> None:
    rng = random.Random(3)
    for _ in range(1000):
        event = TraceEvent(
            pipeline_id=_text(rng),
            step_name=_text(rng),
            request_id=_text(rng),
            attempt=rng.choice([1, 2, 2**31 - 1]),
            status=rng.choice(["SUCCESS", "FAILURE", "SKIPPED"]),  # type: ignore[arg-type]
            disposition=_text(rng),
            created_at=rng.randrange(0, 2**45),
            started_at=rng.randrange(0, 2**45),
            submitted_at=rng.randrange(0, 2**45),
            duration_ms=rng.random() * 1000,
            queue_wait_ms=rng.choice([0.0, rng.random() * 1e6]),
            worker_id=_text(rng),
            topic=_text(rng),
            partition=rng.randrange(0, 1000),
            offset=rng.randrange(0, 2**50),
            error_type=_maybe(rng),
            error_message=_maybe(rng),
            trace_id=_maybe(rng),
            span_id=_maybe(rng),
            input=_maybe(rng),
            output=_maybe(rng),
        )
        assert event.encode() == TRACE_EVENT_SCHEMA.encode(event.to_record())


def _trace_event(rng: random.Random) -> TraceEvent:
    return TraceEvent(
        pipeline_id=_text(rng),
        step_name=_text(rng),
        request_id=_text(rng),
        attempt=rng.choice([1, 2, 2**31 - 1]),
        status=rng.choice(["SUCCESS", "FAILURE", "SKIPPED"]),  # type: ignore[arg-type]
        disposition=_text(rng),
        created_at=rng.randrange(0, 2**45),
        started_at=rng.randrange(0, 2**45),
        submitted_at=rng.randrange(0, 2**45),
        duration_ms=rng.random() * 1000,
        queue_wait_ms=rng.choice([0.0, rng.random() * 1e6]),
        worker_id=_text(rng),
        topic=_text(rng),
        partition=rng.randrange(0, 1000),
        offset=rng.randrange(0, 2**50),
        error_type=_maybe(rng),
        error_message=_maybe(rng),
        trace_id=_maybe(rng),
        span_id=_maybe(rng),
        input=_maybe(rng),
        output=_maybe(rng),
        replay_id=rng.choice(["", _text(rng)]),
        variant=rng.choice(["", _text(rng)]),
    )


def test_trace_events_decode_to_what_fastavro_reads() -> None:
    rng = random.Random(4)
    for _ in range(1000):
        raw = _trace_event(rng).encode()
        fast = decode_trace_fast(TRACE_EVENT_SCHEMA.header, raw)
        assert fast is not None
        assert fast == TRACE_EVENT_SCHEMA.decode(raw)
        assert TraceEvent.decode(raw) == fast


def test_trace_events_with_calls_or_cut_short_are_left_to_fastavro() -> None:
    call = ModelCall(
        step="s",
        attempt=1,
        endpoint="e",
        provider="openai",
        model="m",
        operation="chat",
        status="SUCCESS",
        started_at=1,
        duration_ms=2.0,
        input_tokens=3,
        output_tokens=4,
        cost_usd=Decimal("0.5"),
        usage_source="provider",
    )
    event = dataclasses.replace(_trace_event(random.Random(5)), calls=[call])
    raw = event.encode()
    assert decode_trace_fast(TRACE_EVENT_SCHEMA.header, raw) is None
    assert TraceEvent.decode(raw) == TRACE_EVENT_SCHEMA.decode(raw)
    plain = _trace_event(random.Random(6)).encode()
    for cut in range(0, len(plain)):
        assert decode_trace_fast(TRACE_EVENT_SCHEMA.header, plain[:cut]) is None
    assert decode_trace_fast(ENVELOPE_SCHEMA.header, plain) is None


def test_the_fast_reader_gives_the_fields_in_the_envelopes_constructor_order() -> None:
    env = _envelope(random.Random(3))
    values = envelope_fields(env.encode())
    assert values is not None
    assert values == env.fields()
    assert dict(zip(ENVELOPE_FIELDS, values, strict=True)) == {
        name: getattr(env, name) for name in ENVELOPE_FIELDS
    }
    assert Envelope(*values) == env
    assert Envelope(**dict(zip(ENVELOPE_FIELDS, values, strict=True))) == env


def test_an_envelope_is_copied_compared_and_shown_by_its_fields_not_its_texts() -> None:
    env = _envelope(random.Random(4)).with_request_object({"secret": "s3cr3t"})
    copy = env.replace(attempt=env.attempt + 1, replay="r-1")
    assert (copy.attempt, copy.replay) == (env.attempt + 1, "r-1")
    assert copy.payload == env.payload and copy != env
    assert copy.replace(attempt=env.attempt, replay=env.replay) == env
    with pytest.raises(TypeError, match="no field 'attempts'"):
        env.replace(attempts=2)
    with pytest.raises(TypeError):
        hash(env)
    shown = repr(env.replace(request='{"card": "4111111111111111"}', payload='"hunter2"'))
    assert "4111" not in shown and "hunter2" not in shown and "9 chars" in shown
    assert repr(env.request_id) in shown
