"""Trace event ids drawn in bulk (``weir.streams._attempt_trace.EventIds``)."""

from __future__ import annotations

import os
import re

from weir.streams._attempt_trace import EventIds

_ID = re.compile("[0-9a-f]{32}")


def test_ids_are_128_random_bits_in_hex_and_never_repeat_across_draws() -> None:
    ids = EventIds()
    drawn = [ids.next() for _ in range(64 * 40 + 7)]  # many draws, the last one partly used
    assert all(_ID.fullmatch(i) for i in drawn)
    assert len(set(drawn)) == len(drawn)


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids = EventIds()
    ids.next()  # the parent holds a draw with 63 ids left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(ids.next() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(ids.next() for _ in range(3))
    assert len(child) == 96 and child != parent
    assert not {child[i : i + 32] for i in range(0, 96, 32)} & {
        parent[i : i + 32] for i in range(0, 96, 32)
    }
