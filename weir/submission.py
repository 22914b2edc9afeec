"""``weir submit --file``: a JSON Lines file submitted at full speed, resumable after interruption.

Each line is one request payload; its request id is ``<run>-<line number>``, so
a line sent again keeps its id.  Which lines the broker has acknowledged is
kept beside the file in ``<file>.weir-progress`` (rewritten atomically about
once a second, and when the run ends or is interrupted): a second run of the
same command sends only the lines not acknowledged yet.  A line acknowledged
in the last second before a hard kill may be sent twice, with the same id
(at-least-once).  The progress file holds a digest of the acknowledged lines:
if any of them changed or moved, the run refuses to resume rather than skip the
wrong lines.

A line that is not a JSON object is reported (file and line number) and not
sent; the rest go on.  Fix those lines in place and run the same command
again: only they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from weir.core.errors import ConfigError, WeirError

__all__ = ["FileProgress", "SubmitReport", "submit_file"]

SUFFIX = ".weir-progress"


@dataclass
class SubmitReport:
    lines: int
    """Lines in the file (blank ones count as done)."""
    sent: int = 0
    """Acknowledged in this run."""
    already: int = 0
    """Acknowledged by an earlier run, not sent again."""
    bad: list[tuple[int, str]] = field(default_factory=list)
    """``(line number, why)`` of the lines that were not sent."""
    ids: list[str] = field(default_factory=list)
    """Request ids acknowledged in this run, in file order."""


def line_digests(path: Path) -> bytearray:
    """An 8-byte BLAKE2b digest of every line of ``path``, concatenated in line order."""
    digests = bytearray()
    with path.open("rb") as fh:
        for line in fh:
            digests += hashlib.blake2b(line, digest_size=8).digest()
    return digests


class FileProgress:
    """Which lines of one file are done, by line index, and where that is kept.

    Resuming is safe when every line recorded as acknowledged is still the
    same text at the same line number; the progress file holds one digest over
    those lines, so fixing a bad line or appending lines keeps it valid, while
    inserting or deleting lines before an acknowledged one does not.
    """

    def __init__(self, path: Path, *, pipeline: str, restart: bool) -> None:
        if not path.is_file():
            raise ConfigError(f"{path} does not exist or is not a file")
        self.path = path.with_name(path.name + SUFFIX)
        self._digests = line_digests(path)
        lines = len(self._digests) // 8
        self.done = bytearray(lines)
        self.run = uuid.uuid4().hex[:16]
        state = self._read() if not restart else None
        if state is not None:
            if state.get("pipeline") != pipeline:
                raise ConfigError(
                    f"{self.path} records a submission to {state.get('pipeline')!r}, not"
                    f" {pipeline!r}: pass --restart to submit the file to {pipeline!r} afresh"
                )
            acked = [(int(a), int(b)) for a, b in state.get("acked", [])]
            if any(b > lines for _, b in acked) or self._digest(acked) != state.get("digest"):
                raise ConfigError(
                    f"lines of {path} that {self.path} records as acknowledged changed or"
                    " moved since: restore the file to resume, or pass --restart to send"
                    " every line again"
                )
            self.run = str(state["run"])
            for start, end in acked:
                self.done[start:end] = b"\x01" * (end - start)
        self._header = {"pipeline": pipeline, "run": self.run}

    def _digest(self, ranges: list[tuple[int, int]]) -> str:
        covered = b"".join(bytes(self._digests[a * 8 : b * 8]) for a, b in ranges)
        return hashlib.sha256(covered).hexdigest()

    def _read(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path} is unreadable ({exc}): delete it or pass --restart"
            ) from None
        if not isinstance(state, dict) or "run" not in state:
            raise ConfigError(f"{self.path} is not a weir progress file: pass --restart")
        return state

    def request_id(self, index: int) -> str:
        return f"{self.run}-{index + 1}"

    def ranges(self) -> list[tuple[int, int]]:
        """The done lines as ``[start, end)`` index ranges."""
        out: list[tuple[int, int]] = []
        at = self.done.find(1)
        while at != -1:
            end = self.done.find(0, at)
            end = len(self.done) if end == -1 else end
            out.append((at, end))
            at = self.done.find(1, end)
        return out

    def save(self) -> None:
        ranges = self.ranges()
        state = {**self._header, "digest": self._digest(ranges), "acked": ranges}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.path)


async def submit_file(
    client: Any,
    pipeline: str,
    path: Path,
    *,
    options: Mapping[str, str] | None = None,
    fmt: Literal["json", "avro"] = "json",
    restart: bool = False,
    window: int = 20_000,
    rate: float | None = None,
    on_acked: Callable[[int], None] = lambda n: None,
    on_start: Callable[[SubmitReport], None] = lambda r: None,
) -> SubmitReport:
    """Send every line of ``path`` not acknowledged by an earlier run; keep track of acks.

    ``client`` is a started ``WeirClient``; at most ``window`` requests await
    their ack at once, and at most ``rate`` are sent per second (``None``: no limit).
    """
    if rate is not None and rate <= 0:
        raise ConfigError(f"--rate must be a positive number of requests per second, got {rate}")
    interval = 1.0 / rate if rate is not None else 0.0
    next_at = time.monotonic()
    progress = await asyncio.to_thread(FileProgress, path, pipeline=pipeline, restart=restart)
    report = SubmitReport(lines=len(progress.done), already=progress.done.count(1))
    sent_now = bytearray(len(progress.done))
    room = asyncio.Semaphore(window)
    pending: set[asyncio.Future[Any]] = set()
    failures: list[BaseException] = []
    last_save = time.monotonic()

    def settled(index: int, future: asyncio.Future[Any]) -> None:
        room.release()
        pending.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            failures.append(error)
            return
        progress.done[index] = sent_now[index] = 1
        report.sent += 1
        on_acked(1)

    on_start(report)
    try:
        with path.open("rb") as fh:  # lines end at b"\n" only, as in line_digests()
            for index, raw in enumerate(fh):
                if index >= len(progress.done) or failures:
                    break
                if progress.done[index]:
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    report.bad.append((index + 1, f"not UTF-8: {exc}"))
                    continue
                if not line.strip():  # nothing to send
                    on_acked(1)
                    continue
                try:
                    payload = json.loads(line)
                except json.JSONDecodeError as exc:
                    report.bad.append((index + 1, f"not valid JSON: {exc}"))
                    continue
                if not isinstance(payload, dict):
                    kind = type(payload).__name__
                    report.bad.append((index + 1, f"a JSON {kind}, not an object"))
                    continue
                if interval:  # paced against a schedule, so short sleeps do not add up
                    next_at = max(next_at + interval, time.monotonic() - 1.0)
                    if (delay := next_at - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
                await room.acquire()
                try:
                    future = await client.enqueue(
                        pipeline,
                        payload,
                        request_id=progress.request_id(index),
                        options=options,
                        fmt=fmt,
                    )
                except BaseException:
                    room.release()
                    raise
                pending.add(future)
                future.add_done_callback(lambda f, i=index: settled(i, f))
                if time.monotonic() - last_save >= 1.0:
                    progress.save()
                    last_save = time.monotonic()
    finally:
        # Also when interrupted: what was handed to the producer is sent anyway when the
        # client stops, so wait for those acks and record them before saving.
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await asyncio.gather(*list(pending), return_exceptions=True)
        with contextlib.suppress(OSError):
            progress.save()
    if failures:
        raise WeirError(
            f"the broker refused requests of {path} ({failures[0]}); {report.sent} were"
            f" acknowledged and recorded in {progress.path}: run the same command again to"
            " send the rest"
        )
    report.ids = [progress.request_id(i) for i, sent in enumerate(sent_now) if sent]
    return report
