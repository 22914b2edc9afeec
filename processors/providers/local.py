"""Models that run inside the worker process: loaded once, called like any endpoint.

``load`` builds the model the first time it is needed in a process (a worker
loads it once, not per request); the loaded object is called for each
operation: its ``embed(texts)`` / ``classify(text)`` / ``chat(messages)`` method
when it has one, else the object itself.  Blocking calls run in a thread so
the worker's event loop keeps serving other requests; coroutine functions are
awaited.  Usage is estimated (a local model has no bill, but token counts still
feed budgets and dashboards); the default price is zero.

>>> clf = LocalModel(lambda: (lambda text: "balance" if "balance" in text else "other"))
>>> clf.describe()
'local model'
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from weir.core.errors import ModelError, ModelResponseError, ModelUnavailableError
from weir.processors.providers._base import (
    Completion,
    Embedded,
    Labelled,
    Message,
    Provider,
    ProviderCall,
)

__all__ = ["LocalModel"]


class LocalModel(Provider):
    """An in-process model; ``load()`` returns it (``model=`` gives an already loaded one)."""

    name = "local"

    def __init__(
        self,
        load: Callable[[], Any] | None = None,
        *,
        model: Any = None,
        threaded: bool = True,
    ) -> None:
        if (load is None) == (model is None):
            raise TypeError("LocalModel needs exactly one of load= or model=")
        if load is not None and not callable(load):
            raise TypeError(f"LocalModel load must be callable, got {load!r}")
        self._load = load
        self._model = model
        self._threaded = threaded
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "local model"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _get(self, endpoint: str) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    assert self._load is not None
                    try:
                        self._model = self._load()
                    except Exception as exc:
                        raise ModelUnavailableError(
                            f"endpoint {endpoint!r}: loading the local model failed:"
                            f" {type(exc).__name__}: {exc}"
                        ) from exc
        return self._model

    async def _run(
        self, call: ProviderCall, method: str, arg: Any, params: Mapping[str, Any]
    ) -> Any:
        if self._model is None:
            await asyncio.to_thread(self._get, call.endpoint)
        model = self._get(call.endpoint)
        fn = getattr(model, method, None) or model
        if not callable(fn):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r}: the local model has no {method}() and is not callable"
            )
        try:
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004
            ):
                return await fn(arg, **params)
            if self._threaded:
                return await asyncio.to_thread(fn, arg, **params)
            return fn(arg, **params)
        except ModelError:
            raise
        except Exception as exc:
            # A local model raising is the model failing, like a 500 from a server.
            raise ModelUnavailableError(
                f"endpoint {call.endpoint!r}: the local model raised {type(exc).__name__}: {exc}"
            ) from exc

    async def embed(
        self, call: ProviderCall, texts: Sequence[str], params: Mapping[str, Any]
    ) -> Embedded:
        out = await self._run(call, "embed", list(texts), params)
        try:
            vectors = [[float(x) for x in row] for row in out]
        except (TypeError, ValueError):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r}: the local model's embed() must return vectors"
            ) from None
        if len(vectors) != len(texts):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r} returned {len(vectors)} vectors"
                f" for {len(texts)} inputs"
            )
        return Embedded(vectors=vectors, model=call.model, input_tokens=None)

    async def classify(self, call: ProviderCall, text: str, params: Mapping[str, Any]) -> Labelled:
        out = await self._run(call, "classify", text, params)
        label: Any
        score: Any = None
        scores: dict[str, float] = {}
        if isinstance(out, str):
            label = out
        elif isinstance(out, tuple) and len(out) == 2:
            label, score = out
        elif isinstance(out, Mapping) and "label" in out:
            label, score = out["label"], out.get("score")
            scores = {str(k): float(v) for k, v in (out.get("scores") or {}).items()}
        else:
            raise ModelResponseError(
                f"endpoint {call.endpoint!r}: classify() must return a label, (label, score)"
                f" or {{'label': ..., 'score': ...}}, got {type(out).__name__}"
            )
        return Labelled(
            label=str(label),
            score=None if score is None else float(score),
            scores=scores,
            model=call.model,
        )

    async def chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> Completion:
        out = await self._run(call, "chat", list(messages), params)
        if not isinstance(out, str):
            raise ModelResponseError(
                f"endpoint {call.endpoint!r}: the local model's chat() must return text"
            )
        return Completion(
            text=out, model=call.model, input_tokens=None, output_tokens=None, finish_reason="stop"
        )
