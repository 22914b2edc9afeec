"""The consumer group whose step is calling, for limits shared by a group's live members.

During a step it is the step's pipeline group; work done for several steps at once
(a micro-batch) runs outside any step's scope and carries it in a context variable.
"""

from __future__ import annotations

import contextvars

from weir.streams.context import current_scope
from weir.topics.names import PipelineTopics

__all__ = ["group_now", "use_group"]

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
