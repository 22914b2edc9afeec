"""``WeirClient`` for scripts and other synchronous code.

The asynchronous client runs on an event loop in a thread of its own; each
method hands it a coroutine and blocks until it is done, so the one result
listener serves every call, from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from weir.core.config import WeirSettings
from weir.core.errors import WeirError
from weir.schemas.messages import Result
from weir.streams.client import WeirClient

if TYPE_CHECKING:
    from weir.processors.streaming import TokenChunk

__all__ = ["SyncWeirClient"]

T = TypeVar("T")


class SyncWeirClient:
    """A blocking ``WeirClient``; use as ``with``.

    >>> with SyncWeirClient(settings) as client:                           # doctest: +SKIP
    ...     results = client.map("support", payloads, progress=True)
    """

    def __init__(self, settings: WeirSettings, *, keep_results: int = 10_000) -> None:
        self._settings = settings
        self._keep = keep_results
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: WeirClient | None = None

    def __enter__(self) -> SyncWeirClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="weir-client", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

        async def make() -> WeirClient:
            # Made on its own loop: asyncio objects belong to the loop that made them.
            client = WeirClient(self._settings, keep_results=self._keep)
            await client.start()
            return client

        try:
            self._client = self._call(make)
        except BaseException:
            self._halt()
            raise

    def close(self) -> None:
        """Stop the client and its loop thread (idempotent)."""
        if self._client is not None:
            client, self._client = self._client, None
            try:
                self._call(client.stop)
            finally:
                self._halt()

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()
        if loop is not None:
            loop.close()

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        if self._loop is None:
            raise WeirError("SyncWeirClient is not started")

        async def run() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result()

    @property
    def client(self) -> WeirClient:
        """The asynchronous client underneath (runs on this object's loop thread)."""
        if self._client is None:
            raise WeirError("SyncWeirClient is not started")
        return self._client

    def submit(
        self,
        pipeline: str,
        payload: Mapping[str, Any],
        *,
        request_id: str | None = None,
        options: Mapping[str, str] | None = None,
        fmt: Literal["json", "avro"] = "json",
    ) -> str:
        client = self.client
        return self._call(
            lambda: client.submit(
                pipeline, payload, request_id=request_id, options=options, fmt=fmt
            )
        )

    def submit_many(
        self,
        pipeline: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        request_ids: Iterable[str] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> list[str]:
        client = self.client
        given = list(payloads)
        return self._call(
            lambda: client.submit_many(pipeline, given, request_ids=request_ids, options=options)
        )

    def result(self, request_id: str, *, timeout: float = 60.0) -> Result:
        client = self.client
        return self._call(lambda: client.result(request_id, timeout=timeout))

    def map(
        self,
        pipeline: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        timeout: float = 300.0,
        progress: bool | Callable[[int, int], None] = False,
        options: Mapping[str, str] | None = None,
    ) -> list[Result]:
        client = self.client
        given = list(payloads)
        return self._call(
            lambda: client.map(pipeline, given, timeout=timeout, progress=progress, options=options)
        )

    def wait_for(
        self, pipeline: str, request_ids: Iterable[str], *, timeout: float = 60.0
    ) -> dict[str, Result]:
        client = self.client
        wanted = list(request_ids)
        return self._call(lambda: client.wait_for(pipeline, wanted, timeout=timeout))

    def stream(
        self,
        request_id: str,
        *,
        pipeline: str | None = None,
        step: str | None = None,
        idle_timeout: float = 60.0,
    ) -> Iterator[TokenChunk]:
        """The chunks of a request's token stream, as ``WeirClient.stream`` yields them."""
        client = self.client
        tokens = client.stream(request_id, pipeline=pipeline, step=step, idle_timeout=idle_timeout)
        chunks = tokens.__aiter__()
        try:
            while True:
                try:
                    yield self._call(chunks.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                self._call(aclose)
            self._call(tokens.stop)
