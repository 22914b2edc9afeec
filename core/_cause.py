"""``raise ... from`` that survives compilation."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["caused_by"]

_E = TypeVar("_E", bound=BaseException)


def caused_by(error: _E, cause: BaseException) -> _E:
    """``error`` with ``cause`` as its ``__cause__``, for ``raise caused_by(e, c) from c``.

    The ``from`` alone is lost in a module compiled by mypyc (``setup.py``), which drops
    it; callers read the cause (retry policies match a ``StepError``'s), so compiled
    modules set it this way too.
    """
    error.__cause__ = cause
    return error
