"""Rule sets on Kafka: apply a new version while workers run; every worker follows within seconds.

Two topics, both with one partition (rule sets are few and small; one
partition is one order):

* ``weir.routes`` (compacted), key = router name, value = the rule set in force
  (JSON of ``RuleSet``).  Workers read it from the beginning and then follow
  it; a tombstone (``weir routes reset``) sends a router back to its code rules.
* ``weir.routes.history`` (never deleted), the same records, every version:
  what ``weir routes history`` prints.  A compacted topic forgets old versions
  by design, so history gets its own topic.

``apply_rule_set`` validates before it writes (schema, conditions, and, when
the routers are known, endpoint names), so a rule set that does not parse
never reaches a worker.  The version is one more than the router's latest;
two applies racing may both take the same number, so a router compares the
whole rule set, not only its version, when a record arrives: every worker
reads the one partition in the same order and ends on the last record, and
``weir routes history`` shows both (told apart by ``applied_at``).
Workers check again on arrival (a worker whose code lacks an endpoint the new
rules name keeps its current version and logs why).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import socket
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import RoutingError
from weir.processors._env import register_closer, settings_now
from weir.processors.router_status import StatusReporter
from weir.processors.routes_topic import ensure_topics, is_announcement, publish, read_all
from weir.processors.rules import RuleFollower, RuleSet
from weir.processors.rules_file import load_rule_sets
from weir.schemas.messages import now_ms
from weir.topics._aiokafka import stop_consumer
from weir.topics.names import ROUTES_HISTORY_TOPIC, ROUTES_TOPIC

__all__ = [
    "RouteWatcher",
    "apply_rule_set",
    "follow",
    "latest_rule_sets",
    "load_rule_sets",
    "read_history",
    "read_rule_sets",
    "reset_rule_set",
]

log = logging.getLogger("weir.models")
_TPS = [TopicPartition(ROUTES_TOPIC, 0)]


async def read_rule_sets(settings: WeirSettings) -> dict[str, RuleSet]:
    """The rule set in force per router (latest record per key on the routes topic)."""
    await ensure_topics(settings)
    return latest_rule_sets(await read_all(settings, ROUTES_TOPIC))


def latest_rule_sets(records: Iterable[tuple[str, bytes | None, int]]) -> dict[str, RuleSet]:
    """The last rule set per router in routes-topic records; records that are none are skipped."""
    latest: dict[str, RuleSet] = {}
    for key, value, _ in records:
        if value is None:
            latest.pop(key, None)
            continue
        with contextlib.suppress(RoutingError, json.JSONDecodeError, UnicodeDecodeError):
            latest[key] = RuleSet.parse(json.loads(value), source=f"{ROUTES_TOPIC}/{key}")
    return latest


async def read_history(settings: WeirSettings, router: str | None = None) -> list[RuleSet | str]:
    """Every version applied (oldest first); a reset shows as the router's name alone."""
    await ensure_topics(settings)
    out: list[RuleSet | str] = []
    for key, value, _ in await read_all(settings, ROUTES_HISTORY_TOPIC):
        if router is not None and key != router:
            continue
        if value is None:
            out.append(key)
            continue
        with contextlib.suppress(RoutingError, json.JSONDecodeError, UnicodeDecodeError):
            out.append(RuleSet.parse(json.loads(value), source=f"{ROUTES_HISTORY_TOPIC}/{key}"))
    return out


def check_against_routers(rule_set: RuleSet, routers: Mapping[str, RuleFollower]) -> None:
    """``RoutingError`` when a known router lacks an endpoint the rule set names."""
    router = routers.get(rule_set.router)
    if router is None:
        raise RoutingError(
            f"rule set for router {rule_set.router!r}: the pipeline defines no such router"
            f" (it has: {sorted(routers) or 'none'})"
        )
    unknown = rule_set.endpoint_names() - set(router.endpoints)
    if unknown:
        raise RoutingError(
            f"rule set for router {rule_set.router!r} names unknown endpoint(s) {sorted(unknown)}"
            f" (the router knows: {sorted(router.endpoints)})"
        )


async def apply_rule_set(
    settings: WeirSettings,
    rule_set: RuleSet,
    *,
    comment: str | None = None,
    routers: Mapping[str, RuleFollower] | None = None,
) -> RuleSet:
    """Validate, version and publish ``rule_set``; the published version."""
    rule_set = RuleSet.parse(rule_set.model_dump(), source=f"rule set for {rule_set.router!r}")
    if routers is not None:
        check_against_routers(rule_set, routers)
    await ensure_topics(settings)
    versions = [
        r.version for r in await read_history(settings, rule_set.router) if isinstance(r, RuleSet)
    ]
    published = rule_set.model_copy(
        update={
            "version": max(versions, default=0) + 1,
            "applied_at": now_ms(),
            "applied_by": f"{getpass.getuser()}@{socket.gethostname()}",
            "comment": comment if comment is not None else rule_set.comment,
        }
    )
    value = published.model_dump_json().encode()
    await publish(settings, [(rule_set.router, value)])
    return published


async def reset_rule_set(settings: WeirSettings, router: str) -> None:
    """Send ``router`` back to the rules in its code (a tombstone on both topics)."""
    await ensure_topics(settings)
    await publish(settings, [(router, None)])


class RouteWatcher:
    """Follows the routes topic for this process and switches routers as rule sets arrive.

    It never gives up: while the broker cannot be reached it tries again with
    back-off (routers keep the rules they have), then goes on from the last
    record it read.
    """

    _instances: dict[str, RouteWatcher] = {}
    max_backoff_s = 30.0

    @classmethod
    def for_settings(cls, settings: WeirSettings) -> RouteWatcher:
        watcher = cls._instances.get(settings.bootstrap_servers)
        if watcher is None:
            watcher = cls._instances[settings.bootstrap_servers] = cls(settings)
        return watcher

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self.latest: dict[str, RuleSet | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        """Set once the topic has been read up to its end as of the first connection."""
        self._settled = asyncio.Event()
        """Set once ready, or once a connection attempt failed (first calls stop waiting)."""
        self._failed = False
        self._next: int | None = None
        """Offset after the last record read (a reconnection resumes there)."""
        self._closer = False
        self.reporter = StatusReporter(settings)
        self._routers: weakref.WeakValueDictionary[str, RuleFollower] = (
            weakref.WeakValueDictionary()
        )
        """The routers this watcher keeps up to date (added by ``add``)."""
        self.records = 0
        self.failures = 0
        """Connection attempts that failed (for health reports and tests)."""

    def add(self, router: RuleFollower) -> None:
        """Keep ``router`` on the latest rule set as records arrive (not only at its calls)."""
        self._routers[router.name] = router

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="weir-route-watcher")
            if not self._closer:
                self._closer = True
                register_closer(self.stop)

    async def wait_ready(self, timeout: float) -> bool:
        self.start()
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._settled.wait()
        return self._ready.is_set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.reporter.close()
        RouteWatcher._instances.pop(self._settings.bootstrap_servers, None)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._follow()
            except Exception as exc:  # the watcher must outlive any broker trouble
                self.failures += 1
                if not self._ready.is_set():
                    self._failed = True
                    self._settled.set()
                log.warning(
                    "routes: cannot follow %s (%s: %s); trying again in %.1fs%s",
                    ROUTES_TOPIC,
                    type(exc).__name__,
                    exc,
                    backoff,
                    "" if self._ready.is_set() else "; routers keep their code rules",
                )
            await asyncio.sleep(backoff)
            backoff = 0.5 if self._ready.is_set() else min(self.max_backoff_s, backoff * 2)

    async def _follow(self) -> None:
        """Connect and read the topic until an error (or cancellation) stops it."""
        await ensure_topics(self._settings)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        tp = _TPS[0]
        try:
            await consumer.start()
            consumer.assign(_TPS)
            if self._next is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, self._next)  # never back to versions already superseded
            end = (await consumer.end_offsets(_TPS))[tp]
            while True:
                if not self._ready.is_set() and await consumer.position(tp) >= end:
                    self._ready.set()
                    self._settled.set()
                    self._failed = False
                    for router in list(self._routers.values()):
                        self.settle(router)
                try:
                    batch = await consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("routes: reading %s failed (%s); retrying", ROUTES_TOPIC, exc)
                    await asyncio.sleep(1.0)
                    continue
                for records in batch.values():
                    for record in records:
                        if not is_announcement(record.headers):
                            self._apply(record.key, record.value)
                        self._next = record.offset + 1
        finally:
            with contextlib.suppress(KafkaError):
                await stop_consumer(consumer)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        self.records += 1
        name = key.decode()
        if value is None:
            self.latest[name] = None
        else:
            try:
                self.latest[name] = RuleSet.parse(
                    json.loads(value), source=f"{ROUTES_TOPIC}/{name}"
                )
            except (RoutingError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                # apply_rule_set never writes such a record; someone wrote the topic by hand.
                log.error("routes: ignoring an invalid rule set for %s: %s", name, exc)
                return
        router = self._routers.get(name)
        if router is not None and self._ready.is_set():
            self.settle(router)  # on arrival, so its status is reported without a call

    def settle(self, router: RuleFollower) -> None:
        """Bring a watching ``router`` to the latest rule set read; report its status."""
        if not router.watch:
            return
        if router.name in self.latest:
            router.use(self.latest[router.name])
        self.reporter.report(router)


async def follow(router: RuleFollower) -> None:
    """Bring ``router`` to the latest rule set on the topic (the first call waits for it)."""
    settings = settings_now()
    watcher = RouteWatcher.for_settings(settings)
    watcher.add(router)
    if not watcher._ready.is_set():
        started = time.monotonic()
        if not await watcher.wait_ready(settings.routes_wait_s) and not watcher._failed:
            log.warning(
                "routes: %s not read within %.1fs; router %s uses version %d for now",
                ROUTES_TOPIC,
                time.monotonic() - started,
                router.name,
                router.version,
            )
    if watcher._ready.is_set():
        watcher.settle(router)
    elif router.name in watcher.latest:
        router.use(watcher.latest[router.name])


def dump_rule_set(rule_set: RuleSet) -> str:
    """YAML of a rule set, as ``weir routes show`` prints it."""
    data: dict[str, Any] = rule_set.model_dump(exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
