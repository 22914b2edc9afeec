"""Garbage-collector settings for a running worker.

A worker allocates many short-lived objects per record and holds many long-lived
ones (modules, pipelines, clients, tables).  Python's defaults collect generation 0
every 700 allocations and, now and then, walk every long-lived object in a full
collection that frees almost nothing: a quarter of a busy worker's CPU
(BENCHMARKS.md).  After start, freeze what exists (never collected again) and
collect the young generation less often.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(gen0_threshold: int, gen2_threshold: int = 10) -> None:
    """Freeze the objects alive now and set the generation-0 and -2 thresholds (gen-0 0:
    change nothing)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2_threshold)
