"""An attempt's trace event written from its fields is byte for byte the ``TraceEvent`` one."""

from __future__ import annotations

import random
from decimal import Decimal

from weir.schemas._trace_codec import StepTraceCodec
from weir.schemas.messages import TRACE_EVENT_SCHEMA, ModelCall, TraceEvent, total_usage
from weir.streams._attempt_trace import AttemptTrace

_TEXTS = ["", "a", "é€😀", "x" * 200, "line\nbreak", "💥" * 70]


def _codec(rng: random.Random) -> StepTraceCodec:
    return StepTraceCodec(
        TRACE_EVENT_SCHEMA.header,
        rng.choice(["p", "pipeline-ü", "p" * 130]),
        rng.choice(["one", "stép", "s" * 64]),
        rng.choice(["w-1", "worker-" + "9" * 60]),
        rng.choice(["weir.p.one", "weir.p.one.retry.1"]),
        str(total_usage(())[2]),
    )


def _attempt(rng: random.Random, codec: StepTraceCodec) -> AttemptTrace:
    maybe = lambda: rng.choice([None, *_TEXTS])  # noqa: E731
    event = AttemptTrace(
        codec,
        rng.choice(["r-1", "request-ü-" + "7" * rng.randint(0, 90)]),
        rng.choice([1, 2, 63, 64, 65, 10_000]),
        rng.choice([0, 1_764_500_000_123, 2**62]),
        rng.choice([0, 1_764_500_000_000]),
        rng.choice([0, 1_764_499_999, 1_764_499_999_000]),
        rng.choice([0.0, 0.012, 1e300, -0.0, 12345.678]),
        rng.choice([0.0, 3.25, float("inf")]),
        rng.choice([0, 5, 63, 64, 1000]),
        rng.choice([0, 1, 63, 64, 8191, 8192, 2**40]),
        [],
        rng.choice([None, "a" * 32]),
        rng.choice([None, "b" * 16]),
    )
    event.status = rng.choice(["SUCCESS", "FAILURE", "CACHE_HIT", "SKIPPED"])
    event.disposition = rng.choice(["emitted", "retry_scheduled", "dead_lettered", "fallback"])
    event.error_type, event.error_message = maybe(), maybe()
    event.input, event.output = maybe(), maybe()
    return event


_ARGS = {
    name: name
    for name in [
        "event_id",
        "request_id",
        "attempt",
        "status",
        "disposition",
        "error_type",
        "error_message",
        "created_at",
        "started_at",
        "submitted_at",
        "duration_ms",
        "queue_wait_ms",
        "partition",
        "offset",
        "trace_id",
        "span_id",
    ]
} | {"given": "input", "made": "output"}


def test_attempt_events_are_the_bytes_trace_event_writes() -> None:
    rng = random.Random(9)
    for _ in range(2000):
        codec = _codec(rng)
        event = _attempt(rng, codec)
        reference = event.to_event()
        assert reference.event_id == event.event_id
        assert reference.pipeline_id == codec.pipeline_id and reference.topic == codec.topic
        raw = event.encode()
        # The step's own writer, not the fallback.
        assert raw == codec.encode(**{arg: getattr(event, name) for arg, name in _ARGS.items()})
        assert raw == reference.encode()
        # And what fastavro reads back is the event's fields.
        assert TRACE_EVENT_SCHEMA.decode(raw) == reference.to_record()


def test_an_attempt_with_model_calls_is_written_by_the_general_writer() -> None:
    rng = random.Random(3)
    event = _attempt(rng, _codec(rng))
    event.calls = [
        ModelCall(
            step="one",
            attempt=1,
            endpoint="fast",
            provider="openai",
            model="gpt",
            operation="chat",
            status="SUCCESS",
            started_at=1_764_500_000_000,
            duration_ms=12.5,
            input_tokens=10,
            output_tokens=3,
            cost_usd=Decimal("0.000021"),
        )
    ]
    raw = event.encode()
    assert raw == event.to_event().encode()
    record = TRACE_EVENT_SCHEMA.decode(raw)
    assert record["endpoint"] == "fast" and record["cost_usd"] == "0.000021"
    assert len(record["calls"]) == 1


def test_the_codec_shares_the_step_constants_among_attempts() -> None:
    rng = random.Random(5)
    codec = _codec(rng)
    one, two = _attempt(rng, codec), _attempt(rng, codec)
    assert one.event_id != two.event_id
    assert TraceEvent.decode(one.encode())["step_name"] == codec.step_name
    assert TraceEvent.decode(two.encode())["worker_id"] == codec.worker_id


def test_longs_are_avro_longs_at_every_width() -> None:
    from weir.schemas._envelope_codec import _long as reference
    from weir.schemas._trace_codec import _long

    rng = random.Random(1)
    edges = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, 2**20, 2**21, 2**40, 2**41, 2**42]
    edges += [2**48 - 1, 2**48, 2**49, 2**62, -(2**62), 2**63 - 1, -(2**63)]
    randoms = [rng.randint(-(2**63), 2**63 - 1) for _ in range(20_000)]
    randoms += [rng.randint(0, 2**50) for _ in range(20_000)]
    for n in edges + randoms:
        want = bytearray()
        reference(want, n)
        assert _long(n) == bytes(want), n
