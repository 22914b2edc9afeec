"""The worker's collector settings (``weir.streams._gc``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from weir.core.config import load_settings
from weir.streams._gc import tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_what_is_alive_and_sets_the_young_and_old_thresholds(
    restored_gc: None,
) -> None:
    gen1 = gc.get_threshold()[1]
    tune_gc(50_000, 25)
    assert gc.get_threshold() == (50_000, gen1, 25)
    assert gc.get_freeze_count() > 0  # start-up objects are never walked again


def test_a_zero_threshold_leaves_the_collector_as_it_is(restored_gc: None) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_gc(0, 25)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_worker_default_is_above_a_bursts_live_objects() -> None:
    # At 5,000 a 10,000-request burst ran 130 young collections (BENCHMARKS.md).
    assert load_settings().gc_gen0_threshold == 50_000
