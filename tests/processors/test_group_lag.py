"""Routing rules' ``lag`` is the group's lag for the step: two workers, one of them held."""

from __future__ import annotations

import asyncio

import pytest

from weir.processors import ModelEndpoint, ModelServices, OpenAICompatible, Router, Rule
from weir.streams import Pipeline, WeirClient, Worker
from weir.streams.context import current_scope

pytestmark = pytest.mark.kafka


async def test_a_lag_rule_sees_the_work_waiting_on_the_other_workers_partitions(
    kafka, pipeline_name
):
    nowhere = OpenAICompatible("http://127.0.0.1:1/v1")
    main = ModelEndpoint(f"{pipeline_name}-main", provider=nowhere)
    shed = ModelEndpoint(f"{pipeline_name}-shed", provider=nowhere)
    router = Router(f"{pipeline_name}-router", default=main, watch=False)
    router.add_rule(Rule("lag > 40", endpoint=shed, name="shed"))
    settings_a = kafka.model_copy(update={"worker_id": "worker-a"})
    settings_b = kafka.model_copy(update={"worker_id": "worker-b"})
    services_a, services_b = ModelServices(settings_a), ModelServices(settings_b)
    release = asyncio.Event()
    decided: list[tuple[str | None, int]] = []
    """On worker A: (the rule chosen, A's own lag for the step) per request."""

    p = Pipeline(pipeline_name)

    @p.step()
    async def pick(n: int) -> str:
        scope = current_scope()
        assert scope is not None
        if scope.services is services_b:
            await release.wait()  # B's partitions fill up with work not done
            return "held"
        decision = router.decide(text=f"request {n}")
        decided.append((decision.rule, scope.lag()))
        return decision.endpoint.name

    async with (
        Worker(p, settings_a, services=services_a) as a,
        Worker(p, settings_b, services=services_b) as b,
        WeirClient(kafka) as client,
    ):
        for _ in range(300):
            if a.assigned and b.assigned and not a.assigned & b.assigned:
                break
            await asyncio.sleep(0.1)
        assert a.assigned and b.assigned
        await client.submit_many(p.name, [{"n": i} for i in range(200)])
        # B holds its share (about 100); A's own partitions drain.
        for _ in range(300):
            if len(decided) >= 60:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3 * kafka.commit_interval_s + 2 * services_a.group_lag().refresh_s)
        first = len(decided)
        ids = await client.submit_many(p.name, [{"n": 1000 + i} for i in range(40)])
        for _ in range(300):
            if len(decided) - first >= 10:
                break
            await asyncio.sleep(0.1)
        later = decided[first:]
        release.set()
        await client.wait_for(p.name, ids, timeout=120)
    assert len(later) >= 10, later
    # A's own partitions hold little, but the group's lag for the step (B's held
    # requests) is past the rule's threshold: every later decision sheds.
    assert all(own <= 40 for _, own in later), later
    assert {rule for rule, _ in later} == {"shed"}, later
