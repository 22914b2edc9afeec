"""Humans in the loop on a real broker: escalations, answers by CLI and HTTP, deadlines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from tests._kafka import read_results, read_topic
from tests.conftest import worker_env
from weir.streams import NO_RETRY, Escalate, Pipeline, WeirClient, Worker
from weir.streams.review import ReviewBook
from weir.topics.names import PipelineTopics
from weir.web import WebServer

pytestmark = pytest.mark.kafka


def _support(name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step(retry=NO_RETRY)
    def triage(text: str, deadline_s: float = 60.0) -> Any:
        if "early" in text:
            return Escalate("not a final step")  # refused: the answer would skip `reply`
        return {"text": text, "deadline_s": deadline_s}

    @p.step(depends_on=[triage])
    def reply(triage: dict[str, Any]) -> Any:
        text = triage["text"]
        if "refund" not in text:
            return f"auto: {text}".upper()
        return Escalate(
            "refunds need a person",
            transcript=[f"customer: {text}", "bot: let me get someone"],
            fallback="a colleague will call you back",
            deadline_s=triage["deadline_s"],
        )

    return p


async def _weir(repo_root, settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", *args],
        cwd=repo_root,
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _reviews(
    repo_root, settings, pipeline: str, want: int, *flags: str
) -> list[dict[str, Any]]:
    async with asyncio.timeout(60):
        while True:
            listed = await _weir(repo_root, settings, "review", "list", pipeline, "--json", *flags)
            assert listed.returncode == 0, listed.stderr
            reviews = json.loads(listed.stdout)
            if len(reviews) >= want:
                return reviews
            await asyncio.sleep(0.5)


async def test_escalations_are_answered_once_by_a_person_or_by_their_deadline(
    kafka, pipeline_name, repo_root
):
    p = _support(pipeline_name)
    topics = PipelineTopics(p.name)
    settings = kafka.model_copy(update={"web_port": 0, "review_check_interval_s": 0.2})
    async with (
        Worker(p, settings) as worker,
        WeirClient(settings) as client,
        WebServer(settings, worker) as web,
    ):
        by_cli, by_http, late, plain, early = await client.submit_many(
            p.name,
            [
                {"text": "refund my card fee"},
                {"text": "refund the double charge"},
                {"text": "refund please", "deadline_s": 3.0},
                {"text": "hello"},
                {"text": "early"},
            ],
        )
        assert (await client.result(plain, timeout=60)).value == "AUTO: HELLO"
        refused = await client.result(early, timeout=60)
        assert refused.status == "FAILURE" and refused.failed_step == "triage"
        assert "escalate from a final step" in (refused.error_message or "")
        # --all: the one with a 3 s deadline may have expired already on a loaded machine.
        reviews = await _reviews(repo_root, settings, p.name, 3, "--all")
        assert {r["request_id"] for r in reviews} == {by_cli, by_http, late}
        assert {r["request_id"]: r["status"] for r in reviews}[by_cli] == "open"
        shown = await _weir(repo_root, settings, "review", "show", by_cli, "--json")
        details = json.loads(shown.stdout)
        assert details["transcript"] == [
            "customer: refund my card fee",
            "bot: let me get someone",
        ]
        assert details["request"] == {"text": "refund my card fee"}
        assert details["outputs"] == {"triage": {"text": "refund my card fee", "deadline_s": 60.0}}
        assert details["reason"] == "refunds need a person" and details["step"] == "reply"

        answered = await _weir(
            repo_root, settings, "review", "answer", by_cli, "--text", "refunded", "--by", "ada"
        )
        assert answered.returncode == 0, answered.stderr
        assert f"answered request {by_cli} as ada" in answered.stdout
        again = await _weir(
            repo_root, settings, "review", "answer", by_cli, "--text", "no!", "--by", "bob"
        )
        assert again.returncode == 1 and "review_closed" in again.stderr

        url = f"{web.url}/reviews/{p.name}/{by_http}"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"text": "done", "by": "grace"}) as response:
                assert response.status == 200, await response.text()
                body = await response.json()
            async with http.post(url, json={"text": "twice", "by": "grace"}) as response:
                assert response.status == 409
            async with http.post(f"{url}x", json={"text": "?", "by": "g"}) as response:
                assert response.status == 404
            async with http.post(url, data=b"not json") as response:
                assert response.status == 400
        assert body["answered_by"] == "grace" and body["human_answered"] is True

        fallback = await client.result(late, timeout=60)
        human = await client.result(by_cli, timeout=10)
        assert (await _reviews(repo_root, settings, p.name, 0)) == []
    results, counts = await read_results(settings, topics.results, 5)
    assert all(counts[rid] == 1 for rid in (by_cli, by_http, late, plain)), counts
    assert human.value["answer"] == "refunded" and human.value["human_answered"] is True
    assert human.value["answered_by"] == "ada" and human.value["waited_ms"] > 0
    assert results[by_http].value["answer"] == "done"
    assert fallback.value["answer"] == "a colleague will call you back"
    assert fallback.value["timed_out"] is True and fallback.value["human_answered"] is False
    assert fallback.value["waited_ms"] >= 3000
    # The topic's story: three escalations, each closed once (the second answer never landed).
    book = ReviewBook()
    records = await read_topic(settings, topics.reviews)
    for record in records:
        book.apply(record.value)
    assert {r.status for r in book.reviews.values()} == {"answered", "expired"}
    assert len(records) == 6
