"""``ModelServices``: the model layer's state for one worker, client or test, started and stopped.

Everything the model layer remembers between calls lives here, never in a
module: the settings in force, the secret cache, one circuit breaker per
endpoint name, the endpoints and routers seen, the route watcher and the cost
ledger.  A worker is given one (``Worker(pipeline, settings,
services=ModelServices(settings))``; ``weir worker`` does this) and steps reach
it through their attempt scope; outside a worker, ``async with
ModelServices(settings):`` makes it the one calls in that block use.  Two
workers with two services share nothing, and ``Worker.stop()`` stops its
services' background tasks and connections.

>>> from weir.core.config import load_settings
>>> services = ModelServices(load_settings(worker_id="doc"))
>>> services.settings.worker_id
'doc'
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol

from weir.core.config import WeirSettings
from weir.core.errors import ConfigError
from weir.core.secrets import SecretResolver
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker
from weir.processors.group_lag import GroupLag
from weir.processors.ledger import CostLedger
from weir.processors.pauses import GroupPauses
from weir.processors.routes import RouteWatcher
from weir.processors.rules import RuleFollower
from weir.streams.context import current_scope
from weir.topics.names import ROUTES_TOPIC

__all__ = ["ModelServices", "bind_services", "services_in_use", "services_now"]

log = logging.getLogger("weir.models")

_BOUND: contextvars.ContextVar[ModelServices | None] = contextvars.ContextVar(
    "weir_model_services", default=None
)


class _Listed(Protocol):
    @property
    def name(self) -> str: ...

    def state(self, services: ModelServices) -> dict[str, Any]: ...


class ModelServices:
    """The model layer's state for one worker (or client, or test)."""

    def __init__(self, settings: WeirSettings) -> None:
        self.settings = settings
        self.resolver = SecretResolver(settings)
        """Resolves endpoint keys; its cache is this worker's alone."""
        self._breakers: dict[str, CircuitBreaker] = {}
        self._endpoints: dict[str, _Listed] = {}
        self._routers: dict[str, RuleFollower] = {}
        self._watcher: RouteWatcher | None = None
        self._ledger: CostLedger | None = None
        self._pauses: GroupPauses | None = None
        self._group_lag: GroupLag | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.started = False
        self.stopped = False

    def __repr__(self) -> str:
        return f"ModelServices(worker_id={self.settings.worker_id!r})"

    # -- what calls use ----------------------------------------------------------------------

    def breaker(self, name: str, policy: BreakerPolicy | None) -> CircuitBreaker | None:
        """The circuit breaker of endpoint ``name`` (``policy=None``: no breaker)."""
        if policy is None:
            return None
        breaker = self._breakers.get(name)
        if breaker is None or breaker.policy != policy:
            breaker = self._breakers[name] = CircuitBreaker(name, policy)
        return breaker

    def add_endpoint(self, endpoint: _Listed) -> None:
        """List ``endpoint`` in ``endpoint_states`` (calls add the endpoints they use)."""
        self._endpoints[endpoint.name] = endpoint

    def add_router(self, router: RuleFollower) -> None:
        """Keep ``router`` on the rule set in force (its status is reported, withdrawn on stop)."""
        self._routers[router.name] = router
        if router.watch:
            self.watcher().add(router)

    @property
    def routers(self) -> dict[str, RuleFollower]:
        return dict(self._routers)

    def watcher(self) -> RouteWatcher:
        """The routes-topic watcher of these services (made on first use, stopped with them)."""
        if self._watcher is None:
            self._watcher = RouteWatcher(self.settings)
        return self._watcher

    async def follow(self, router: RuleFollower) -> None:
        """Bring ``router`` to the latest rule set on the routes topic (the first call waits)."""
        self.add_router(router)
        watcher = self.watcher()
        if not watcher.ready:
            started = time.monotonic()
            if not await watcher.wait_ready(self.settings.routes_wait_s) and not watcher.failed:
                log.warning(
                    "routes: %s not read within %.1fs; router %s uses version %d for now",
                    ROUTES_TOPIC,
                    time.monotonic() - started,
                    router.name,
                    router.version,
                )
        if watcher.ready:
            watcher.settle(router)
        elif router.name in watcher.latest:
            router.use(watcher.latest[router.name])

    async def ledger(self) -> CostLedger:
        """The cost ledger, connected and caught up (made and started on first use)."""
        if self._ledger is None:
            self._ledger = CostLedger(self.settings)
        await self._ledger.start()
        return self._ledger

    def pauses(self) -> GroupPauses:
        """The group-wide ``Retry-After`` pauses (made on first use, stopped with these)."""
        if self._pauses is None:
            self._pauses = GroupPauses(self.settings)
            self.add_closer(self._pauses.aclose)
        return self._pauses

    def group_lag(self) -> GroupLag:
        """The group-wide lag routing rules read (made on first use, stopped with these)."""
        if self._group_lag is None:
            self._group_lag = GroupLag(self.settings)
            self.add_closer(self._group_lag.aclose)
        return self._group_lag

    def add_closer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Have ``stop()`` await ``close`` (a batcher's calls, a group-membership poller)."""
        self._closers.append(close)

    @property
    def existing_ledger(self) -> CostLedger | None:
        """The cost ledger if a budget has made one."""
        return self._ledger

    # -- what health pages show --------------------------------------------------------------

    def circuit_states(self) -> dict[str, dict[str, Any]]:
        """Every endpoint breaker of these services, by endpoint name."""
        return {name: b.snapshot() for name, b in sorted(self._breakers.items())}

    def endpoint_states(self) -> dict[str, dict[str, Any]]:
        """Every endpoint called (or added) here, by name; prices from these settings."""
        return {name: ep.state(self) for name, ep in sorted(self._endpoints.items())}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Ready for calls; the watcher and the ledger connect when first needed."""
        self.started = True

    async def stop(self) -> None:
        """Stop the route watcher and the cost ledger and close their connections."""
        self.stopped = True
        watcher, self._watcher = self._watcher, None
        ledger, self._ledger = self._ledger, None
        self._pauses = self._group_lag = None  # closed with the closers below
        closers, self._closers = self._closers, []
        for name, close in (
            ("route watcher", watcher.stop if watcher else None),
            ("cost ledger", ledger.stop if ledger else None),
            *(("background resource", c) for c in closers),
        ):
            if close is None:
                continue
            try:
                await close()
            except Exception:  # stopping goes on: the rest must be closed too
                log.exception("closing the %s failed", name)

    async def __aenter__(self) -> ModelServices:
        await self.start()
        self._token = _BOUND.set(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _BOUND.reset(self._token)
        await self.stop()

    @asynccontextmanager
    async def bound(self) -> AsyncIterator[ModelServices]:
        """Use these services for calls made in this block, without starting or stopping them."""
        token = _BOUND.set(self)
        try:
            yield self
        finally:
            _BOUND.reset(token)


def bind_services(services: ModelServices) -> None:
    """Make ``services`` the current context's (for a task that serves many steps)."""
    _BOUND.set(services)


def services_in_use() -> ModelServices | None:
    """The services of the running step's worker, else those of the enclosing ``async with``."""
    scope = current_scope()
    if scope is not None and isinstance(scope.services, ModelServices):
        return scope.services
    return _BOUND.get()


def services_now() -> ModelServices:
    """``services_in_use()``, or a ``ConfigError`` saying how to provide them."""
    found = services_in_use()
    if found is not None:
        return found
    scope = current_scope()
    where = "this worker was created without them" if scope is not None else "none is in use"
    raise ConfigError(
        f"a model call needs ModelServices and {where}: use weir.Worker / weir.run_local"
        " (they make their own), create the worker with"
        " Worker(pipeline, settings, services=ModelServices(settings)) (`weir worker` does),"
        " or call models inside `async with ModelServices(settings):`"
    )
