"""``weir demo``: the whole loop on one machine, start to clean stop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from decimal import Decimal

from rich.console import Console

from weir.core.config import WeirSettings

__all__ = ["FOLLOW_UPS", "SAMPLE_MESSAGES", "run_demo"]

SAMPLE_MESSAGES = [
    ("c-1", "What is my account balance?"),
    ("c-2", "I was charged twice for the same purchase, I want a refund"),
    ("c-3", "How much funds are available on my card?"),
    ("c-1", "There is an unauthorised transaction on my card, this is fraud"),
    ("c-2", "The ATM withdrawal failed but my account was debited"),
    ("c-3", "Why was I charged a fee? I dispute this"),
]

FOLLOW_UPS = [
    ("c-2", "Thanks. When will the refund for that double charge reach my card?"),
    ("c-1", "Is the fraud dispute on my card still open?"),
]
"""Asked once the first answers are in, each in its customer's conversation."""


def run_demo(settings: WeirSettings, *, requests: int, keep_broker: bool, console: Console) -> None:
    """Start the local broker (unless a cluster is configured), run, print, shut down."""
    broker = None
    if settings.uses_local_broker:
        from weir.topics.broker import LocalBroker

        broker = LocalBroker(settings)
        was_running = broker.status().running
        console.print("[bold]1.[/] starting the local Kafka broker (fetched from Maven once)...")
        status = broker.start()
        console.print(f"   kafka {status.version} at {status.bootstrap}")
    else:
        was_running = True
    try:
        asyncio.run(_run(settings, requests, console))
    finally:
        if broker is not None and not keep_broker and not was_running:
            console.print("[bold]5.[/] stopping the broker")
            broker.stop()
    console.print("[green]done[/]")


async def _run(settings: WeirSettings, requests: int, console: Console) -> None:
    from weir.demo.pipeline import pipeline
    from weir.processors import ModelServices
    from weir.streams import WeirClient, Worker
    from weir.streams.conversation_store import read_conversation

    # Reviews nobody answers end with their fallback after a few seconds, not an hour.
    settings = settings.model_copy(
        update={"review_deadline_s": DEMO_REVIEW_DEADLINE_S, "review_check_interval_s": 0.2}
    )
    console.print(f"[bold]2.[/] starting a worker for pipeline {pipeline.name!r}")
    async with (
        Worker(pipeline, settings, services=ModelServices(settings)),
        WeirClient(settings) as client,
    ):
        # One conversation per customer (new ones each run): follow-ups see the earlier turns.
        run = uuid.uuid4().hex[:6]
        payloads = [
            {"customer_id": c, "text": t, "conversation_id": f"chat-{c}-{run}"}
            for c, t in (SAMPLE_MESSAGES[i % len(SAMPLE_MESSAGES)] for i in range(requests))
        ]
        console.print(f"[bold]3.[/] submitting {requests} requests")
        started = time.perf_counter()
        ids = await client.submit_many(pipeline.name, payloads)
        texts = {rid: p["text"] for rid, p in zip(ids, payloads, strict=True)}
        console.print("[bold]4.[/] results as they arrive:")
        reviewer = asyncio.create_task(_answer_one_review(settings, pipeline.name, set(ids)))
        seen: set[str] = set()
        spent = Decimal(0)
        latencies: list[float] = []
        escalated = 0
        async with asyncio.timeout(120):
            async for result in client.results(pipeline.name, from_beginning=True):
                if result.request_id not in texts or result.request_id in seen:
                    continue
                seen.add(result.request_id)
                spent += result.cost_usd
                latencies.append(result.latency_ms)
                escalated += isinstance(result.value, dict) and "human_answered" in result.value
                answer = (
                    json.dumps(result.value)
                    if result.status == "SUCCESS"
                    else (f"{result.error_type}: {result.error_message}")
                )
                console.print(
                    f"   {result.request_id[:8]}  {texts[result.request_id][:34]:34} "
                    f"-> {result.path[-1] if result.path else '-':17} {result.latency_ms:6.0f} ms"
                    f"  ${result.cost_usd:<10}  {answer[:60]}",
                    highlight=False,
                    soft_wrap=True,
                )
                if len(seen) == len(ids):
                    break
        elapsed = time.perf_counter() - started
        console.print(f"   {len(seen)} results in {elapsed:.2f}s; cost ${spent}")
        answered_by = await reviewer
        if answered_by:
            console.print(f"   the demo answered the review of {answered_by[:8]} as a person would")
        console.print("[bold]4b.[/] follow-up questions in the same conversations:")
        for customer, text in FOLLOW_UPS:
            cid = f"chat-{customer}-{run}"
            rid = await client.submit(
                pipeline.name, {"customer_id": customer, "text": text}, conversation_id=cid
            )
            result = await client.result(rid, timeout=60)
            spent += result.cost_usd
            latencies.append(result.latency_ms)
            value = result.value if isinstance(result.value, dict) else {}
            escalated += "human_answered" in value
            reply = value.get("reply") or json.dumps(value.get("answer", value))
            # The draft is in the conversation even when a person was asked to answer.
            turns = [t for _, _, s in await read_conversation(settings, cid) for t in s.turns]
            draft = turns[-1].content if turns else "-"
            console.print(
                f"   {cid}: {text[:50]}\n     -> {str(reply)[:110]}\n"
                f"     conversation: {len(turns)} turns; the draft: {draft[:110]}",
                highlight=False,
                soft_wrap=True,
            )
        console.print(f"   (weir conversation show chat-c-2-{run} prints that conversation)")
        _figures(console, latencies, escalated, spent)


DEMO_REVIEW_DEADLINE_S = 5.0
"""The demo's review deadline: escalations it does not answer fall back after this."""


async def _answer_one_review(settings: WeirSettings, pipeline: str, ids: set[str]) -> str | None:
    """Play the person at the review desk once: answer the first review of this run."""
    from weir.core.errors import ReviewError
    from weir.streams.review import answer_review, read_reviews

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        book = await read_reviews(settings, pipeline)
        waiting = [r for r in book.open() if r.request_id in ids]
        if waiting:
            rid = waiting[0].request_id
            try:
                await answer_review(
                    settings,
                    pipeline,
                    rid,
                    text="We refunded the duplicate charge; it shows on your card within 3 days.",
                    by="demo-reviewer",
                )
            except ReviewError:
                continue  # its deadline came first: try the next one
            return rid
        await asyncio.sleep(0.2)
    return None


def _figures(console: Console, latencies: list[float], escalated: int, spent: Decimal) -> None:
    """The figures the source document reports for its production system."""
    if not latencies:
        return
    n = len(latencies)
    ordered = sorted(latencies)
    p95 = ordered[min(n - 1, round(0.95 * n + 0.5) - 1)]
    console.print(
        f"   handled by AI {100 * (n - escalated) / n:.0f}%, escalated {100 * escalated / n:.0f}%;"
        f" response time avg {sum(latencies) / n / 1000:.2f}s, p95 {p95 / 1000:.2f}s"
        f" (escalations included); cost per interaction ${spent / n:.5f}",
        highlight=False,
    )
