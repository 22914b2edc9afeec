"""Which rule-set version each worker runs, and why one refused a version: on the routes topic.

A worker's route watcher, once it has read the routes topic, switches its
routers to the rule sets as they arrive and reports each router's state when
it changes: key ``router-status/<router>/<worker_id>``, header ``weir.record:
router-status``, value a ``RouterStatus`` (the version in force and, when the
worker refused a newer one, its version and the reason — an endpoint its code
lacks).  ``weir routes show`` prints them under each router, so a rule set a
worker refuses is visible where the rules are, not only in that worker's log.
A worker that stops gracefully withdraws its statuses (tombstones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

from weir.core.config import WeirSettings
from weir.processors.routes_topic import ANNOUNCEMENT_HEADER, ensure_topics, publish, read_all
from weir.processors.rules import RuleFollower
from weir.schemas.messages import now_ms
from weir.topics.names import ROUTES_TOPIC

__all__ = ["RouterStatus", "StatusReporter", "read_statuses", "withdraw_statuses"]

log = logging.getLogger("weir.models")

KEY_PREFIX = "router-status/"
STATUS_KIND = b"router-status"


class RouterStatus(BaseModel):
    """One worker's state of one router."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    router: str
    worker_id: str
    version: int
    """The rule-set version in force (0: the rules in the code)."""
    refused_version: int | None = None
    refused_reason: str | None = None
    reported_at: int

    def describe(self) -> str:
        line = f"worker {self.worker_id}: version {self.version} in force"
        if self.refused_version is not None:
            line += f"; refused version {self.refused_version}: {self.refused_reason}"
        return line


def _key(router: str, worker_id: str) -> str:
    return f"{KEY_PREFIX}{router}/{worker_id}"


def status_of(router: RuleFollower, worker_id: str) -> RouterStatus:
    refused = router.refused
    return RouterStatus(
        router=router.name,
        worker_id=worker_id,
        version=router.version,
        refused_version=refused[0] if refused else None,
        refused_reason=refused[1] if refused else None,
        reported_at=now_ms(),
    )


class StatusReporter:
    """Publishes a router's status when it changed since the last report (in the background)."""

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self._last: dict[str, tuple[int, tuple[int, str] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, router: RuleFollower) -> None:
        state = (router.version, router.refused)
        if self._last.get(router.name) == state:
            return
        self._last[router.name] = state
        status = status_of(router, self._settings.worker_id)
        task = asyncio.create_task(self._send(status), name="weir-router-status")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, status: RouterStatus) -> None:
        try:
            await publish(
                self._settings,
                [(_key(status.router, status.worker_id), status.model_dump_json().encode())],
                history=False,
                headers=[(ANNOUNCEMENT_HEADER, STATUS_KIND)],
            )
        except Exception as exc:  # a report for operators: routing goes on without it
            log.warning("routes: could not report router %s's status: %s", status.router, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def withdraw_statuses(settings: WeirSettings, routers: Iterable[str]) -> None:
    """Tombstone this worker's statuses (a worker that stops no longer runs any version)."""
    keys = [(_key(name, settings.worker_id), None) for name in routers]
    if keys:
        await publish(settings, keys, history=False, headers=[(ANNOUNCEMENT_HEADER, STATUS_KIND)])


async def read_statuses(settings: WeirSettings) -> dict[str, list[RouterStatus]]:
    """The workers' statuses per router (latest per worker, withdrawn ones left out)."""
    import json

    await ensure_topics(settings)
    latest: dict[str, RouterStatus | None] = {}
    for key, value, _ in await read_all(settings, ROUTES_TOPIC, announcements=True):
        if not key.startswith(KEY_PREFIX):
            continue
        if value is None:
            latest[key] = None
            continue
        try:
            latest[key] = RouterStatus.model_validate(json.loads(value))
        except (ValidationError, ValueError) as exc:
            log.warning("routes: ignoring an unreadable status %s: %s", key, exc)
    out: dict[str, list[RouterStatus]] = {}
    for status in latest.values():
        if status is not None:
            out.setdefault(status.router, []).append(status)
    for statuses in out.values():
        statuses.sort(key=lambda s: s.worker_id)
    return out
