"""Conversations: the trimming policy, bad ids, and a History step on a real broker."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests._conversations import chat
from weir.core.errors import ConversationIdError, PipelineDefinitionError
from weir.core.kafka import KafkaConnection
from weir.streams import Cache, Conversation, History, Pipeline, WeirClient, Worker
from weir.streams.conversation import (
    ConversationState,
    Turn,
    conversation_id_of,
    trimmed,
    weigh,
)
from weir.streams.conversation_store import read_conversation
from weir.streams.local import run_local
from weir.topics.names import PipelineTopics


def _turn(n: int, role: str = "user", text: str = "x" * 36) -> Turn:
    return Turn(role, f"{n:03d}{text}", n, f"r{n}", "answer")  # type: ignore[arg-type]


async def test_trimming_keeps_the_system_turns_and_the_latest_within_the_budget() -> None:
    config = Conversation(budget_tokens=100, system="s" * 40)  # 14 tokens
    turns = [_turn(0, "system")] + [_turn(n) for n in range(1, 12)]  # 14 tokens each
    state, dropped = await trimmed(config, ConversationState(turns), keep=2)
    assert [t.content[:3] for t in dropped] == [f"{n:03d}" for n in range(1, 7)]
    assert state.turns[0].role == "system"  # never dropped, though the oldest
    assert [t.content[:3] for t in state.turns[1:]] == ["007", "008", "009", "010", "011"]
    assert state.dropped == 6
    history = History("c", state, config, request_id="next", step="answer")
    assert history.tokens <= 100
    assert history.messages()[0] == {"role": "system", "content": "s" * 40}


async def test_dropped_turns_are_summarised_when_a_summariser_is_configured() -> None:
    seen: list[list[str]] = []

    async def summarize(summary: str | None, dropped: list[Turn]) -> str:
        seen.append([t.content[:3] for t in dropped])
        return f"{summary or ''}+{len(dropped)}"

    config = Conversation(budget_tokens=80, summarize=summarize)
    state, _ = await trimmed(config, ConversationState([_turn(n) for n in range(8)]), keep=1)
    assert seen and seen[0][0] == "000"
    assert state.summary is not None and state.summary.startswith("+")
    history = History("c", state, config, request_id="next", step="answer")
    assert history.messages()[0]["content"].startswith("Summary of earlier turns: +")
    assert history.tokens <= 80


async def test_turns_dropped_for_a_longer_summary_are_summarised_too() -> None:
    seen: list[list[str]] = []

    def summarize(summary: str | None, dropped: list[Turn]) -> str:
        seen.append([t.content[:3] for t in dropped])
        return "y" * 200  # 50 tokens: the first summary pushes the history over budget

    config = Conversation(budget_tokens=100, summarize=summarize)
    state, dropped = await trimmed(config, ConversationState([_turn(n) for n in range(9)]), keep=1)
    assert len(seen) >= 2  # the first summary pushed the history over budget again
    folded = [c for batch in seen for c in batch]
    assert folded == [t.content[:3] for t in dropped]  # every dropped turn, once, in order
    assert folded == [f"{n:03d}" for n in range(len(folded))]
    assert state.dropped == len(dropped)
    assert weigh(config, state.summary, state.turns) <= 100


async def test_each_new_summary_says_until_when_and_keeps_the_ones_it_replaced() -> None:
    def summarize(summary: str | None, dropped: list[Turn]) -> str:
        return f"upto{dropped[-1].at}"

    config = Conversation(max_turns=3, summarize=summarize)
    state = ConversationState()
    for n in range(10):  # one turn a request; from the 4th on, each trims one
        state.turns.append(_turn(n))
        state, _ = await trimmed(config, state, keep=1)
        state = ConversationState.decode(state.encode())  # as stored
    assert (state.summary, state.summary_until) == ("upto6", 6)
    assert state.past_summaries == [(2, "upto2"), (3, "upto3"), (4, "upto4"), (5, "upto5")]
    # A replay of a request submitted at 5 gets the newest summary of turns before it
    # (0-4); at 9, the current one; at 2, none: those were replaced and not kept, and the
    # ones kept fold in later turns, which a replay must never see.
    assert state.summary_before(5) == "upto4"
    assert state.summary_before(9) == "upto6"
    assert state.summary_before(3) == "upto2"
    assert state.summary_before(2) is None


async def test_past_summaries_go_first_when_the_conversation_outgrows_its_bytes() -> None:
    def summarize(summary: str | None, dropped: list[Turn]) -> str:
        return "s" * 300 + str(dropped[-1].at)

    config = Conversation(max_turns=2, max_bytes=1200, summarize=summarize)
    state = ConversationState()
    for n in range(8):
        state.turns.append(_turn(n))
        state, _ = await trimmed(config, state, keep=1)
    assert len(state.encode()) <= 1200
    assert state.summary is not None and state.summary.endswith("5")
    assert len(state.past_summaries) < 4  # some went to stay under the cap
    assert [t.content[:3] for t in state.turns] == ["006", "007"]


async def test_the_turns_just_added_stay_even_over_the_budget() -> None:
    config = Conversation(budget_tokens=10)
    state, dropped = await trimmed(config, ConversationState([_turn(0), _turn(1)]), keep=1)
    assert [t.content[:3] for t in state.turns] == ["001"] and len(dropped) == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (42, "must be a string"),
        ("", "must not be empty"),
        ("x" * 300, "at most 256"),
        ("a\nb", "control characters"),
    ],
)
def test_an_unusable_conversation_id_is_refused_with_its_reason(value: object, words: str):
    with pytest.raises(ConversationIdError, match=words):
        conversation_id_of({"conversation_id": value})
    assert conversation_id_of({"text": "no conversation"}) is None


def test_a_conversation_that_cannot_work_is_refused_when_the_step_is_declared() -> None:
    with pytest.raises(PipelineDefinitionError, match="budget_tokens"):
        Conversation(budget_tokens=0)
    p = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match="no parameter annotated History"):
        p.step(name="echo", conversation=Conversation())(lambda text: text)
    with pytest.raises(PipelineDefinitionError, match="History and a Cache"):

        @p.step(cache=Cache())
        def cached(text: str, history: History) -> str:
            return text


@pytest.mark.kafka
async def test_a_history_step_sees_earlier_turns_within_its_token_budget(kafka, pipeline_name):
    config = Conversation(budget_tokens=120, system="Be brief.")
    async with Worker(chat(pipeline_name, conversation=config), kafka), WeirClient(kafka) as c:
        results = []
        for n in range(12):
            rid = await c.submit(
                pipeline_name, {"text": f"question {n:02d} " + "w" * 20}, conversation_id="c1"
            )
            results.append((await c.result(rid, timeout=60)).value)
        other = await c.submit(pipeline_name, {"text": "hello"}, conversation_id="c2")
        alone = (await c.result(other, timeout=60)).value
    assert results[0]["seen"] == []
    assert results[1]["seen"] == [f"question 00 {'w' * 20}", f"re: question 00 {'w' * 20}"]
    assert all(r["tokens"] <= 120 for r in results)
    assert results[-1]["dropped"] > 0  # trimming happened, and shows
    assert results[-1]["seen"][-1] == f"re: question 10 {'w' * 20}"  # the latest are kept
    assert results[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert alone["seen"] == []  # conversations do not mix
    [(_, step, state)] = await read_conversation(kafka, "c1", pipeline=pipeline_name)
    assert step == "answer" and state.turns[-1].content == f"re: question 11 {'w' * 20}"
    assert state.dropped == results[-1]["dropped"] + 2


@pytest.mark.kafka
async def test_a_bad_conversation_id_fails_its_request_with_a_clear_error(kafka, pipeline_name):
    async with Worker(chat(pipeline_name), kafka), WeirClient(kafka) as client:
        with pytest.raises(ConversationIdError, match="must be a string"):
            await client.submit(pipeline_name, {"text": "hi", "conversation_id": 7})
        first = await client.submit(pipeline_name, {"text": "fine"}, conversation_id="c")
        assert (await client.result(first, timeout=60)).status == "SUCCESS"
        # A producer that is not our client: the worker answers with the reason.
        producer = KafkaConnection.of(kafka).producer()
        await producer.start()
        try:
            body = {"request_id": "bad-1", "payload": {"text": "hi", "conversation_id": ["x"]}}
            await producer.send_and_wait(
                PipelineTopics(pipeline_name).requests, json.dumps(body).encode(), key=b"bad-1"
            )
        finally:
            await producer.stop()
        result = await client.result("bad-1", timeout=60)
        # The worker still serves good requests after the bad one.
        ok = await client.submit(pipeline_name, {"text": "fine"}, conversation_id="c")
        assert (await client.result(ok, timeout=60)).status == "SUCCESS"
    assert result.status == "FAILURE"
    assert result.error_type == "conversation_id_invalid"
    assert "conversation_id must be a string" in (result.error_message or "")


@pytest.mark.kafka
async def test_a_raw_request_keyed_by_its_conversation_gets_its_own_request_id(
    kafka, pipeline_name
):
    async with Worker(chat(pipeline_name), kafka):
        producer = KafkaConnection.of(kafka).producer()
        await producer.start()
        try:
            for text in ("one", "two"):
                body = {"payload": {"text": text, "conversation_id": "conv-raw"}}
                await producer.send_and_wait(
                    PipelineTopics(pipeline_name).requests,
                    json.dumps(body).encode(),
                    key=b"conv-raw",
                )
        finally:
            await producer.stop()
        async with asyncio.timeout(60):
            while True:
                found = await read_conversation(kafka, "conv-raw", pipeline=pipeline_name)
                if found and len(found[0][2].turns) == 4:
                    break
                await asyncio.sleep(0.2)
    turns = found[0][2].turns
    assert [t.content for t in turns] == ["one", "re: one", "two", "re: two"]
    assert turns[0].request_id != turns[2].request_id != "conv-raw"


async def test_run_local_gives_a_history_step_the_turns_it_is_handed() -> None:
    earlier = [_turn(1), Turn("assistant", "re: 001", 2, "r1", "answer")]
    p = chat("local")
    value, path = await run_local(p, {"text": "next", "conversation_id": "c"}, turns=earlier)
    assert path == ["answer", "deliver"]
    assert value["seen"] == [earlier[0].content, "re: 001"]
    value, _ = await run_local(p, {"text": "alone"})  # no conversation: an empty history
    assert value["seen"] == [] and value["tokens"] == weigh(
        Conversation(system="You answer tests."), None, []
    )
