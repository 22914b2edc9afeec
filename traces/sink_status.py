"""Whether a ``weir sink`` holds the embedded trace store, and what to tell a user about it.

The embedded engine (``chdb://``) can be open in one process at a time.  A
running sink announces itself in ``<store>/weir-sink.json`` (its pid, and its
HTTP address when it serves one), so commands that read the store ask the sink
over HTTP, or, when it serves no HTTP, say so instead of failing to lock the
store's files.  A ClickHouse server (``http(s)://``) is shared by design: no
announcement, commands always query it directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from weir.core.config import WeirSettings
from weir.core.errors import TraceStoreError

__all__ = [
    "SinkStatus",
    "check_store_free",
    "empty_store_hint",
    "running_sink_url",
    "sink_file",
    "sink_status",
]


def sink_file(settings: WeirSettings) -> Path | None:
    """Where a running sink announces itself (embedded stores only)."""
    dsn = settings.trace_store_dsn.get_secret_value()
    if not dsn.startswith("chdb://"):
        return None
    return Path(dsn[len("chdb://") :]) / "weir-sink.json"


@dataclass(frozen=True)
class SinkStatus:
    """What the announcement file says about the sink of an embedded store."""

    running: bool
    pid: int | None = None
    url: str | None = None
    """The sink's HTTP address; ``None`` when it runs with ``sink_web_port = 0``."""


def sink_status(settings: WeirSettings) -> SinkStatus:
    """The sink holding the embedded store, if one runs (a stale announcement is ignored)."""
    path = sink_file(settings)
    if path is None or not path.exists():
        return SinkStatus(running=False)
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return SinkStatus(running=False)  # stale: the sink is gone
    url = info.get("url")
    return SinkStatus(running=True, pid=pid, url=url if isinstance(url, str) else None)


def running_sink_url(settings: WeirSettings) -> str | None:
    """The HTTP address of the ``weir sink`` holding the embedded store, if one runs."""
    return sink_status(settings).url


def check_store_free(settings: WeirSettings, status: SinkStatus | None = None) -> None:
    """``TraceStoreError`` when a sink without HTTP holds the embedded store.

    Opening it anyway would only fail to lock the store's files; the sink
    cannot be asked either, so say what to change.
    """
    status = status or sink_status(settings)
    if status.running and status.url is None:
        raise TraceStoreError(
            f"`weir sink` (pid {status.pid}) holds the embedded trace store"
            f" {settings.trace_store_dsn} and serves no HTTP (WEIR_SINK_WEB_PORT=0), so no"
            " other process can read it: restart the sink with a web port (for example"
            " WEIR_SINK_WEB_PORT=6067; weir trace, stats and sql then ask it), or stop it to"
            " read the store directly"
        )


def empty_store_hint(settings: WeirSettings) -> str:
    """Why a trace store may hold nothing, and how to fill it."""
    topic = settings.trace_topic
    if not settings.trace_store_dsn.get_secret_value().startswith("chdb://"):
        return (
            f"is a `weir sink` running against {settings.trace_store_dsn}? Start one with"
            f" `weir sink` (WEIR_CLICKHOUSE_DSN={settings.trace_store_dsn}); it stores the"
            f" trace events workers write to {topic}"
        )
    status = sink_status(settings)
    if not status.running:
        return (
            "no `weir sink` is running, so no trace events are stored: start one with"
            f" `weir sink` (it stores the events workers write to {topic})"
        )
    return (
        f"`weir sink` runs (pid {status.pid}): if you expected events, check that the workers"
        f" run with trace events on (WEIR_TRACE_EVENTS=true) and write to {topic}"
    )
