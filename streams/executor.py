"""Calling one step function: injecting its inputs, bounding its time, encoding its output."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pydantic_core
from pydantic import ValidationError

from weir.core._cause import caused_by
from weir.core.errors import (
    SchemaInvalidError,
    StepError,
    StepTimeoutError,
    WeirError,
)
from weir.schemas.messages import Envelope
from weir.streams.branch import Branch
from weir.streams.context import AttemptScope, StepContext, enter_scope, leave_scope
from weir.streams.conversation import Conversation, ConversationState, History
from weir.streams.pipeline import Step
from weir.streams.threads import StepThreads

__all__ = ["StepExecutor", "detached_history", "encode_output", "split_branch"]


def encode_output(value: Any, *, step: str) -> str:
    """A step output as JSON text (pydantic models, dataclasses, datetimes included)."""
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise caused_by(
            StepError(f"step {step!r} returned a value that is not JSON-serialisable: {exc}"), exc
        ) from exc


class StepExecutor:
    """Runs ``step`` for one request, given the envelopes of its inputs."""

    def __init__(
        self,
        step: Step,
        *,
        pipeline: str,
        worker_id: str,
        default_timeout_s: float,
        threads: StepThreads | ThreadPoolExecutor,
    ) -> None:
        self.step = step
        self._pipeline = pipeline
        self._worker_id = worker_id
        self.timeout_s = step.timeout_s or default_timeout_s
        if isinstance(threads, ThreadPoolExecutor):
            # A bare pool (run_local, tests): any stuck thread is one too many to hide.
            threads = StepThreads(threads, stuck_max=threads._max_workers)
        self._threads = threads

    def context(self, first: Envelope) -> StepContext:
        """The attempt's context; its request is parsed only if something reads it."""
        return StepContext(
            request_id=first.request_id,
            pipeline=self._pipeline,
            step=self.step.name,
            attempt=first.attempt,
            worker_id=self._worker_id,
            submitted_at=first.submitted_at,
            source=first,
        )

    def arguments(
        self,
        inputs: Mapping[str, str | None],
        first: Envelope,
        ctx: StepContext | None = None,
        history: Any = None,
    ) -> dict[str, Any]:
        """Keyword arguments for the step function; ``SchemaInvalidError`` if one does not fit.

        ``inputs`` holds each dependency's output as JSON text, by step name; a
        dependency missing from it was skipped (only an ``any_of`` step runs so).
        """
        request: dict[str, Any] | None = None
        kwargs: dict[str, Any] = {}
        for b in self.step.bindings:
            try:
                if b.source == "history":
                    # Outside a worker's attempt (a replay): an empty history, kept nowhere.
                    kwargs[b.parameter] = (
                        history if history is not None else detached_history(self.step, first)
                    )
                    continue
                if b.source in ("dependency", "any"):
                    name = next((n for n in b.names if n in inputs), b.name)
                    if name not in inputs:  # a skipped branch of an any_of rejoin
                        kwargs[b.parameter] = None
                        continue
                    raw = inputs[name] or "null"
                    kwargs[b.parameter] = (
                        b.adapter.validate_json(raw) if b.adapter else json.loads(raw)
                    )
                    continue
                if b.source == "context":
                    kwargs[b.parameter] = ctx if ctx is not None else self.context(first)
                    continue
                if request is None:
                    request = first.request_object()
                if b.source == "payload":
                    kwargs[b.parameter] = (
                        b.adapter.validate_python(request) if b.adapter else request
                    )
                elif b.name in request:
                    value = request[b.name]
                    kwargs[b.parameter] = b.adapter.validate_python(value) if b.adapter else value
                elif b.required:
                    raise SchemaInvalidError(
                        f"step {self.step.name!r} needs request field {b.name!r}, which the"
                        " request does not have"
                    )
                else:
                    kwargs[b.parameter] = b.default
            except ValidationError as exc:
                raise caused_by(
                    SchemaInvalidError(
                        f"step {self.step.name!r} parameter {b.parameter!r}: "
                        + "; ".join(e["msg"] for e in exc.errors()[:3])
                    ),
                    exc,
                ) from exc
        return kwargs

    async def call(
        self,
        kwargs: dict[str, Any],
        scope: AttemptScope | None = None,
        fn: Callable[..., Any] | None = None,
    ) -> Any:
        """Run the step function (or ``fn``, e.g. its fallback) once within the step's timeout.

        ``scope`` is current while it runs, in its thread too.  What it raises
        becomes a ``StepError`` unless it already is a ``WeirError``.
        """
        fn = self.step.fn if fn is None else fn
        is_async = self.step.is_async if fn is self.step.fn else _is_async(fn)
        if not is_async and self.step.inline:
            return self.call_inline(kwargs, scope, fn)
        token = enter_scope(scope)
        deadline = asyncio.timeout(self.timeout_s)
        abandoned = False
        try:
            async with deadline:
                if is_async:
                    return await fn(**kwargs)
                call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
                ctx = scope.context if scope is not None else None
                rid = ctx.request_id if ctx is not None else "-"
                attempt = ctx.attempt if ctx is not None else 0
                name = self.step.name
                future: Future[Any] = self._threads.submit(
                    call, step=name, request_id=rid, attempt=attempt
                )
                started = time.monotonic()
                try:
                    return await asyncio.wrap_future(future)
                finally:
                    if not future.done():  # timed out or cancelled while it runs
                        abandoned = self._threads.abandon(
                            future, step=name, request_id=rid, attempt=attempt, started=started
                        )
        except TimeoutError as exc:
            if not deadline.expired():  # the step's own TimeoutError, not our deadline
                raise caused_by(
                    StepError(f"step {self.step.name!r} raised TimeoutError: {exc}"), exc
                ) from exc
            note = ""
            if abandoned:
                held = len(self._threads.stuck())
                note = (
                    f"; its thread is still running (stuck synchronous steps: {held} of at"
                    f" most {self._threads.stuck_max})"
                )
            raise caused_by(
                StepTimeoutError(
                    f"step {self.step.name!r} did not finish within {self.timeout_s:g}s{note}"
                ),
                exc,
            ) from exc
        except WeirError:
            raise
        except Exception as exc:
            raise self._raised(exc) from exc
        finally:
            leave_scope(token)

    def call_inline(
        self, kwargs: dict[str, Any], scope: AttemptScope | None, fn: Callable[..., Any]
    ) -> Any:
        """Call a synchronous ``inline=True`` function on the event loop (see ``call``).

        Nothing can interrupt it there, so a deadline would only cost.
        """
        token = enter_scope(scope)
        try:
            return fn(**kwargs)
        except WeirError:
            raise
        except Exception as exc:
            raise self._raised(exc) from exc
        finally:
            leave_scope(token)

    def _raised(self, exc: Exception) -> StepError:
        """What the step raised, as the ``StepError`` an attempt fails with."""
        return caused_by(
            StepError(f"step {self.step.name!r} raised {type(exc).__name__}: {exc}"), exc
        )

    @property
    def runs_inline(self) -> bool:
        """The step is a synchronous ``inline=True`` function: ``run_inline`` runs it."""
        return self.step.inline and not self.step.is_async

    async def run(
        self,
        inputs: Mapping[str, str | None],
        first: Envelope,
        scope: AttemptScope | None = None,
    ) -> Any:
        """Inject, call; return the output (possibly a ``Branch``)."""
        ctx = scope.context if scope is not None else None
        history = scope.history if scope is not None else None
        return await self.call(self.arguments(inputs, first, ctx, history), scope)

    def run_inline(
        self, inputs: Mapping[str, str | None], first: Envelope, scope: AttemptScope
    ) -> Any:
        """``run`` for a step that ``runs_inline``, without a coroutine per layer."""
        kwargs = self.arguments(inputs, first, scope.context, scope.history)
        return self.call_inline(kwargs, scope, self.step.fn)


def detached_history(step: Step, first: Envelope) -> History:
    """An empty ``History`` whose turns go nowhere (replays, what-if)."""
    config = step.conversation or Conversation()
    return History(None, ConversationState(), config, request_id=first.request_id, step=step.name)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


def split_branch(value: Any) -> tuple[Any, tuple[str, ...] | None]:
    """``(output, targets)``; ``targets`` is ``None`` when the step did not branch."""
    if isinstance(value, Branch):
        return value.value, value.targets
    return value, None
