"""The worker's HTTP server: health, counters, and the routes other parts add.

Served on ``settings.web_host:web_port`` next to a running worker (``weir
worker``).  Parts of weir that serve HTTP (token streams, the dashboard) each
have an ``add_routes(app, settings)`` that ``create_app`` calls.

With ``web_token`` set (a secret reference), every route but ``/health``
requires ``Authorization: Bearer <token>``; without it a request gets 401, a
``WWW-Authenticate: Bearer`` header and a JSON error.  ``/health`` stays open
so that load balancers and orchestrators can probe without the secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import SecretStr

from weir._http import error_response
from weir._review_routes import add_routes as add_review_routes
from weir.core.config import WeirSettings
from weir.core.errors import SecretError, UnauthorizedError
from weir.core.secrets import SecretResolver

if TYPE_CHECKING:
    from weir.dashboard import QueriesProvider
    from weir.processors.services import ModelServices
    from weir.streams.worker import Worker

__all__ = ["SETTINGS_KEY", "WORKER_KEY", "WebServer", "create_app"]

SETTINGS_KEY = web.AppKey("settings", WeirSettings)
WORKER_KEY: web.AppKey[Worker | None] = web.AppKey("worker")
_TOKEN_KEY: web.AppKey[Callable[[], Awaitable[SecretStr]]] = web.AppKey("weir.web.token")

_OPEN_PATHS = frozenset({"/health"})
"""Routes that answer without the bearer token."""

log = logging.getLogger("weir.web")


def create_app(
    settings: WeirSettings,
    worker: Worker | None = None,
    *,
    trace_queries: QueriesProvider | None = None,
) -> web.Application:
    """The aiohttp application: ``/health``, ``/stats`` and the routes of weir's parts.

    ``trace_queries``: the trace store, when this process holds it (the sink).
    """
    from weir import dashboard, sse

    # The token check runs first, so no route (or its errors) is reached without it.
    app = web.Application(middlewares=[_require_token, dashboard.store_errors])
    app[SETTINGS_KEY] = settings
    if settings.web_token is not None:
        resolver = SecretResolver(settings)
        reference = settings.web_token.get_secret_value()

        async def token() -> SecretStr:
            # Cached for secret_cache_ttl_s, so a rotated token is picked up.
            return await resolver.resolve(reference)

        app[_TOKEN_KEY] = token
    app[WORKER_KEY] = worker
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    pipeline = worker.pipeline.name if worker is not None else None
    dashboard.add_routes(app, settings, trace_queries, pipeline=pipeline)
    sse.add_routes(app, settings, _model_services(worker))
    add_review_routes(app, settings)
    return app


@web.middleware
async def _require_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app.get(_TOKEN_KEY)
    if token is None or request.path in _OPEN_PATHS:
        return await handler(request)
    try:
        expected = (await token()).get_secret_value().encode()
    except SecretError as exc:
        # Refuse rather than serve unauthenticated when the token cannot be known.
        return error_response(503, exc)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Digests of equal length, compared in constant time: the time taken tells neither
    # how much of a guess was right nor how long the token is.
    same = hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(expected).digest()
    )
    if scheme.lower() != "bearer" or not same:
        error = UnauthorizedError(
            "this server requires a bearer token: send 'Authorization: Bearer <token>'"
            " (the value web_token refers to)"
        )
        return error_response(401, error, headers={"WWW-Authenticate": 'Bearer realm="weir"'})
    return await handler(request)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


async def _health(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    services = _model_services(worker)
    circuits = services.circuit_states() if services is not None else {}
    open_ = sorted(name for name, c in circuits.items() if c["state"] != "closed")
    # An open circuit is degraded service, not a dead worker: fallbacks may be serving.
    body: dict[str, object] = {"status": "degraded" if open_ else "ok", "circuits": circuits}
    if worker is not None:
        body["pipeline"] = worker.pipeline.name
        body["worker_id"] = worker.settings.worker_id
        body["partitions"] = len(worker.assigned)
        stuck = worker.stuck_records()
        if stuck:
            # A record holding its partition's commits: the partition's lag only grows.
            body["status"] = "degraded"
            body["stuck_records"] = stuck
        steps = [s.to_dict() for s in worker.threads.stuck()]
        if steps:
            # A thread that never returns is capacity lost until the worker restarts.
            body["status"] = "degraded"
            body["stuck_steps"] = steps
        if worker.stopping:
            body["status"] = "stopping"
    return web.json_response(body, status=503 if body["status"] == "stopping" else 200)


async def _stats(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    if worker is None:
        raise web.HTTPNotFound(text="no worker runs in this process")
    stats: dict[str, object] = dataclasses.asdict(worker.stats)
    stats["lag"] = {step: worker.lag(step) for step in worker.runners}
    stats["stuck_records"] = worker.stuck_records()
    threads = worker.threads
    stats["threads"] = {
        "size": threads.size,
        "stuck_max": threads.stuck_max,
        "abandoned_total": threads.abandoned_total,
        "refused_total": threads.refused_total,
    }
    stats["stuck_steps"] = [s.to_dict() for s in threads.stuck()]
    services = _model_services(worker)
    ledger = services.existing_ledger if services is not None else None
    if ledger is not None:  # only pipelines with budgets have one
        stats["budget_keys"] = {
            "in_memory": ledger.keys_in_memory,
            "evicted": ledger.evicted_keys,
            "max": worker.settings.budget_max_keys,
        }
    return web.json_response(stats)


def _model_services(worker: Worker | None) -> ModelServices | None:
    """The model layer's services of the worker this server runs beside, if it has them."""
    from weir.processors.services import ModelServices

    services = worker.services if worker is not None else None
    return services if isinstance(services, ModelServices) else None


class WebServer:
    """Runs ``create_app`` on ``settings.web_host:web_port``; use as ``async with``."""

    def __init__(
        self,
        settings: WeirSettings,
        worker: Worker | None = None,
        *,
        trace_queries: QueriesProvider | None = None,
    ) -> None:
        self._settings = settings
        self._worker = worker
        self._trace_queries = trace_queries
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def __aenter__(self) -> WebServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        settings = self._settings
        if settings.web_token is not None:
            # Resolve once now, so a reference that cannot be resolved stops the start.
            await SecretResolver(settings).resolve(settings.web_token.get_secret_value())
        elif not _is_loopback(settings.web_host):
            log.warning(
                "the HTTP server binds to %s, which is not a loopback address, and no"
                " web_token is set: anyone who can reach it can read stats, traces and"
                " token streams; set WEIR_WEB_TOKEN to a secret reference",
                settings.web_host or "all interfaces",
            )
        app = create_app(self._settings, self._worker, trace_queries=self._trace_queries)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.web_host, self._settings.web_port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self._settings.web_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self._settings.web_host}:{self.port}"
