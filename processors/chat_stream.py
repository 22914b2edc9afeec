"""``ChatStream``: a streamed chat answer, relayed to the step and the stream topic as it arrives.

A stream that breaks mid-answer is tried again (the endpoint's
``stream_retries``) or falls back, with a ``restart`` marker, never returned
as a truncated success.  Each try goes through the same path as a plain call
(``weir.processors._call.one_try``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import TypeAdapter

from weir.core.errors import ModelError, ModelTimeoutError, StreamInterruptedError
from weir.processors._call import Callee, CallMeta, CallTry, breaker_refused, one_try, usage_of
from weir.processors.providers._base import Message, Piece
from weir.processors.results import ChatResult, StreamEvent
from weir.processors.tokens import estimate_messages
from weir.streams._stream_publisher import StreamPublisher
from weir.streams.context import current_scope
from weir.streams.dead_letter import error_type_of
from weir.streams.journal import journaled

__all__ = ["ChatStream"]


_Resolved = tuple[Callee, CallMeta, Callable[[], None] | None]


_CHAT_RESULT = TypeAdapter(ChatResult)
"""Journals streamed answers (``weir.streams.journal``)."""


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class ChatStream:
    """A streamed chat answer in progress.

    Iterate it for ``StreamEvent``s (``delta`` text; ``restart`` when the answer
    broke off and starts again), then read ``result``; or ``await collect()``.
    The call runs in its own task from the first iteration on, so the tokens
    reach the stream topic at the model's pace, whatever the step does with them.
    """

    def __init__(
        self,
        endpoint: Callee,
        messages: list[Message],
        params: dict[str, Any],
        meta: CallMeta,
    ) -> None:
        async def resolve() -> _Resolved:
            return endpoint, meta, None

        self._setup(resolve, endpoint.name, messages, params)

    def _setup(
        self,
        resolve: Callable[[], Awaitable[_Resolved]],
        name: str,
        messages: list[Message],
        params: dict[str, Any],
    ) -> None:
        self._resolve = resolve
        self._name = name
        self._messages = messages
        self._params = params
        self._queue: asyncio.Queue[StreamEvent | _End] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self.result: ChatResult | None = None

    @classmethod
    def routed(
        cls,
        resolve: Callable[[], Awaitable[_Resolved]],
        messages: list[Message],
        params: dict[str, Any],
    ) -> ChatStream:
        """A stream whose endpoint is chosen (by a router) when it starts."""
        stream = cls.__new__(cls)
        stream._setup(resolve, "routed", messages, params)
        return stream

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._drive(), name=f"weir-stream-{self._name}")
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        if isinstance(item, _End):
            self._finished = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def collect(self) -> ChatResult:
        """Run the stream to its end; the complete answer (``ModelError`` if every try failed)."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def aclose(self) -> None:
        """Stop the call early (the tokens already published stay on the topic)."""
        self._finished = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drive(self) -> None:
        scope = current_scope()
        publisher = StreamPublisher(scope) if scope is not None else None
        release: Callable[[], None] | None = None
        try:
            endpoint, meta, release = await self._resolve()

            def replayed(done: ChatResult) -> None:
                # A redelivered attempt: the answer comes from the journal, in one piece.
                self._queue.put_nowait(StreamEvent("delta", done.text, done.endpoint))
                if publisher is not None:
                    publisher.delta(done.text, endpoint=done.endpoint, attempt=1)
                    publisher.done(
                        endpoint=done.endpoint,
                        attempt=1,
                        input_tokens=done.usage.input_tokens,
                        output_tokens=done.usage.output_tokens,
                        usage_source=done.usage.source,
                        cost_usd=done.cost_usd,
                    )

            self.result = await journaled(
                lambda: _stream_tries(
                    endpoint, self._messages, self._params, meta, self._queue, publisher
                ),
                _CHAT_RESULT,
                replayed=replayed,
            )
            if publisher is not None:
                await publisher.close()
            self._queue.put_nowait(_End(None))
        except asyncio.CancelledError:
            if publisher is not None:
                await publisher.abandon()  # clients must not wait for a call that is gone
            raise
        except BaseException as exc:
            if publisher is not None:
                if not publisher.ended:  # e.g. a secret that cannot be resolved
                    publisher.abort(error_type=error_type_of(exc))
                with contextlib.suppress(Exception):
                    await publisher.close()
            self._queue.put_nowait(_End(exc))
        finally:
            if release is not None:
                release()


async def _stream_tries(
    first: Callee,
    messages: list[Message],
    params: dict[str, Any],
    meta: CallMeta,
    queue: asyncio.Queue[StreamEvent | _End],
    publisher: StreamPublisher | None,
) -> ChatResult:
    """Try ``first`` (and again on a broken stream), then its fallbacks, until one completes."""
    estimate = estimate_messages(messages)
    last: ModelError | None = None
    attempt = 0
    restarts = 0
    chain = first.chain()
    for ep in chain:
        fallback_from = None if ep is chain[0] else chain[0].name
        for _ in range(1 + ep.stream_retries):
            refused = breaker_refused(ep, "chat", meta, fallback_from, streamed=True)
            if refused is not None:
                last = refused
                break
            attempt += 1
            answer = _Answer(ep, attempt, estimate, queue, publisher)
            try:
                async with one_try(
                    ep, "chat", meta, fallback_from, estimate, streamed=True
                ) as this_try:
                    await answer.relay(
                        this_try, ep.provider.stream_chat(this_try.call, messages, params)
                    )
                    this_try.usage = usage_of(
                        answer.input_tokens, answer.output_tokens, estimate, answer.text
                    )
            except ModelError as exc:
                last = exc
                if answer.emitted:
                    restarts += 1
                    queue.put_nowait(StreamEvent("restart", "", ep.name, exc.error_type))
                    if publisher is not None:
                        publisher.restart(
                            endpoint=ep.name, attempt=attempt, error_type=exc.error_type
                        )
                if not exc.retriable:
                    if publisher is not None:
                        publisher.abort(
                            endpoint=ep.name, attempt=attempt, error_type=exc.error_type
                        )
                    raise
                if isinstance(exc, StreamInterruptedError):
                    continue  # the same endpoint once more, then the fallbacks
                break
            if publisher is not None:
                publisher.done(
                    endpoint=ep.name,
                    attempt=attempt,
                    input_tokens=this_try.usage.input_tokens,
                    output_tokens=this_try.usage.output_tokens,
                    usage_source=this_try.usage.source,
                    cost_usd=this_try.cost,
                )
            return ChatResult(
                endpoint=ep.name,
                model=this_try.model or ep.model,
                usage=this_try.usage,
                cost_usd=this_try.cost,
                rule=meta.rule,
                rules_version=meta.rules_version,
                text=answer.text,
                finish_reason=answer.finish_reason,
                restarts=restarts,
            )
    assert last is not None
    if publisher is not None:
        publisher.abort(endpoint=first.name, attempt=attempt, error_type=last.error_type)
    raise last


class _Answer:
    """What one try of a stream received, relayed piece by piece as it arrives."""

    def __init__(
        self,
        ep: Callee,
        attempt: int,
        estimate: int,
        queue: asyncio.Queue[StreamEvent | _End],
        publisher: StreamPublisher | None,
    ) -> None:
        self._ep = ep
        self._attempt = attempt
        self._estimate = estimate
        self._queue = queue
        self._publisher = publisher
        self._parts: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finish_reason: str | None = None
        self.emitted = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    async def relay(self, this_try: CallTry, pieces: AsyncIterator[Piece]) -> None:
        """Read ``pieces`` to the provider's end-of-answer; ``ModelError`` if it breaks off.

        On failure ``this_try.usage`` keeps what was sent and received: a broken
        stream was still billed.
        """
        ep = self._ep
        try:
            while True:
                try:
                    async with asyncio.timeout(ep.timeout_s):
                        piece = await anext(pieces)
                except StopAsyncIteration:
                    raise StreamInterruptedError(
                        f"endpoint {ep.name!r}: the stream ended before the answer was complete"
                    ) from None
                except TimeoutError:
                    if self._parts:
                        raise StreamInterruptedError(
                            f"endpoint {ep.name!r}: the stream stalled for {ep.timeout_s:g}s"
                            " mid-answer"
                        ) from None
                    raise ModelTimeoutError(
                        f"endpoint {ep.name!r}: no token within {ep.timeout_s:g}s"
                    ) from None
                this_try.model = piece.model or this_try.model
                if piece.input_tokens is not None:
                    self.input_tokens = piece.input_tokens
                if piece.output_tokens is not None:
                    self.output_tokens = piece.output_tokens
                self.finish_reason = piece.finish_reason or self.finish_reason
                if piece.text:
                    if this_try.ttft_ms is None:
                        this_try.ttft_ms = (time.perf_counter() - this_try.started) * 1000
                    self._parts.append(piece.text)
                    self.emitted = True
                    self._queue.put_nowait(StreamEvent("delta", piece.text, ep.name))
                    if self._publisher is not None:
                        self._publisher.delta(piece.text, endpoint=ep.name, attempt=self._attempt)
                if piece.done:
                    return
        except ModelError:
            if self._parts or self.input_tokens:
                this_try.usage = usage_of(self.input_tokens, None, self._estimate, self.text)
            raise
        finally:
            with contextlib.suppress(Exception):
                await pieces.aclose()  # type: ignore[attr-defined]
