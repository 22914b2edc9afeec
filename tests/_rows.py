"""Comparing rows a query returns, where float aggregates may differ in the last digit."""

from __future__ import annotations

import pytest


def assert_rows_close(got: list[tuple[object, ...]], want: list[tuple[object, ...]]) -> None:
    """Rows equal, floats (also inside lists) to 1e-9 relative: the engine may add in any order."""

    def close(value: object) -> object:
        if isinstance(value, float):
            return pytest.approx(value, rel=1e-9)
        if isinstance(value, (list, tuple)):
            return [close(v) for v in value]
        return value

    assert [[close(v) for v in row] for row in want] == [list(row) for row in got]
