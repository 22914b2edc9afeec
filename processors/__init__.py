"""Reusable step processors and the trace sink.

Step processors are step bodies that pipelines plug in with ``add_step``;
``ClickHouseSink`` and ``TraceStore`` move trace events into ClickHouse and
read them back (``weir sink``, ``weir trace``, ``weir stats``, the dashboard).

>>> from streams import Pipeline
>>> from processors import Transform
>>> p = Pipeline("words")
>>> step = p.add_step("split", Transform(lambda text: text.split()))
>>> step.inline
True
"""

from processors.clickhouse_sink import ClickHouseSink
from processors.trace_store import TraceStore
from processors.transform import Transform

__all__ = ["ClickHouseSink", "TraceStore", "Transform"]
