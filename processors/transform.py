"""A plain transform: a pure function as a step, with its output checked against a model."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from weir.core.errors import StepError

__all__ = ["Transform"]

M = TypeVar("M", bound=BaseModel)


class Transform(Generic[M]):
    """Wrap a pure, fast function as a step body.

    It runs on the event loop (no thread hop: ``weir_inline``), its parameters
    are injected like any step's (the wrapped function's signature is used), and
    with ``output=Model`` its return value is validated into that model, so a
    malformed output fails at this step rather than downstream.

    >>> from pydantic import BaseModel
    >>> class Words(BaseModel):
    ...     words: list[str]
    >>> split = Transform(lambda text: {"words": text.split()}, output=Words)
    >>> split(text="a b")
    Words(words=['a', 'b'])
    """

    weir_inline = True

    def __init__(self, fn: Callable[..., Any], *, output: type[M] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"Transform needs a callable, got {fn!r}")
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._output = output

    def __call__(self, **kwargs: Any) -> Any:
        value = self._fn(**kwargs)
        if self._output is None or isinstance(value, self._output):
            return value
        try:
            return self._output.model_validate(value)
        except ValidationError as exc:
            name = getattr(self._fn, "__name__", "transform")
            raise StepError(
                f"{name} returned a value that is not a valid {self._output.__name__}: {exc}"
            ) from exc
