"""ClickHouse decoding a block of trace events stores the rows Python would have made."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from tests._clickhouse_http import ClickHouseHttp
from tests._rows import assert_rows_close
from tests._sink import free_port
from tests.traces.test_row_decoder import _variants
from tests.traces.test_store import SEED_QUERY, synthetic_events
from weir.core.config import load_settings
from weir.core.errors import TraceRowsRejectedError, TraceStoreError
from weir.schemas._codec import load_schema
from weir.schemas.messages import TRACE_EVENT_SCHEMA, TraceEvent
from weir.schemas.trace_batch import TRACE_BATCH_HEADER, TRACE_BATCH_VERSION, pack_trace_events
from weir.streams._bounded import RecentSet
from weir.traces import TraceStore, event_row
from weir.traces._event_block import DAY_MS, container
from weir.traces._event_insert import BLOCK_SCHEMA
from weir.traces._row_decoder import RowDecoder
from weir.traces._sink_batch import SinkBatch, SinkStats, batch_token
from weir.traces._sink_insert import insert_batch
from weir.traces.schema import event_columns

EVERYTHING = (
    f"SELECT {', '.join(f'`{c}`' for c in event_columns())} FROM pipeline_events ORDER BY event_id"
)
MINUTES = (
    "SELECT minute, step_name, sum(attempts), sum(failures), sum(cost_usd),"
    " quantilesTDigestMerge(0.5, 0.95, 0.99)(duration_q) FROM pipeline_latency_1m"
    " GROUP BY minute, step_name ORDER BY minute, step_name"
)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[TraceStore, TraceStore]]:
    """Two databases of one embedded engine: ClickHouse's rows and Python's."""
    settings = load_settings(clickhouse_dsn=f"chdb://{tmp_path / 'store'}")
    avro = TraceStore.connect(settings)
    python = TraceStore.connect(settings.model_copy(update={"clickhouse_database": "python"}))
    try:
        yield avro, python
    finally:
        avro.close()
        python.close()


def _events() -> list[TraceEvent]:
    now = int(time.time() * 1000)
    events = _variants(random.Random(9)) + synthetic_events("support", 100, now_ms=now)
    costs = ["1E-7", "0E-12", "0.000123456789", "12.5", ""]
    for n, event in enumerate(events):
        event.attempt = min(event.attempt, 65_535)  # the column is UInt16
        if event.calls:
            call = dataclasses.replace(event.calls[0], cost_usd=Decimal(costs[n % 4] or "0"))
            event.calls = [*event.calls, call]
    return events


def test_the_rows_are_the_ones_python_makes(stores) -> None:
    avro, python = stores
    events = _events()
    raws = [e.encode() for e in events]
    framed = [(raw, n % 4, 1000 + n) for n, raw in enumerate(raws)]
    avro.insert_events(container(BLOCK_SCHEMA, os.urandom(16), framed), token="t1")
    python.insert([event_row(TraceEvent.decode(r), p, o) for r, p, o in framed], token="t1")
    got, want = avro.query(EVERYTHING), python.query(EVERYTHING)
    assert len(got) == len(events)
    assert got == want
    assert_rows_close(avro.query(MINUTES), python.query(MINUTES))
    assert_rows_close(avro.query(SEED_QUERY), python.query(SEED_QUERY))


def test_costs_in_any_decimal_notation_are_stored_exactly(stores) -> None:
    avro, _ = stores
    now = int(time.time() * 1000)
    events = synthetic_events("p", 5, now_ms=now)[:5]
    texts = ["1E-7", "0E-12", "0.000123456789", "12.5", ""]
    raws = []
    for event, text in zip(events, texts, strict=True):
        record = TraceEvent.decode(event.encode())
        record["cost_usd"] = text
        raws.append(TRACE_EVENT_SCHEMA.encode(record))
    block = container(BLOCK_SCHEMA, os.urandom(16), [(r, 0, n) for n, r in enumerate(raws)])
    avro.insert_events(block, token="costs")
    stored = dict(avro.query("SELECT event_id, toString(cost_usd) FROM pipeline_events"))
    assert [Decimal(stored[e.event_id]) for e in events] == [
        Decimal("0.0000001"),
        0,
        Decimal("0.000123456789"),
        Decimal("12.5"),
        0,
    ]


def test_a_block_retried_with_its_token_is_stored_once(stores) -> None:
    avro, _ = stores
    raws = [e.encode() for e in synthetic_events("p", 50, now_ms=int(time.time() * 1000))]
    block = container(BLOCK_SCHEMA, os.urandom(16), [(r, 0, n) for n, r in enumerate(raws)])
    avro.insert_events(block, token="b1")
    avro.insert_events(block, token="b1")  # the answer was lost; the sink retries
    ((count,),) = avro.query("SELECT count() FROM pipeline_events")
    ((minutes,),) = avro.query("SELECT sum(attempts) FROM pipeline_latency_1m")
    assert count == minutes == len(raws)


def _record(raws: list[bytes]) -> tuple[bytes, list[tuple[str, bytes]]]:
    return pack_trace_events(raws), [(TRACE_BATCH_HEADER, TRACE_BATCH_VERSION)]


def test_a_refused_value_stores_the_rest_and_names_the_event(stores, caplog) -> None:
    avro, _ = stores
    events = synthetic_events("p", 20, now_ms=int(time.time() * 1000))
    bad = TraceEvent.decode(events[7].encode())
    bad["cost_usd"] = "twelve dollars"
    raws = [e.encode() for e in events]
    raws[7] = TRACE_EVENT_SCHEMA.encode(bad)
    with pytest.raises(TraceRowsRejectedError, match="refused a block"):
        avro.insert_events(
            container(BLOCK_SCHEMA, os.urandom(16), [(r, 0, 0) for r in raws]), token="x"
        )
    batch = SinkBatch()
    stats = SinkStats()
    batch.take(TopicPartition("t", 2), 40, *_record(raws), stats=stats, recent=RecentSet(100))
    decoder = RowDecoder(TRACE_EVENT_SCHEMA.header)
    with caplog.at_level(logging.WARNING, logger="weir.sink"):
        inserted = insert_batch(avro, batch, token=batch_token("t", batch), decoder=decoder)
    assert (inserted.events, inserted.undecodable) == (len(raws) - 1, 1)
    stored = {r[0] for r in avro.query("SELECT event_id FROM pipeline_events")}
    assert stored == {e.event_id for n, e in enumerate(events) if n != 7}
    assert "skipping undecodable trace event 2@40" in caplog.text


def test_older_events_and_a_new_day_are_inserted_in_order_as_runs(stores) -> None:
    """A batch mixing an older worker's events and a day boundary stores every event once."""
    avro, python = stores
    v1 = load_schema("trace_event_v1")
    fields = {f["name"] for f in v1.definition["fields"]}
    midnight = (int(time.time() * 1000) // DAY_MS) * DAY_MS
    before = synthetic_events("p", 10, now_ms=midnight - 1000, spread_min=0, seed=1)
    after = synthetic_events("p", 10, now_ms=midnight + 20_000, spread_min=0, seed=2)
    old = [
        v1.encode({k: v for k, v in TraceEvent.decode(e.encode()).items() if k in fields})
        for e in after[:5]
    ]
    records = [
        [e.encode() for e in before[:15]],
        old,
        [e.encode() for e in before[15:] + after[5:]],
    ]
    batch, stats, recent = SinkBatch(), SinkStats(), RecentSet[str](1000)
    for offset, raws in enumerate(records):
        batch.take(TopicPartition("t", 0), offset, *_record(raws), stats=stats, recent=recent)
    batch.take(TopicPartition("t", 0), 3, *_record(records[0][:3]), stats=stats, recent=recent)
    assert stats.duplicates == 3
    forms = [(run.day - midnight // DAY_MS, bool(run.rows)) for run in batch.runs]
    assert forms == [(-1, False), (0, True), (-1, False), (0, False)]
    decoder = RowDecoder(TRACE_EVENT_SCHEMA.header)
    inserted = insert_batch(avro, batch, token=batch_token("t", batch), decoder=decoder)
    everything = before + after
    assert inserted.events == len(batch) == len(everything)
    want = [
        event_row(TraceEvent.decode(raw), 0, offset)
        for offset, raws in enumerate(records)
        for raw in raws
    ]
    python.insert(want, token="all")
    assert avro.query(EVERYTHING) == python.query(EVERYTHING)
    days = avro.query("SELECT toDate(created_at), count() FROM pipeline_events GROUP BY 1")
    assert sorted(n for _, n in days) == sorted(
        [
            sum(e.created_at < midnight for e in everything),
            sum(e.created_at >= midnight for e in everything),
        ]
    )


async def test_over_http_the_block_is_the_requests_body_and_a_refusal_is_not_an_outage(tmp_path):
    """Through ClickHouse's HTTP interface (``input()``): the same rows; a refused value
    is ``TraceRowsRejectedError`` (read in Python), a store that does not answer is not."""
    server = ClickHouseHttp(tmp_path / "clickhouse", free_port())
    await server.start()
    settings = load_settings(clickhouse_dsn=server.dsn)
    avro = await asyncio.to_thread(TraceStore.connect, settings)
    python = await asyncio.to_thread(
        TraceStore.connect, settings.model_copy(update={"clickhouse_database": "python"})
    )
    try:
        events = _events()
        framed = [(e.encode(), 1, n) for n, e in enumerate(events)]
        block = container(BLOCK_SCHEMA, os.urandom(16), framed)
        await asyncio.to_thread(avro.insert_events, block, token="h1")
        await asyncio.to_thread(avro.insert_events, block, token="h1")  # a retry: stored once
        rows = [event_row(TraceEvent.decode(r), p, o) for r, p, o in framed]
        await asyncio.to_thread(python.insert, rows, token="h1")
        got = await asyncio.to_thread(avro.query, EVERYTHING)
        assert len(got) == len(events)
        assert got == await asyncio.to_thread(python.query, EVERYTHING)

        bad = TraceEvent.decode(framed[0][0])
        bad["cost_usd"], bad["event_id"] = "n/a", "f" * 32
        refused = container(BLOCK_SCHEMA, os.urandom(16), [(TRACE_EVENT_SCHEMA.encode(bad), 1, 0)])
        with pytest.raises(TraceRowsRejectedError):
            await asyncio.to_thread(avro.insert_events, refused, token="h2")
        await server.stop()
        with pytest.raises(TraceStoreError, match="unavailable"):  # backed off, not read here
            await asyncio.to_thread(avro.insert_events, block, token="h3")
    finally:
        avro.close()
        python.close()
        await server.stop()
        server.close()
