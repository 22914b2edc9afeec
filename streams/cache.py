"""Step caching: a step whose inputs were seen before returns the output it gave then.

``@pipeline.step(cache=Cache(ttl=3600))``: before the step runs, the worker
hashes what the step depends on (its inputs and the request's payload, or the
value of ``key(**arguments)``), together with ``version``, and looks the hash
up in the step's cache table.  A hit skips the call: it costs nothing, and its
trace event has ``status = 'CACHE_HIT'`` (``WHERE status = 'CACHE_HIT'`` in
``pipeline_events``).  A miss runs the step and stores its output.

The table is a compacted topic per step (``weir.<pipeline>.cache.<step>``,
keyed by hash; with ``ttl``, Kafka also deletes entries older than it).  Every
worker reads all of it, so it is a global table: a hit in one worker is a hit
in all once the entry has travelled (milliseconds).  In memory each worker
keeps at most ``max_entries`` entries (least recently used go first); an entry
older than ``ttl`` is a miss.  Concurrent misses of one hash in one worker run
the step once and share the output (two workers may each run it once).  A new
``version`` never matches an old entry: bump it when the step's logic changes.

Outputs that branch (``Branch``) or escalate are never cached, and failures
never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import PipelineDefinitionError
from weir.topics._aiokafka import stop_consumer
from weir.topics.table import load_table

__all__ = ["Cache", "StepCache"]

log = logging.getLogger("weir.cache")

Publish = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[Any]]


@dataclass(frozen=True, kw_only=True)
class Cache:
    """How a step's outputs are cached (``@pipeline.step(cache=Cache(...))``).

    >>> Cache(ttl=600, version="v2").version
    'v2'
    """

    ttl: float | None = 24 * 3600.0
    """Seconds an entry is used; ``None``: until it is evicted or the version changes."""
    key: Callable[..., Any] | None = None
    """Called with the step's arguments; its JSON value is hashed instead of the inputs."""
    version: str = "1"
    max_entries: int = 10_000
    """Entries kept in memory per worker (least recently used dropped first)."""

    def __post_init__(self) -> None:
        if self.ttl is not None and not self.ttl > 0:
            raise PipelineDefinitionError(f"Cache ttl must be seconds above 0 or None: {self.ttl}")
        if self.max_entries < 1:
            raise PipelineDefinitionError(f"Cache max_entries must be >= 1: {self.max_entries}")
        if self.key is not None and not callable(self.key):
            raise PipelineDefinitionError(f"Cache key must be a function, got {self.key!r}")

    def topic_config(self) -> dict[str, str]:
        config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        if self.ttl is not None:
            config = {**config, "cleanup.policy": "compact,delete"}
            config["retention.ms"] = str(int(self.ttl * 1000))
        return config


@dataclass(slots=True)
class _Entry:
    output: str
    """The step's output as JSON text."""
    stored_at: float
    """Epoch seconds."""


class StepCache:
    """One cached step's table in one worker: lookups, single flight, writes."""

    def __init__(self, settings: WeirSettings, cache: Cache, *, topic: str, step: str) -> None:
        self._settings = settings
        self.cache = cache
        self.topic = topic
        self._step = step
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[str | None]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._follow: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0

    # -- keys ---------------------------------------------------------------------------

    def key_of(self, inputs: Mapping[str, str | None], request: str, arguments: Any) -> str:
        """The hash an attempt is looked up by (``arguments``: the step's, for ``key``)."""
        if self.cache.key is not None:
            basis: Any = {"key": self.cache.key(**arguments)}
        else:
            basis = {"inputs": dict(inputs), "request": request}
        text = json.dumps(
            {"step": self._step, "version": self.cache.version, **basis},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()

    # -- the table ----------------------------------------------------------------------

    async def ready(self) -> None:
        """Load the table (once; the first attempt of the step waits for it)."""
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name=f"weir-cache-{self._step}")
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        consumer = await load_table(self._settings, self.topic, self._take)
        self._consumer = consumer
        self._follow = asyncio.create_task(self._follow_loop(), name=f"weir-cache-{self._step}")
        log.info("cache of step %s loaded: %d entries", self._step, len(self._entries))

    async def _follow_loop(self) -> None:
        """Entries other workers store, as they arrive."""
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("reading the cache of step %s failed (%s); retrying", self._step, exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    self._take(record.key, record.value)

    def _take(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._entries.pop(key.decode(), None)
            return
        try:
            body = json.loads(value)
            entry = _Entry(str(body["output"]), float(body["stored_at"]))
        except (ValueError, KeyError, TypeError):
            return  # not an entry of ours: a miss, never a wrong hit
        self._put(key.decode(), entry)

    def _put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.cache.max_entries:
            self._entries.popitem(last=False)

    def _get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.cache.ttl is not None and time.time() - entry.stored_at > self.cache.ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.output

    # -- an attempt ---------------------------------------------------------------------

    async def run(
        self, key: str, compute: Callable[[], Awaitable[str | None]], publish: Publish
    ) -> tuple[str | None, bool]:
        """``(output JSON, hit)``; ``compute`` runs the step and returns its output JSON,
        or ``None`` when it must not be cached (a branch, an escalation)."""
        await self.ready()
        while True:
            found = self._get(key)
            if found is not None:
                self.hits += 1
                return found, True
            waiting = self._inflight.get(key)
            if waiting is None:
                break
            # Another attempt computes this very key: take its output, unless it failed.
            shared = await asyncio.shield(waiting)
            if shared is not None:
                self.hits += 1
                return shared, True
            if key in self._inflight:
                continue  # someone else took over meanwhile
            break
        self.misses += 1
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        output: str | None = None
        try:
            output = await compute()
            if output is not None:
                entry = _Entry(output, time.time())
                self._put(key, entry)
                body = json.dumps({"output": output, "stored_at": entry.stored_at}).encode()
                with contextlib.suppress(KafkaError):  # the output stands; the cache may miss
                    await publish(self.topic, key.encode(), body, [])
            return output, False
        finally:
            del self._inflight[key]
            future.set_result(output)

    async def stop(self) -> None:
        for task in (self._follow, self._loading):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self._consumer)
            self._consumer = None
