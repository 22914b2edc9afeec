"""The trace dashboard and the JSON trace API, served by a worker's or the sink's web server.

Pages: ``/dashboard`` (latency percentiles over time per step, failures by
error type, cost by model and pipeline, the slowest requests, escalations to a
person from the review topics) and
``/dashboard/requests/<id>`` (one request's timeline), ``/dashboard/replays/<id>``
(a step replay against the live step, as ``weir compare``), ``/dashboard/lag`` (the
pipeline's lag per step and partition, group-wide, as ``weir lag``).  JSON: ``/api/replays/<id>``,
``/api/lag``, ``/api/traces/requests/<id>``, ``/api/traces/stats``, ``/api/traces/latency``,
``/api/traces/slowest`` (``weir trace``/``weir stats`` use them while a
``weir sink`` holds the embedded store), and on the sink ``POST /api/traces/sql``
(``weir sql``).  Charts are SVG drawn on the server.

>>> from aiohttp import web
>>> from weir.core.config import WeirSettings
>>> app = web.Application(middlewares=[store_errors])
>>> add_routes(app, WeirSettings())
>>> sorted({r.resource.canonical for r in app.router.routes()})[:3]
['/api/lag', '/api/replays/{replay_id}', '/api/traces/latency']
"""

from __future__ import annotations

from aiohttp import web

from weir.core.config import WeirSettings
from weir.dashboard._lag import PIPELINE, api_lag, lag_page
from weir.dashboard._replays import api_replay, replay_page
from weir.dashboard._views import (
    QUERIES,
    SETTINGS,
    QueriesProvider,
    api_latency,
    api_slowest,
    api_sql,
    api_stats,
    api_timeline,
    dashboard,
    request_page,
    store_errors,
)

__all__ = ["QUERIES", "QueriesProvider", "add_routes", "store_errors"]


def add_routes(
    app: web.Application,
    settings: WeirSettings,
    queries: QueriesProvider | None = None,
    *,
    pipeline: str | None = None,
) -> None:
    """Add the dashboard and trace API to ``app``.

    ``queries`` gives the store when this process holds it (the sink); without
    it each request opens the store named by ``settings`` (or asks the sink).
    ``pipeline``: the worker's, whose lag ``/dashboard/lag`` shows by default.
    """
    app[SETTINGS] = settings
    if pipeline is not None:
        app[PIPELINE] = pipeline
    if queries is not None:
        app[QUERIES] = queries
        # Only the process holding the store answers SQL (``weir sql`` asks the sink).
        app.router.add_post("/api/traces/sql", api_sql)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/dashboard/requests/{request_id}", request_page)
    app.router.add_get("/api/traces/requests/{request_id}", api_timeline)
    app.router.add_get("/api/traces/stats", api_stats)
    app.router.add_get("/api/traces/latency", api_latency)
    app.router.add_get("/api/traces/slowest", api_slowest)
    app.router.add_get("/dashboard/replays/{replay_id}", replay_page)
    app.router.add_get("/api/replays/{replay_id}", api_replay)
    app.router.add_get("/dashboard/lag", lag_page)
    app.router.add_get("/api/lag", api_lag)
