"""Kafka's default key hash (Java's ``Utils.murmur2``), compiled with the hot path.

aiokafka's ``murmur2`` is the same function in pure Python: about 16 µs for a 36-byte
request id on this machine, once for every request a worker sees.  Compiled by mypyc
(``setup.py``), this one takes well under a microsecond.  The values are aiokafka's,
bit for bit (``tests/topics/test_murmur2.py``), so keys land on the same partitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypyc's native 64-bit ints; plain ints when not compiled
    from mypy_extensions import i64

__all__ = ["murmur2"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The unsigned 32-bit murmur2 hash of ``data`` (what aiokafka's ``murmur2`` returns)."""
    length: i64 = len(data)
    m: i64 = _M
    mask: i64 = _MASK
    h: i64 = (0x9747B28C ^ length) & mask
    end: i64 = length - length % 4
    i: i64 = 0
    k: i64 = 0
    while i < end:
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        # Each product of a 32-bit value and ``_M`` (< 2**31) stays below 2**63.
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
        i += 4
    rest: i64 = length - end
    if rest >= 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h
