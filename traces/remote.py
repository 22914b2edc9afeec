"""Reaching the trace store from commands and web pages: directly, or through the running sink."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import RequestNotFoundError, TraceSchemaMissingError, TraceStoreError
from weir.core.secrets import SecretResolver
from weir.traces.queries import TraceQueries
from weir.traces.results import LatencyPoint, SlowRequest, Stats, Timeline
from weir.traces.sink_status import check_store_free, empty_store_hint, sink_status
from weir.traces.store import TraceStore

__all__ = ["RemoteTraceStore", "open_queries"]


class RemoteTraceStore:
    """The queries of a store held open by a running ``weir sink``, over its HTTP API."""

    def __init__(
        self, url: str, *, timeout_s: float = 30.0, token: SecretStr | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.dsn = self.url
        # The sink's server asks for the same bearer token as a worker's (``web_token``).
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def _get(self, path: str, **params: Any) -> Any:
        try:
            response = self._http.get(
                path, params={k: v for k, v in params.items() if v is not None}
            )
        except httpx.HTTPError as exc:
            raise TraceStoreError(f"the sink at {self.url} did not answer: {exc}") from exc
        if response.status_code == 404 and path.startswith("/api/traces/requests/"):
            raise RequestNotFoundError(response.json().get("error", response.text))
        if response.status_code != 200:
            raise TraceStoreError(
                f"the sink at {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json()

    def timeline(self, request_id: str, *, baseline_s: float = 86400.0) -> Timeline:
        body = self._get(f"/api/traces/requests/{quote(request_id, safe='')}", baseline=baseline_s)
        return Timeline.from_dict(body)

    def stats(self, *, since_ms: int, pipeline: str | None = None) -> Stats:
        return Stats.from_dict(self._get("/api/traces/stats", since_ms=since_ms, pipeline=pipeline))

    def latency_series(
        self, *, since_ms: int, pipeline: str | None = None, bucket_minutes: int = 1
    ) -> list[LatencyPoint]:
        body = self._get(
            "/api/traces/latency", since_ms=since_ms, pipeline=pipeline, bucket=bucket_minutes
        )
        return [LatencyPoint(**p) for p in body]

    def slowest(
        self, *, since_ms: int, pipeline: str | None = None, limit: int = 20
    ) -> list[SlowRequest]:
        body = self._get("/api/traces/slowest", since_ms=since_ms, pipeline=pipeline, limit=limit)
        return [SlowRequest(**r) for r in body]

    def close(self) -> None:
        self._http.close()


def open_queries(settings: WeirSettings) -> TraceQueries:
    """The trace store for reading: a ClickHouse server directly; an embedded store
    directly, or through the running sink that holds it open."""
    status = sink_status(settings)
    if status.url is not None:
        token = None
        if settings.web_token is not None:
            token = SecretResolver(settings).resolve_blocking(settings.web_token.get_secret_value())
        return RemoteTraceStore(status.url, token=token)
    check_store_free(settings, status)
    try:
        return TraceStore.connect(settings, create_schema=False)
    except TraceSchemaMissingError as exc:
        raise TraceSchemaMissingError(f"{exc}; {empty_store_hint(settings)}") from exc
