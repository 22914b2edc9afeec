"""Running a pipeline in-process, without Kafka: for unit tests of pipelines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from weir.core.errors import BranchError, JoinInputSkippedError
from weir.schemas.messages import Envelope, now_ms, now_us
from weir.streams.conversation import ConversationState, History, Turn, conversation_id_of
from weir.streams.dependencies import join_skipped_message
from weir.streams.executor import StepExecutor, encode_output, split_branch
from weir.streams.pipeline import Pipeline
from weir.streams.review import Escalate

__all__ = ["run_local"]


async def run_local(
    pipeline: Pipeline,
    payload: dict[str, Any],
    *,
    request_id: str = "local",
    options: dict[str, str] | None = None,
    turns: Sequence[Turn] = (),
) -> tuple[Any, list[str]]:
    """Run every step in dependency order in this process; return ``(output, path)``.

    Same injection, validation, branching and result rules as the worker, so
    a pipeline's logic can be tested without a broker.  Step errors propagate
    (no retries, no fallbacks), and so does ``JoinInputSkippedError`` where the
    worker would answer a FAILURE.  A step that escalates (``Escalate``) ends the
    run: it is returned as the output.  A ``History`` step sees ``turns`` as the
    conversation's earlier turns (nothing is stored).

    >>> from weir.streams import Pipeline
    >>> import asyncio
    >>> p = Pipeline("double")
    >>> @p.step()
    ... def double(x: int) -> int:
    ...     return 2 * x
    >>> asyncio.run(run_local(p, {"x": 21}))
    (42, ['double'])
    """
    pipeline.validate()
    first = Envelope(
        request_id=request_id,
        pipeline=pipeline.name,
        step="",
        source="",
        kind="VALUE",
        submitted_at=now_ms(),
        created_at=now_us(),
        request=json.dumps(payload),
        payload=None,
        options=dict(options or {}),
    )
    outputs: dict[str, str | None] = {}  # None: skipped
    routed: dict[str, tuple[str, ...] | None] = {}
    path: list[str] = []
    with ThreadPoolExecutor(max_workers=4) as threads:
        for name in pipeline.order:
            step = pipeline.steps[name]
            arrived = [
                d
                for d in step.depends_on
                if outputs[d] is not None and (routed[d] is None or name in routed[d])  # type: ignore[operator]
            ]
            if step.depends_on and not arrived:
                outputs[name], routed[name] = None, None  # the whole sub-path was skipped
                continue
            if step.joins == "all" and len(arrived) < len(step.depends_on):
                raise JoinInputSkippedError(
                    join_skipped_message(name, [d for d in step.depends_on if d not in arrived])
                )
            executor = StepExecutor(
                step,
                pipeline=pipeline.name,
                worker_id="local",
                default_timeout_s=pipeline.timeout_s or 60.0,
                threads=threads,
            )
            inputs = {d: outputs[d] for d in arrived}
            history = None
            if step.conversation is not None:
                state = ConversationState(list(turns))
                cid = conversation_id_of(payload)
                history = History(cid, state, step.conversation, request_id=request_id, step=name)
            raw = await executor.call(executor.arguments(inputs, first, None, history))
            if isinstance(raw, Escalate):
                # Where a worker sends the request to a person: the run ends with the Escalate.
                return raw, [*path, name]
            value, targets = split_branch(raw)
            dependents = pipeline.dependents(name)
            if targets is not None and (bad := [t for t in targets if t not in dependents]):
                raise BranchError(f"step {name!r} branched to {bad}, which do not depend on it")
            outputs[name], routed[name] = encode_output(value, step=name), targets
            path.append(name)
    finals = {s: outputs[s] for s in pipeline.final_steps if outputs[s] is not None}
    if len(finals) == 1:
        return json.loads(next(iter(finals.values())) or "null"), path
    if not finals:
        return None, path
    return {s: json.loads(v or "null") for s, v in finals.items()}, path
