"""PartitionOffsets: the commit position while messages finish out of order."""

import bisect
import random

import pytest

from weir.streams.offsets import PartitionOffsets


def test_nothing_is_committable_before_anything_finishes() -> None:
    p = PartitionOffsets()
    assert p.committable() is None
    p.track(0)
    assert p.committable() is None
    assert p.in_flight == 1


def test_in_order_finishes_advance_the_position_one_by_one() -> None:
    p = PartitionOffsets()
    for offset in range(3):
        p.track(offset)
    for offset in range(3):
        p.finish(offset)
        assert p.committable() == offset + 1
    assert p.in_flight == 0


def test_finish_past_a_gap_waits_for_the_gap_to_close() -> None:
    p = PartitionOffsets()
    for offset in (5, 6, 7, 8):
        p.track(offset)
    p.finish(7)
    p.finish(6)
    assert p.committable() is None
    assert p.in_flight == 2
    p.finish(5)
    assert p.committable() == 8
    assert p.in_flight == 1
    p.finish(8)
    assert p.committable() == 9
    assert p.in_flight == 0


def test_reverse_order_commits_everything_only_at_the_end() -> None:
    p = PartitionOffsets()
    offsets = list(range(100, 200))
    for offset in offsets:
        p.track(offset)
    for offset in reversed(offsets[1:]):
        p.finish(offset)
        assert p.committable() is None
    p.finish(100)
    assert p.committable() == 200
    assert p.in_flight == 0


def test_offsets_with_holes_commit_one_past_the_last_finished() -> None:
    # Offsets need not be contiguous (transaction markers, compaction).
    p = PartitionOffsets()
    for offset in (10, 12, 15):
        p.track(offset)
    p.finish(12)
    assert p.committable() is None
    p.finish(10)
    assert p.committable() == 13
    p.finish(15)
    assert p.committable() == 16


def test_position_holds_while_new_offsets_are_in_flight() -> None:
    p = PartitionOffsets()
    p.track(0)
    p.finish(0)
    p.track(1)
    p.track(2)
    p.finish(2)
    assert p.committable() == 1
    p.finish(1)
    assert p.committable() == 3


class _Reference:
    """Obviously-correct model: one past the last tracked offset below the oldest unfinished."""

    def __init__(self) -> None:
        self.tracked: list[int] = []  # increasing
        self.unfinished: set[int] = set()

    def track(self, offset: int) -> None:
        self.tracked.append(offset)
        self.unfinished.add(offset)

    def finish(self, offset: int) -> None:
        self.unfinished.remove(offset)

    def committable(self) -> int | None:
        oldest = min(self.unfinished) if self.unfinished else None
        end = len(self.tracked) if oldest is None else bisect.bisect_left(self.tracked, oldest)
        return self.tracked[end - 1] + 1 if end else None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_the_reference_model_under_random_finish_order(seed: int) -> None:
    rng = random.Random(seed)
    actual, reference = PartitionOffsets(), _Reference()
    next_offset = rng.randrange(0, 1000)
    for _ in range(3000):
        # Track more while little is in flight, finish more once a lot is.
        if not reference.unfinished or rng.random() < 12 / (12 + len(reference.unfinished)):
            for _ in range(rng.randrange(1, 4)):
                actual.track(next_offset)
                reference.track(next_offset)
                next_offset += rng.choice((1, 1, 1, 2, 7))
        else:
            unfinished = sorted(reference.unfinished)
            # Bias towards the oldest now and then so the position actually moves.
            offset = unfinished[0] if rng.random() < 0.2 else rng.choice(unfinished)
            actual.finish(offset)
            reference.finish(offset)
        assert actual.committable() == reference.committable()
        assert actual.in_flight == len(reference.unfinished)
    for offset in sorted(reference.unfinished, key=lambda _: rng.random()):
        actual.finish(offset)
        reference.finish(offset)
        assert actual.committable() == reference.committable()
    assert actual.committable() == reference.tracked[-1] + 1
    assert actual.in_flight == 0


def test_a_head_that_holds_commits_too_long_is_reported_stuck():
    from weir.streams.offsets import PartitionOffsets

    p = PartitionOffsets()
    assert p.stuck(0.0) is None
    p.track(5)
    p.track(6)
    p.finish(6)
    offset, seconds = p.stuck(0.0) or (None, None)
    assert offset == 5 and seconds is not None and seconds >= 0
    assert p.stuck(3600.0) is None
    p.finish(5)
    assert p.stuck(0.0) is None
