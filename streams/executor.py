"""Calling one step function: injecting its inputs, bounding its time, encoding its output."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic_core
from pydantic import ValidationError

from schemas.messages import Envelope
from streams.branch import Branch
from streams.context import StepContext
from streams.pipeline import Step
from weir.errors import SchemaInvalidError, StepError, StepTimeoutError, WeirError

__all__ = ["StepExecutor", "encode_output"]


def encode_output(value: Any, *, step: str) -> str:
    """A step output as JSON text (pydantic models, dataclasses, datetimes included)."""
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise StepError(f"step {step!r} returned a value that is not JSON-serialisable: {exc}") from exc


class StepExecutor:
    """Runs ``step`` for one request, given the envelopes of its inputs."""

    def __init__(
        self,
        step: Step,
        *,
        pipeline: str,
        worker_id: str,
        default_timeout_s: float,
        threads: ThreadPoolExecutor,
    ) -> None:
        self.step = step
        self._pipeline = pipeline
        self._worker_id = worker_id
        self._timeout = step.timeout_s or default_timeout_s
        self._threads = threads

    def arguments(self, inputs: Mapping[str, Envelope], first: Envelope) -> dict[str, Any]:
        """Keyword arguments for the step function; ``SchemaInvalidError`` if one does not fit."""
        request: dict[str, Any] | None = None
        kwargs: dict[str, Any] = {}
        for b in self.step.bindings:
            try:
                if b.source == "dependency":
                    raw = inputs[b.name].payload or "null"
                    kwargs[b.parameter] = (
                        b.adapter.validate_json(raw) if b.adapter else json.loads(raw)
                    )
                    continue
                if request is None:
                    request = json.loads(first.request)
                if b.source == "context":
                    kwargs[b.parameter] = StepContext(
                        request_id=first.request_id,
                        pipeline=self._pipeline,
                        step=self.step.name,
                        attempt=first.attempt,
                        worker_id=self._worker_id,
                        request=request,
                        options=dict(first.options),
                        submitted_at=first.submitted_at,
                    )
                elif b.source == "payload":
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
                raise SchemaInvalidError(
                    f"step {self.step.name!r} parameter {b.parameter!r}: "
                    + "; ".join(e["msg"] for e in exc.errors()[:3])
                ) from exc
        return kwargs

    async def call(self, kwargs: dict[str, Any]) -> Any:
        """Run the function once within the step's timeout; wrap what it raises in ``StepError``."""
        fn = self.step.fn
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                if self.step.is_async:
                    return await fn(**kwargs)
                if self.step.inline:
                    return fn(**kwargs)
                loop = asyncio.get_running_loop()
                call = functools.partial(contextvars.copy_context().run, fn, **kwargs)
                return await loop.run_in_executor(self._threads, call)
        except TimeoutError as exc:
            if not deadline.expired():  # the step's own TimeoutError, not our deadline
                raise StepError(f"step {self.step.name!r} raised TimeoutError: {exc}") from exc
            raise StepTimeoutError(
                f"step {self.step.name!r} did not finish within {self._timeout:g}s"
            ) from exc
        except WeirError:
            raise
        except Exception as exc:
            raise StepError(
                f"step {self.step.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc

    async def run(self, inputs: Mapping[str, Envelope], first: Envelope) -> Any:
        """Inject, call; return the output (possibly a ``Branch``)."""
        return await self.call(self.arguments(inputs, first))


def split_branch(value: Any) -> tuple[Any, tuple[str, ...] | None]:
    """``(output, targets)``; ``targets`` is ``None`` when the step did not branch."""
    if isinstance(value, Branch):
        return value.value, value.targets
    return value, None
