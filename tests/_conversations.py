"""A conversational pipeline, in-process and in ``weir worker`` subprocesses.

Subprocess workers read their pipeline's name from ``WEIR_TEST_PIPELINE`` and how long
the step takes from ``WEIR_TEST_SLOW_S``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from weir.streams import Conversation, History, Pipeline, StepContext


def chat(name: str, *, conversation: Conversation | None = None, slow_s: float = 0.0) -> Pipeline:
    p = Pipeline(name)

    @p.step(conversation=conversation or Conversation(system="You answer tests."))
    async def answer(text: str, history: History, ctx: StepContext) -> dict[str, Any]:
        await asyncio.sleep(slow_s)  # a model call's worth of time
        seen = [t.content for t in history.turns]
        tokens = history.tokens
        history.add("user", text)
        history.add("assistant", f"re: {text}", data={"worker": ctx.worker_id})
        return {
            "seen": seen,
            "tokens": tokens,
            "messages": history.messages(),
            "summary": history.summary,
            "dropped": history.dropped,
            "worker": ctx.worker_id,
        }

    @p.step(depends_on=[answer])
    def deliver(answer: dict[str, Any]) -> dict[str, Any]:
        return answer

    return p


chat_pipeline = chat(
    os.environ.get("WEIR_TEST_PIPELINE", "chat"),
    slow_s=float(os.environ.get("WEIR_TEST_SLOW_S", "0")),
)


def replayed_answer(text: str, history: History, ctx: StepContext) -> list[str]:
    """A replay candidate for ``answer``: what history it was given (and a turn it adds)."""
    history.add("user", f"replayed {text}")  # a replay's turns must be stored nowhere
    return [t.content for t in history.turns]


def summarized_turns(summary: str | None, dropped: list[Any]) -> str:
    """A summariser that names every turn it folds in (``Conversation.summarize``)."""
    return "|".join([*([summary] if summary else []), *(t.content for t in dropped)])


def replayed_summary(text: str, history: History, ctx: StepContext) -> str | None:
    """A replay candidate for ``answer``: the summary it was given."""
    return history.summary
