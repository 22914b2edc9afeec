"""Kafka's key hash, compiled (``weir.topics._murmur2``): aiokafka's values, bit for bit."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from weir.topics._aiokafka import KeyPartitioner
from weir.topics._murmur2 import murmur2


def test_every_length_and_byte_hashes_as_aiokafka_hashes() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(n) for n in range(0, 130) for _ in range(8)]
    keys += [bytes([b]) * n for b in (0, 0x7F, 0x80, 0xFF) for n in range(1, 9)]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_request_ids_land_on_the_partitions_of_kafkas_default_partitioner() -> None:
    # Java's Utils.murmur2 (signed there), as Kafka's UtilsTest.testMurmur2 pins it.
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, signed in java.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key
    partitioner = KeyPartitioner()
    for n in range(200):
        key = f"req-{n}".encode()
        for count in (1, 3, 4, 12):
            expected = (aiokafka_murmur2(key) & 0x7FFFFFFF) % count
            assert partitioner(key, list(range(count)), list(range(count))) == expected
