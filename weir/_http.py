"""Small pieces the HTTP routes share: validated query parameters and JSON errors."""

from __future__ import annotations

import json
import math

from aiohttp import web

from weir.errors import ParameterInvalidError

__all__ = ["error_response", "positive_seconds"]


def error_response(
    status: int, message: str, error_type: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error body (``error``, ``error_type``) with ``status``."""
    return web.json_response(
        {"error": message, "error_type": error_type}, status=status, headers=headers
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
        error = ParameterInvalidError(
            f"query parameter {name} must be a finite number of seconds above 0, got {raw[:40]!r}"
        )
        raise web.HTTPBadRequest(
            text=json.dumps({"error": error.message, "error_type": error.error_type}),
            content_type="application/json",
        )
    return value
