"""Small pieces the HTTP routes share: validated query parameters and JSON errors."""

from __future__ import annotations

import json
import math

from aiohttp import web

from weir.core.errors import ParameterInvalidError, WeirError

__all__ = ["epoch_ms", "error_response", "positive_seconds"]


def error_response(
    status: int, error: WeirError, *, headers: dict[str, str] | None = None
) -> web.Response:
    """``error`` as a JSON body (``error``, ``error_type``) with ``status``."""
    return web.json_response(
        {"error": error.message, "error_type": error.error_type}, status=status, headers=headers
    )


def _bad(name: str, wanted: str, raw: str) -> web.HTTPBadRequest:
    error = ParameterInvalidError(f"query parameter {name} must be {wanted}, got {raw[:40]!r}")
    return web.HTTPBadRequest(
        text=json.dumps({"error": error.message, "error_type": error.error_type}),
        content_type="application/json",
    )


def positive_seconds(request: web.Request, name: str, *, default: float) -> float:
    """Query parameter ``name`` as a finite, positive number of seconds; else 400 naming it.

    ``float()`` takes ``nan`` and ``inf``; a deadline of either never fires, so
    they are refused like negative and non-numeric values.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise _bad(name, "a finite number of seconds above 0", raw)
    return value


def epoch_ms(request: web.Request, name: str) -> int | None:
    """Query parameter ``name`` as epoch milliseconds (an integer >= 0), if given."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise _bad(name, "epoch milliseconds (an integer >= 0)", raw)
    return value
