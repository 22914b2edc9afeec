"""The worker's HTTP server: health, counters, and the routes other parts add.

Served on ``settings.web_host:web_port`` next to a running worker (``weir
worker``).  Parts of weir that serve HTTP (token streams, the dashboard) each
have an ``add_routes(app, settings)`` that ``create_app`` calls.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from aiohttp import web

from weir.config import WeirSettings

if TYPE_CHECKING:
    from streams.worker import Worker
    from weir.dashboard import QueriesProvider

__all__ = ["SETTINGS_KEY", "WORKER_KEY", "WebServer", "create_app"]

SETTINGS_KEY = web.AppKey("settings", WeirSettings)
WORKER_KEY: web.AppKey[Worker | None] = web.AppKey("worker")


def create_app(
    settings: WeirSettings,
    worker: Worker | None = None,
    *,
    trace_queries: QueriesProvider | None = None,
) -> web.Application:
    """The aiohttp application: ``/health``, ``/stats`` and the routes of weir's parts.

    ``trace_queries``: the trace store, when this process holds it (the sink).
    """
    from weir import dashboard

    app = web.Application(middlewares=[dashboard.store_errors])
    app[SETTINGS_KEY] = settings
    app[WORKER_KEY] = worker
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    dashboard.add_routes(app, settings, trace_queries)
    from processors.streaming import add_routes as add_model_routes

    add_model_routes(app, settings)
    return app


async def _health(request: web.Request) -> web.Response:
    worker = request.app[WORKER_KEY]
    from processors.circuit_breaker import circuit_states

    circuits = circuit_states()
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
    return web.json_response(stats)


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
