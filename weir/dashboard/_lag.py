"""``/dashboard/lag`` and ``/api/lag``: a pipeline's lag per step and partition, group-wide.

The same numbers as ``weir lag`` (``weir.topics.lag``), read from the broker on
each request: what the pipeline's whole consumer group has not finished, whatever
worker holds it.  On a worker's server the pipeline defaults to the worker's own;
``?pipeline=`` names another (the sink's server has no pipeline of its own).
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from weir.core.errors import BrokerError, ConfigError, UnknownPipelineError, WeirError
from weir.dashboard._views import SETTINGS, _json, _page
from weir.topics.lag import LagReader, lag_report
from weir.topics.names import PipelineTopics

__all__ = ["PIPELINE", "api_lag", "lag_page"]

PIPELINE = web.AppKey("dashboard_pipeline", str)
"""The pipeline of the worker this server runs beside (unset on the sink's server)."""


async def _report(request: web.Request) -> dict[str, Any]:
    pipeline = request.query.get("pipeline") or request.app.get(PIPELINE)
    if not pipeline:
        raise ConfigError("no worker runs beside this server: name one with ?pipeline=<name>")
    settings = request.app[SETTINGS]
    try:
        async with asyncio.timeout(15), LagReader(settings) as reader:
            rows = await reader.read(pipeline)
            members = await reader.group_members(PipelineTopics(pipeline).consumer_group)
    except (KafkaError, TimeoutError, OSError) as exc:
        raise BrokerError(f"cannot read the lag of {pipeline!r} from the broker: {exc}") from exc
    if not rows:
        raise UnknownPipelineError(f"pipeline {pipeline!r} has no topics: is its name right?")
    return lag_report(pipeline, rows, members)


def _status(error: WeirError) -> int:
    if isinstance(error, UnknownPipelineError):
        return 404
    return 400 if isinstance(error, ConfigError) else 503


async def api_lag(request: web.Request) -> web.Response:
    try:
        report = await _report(request)
    except (ConfigError, BrokerError, UnknownPipelineError) as exc:
        return _json({"error": str(exc), "error_type": exc.error_type}, _status(exc))
    return _json(report)


async def lag_page(request: web.Request) -> web.Response:
    try:
        report = await _report(request)
    except (ConfigError, BrokerError, UnknownPipelineError) as exc:
        body = f"<h1>lag</h1><p class=error>{html.escape(str(exc))}</p>"
        return _page("lag", body, _status(exc))
    name = html.escape(report["pipeline"])
    steps = "".join(
        f'<tr><td>{html.escape(step)}</td><td class="lag">{lag:,}</td></tr>'
        for step, lag in report["steps"].items()
    )
    parts = "".join(
        f"<tr><td>{html.escape(p['step'])}</td><td>{html.escape(p['topic'])}</td>"
        f"<td>{p['partition']}</td>"
        f"<td>{'-' if p['committed'] is None else p['committed']}</td>"
        f'<td>{p["end"]}</td><td class="lag">{p["lag"]:,}</td></tr>'
        for p in report["partitions"]
    )
    body = (
        f"<h1>lag — {name}</h1>"
        f"<p>group-wide: <b id=total>{report['total']:,}</b> messages not yet done,"
        f" <b id=workers>{report['workers']}</b> live workers</p>"
        "<h2>per step</h2><table id=steps><tr><th>step</th><th>lag</th></tr>"
        f"{steps}</table>"
        "<h2>per partition</h2><table id=partitions><tr><th>step</th><th>topic</th>"
        f"<th>partition</th><th>committed</th><th>end</th><th>lag</th></tr>{parts}</table>"
    )
    return _page(f"lag of {report['pipeline']}", body)
