"""Step replay over recorded traffic: real broker, real worker, real local model servers."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition

from tests._conversations import chat, summarized_turns
from tests._kafka import read_results
from tests._model_servers import ModelServer, input_tokens
from tests._sink import SinkProcess, sink_settings
from tests.conftest import worker_env
from tests.traces.test_clickhouse_sink import wait_stored
from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.loader import load_pipeline
from weir.processors import ModelEndpoint, OpenAICompatible, Price
from weir.processors.services import ModelServices
from weir.replays import StepReplay, in_sample, read_outcomes
from weir.schemas.messages import now_ms
from weir.streams import Conversation, Pipeline, WeirClient, Worker
from weir.streams.conversation_store import read_conversation
from weir.streams.side_effects import side_effect
from weir.topics.names import PipelineTopics
from weir.traces.remote import RemoteTraceStore
from weir.traces.sql import run_sql

pytestmark = pytest.mark.kafka

RECORDED = 500
"""Recorded inputs of the replay test (the issue's number)."""
LIVE_PRICE = Price.per_token(input="0.0001", output="0.0002")
CANDIDATE_PRICE = Price.per_token(input="0.0003", output="0.0005")


def _candidate_reply(text: str) -> str:
    # Scripted disagreement: every third question gets another answer than live.
    n = int(text.split()[-1])
    return f"you said {text}" if n % 3 else f"something else entirely {n}"


async def _end_offsets(settings: WeirSettings, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = KafkaConnection.of(settings).consumer()
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        return {tp: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


class _Setup:
    def __init__(self, name: str, live: ModelServer, candidate: ModelServer) -> None:
        self.notified: list[str] = []
        self.candidate_heard: list[str] = []
        candidate.behaviour.reply = self._heard
        self.live_ep = ModelEndpoint(
            f"{name}-live", provider=OpenAICompatible(live.url), model="live", price=LIVE_PRICE
        )
        self.candidate_ep = ModelEndpoint(
            f"{name}-candidate",
            provider=OpenAICompatible(candidate.url),
            model="cand",
            price=CANDIDATE_PRICE,
        )
        p = Pipeline(name)
        self.pipeline = p

        @side_effect
        def notify(request_id: str) -> None:
            self.notified.append(request_id)

        @p.step()
        def parse(text: str) -> str:
            return text.strip()

        # A generous timeout: on a loaded machine a call can take most of the default 30 s,
        # and a timed-out attempt's paid call would count in the baseline twice.
        @p.step(depends_on=[parse], timeout=300)
        async def answer(parse: str) -> str:
            reply = (await self.live_ep.chat([{"role": "user", "content": parse}])).text
            notify(parse)
            return reply

    def _heard(self, text: str) -> str:
        self.candidate_heard.append(text)
        return _candidate_reply(text)


async def _record(kafka: WeirSettings, setup: _Setup, count: int) -> list[str]:
    p = setup.pipeline
    texts = [f"question number {i}" for i in range(count)]
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"text": t} for t in texts])
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
    assert len(results) == count and all(r.status == "SUCCESS" for r in results.values())
    return ids


async def test_replay_sends_exactly_the_sampled_inputs_to_the_candidate_and_compare_scores_it(
    kafka, pipeline_name, servers, repo_root, tmp_path
):
    live, candidate = await servers("live"), await servers("candidate")
    setup = _Setup(pipeline_name, live, candidate)
    since = now_ms() - 1000
    settings = sink_settings(kafka, pipeline_name, f"chdb://{tmp_path / 'store'}")
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    try:
        await sink.wait_placed()
        ids = await _record(settings, setup, RECORDED)
        await wait_stored(sink.url, pipeline_name, 2 * RECORDED)
        await _replay_and_compare(settings, setup, live, candidate, since, ids, repo_root, sink.url)
    finally:
        assert sink.stop() == 0, sink.text()[-3000:]


async def _replay_and_compare(
    kafka: WeirSettings,
    setup: _Setup,
    live: ModelServer,
    candidate: ModelServer,
    since: int,
    ids: list[str],
    repo_root: Path,
    sink_url: str,
) -> None:
    pipeline_name = setup.pipeline.name
    texts = {rid: f"question number {i}" for i, rid in enumerate(ids)}
    live_calls, notified = live.total, len(setup.notified)
    # At least once: an attempt cut short by a rebalance calls the server again.
    assert live_calls >= RECORDED and notified >= RECORDED
    topics = PipelineTopics(pipeline_name)
    watched = [topics.results, topics.answers, topics.step("answer"), topics.stream]
    before = await _end_offsets(kafka, watched)

    job = await StepReplay.create(
        kafka,
        setup.pipeline,
        step="answer",
        since_ms=since,
        sample=0.5,
        endpoint=setup.candidate_ep.name,
        endpoints=[setup.candidate_ep],
        concurrency=8,
    )
    sampled = {rid for rid in ids if in_sample(rid, 0.5)}
    dry = await job.dry_run()
    assert dry.replayed == len(sampled) and candidate.total == 0
    # Priced from the live calls' usage at the candidate's price, by hand:
    expected_estimate = sum(
        (
            CANDIDATE_PRICE.cost(
                input_tokens([{"content": texts[rid]}]), len(f"you said {texts[rid]}".split())
            )
            for rid in sampled
        ),
        Decimal(0),
    )
    if dry.estimated_usd != expected_estimate:  # say which live calls were priced
        baseline = await job.recording.baseline(sampled, since)
        extra = {r: b.calls for r, b in baseline.items() if len(b.calls) != 1}
        raise AssertionError(f"{dry.estimated_usd} != {expected_estimate}: {extra}")

    candidate.behaviour.latency_s = 0.01  # so that calls overlap when they run at once
    progress = await job.run()
    assert progress.replayed == len(sampled) and progress.failed == 0
    assert 1 < candidate.chats_open_peak <= 8
    assert sorted(setup.candidate_heard) == sorted(texts[rid] for rid in sampled)
    assert live.total == live_calls, "the baseline endpoint was called during the replay"
    assert len(setup.notified) == notified, "a @side_effect ran during the replay"
    assert await _end_offsets(kafka, watched) == before, "a live topic received records"

    outcomes = {o.request_id: o for o in await read_outcomes(kafka, job.topic)}
    assert set(outcomes) == sampled
    for rid, o in outcomes.items():
        assert o.output == f'"{_candidate_reply(texts[rid])}"'
        assert [c.endpoint for c in o.calls] == [setup.candidate_ep.name]
        tokens_in = input_tokens([{"content": texts[rid]}])
        tokens_out = len(_candidate_reply(texts[rid]).split())
        assert o.cost_usd == CANDIDATE_PRICE.cost(tokens_in, tokens_out)
    assert progress.spent_usd == sum((o.cost_usd for o in outcomes.values()), Decimal(0))

    # Run again: everything was replayed already, nothing is sent twice.
    again = await StepReplay.resume(
        kafka, setup.pipeline, job.plan.replay_id, endpoints=[setup.candidate_ep]
    )
    await again.run()
    assert len(setup.candidate_heard) == len(sampled)

    # weir compare: what the two servers were scripted to return, counted by hand.
    env = worker_env(
        kafka,
        WEIR_CLICKHOUSE_DSN=kafka.clickhouse_dsn.get_secret_value() if kafka.clickhouse_dsn else "",
        WEIR_TRACE_TOPIC=kafka.trace_topic,
    )
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", "compare", job.plan.replay_id, "--json"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    n = len(sampled)
    live_out = {rid: f"you said {texts[rid]}" for rid in sampled}
    cand_out = {rid: _candidate_reply(texts[rid]) for rid in sampled}
    tokens_in = sum(input_tokens([{"content": texts[rid]}]) for rid in sampled)
    base, cand = body["baseline"], body["candidate"]
    assert (base["count"], base["succeeded"], base["errors"]) == (n, n, {})
    assert (cand["count"], cand["succeeded"], cand["errors"]) == (n, n, {})
    assert base["input_tokens"] == cand["input_tokens"] == tokens_in
    assert base["output_tokens"] == sum(len(t.split()) for t in live_out.values())
    assert cand["output_tokens"] == sum(len(t.split()) for t in cand_out.values())
    live_cost = sum(
        (
            LIVE_PRICE.cost(input_tokens([{"content": texts[r]}]), len(live_out[r].split()))
            for r in sampled
        ),
        Decimal(0),
    )
    assert Decimal(base["cost_usd"]) == live_cost
    assert Decimal(cand["cost_usd"]) == progress.spent_usd
    assert Decimal(cand["cost_per_request_usd"]) == progress.spent_usd / n
    assert Decimal(cand["projected_month_usd"]) > Decimal(base["projected_month_usd"]) > 0
    same = sum(live_out[r] == cand_out[r] for r in sampled)
    assert body["compared"] == n and body["missing_baseline"] == 0
    assert body["exact_match_rate"] == pytest.approx(same / n)
    assert body["mean_score"] == pytest.approx(same / n)
    assert 0 < len(body["most_different"]) <= 5
    for example in body["most_different"]:
        rid = example["request_id"]
        assert int(texts[rid].split()[-1]) % 3 == 0
        assert json.loads(example["baseline"]) == live_out[rid]
        assert json.loads(example["candidate"]) == cand_out[rid]
        assert example["score"] == 0.0
    for q in ("p50", "p95", "p99"):
        assert base["latency_ms"][q] > 0 and cand["latency_ms"][q] > 0

    # The replay's attempts are in pipeline_events too, tagged; the live ones are not.
    # `weir stats` counts live attempts only, so the replay's rows are awaited by SQL.
    async with asyncio.timeout(180):
        while True:
            found = await asyncio.to_thread(
                run_sql,
                kafka,
                "SELECT count() FROM pipeline_events"
                f" WHERE pipeline_id = '{pipeline_name}' AND replay_id != ''",
            )
            if found.rows[0][0] >= n:
                break
            await asyncio.sleep(0.5)
    remote = RemoteTraceStore(sink_url)
    try:
        live_stats = await asyncio.to_thread(remote.stats, since_ms=0, pipeline=pipeline_name)
    finally:
        remote.close()
    tagged = await asyncio.to_thread(
        run_sql,
        kafka,
        "SELECT replay_id, variant, count(), countIf(status = 'SUCCESS'),"
        " toString(sum(cost_usd)), groupUniqArray(disposition) FROM pipeline_events"
        f" WHERE pipeline_id = '{pipeline_name}' AND step_name = 'answer'"
        " GROUP BY replay_id, variant ORDER BY replay_id",
    )
    (live_row, replay_row) = [list(r) for r in tagged.rows]
    assert live_row[:2] == ["", ""] and live_row[2] >= RECORDED
    answer_stats = [st for st in live_stats.steps if st.step_name == "answer"]
    assert [st.attempts for st in answer_stats] == [live_row[2]], "stats counted replays"
    assert "replayed" not in live_row[5]
    assert replay_row[:4] == [job.plan.replay_id, f"endpoint:{setup.candidate_ep.name}", n, n]
    assert Decimal(replay_row[4]) == progress.spent_usd and replay_row[5] == ["replayed"]

    # The same comparison on the dashboard (served here by the sink).
    async with httpx.AsyncClient(base_url=sink_url, timeout=120) as http:
        api = (await http.get(f"/api/replays/{job.plan.replay_id}")).json()
        page = await http.get(f"/dashboard/replays/{job.plan.replay_id}")
        missing = await http.get("/api/replays/rs-000000000000")
    assert api["candidate"]["cost_usd"] == cand["cost_usd"]
    assert api["exact_match_rate"] == body["exact_match_rate"]
    assert page.status_code == 200 and f"exact match {same / n:.1%}" in page.text
    assert f"${Decimal(cand['cost_usd']):.6f}" in page.text
    assert missing.status_code == 404 and missing.json()["error_type"] == "replay_not_found"


async def test_budget_stops_within_one_call_and_resume_finishes_the_rest(
    kafka, pipeline_name, servers
):
    live, candidate = await servers("live"), await servers("candidate")
    setup = _Setup(pipeline_name, live, candidate)
    since = now_ms() - 1000
    ids = await _record(kafka, setup, 120)
    budget = Decimal("0.05")  # five cents
    job = await StepReplay.create(
        kafka,
        setup.pipeline,
        step="answer",
        since_ms=since,
        endpoint=setup.candidate_ep.name,
        endpoints=[setup.candidate_ep],
        budget_usd=budget,
        concurrency=4,
    )
    first = await job.run()
    outcomes = await read_outcomes(kafka, job.topic)
    largest = max(o.cost_usd for o in outcomes)
    assert first.stopped_by_budget
    assert budget <= first.spent_usd < budget + largest
    assert first.replayed == len(outcomes) == len(setup.candidate_heard) < len(ids)

    more = await StepReplay.resume(
        kafka,
        setup.pipeline,
        job.plan.replay_id,
        budget_usd=Decimal(100),
        endpoints=[setup.candidate_ep],
    )
    second = await more.run()
    assert not second.stopped_by_budget
    heard = collections.Counter(setup.candidate_heard)
    assert len(heard) == len(ids) and max(heard.values()) == 1
    assert {o.request_id for o in await read_outcomes(kafka, job.topic)} == set(ids)


_MODULE = """
from weir.streams import Pipeline

pipeline = Pipeline("{name}")


@pipeline.step()
def shout(text: str) -> str:
    return text.upper()


@pipeline.step(depends_on=[shout])
def measure(shout: str) -> int:
    return len(shout)


def whisper(text: str) -> str:
    if "7" in text:
        raise ValueError("no sevens")
    return text.lower()
"""


async def test_weir_replay_of_a_root_step_reads_the_requests_topic_and_runs_a_variant(
    kafka, pipeline_name, tmp_path
):
    module = f"replayed_{pipeline_name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(_MODULE.format(name=pipeline_name))
    p = load_pipeline(f"{module}:pipeline", search_path=tmp_path)
    texts = [f"Message {i}" for i in range(40)]
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"text": t} for t in texts])
        await read_results(kafka, PipelineTopics(p.name).results, len(ids))

    def weir(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weir", *args],
            cwd=tmp_path,
            env=worker_env(kafka),
            capture_output=True,
            text=True,
            timeout=120,
        )

    common = [f"{module}:pipeline", "--step", "shout", "--since", "5m", "--json"]
    variant = ["--variant", f"{module}:whisper"]
    dry = await asyncio.to_thread(weir, "replay", *common, *variant, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["replayed"] == 40
    done = await asyncio.to_thread(weir, "replay", *common, *variant, "--sample", "50%")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    sampled = {rid: text for rid, text in zip(ids, texts, strict=True) if in_sample(rid, 0.5)}
    assert summary["replayed"] == len(sampled)
    outcomes = {o.request_id: o for o in await read_outcomes(kafka, summary["topic"])}
    assert set(outcomes) == set(sampled)
    for rid, text in sampled.items():
        o = outcomes[rid]
        if "7" in text:
            assert (o.status, o.error_type) == ("FAILURE", "step_error")
            assert "no sevens" in (o.error_message or "")
        else:
            assert (o.status, o.output) == ("SUCCESS", json.dumps(text.lower()))
    assert summary["failed"] == sum("7" in t for t in sampled.values())

    bad = await asyncio.to_thread(weir, "replay", *common, "--endpoint", "nope")
    assert bad.returncode == 2 and "no endpoint named 'nope'" in bad.stderr


async def test_a_replayed_conversation_step_sees_the_history_its_live_attempt_saw(
    kafka, pipeline_name
):
    p = chat(pipeline_name)
    since = now_ms() - 1000
    async with Worker(p, kafka), WeirClient(kafka) as client:
        live = []
        for n in range(4):
            rid = await client.submit(pipeline_name, {"text": f"turn {n}"}, conversation_id="c-r")
            live.append((rid, (await client.result(rid, timeout=60)).value["seen"]))
        alone = await client.submit(pipeline_name, {"text": "no conversation"})
        assert (await client.result(alone, timeout=60)).status == "SUCCESS"
    assert live[-1][1] == [x for n in range(3) for x in (f"turn {n}", f"re: turn {n}")]
    job = await StepReplay.create(
        kafka, p, step="answer", since_ms=since, variant="tests._conversations:replayed_answer"
    )
    await job.run()
    outcomes = {o.request_id: o for o in await read_outcomes(kafka, job.topic)}
    assert set(outcomes) == {rid for rid, _ in live} | {alone}
    for rid, seen in live:  # each saw the turns before its own, not its own or later ones
        assert json.loads(outcomes[rid].output or "null") == seen
    assert json.loads(outcomes[alone].output or "null") == []
    [(_, _, state)] = await read_conversation(kafka, "c-r", pipeline=pipeline_name)
    assert len(state.turns) == 8  # the replay stored none of the turns it added


async def test_a_replayed_request_whose_turns_were_trimmed_sees_no_summary_of_later_turns(
    kafka, pipeline_name
):
    # Two turns a request, two kept: every request's write folds the one before it into
    # the summary, so by the end the turns of all but the last are summarized away.
    p = chat(pipeline_name, conversation=Conversation(max_turns=2, summarize=summarized_turns))
    since = now_ms() - 1000
    async with Worker(p, kafka), WeirClient(kafka) as client:
        rids = []
        for n in range(6):
            rid = await client.submit(pipeline_name, {"text": f"turn {n}"}, conversation_id="c-s")
            assert (await client.result(rid, timeout=60)).status == "SUCCESS"
            rids.append(rid)
    [(_, _, state)] = await read_conversation(kafka, "c-s", pipeline=pipeline_name)
    assert state.summary is not None and "turn 4" in state.summary  # the current one
    job = await StepReplay.create(
        kafka, p, step="answer", since_ms=since, variant="tests._conversations:replayed_summary"
    )
    await job.run()
    outcomes = {o.request_id: o for o in await read_outcomes(kafka, job.topic)}
    for n, rid in enumerate(rids):
        seen = json.loads(outcomes[rid].output or "null")
        if n == 0:
            assert seen is None  # nothing came before it
            continue
        assert f"turn {n - 1}" in seen  # everything before it, summarized
        assert all(f"turn {later}" not in seen for later in range(n, 6)), (n, seen)
