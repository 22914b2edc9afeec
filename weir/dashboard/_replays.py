"""``/dashboard/replays/<id>`` and ``/api/replays/<id>``: a step replay's comparison.

Outputs shown side by side are redacted like trace events (the page is served
over HTTP; ``weir compare`` on the operator's terminal prints them whole).
"""

from __future__ import annotations

import dataclasses
import html

from aiohttp import web

from weir.core.errors import ReplayNotFoundError
from weir.dashboard._views import SETTINGS, _json, _page
from weir.replays.compare import Comparison, Side, compare
from weir.streams.redaction import Redactor

__all__ = ["api_replay", "replay_page"]

_EXAMPLE_MAX_BYTES = 2000


async def _comparison(request: web.Request) -> Comparison:
    from weir.replays import find_replay, read_outcomes
    from weir.replays.baseline import live_attempts

    settings = request.app[SETTINGS]
    replay_id = request.match_info["replay_id"]
    plan, topic = await find_replay(settings, replay_id)
    outcomes = await read_outcomes(settings, topic)
    live = await live_attempts(settings, plan, [o.request_id for o in outcomes])
    result = await compare(plan, outcomes, live)
    redactor = Redactor.from_settings(settings)
    examples = [
        dataclasses.replace(
            e,
            baseline=None
            if e.baseline is None
            else redactor.redact(e.baseline, max_bytes=_EXAMPLE_MAX_BYTES),
            candidate=None
            if e.candidate is None
            else redactor.redact(e.candidate, max_bytes=_EXAMPLE_MAX_BYTES),
        )
        for e in result.most_different
    ]
    return dataclasses.replace(result, most_different=examples)


async def api_replay(request: web.Request) -> web.Response:
    try:
        result = await _comparison(request)
    except ReplayNotFoundError as exc:
        return _json({"error": str(exc), "error_type": exc.error_type}, status=404)
    return _json(dataclasses.asdict(result))


async def replay_page(request: web.Request) -> web.Response:
    try:
        c = await _comparison(request)
    except ReplayNotFoundError as exc:
        return _page("replay", f'<p class="error">{html.escape(str(exc))}</p>', status=404)

    def errors(side: Side) -> str:
        return ", ".join(f"{t} {n}" for t, n in side.errors.items()) or "-"

    b, k = c.baseline, c.candidate
    rows = [
        ("requests", f"{b.count:,}", f"{k.count:,}"),
        ("succeeded", f"{b.succeeded:,}", f"{k.succeeded:,}"),
        ("errors", errors(b), errors(k)),
        *(
            (f"latency {q} ms", f"{b.latency_ms[q]:,.1f}", f"{k.latency_ms[q]:,.1f}")
            for q in ("p50", "p95", "p99")
        ),
        ("input tokens", f"{b.input_tokens:,}", f"{k.input_tokens:,}"),
        ("output tokens", f"{b.output_tokens:,}", f"{k.output_tokens:,}"),
        ("cost", f"${b.cost_usd:.6f}", f"${k.cost_usd:.6f}"),
        ("cost per request", f"${b.cost_per_request_usd:.6f}", f"${k.cost_per_request_usd:.6f}"),
        ("projected per month", f"${b.projected_month_usd:,}", f"${k.projected_month_usd:,}"),
    ]
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(x)}</td><td>{html.escape(y)}</td></tr>"
        for name, x, y in rows
    )
    diffs = "".join(
        f"<tr><td>{html.escape(e.request_id)}</td><td>{e.score:.3f}</td>"
        f"<td>{html.escape(e.baseline or '')}</td><td>{html.escape(e.candidate or '')}</td></tr>"
        for e in c.most_different
    )
    body = (
        f"<h1>replay {html.escape(c.replay_id)}</h1>"
        f"<p>{html.escape(c.pipeline)} / {html.escape(c.step)}: the step live (baseline)"
        f" against {html.escape(c.variant)}</p>"
        f"<table><tr><th></th><th>baseline</th><th>candidate</th></tr>{table}</table>"
        f'<p class="verdict">agreement over {c.compared:,} outputs: exact match'
        f" {c.exact_match_rate:.1%}</p>"
        "<h2>most different outputs</h2><table><tr><th>request</th><th>score</th>"
        f"<th>baseline</th><th>candidate</th></tr>{diffs}</table>"
    )
    return _page(f"replay {c.replay_id}", body)
