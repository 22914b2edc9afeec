"""The consumer group whose step is calling, for limits shared by a group's live members.

During a step it is the step's pipeline group; work done for several steps at once
(a micro-batch) runs outside any step's scope and carries it in a context variable.
"""

from __future__ import annotations

import contextvars
import time

from weir.processors.services import services_in_use
from weir.streams.context import AttemptScope, current_scope
from weir.topics.names import PipelineTopics

__all__ = ["group_now", "group_pause_s", "step_lag_now", "tell_group_of_pause", "use_group"]

_GROUP: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "weir_model_group", default=None
)


def use_group(group: str | None) -> None:
    """Make ``group`` the current context's when no step scope is set (a batch task)."""
    _GROUP.set(group)


def group_now() -> str | None:
    """The consumer group of the pipeline whose step is calling (``None`` outside a worker)."""
    scope = current_scope()
    if scope is not None:
        return PipelineTopics(scope.context.pipeline).consumer_group
    return _GROUP.get()


def group_pause_s(endpoint: str) -> float:
    """Seconds ``endpoint`` is still paused for the calling group (another worker's 429).

    Also starts following the group's pauses, so this worker hears of the next one.
    """
    group, services = group_now(), services_in_use()
    if group is None or services is None or services.stopped:
        return 0.0  # (stopped services: nothing would stop a follower started now)
    pauses = services.pauses()
    pauses.follow_soon()
    return max(0.0, pauses.until(group, endpoint) - time.time())


def tell_group_of_pause(endpoint: str, wait_s: float) -> None:
    """Pause ``endpoint`` for ``wait_s`` in every worker of the calling group."""
    group, services = group_now(), services_in_use()
    if group is not None and services is not None and not services.stopped:
        services.pauses().announce(group, endpoint, wait_s)


def step_lag_now(scope: AttemptScope) -> int:
    """The group's lag for the scope's step as last read; this worker's own before that."""
    services = services_in_use()
    if services is not None and not services.stopped:
        ctx = scope.context
        known = services.group_lag().step_lag(ctx.pipeline, ctx.step, scope.lag)
        if known is not None:
            return known
    return scope.lag()
