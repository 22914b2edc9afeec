"""Workers announce their routers on the routes topic, so rule files are checked without code.

When ``weir worker`` starts it writes one record per router its pipeline
defines to ``weir.routes``: key ``router-announcement/<router>``, header
``weir.record: router-announcement``, value the router's endpoint names and
caller-given features (JSON of ``RouterAnnouncement``).  The topic is
compacted, so the latest announcement per router stays: the endpoints of the
most recently started worker.  Readers of rule sets skip these records.

``weir routes apply`` (and ``--dry-run``) then checks the endpoint names of a
rule set against the announced router even without ``--pipeline``, so a
misspelt endpoint is refused before it reaches a worker, instead of every
worker logging that it keeps its old version.
"""

from __future__ import annotations

import difflib
import json
import logging
import socket
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from weir.core.config import WeirSettings
from weir.core.errors import RoutingError
from weir.processors.router import Router
from weir.processors.routes_topic import (
    ANNOUNCEMENT_HEADER,
    ANNOUNCEMENT_KIND,
    ensure_topics,
    publish,
    read_all,
)
from weir.processors.rules import RuleSet
from weir.schemas.messages import now_ms
from weir.topics.names import ROUTES_TOPIC

__all__ = [
    "RouterAnnouncement",
    "announce_routers",
    "check_against_announced",
    "read_announcements",
]

log = logging.getLogger("weir.models")

KEY_PREFIX = "router-announcement/"


class RouterAnnouncement(BaseModel):
    """What a worker says about one router of its pipeline."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    router: str
    endpoints: list[str]
    """Every endpoint name a rule set for this router may use."""
    features: list[str] = []
    """Caller-given feature names of the router's code rules."""
    pipeline: str | None = None
    worker_id: str
    host: str
    announced_at: int
    """Epoch milliseconds."""


def announcement_of(router: Router, *, pipeline: str | None, worker_id: str) -> RouterAnnouncement:
    return RouterAnnouncement(
        router=router.name,
        endpoints=sorted(router.endpoints),
        features=list(router.rule_set.features),
        pipeline=pipeline,
        worker_id=worker_id,
        host=socket.gethostname(),
        announced_at=now_ms(),
    )


async def announce_routers(
    settings: WeirSettings, routers: Iterable[Router], *, pipeline: str | None = None
) -> list[RouterAnnouncement]:
    """Announce every router that follows the routes topic (``watch=True``)."""
    sent = [
        announcement_of(r, pipeline=pipeline, worker_id=settings.worker_id)
        for r in routers
        if r.watch
    ]
    if not sent:
        return []
    await ensure_topics(settings)
    await publish(
        settings,
        [(KEY_PREFIX + a.router, a.model_dump_json().encode()) for a in sent],
        history=False,
        headers=[(ANNOUNCEMENT_HEADER, ANNOUNCEMENT_KIND)],
    )
    return sent


async def read_announcements(settings: WeirSettings) -> dict[str, RouterAnnouncement]:
    """The latest announcement per router on the routes topic."""
    await ensure_topics(settings)
    latest: dict[str, RouterAnnouncement] = {}
    for key, value, _ in await read_all(settings, ROUTES_TOPIC, announcements=True):
        if not key.startswith(KEY_PREFIX) or value is None:
            continue
        try:
            found = RouterAnnouncement.model_validate(json.loads(value))
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("routes: ignoring an unreadable announcement %s: %s", key, exc)
            continue
        latest[found.router] = found
    return latest


def check_against_announced(
    rule_set: RuleSet, announced: Mapping[str, RouterAnnouncement]
) -> RouterAnnouncement | None:
    """``RoutingError`` when the announced router lacks an endpoint ``rule_set`` names.

    ``None`` when no worker has announced the router (nothing to check against).
    """
    found = announced.get(rule_set.router)
    if found is None:
        return None
    unknown = sorted(rule_set.endpoint_names() - set(found.endpoints))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, found.endpoints, n=1)
            if close:
                hints.append(f"{name!r}: did you mean {close[0]!r}?")
        raise RoutingError(
            f"rule set for router {rule_set.router!r} names unknown endpoint(s) {unknown};"
            f" the workers running it (last: {found.worker_id}, pipeline"
            f" {found.pipeline or '?'}) know {found.endpoints}"
            + (f" ({'; '.join(hints)})" if hints else "")
        )
    return found
