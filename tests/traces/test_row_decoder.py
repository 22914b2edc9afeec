"""Events decoded straight into rows give the rows the general path gives."""

from __future__ import annotations

import dataclasses
import random
import time
from decimal import Decimal

from tests.traces.test_store import synthetic_events
from weir.schemas.messages import TRACE_EVENT_SCHEMA, TraceEvent
from weir.traces import event_row
from weir.traces._row_decoder import RowDecoder


def _variants(rng: random.Random) -> list[TraceEvent]:
    now = int(time.time() * 1000)
    events = synthetic_events("support", 300, now_ms=now, seed=11)
    texts = [None, "", "é€😀", "x" * 300, "line\nbreak"]
    out = []
    for event in events:
        event = dataclasses.replace(
            event,
            error_message=rng.choice(texts),
            trace_id=rng.choice([None, "a" * 32]),
            span_id=rng.choice([None, "b" * 16]),
            input=rng.choice(texts),
            output=rng.choice(texts),
            offset=rng.choice([0, 63, 64, 2**40]),
            attempt=rng.choice([1, 64, 70_000]),
            duration_ms=rng.choice([0.0, -0.0, 1e300, event.duration_ms]),
            replay_id=rng.choice(["", "replay-1"]),
            variant=rng.choice(["", "endpoint:cheap"]),
        )
        if event.calls and rng.random() < 0.5:
            call = event.calls[0]
            event.calls = [
                call,
                dataclasses.replace(
                    call,
                    ttft_ms=12.5,
                    rule="cheap-ü",
                    rules_version=7,
                    fallback_from="main",
                    streamed=True,
                    error_type="model_timeout",
                    cost_usd=Decimal("0.000123456789"),
                ),
            ]
        out.append(event)
    return out


def test_rows_are_the_ones_the_general_path_gives() -> None:
    decoder = RowDecoder(TRACE_EVENT_SCHEMA.header)
    events = _variants(random.Random(4))
    fast = 0
    for n, event in enumerate(events * 2):  # the second time from the caches
        raw = event.encode()
        want = event_row(TraceEvent.decode(raw), 3, n)
        got = decoder.row(raw, 3, n)
        assert got is not None
        fast += bool(event.calls)
        assert got == want
        assert [type(v) for v in got] == [type(v) for v in want]
    assert fast > 100


def test_other_bytes_go_to_the_general_path() -> None:
    decoder = RowDecoder(TRACE_EVENT_SCHEMA.header)
    event = _variants(random.Random(5))[1]
    event.calls = []
    raw = event.encode()
    assert decoder.row(raw, 0, 0) is not None
    assert decoder.row(b"\x00\x00\x00\x00\x63" + raw[5:], 0, 0) is None  # another schema
    for cut in (6, 20, len(raw) - 1):
        assert decoder.row(raw[:cut], 0, 0) is None
    assert decoder.row(raw + b"\x00", 0, 0) is None
    assert decoder.row(raw[:5] + b"\xff" * 12, 0, 0) is None
