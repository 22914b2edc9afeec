"""Ids of attempts whose spans nobody records (``Tracing.ids``)."""

from __future__ import annotations

import os
import re

from weir.core.config import load_settings
from weir.streams.tracing import Tracing

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")


def _tracing() -> Tracing:
    tracing = Tracing(load_settings(otel_enabled=True))
    assert not tracing.recording
    return tracing


def test_a_well_formed_parent_keeps_its_trace_and_gets_a_new_span() -> None:
    parent = f"00-{'ab' * 16}-{'cd' * 8}-01"
    trace_id, span_id, traceparent = _tracing().ids(parent)
    assert trace_id == "ab" * 16
    assert span_id is not None and span_id != "cd" * 8
    assert traceparent == f"00-{trace_id}-{span_id}-01"


def test_an_upper_case_parent_is_read_as_the_same_trace() -> None:
    trace_id, _, traceparent = _tracing().ids(f"00-{'AB' * 16}-{'CD' * 8}-01")
    assert trace_id == "ab" * 16
    assert traceparent is not None and _TRACEPARENT.fullmatch(traceparent)


def test_no_parent_a_zero_trace_or_a_malformed_one_starts_a_new_trace() -> None:
    tracing = _tracing()
    seen = set()
    for parent in (
        None,
        "",
        f"00-{'0' * 32}-{'cd' * 8}-01",
        "garbage",
        f"00x{'ab' * 16}-{'cd' * 8}-01",
        f"00-{'ab' * 20}-{'cd' * 8}-01",  # longer than a trace id
        f"00--{'ab' * 15}-{'cd' * 8}-01",  # a sign, not a trace id
    ):
        trace_id, _, traceparent = tracing.ids(parent)
        assert traceparent is not None and _TRACEPARENT.fullmatch(traceparent), parent
        assert trace_id != "0" * 32 and trace_id != "ab" * 16
        seen.add(trace_id)
    assert len(seen) == 7


def test_a_forked_child_draws_other_trace_and_span_ids_than_its_parent() -> None:
    # A worker started by multiprocessing's fork (the default on Linux) after weir was
    # imported: two processes drawing the same ids would merge unrelated requests' traces.
    tracing = _tracing()
    parent_of = f"00-{'ab' * 16}-{'cd' * 8}-01"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new trace's id and a span id, to the parent
        try:
            new_trace, _, _ = tracing.ids(None)
            _, span, _ = tracing.ids(parent_of)
            os.write(write, f"{new_trace} {span}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    new_trace, _, _ = tracing.ids(None)
    _, span, _ = tracing.ids(parent_of)
    assert len(child) == 2
    assert child[0] != new_trace and child[1] != span
