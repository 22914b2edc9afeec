"""Time windows as users write them (``15m``, ``7d``)."""

from __future__ import annotations

import re

__all__ = ["parse_window"]

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(text: str) -> float:
    """Seconds in a window such as ``90s``, ``15m``, ``1h``, ``7d`` (bare numbers: seconds).

    >>> parse_window("1h"), parse_window("7d"), parse_window("30")
    (3600.0, 604800.0, 30.0)
    """
    match = _WINDOW.match(text)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a time window: use e.g. 90s, 15m, 1h, 7d")
    return float(match[1]) * _UNIT_S[match[2] or "s"]
