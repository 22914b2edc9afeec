"""What the model layer needs from its surroundings: settings, secrets, background resources.

Inside a worker, the settings are the worker's (``current_scope().settings``);
outside (a notebook, a script trying an endpoint) they are read once with
``load_settings()``.  Background resources (route watchers, cost ledgers,
HTTP pools) register a closer here; ``aclose_model_layer()`` stops them all,
and ``weir worker`` calls it on shutdown.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable

from weir.core.config import WeirSettings, load_settings
from weir.core.secrets import SecretResolver
from weir.streams.context import current_scope
from weir.topics.names import PipelineTopics

__all__ = [
    "aclose_model_layer",
    "group_now",
    "register_closer",
    "resolver_for",
    "settings_now",
    "use_settings",
]

log = logging.getLogger("weir.models")

_default_settings: WeirSettings | None = None
_resolvers: dict[int, tuple[WeirSettings, SecretResolver]] = {}
_closers: list[Callable[[], Awaitable[None]]] = []
# Work done for several steps at once (a micro-batch) runs outside any one step's
# scope but must still use the worker's settings (price table, secrets).
_SETTINGS: contextvars.ContextVar[WeirSettings | None] = contextvars.ContextVar(
    "weir_model_settings", default=None
)


_GROUP: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "weir_model_group", default=None
)


def use_settings(settings: WeirSettings, group: str | None = None) -> None:
    """Make ``settings`` (and the consumer ``group``) the current context's when no step
    scope is set (a batch task)."""
    _SETTINGS.set(settings)
    _GROUP.set(group)


def group_now() -> str | None:
    """The consumer group of the pipeline whose step is calling (``None`` outside a worker)."""
    scope = current_scope()
    if scope is not None:
        return PipelineTopics(scope.context.pipeline).consumer_group
    return _GROUP.get()


def settings_now() -> WeirSettings:
    """The worker's settings during a step, else settings read once from the environment."""
    scope = current_scope()
    if scope is not None:
        return scope.settings
    chosen = _SETTINGS.get()
    if chosen is not None:
        return chosen
    global _default_settings
    if _default_settings is None:
        _default_settings = load_settings()
    return _default_settings


def resolver_for(settings: WeirSettings) -> SecretResolver:
    """One resolver (and so one secret cache) per settings object."""
    hit = _resolvers.get(id(settings))
    if hit is None or hit[0] is not settings:
        hit = (settings, SecretResolver(settings))
        _resolvers[id(settings)] = hit
    return hit[1]


def register_closer(closer: Callable[[], Awaitable[None]]) -> None:
    _closers.append(closer)


async def aclose_model_layer() -> None:
    """Stop the model layer's background tasks and close its connections (idempotent)."""
    while _closers:
        closer = _closers.pop()
        try:
            await closer()
        except Exception:
            log.exception("closing a model-layer resource failed")
