"""``pipeline_events`` rows as one Arrow table, for a columnar insert.

clickhouse-connect's own insert serializes every value in Python (its Native
format writer; under cProfile the nested ``calls`` arrays and the low-cardinality
dictionaries took most of an insert).  Given an Arrow table
(``Client.insert_arrow``), the values are converted by pyarrow and read by
ClickHouse's Arrow input, both native code (``BENCHMARKS.md`` has what this
measured to).  pyarrow is optional
(``weir[parquet]``); without it the store inserts the rows the other way.
The stored values are the same either way (``tests/traces/test_store.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from weir.traces.schema import event_columns

__all__ = ["arrow_block", "has_arrow"]


def has_arrow() -> bool:
    """Whether pyarrow can be imported here."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _types() -> list[Any]:
    import pyarrow as pa

    text, i64, u64, f64 = pa.string(), pa.int64(), pa.uint64(), pa.float64()
    ts, cost = pa.timestamp("ms", tz="UTC"), pa.decimal128(18, 12)
    by_name: dict[str, Any] = {
        "attempt": pa.uint16(),
        "created_at": ts,
        "started_at": ts,
        "submitted_at": ts,
        "duration_ms": f64,
        "queue_wait_ms": f64,
        "input_partition": pa.int32(),
        "input_offset": i64,
        "input_tokens": u64,
        "output_tokens": u64,
        "cost_usd": cost,
        "rules_version": i64,
        "calls.input_tokens": pa.list_(u64),
        "calls.output_tokens": pa.list_(u64),
        "calls.cost_usd": pa.list_(cost),
        "calls.duration_ms": pa.list_(f64),
        "calls.ttft_ms": pa.list_(f64),
        "trace_partition": pa.int32(),
        "trace_offset": i64,
    }
    return [
        by_name.get(name, pa.list_(text) if name.startswith("calls.") else text)
        for name in event_columns()
    ]


def arrow_block(rows: Sequence[Sequence[Any]]) -> Any:
    """A ``pyarrow.Table`` of ``rows`` (``event_columns()`` order), typed like the table."""
    import pyarrow as pa

    columns = zip(*rows, strict=True)
    arrays = [pa.array(col, type=t) for col, t in zip(columns, _types(), strict=True)]
    return pa.Table.from_arrays(arrays, names=list(event_columns()))
