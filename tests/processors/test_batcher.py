"""The embedding micro-batcher: real broker, real worker, a real local embedding server."""

from __future__ import annotations

import asyncio
import math
import random
import time
from decimal import Decimal

import pytest

from tests._kafka import read_results, read_topic
from tests._model_servers import vector
from weir.core.errors import ConfigError, ModelRequestError, SecretError
from weir.processors import Batching, EmbeddingBatcher, ModelEndpoint, OpenAICompatible, Price
from weir.processors.batcher import apportion
from weir.schemas.messages import DeadLetter
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.names import PipelineTopics

EMBED_PRICE = Price.per_million(input="0.13")


def _words(text: str) -> int:
    return len(text.split())


@pytest.mark.kafka
async def test_10000_texts_from_1000_requests_come_back_each_vector_matched_to_its_text(
    kafka, pipeline_name, servers
):
    server = await servers("emb")
    endpoint = ModelEndpoint(
        f"{pipeline_name}-emb", provider=OpenAICompatible(server.url), price=EMBED_PRICE
    )
    batcher = EmbeddingBatcher(endpoint, max_batch_items=128, max_wait_ms=20)
    p = Pipeline(pipeline_name)

    @p.step()
    async def embed(texts: list[str]) -> list[list[float]]:
        return (await batcher.embed(texts)).vectors

    rng = random.Random(12)
    sizes = [rng.randint(1, 19) for _ in range(999)]
    sizes.append(10_000 - sum(sizes))
    assert sum(sizes) == 10_000 and min(sizes) >= 1
    serial = iter(range(10_000))
    requests = [
        [f"chunk {next(serial)} of doc {r} " + "word " * rng.randint(0, 12) for _ in range(n)]
        for r, n in enumerate(sizes)
    ]
    async with Worker(p, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"texts": texts} for texts in requests])
        results, counts = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
    assert len(results) == 1000 and max(counts.values()) == 1
    for rid, texts in zip(ids, requests, strict=True):
        result = results[rid]
        assert result.status == "SUCCESS", result
        assert result.value == [vector(t) for t in texts]
        # Each request pays exactly what its share of the calls was priced at.
        calls = result.model_calls()
        assert {c.operation for c in calls} == {"embeddings"}
        assert sum(c.cost_usd for c in calls) == result.cost_usd
        assert sum(c.input_tokens for c in calls) == result.input_tokens
    # The calls were batched, never over the maximum, and every text was sent once.
    assert sum(server.batch_sizes) == 10_000
    assert max(server.batch_sizes) <= 128
    assert server.calls["embeddings"] < 1000
    # The shares add up to what the server reported, priced exactly.
    words = sum(_words(t) for texts in requests for t in texts)
    assert sum(r.input_tokens for r in results.values()) == words
    assert sum(r.cost_usd for r in results.values()) == EMBED_PRICE.cost(words, 0)


@pytest.mark.kafka
async def test_a_poison_text_is_dead_lettered_while_its_batch_mates_succeed(
    kafka, pipeline_name, servers
):
    server = await servers("emb")
    server.behaviour.rejects = lambda text: "poison" in text
    endpoint = ModelEndpoint(
        f"{pipeline_name}-emb", provider=OpenAICompatible(server.url), price=EMBED_PRICE
    )
    # Long enough a wait that the 40 requests meet in one batch.
    batcher = EmbeddingBatcher(endpoint, max_batch_items=200, max_wait_ms=1500)
    p = Pipeline(pipeline_name)

    @p.step()
    async def embed(texts: list[str]) -> list[list[float]]:
        return (await batcher.embed(texts)).vectors

    requests = [[f"text {r}.{i}" for i in range(5)] for r in range(40)]
    requests[17][3] = "a poison text"
    topics = PipelineTopics(p.name)
    async with Worker(p, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"texts": texts} for texts in requests])
        results, _ = await read_results(kafka, topics.results, len(ids))
        dead = await read_topic(kafka, topics.dead_letter("embed"), until=1)
    failed = {rid for rid, r in results.items() if r.status != "SUCCESS"}
    assert failed == {ids[17]}
    assert results[ids[17]].error_type == ModelRequestError.error_type
    for rid, texts in zip(ids, requests, strict=True):
        if rid != ids[17]:
            assert results[rid].value == [vector(t) for t in texts]
    assert len(dead) == 1
    letter = DeadLetter.from_message(dead[0].key, dead[0].value, list(dead[0].headers))
    assert letter.request_id == ids[17] and letter.error_type == "model_request_invalid"
    # The first call held all 200 texts; halving found the poison with one refused call
    # per level: 1 + floor(log2(200)) or 1 + ceil(log2(200)) calls, as the halves fall.
    assert server.batch_sizes[0] == 200
    levels = math.log2(200)
    assert 1 + math.floor(levels) <= server.calls["rejected"] <= 1 + math.ceil(levels)
    # Every healthy text of the other requests was embedded exactly once; refused calls
    # cost nothing, and the requests together paid exactly for what was embedded.
    healthy = [t for r, texts in enumerate(requests) if r != 17 for t in texts]
    assert sorted(t for t in server.embedded if not t.startswith("text 17.")) == sorted(healthy)
    embedded_words = sum(_words(t) for t in server.embedded)
    assert sum(r.cost_usd for r in results.values()) == EMBED_PRICE.cost(embedded_words, 0)
    poisoned = results[ids[17]].model_calls()
    assert [c.error_type for c in poisoned if c.status == "FAILURE"] == ["model_request_invalid"]
    assert sum(c.cost_usd for c in poisoned) == results[ids[17]].cost_usd


async def test_a_single_text_is_sent_after_max_wait_ms_when_no_others_arrive(servers):
    server = await servers("emb")
    endpoint = ModelEndpoint("batcher-wait", provider=OpenAICompatible(server.url))
    batcher = EmbeddingBatcher(endpoint, max_batch_items=100, max_wait_ms=300)
    t0 = time.monotonic()
    task = asyncio.create_task(batcher.embed(["alone"]))
    await asyncio.sleep(0.15)
    assert server.calls["embeddings"] == 0  # still waiting for batch-mates
    result = await asyncio.wait_for(task, 10)
    assert time.monotonic() - t0 >= 0.3
    assert result.vectors == [vector("alone")] and server.batch_sizes == [1]


async def test_a_full_batch_goes_without_waiting_and_cost_splits_sum_to_the_call(servers):
    server = await servers("emb")
    endpoint = ModelEndpoint(
        "batcher-full", provider=OpenAICompatible(server.url), price=Price.per_million(input="1")
    )
    batcher = EmbeddingBatcher(endpoint, max_batch_items=6, max_wait_ms=60_000)
    texts = [["one two three"], ["four", "five six"], ["seven eight", "nine", "ten"]]
    results = await asyncio.wait_for(asyncio.gather(*(batcher.embed(t) for t in texts)), 10)
    assert server.batch_sizes == [6]
    assert [r.vectors for r in results] == [[vector(t) for t in ts] for ts in texts]
    assert sum(r.usage.input_tokens for r in results) == 10
    assert sum(r.cost_usd for r in results) == Decimal("0.00001")


async def test_a_cancelled_step_leaves_its_texts_unsent(servers):
    server = await servers("emb")
    endpoint = ModelEndpoint("batcher-cancel", provider=OpenAICompatible(server.url))
    batcher = EmbeddingBatcher(endpoint, max_batch_items=10, max_wait_ms=200)
    gone = asyncio.create_task(batcher.embed(["gone"]))
    kept = asyncio.create_task(batcher.embed(["kept"]))
    await asyncio.sleep(0.05)
    gone.cancel()
    assert (await asyncio.wait_for(kept, 10)).vectors == [vector("kept")]
    assert server.batch_sizes == [1]


def test_apportioned_shares_sum_to_the_total_and_follow_the_weights():
    rng = random.Random(3)
    for _ in range(500):
        weights = [rng.randint(0, 50) for _ in range(rng.randint(1, 20))]
        total = rng.randint(0, 5000)
        shares = apportion(total, weights)
        assert sum(shares) == total
        whole = sum(weights) or len(weights)
        for w, s in zip(weights, shares, strict=True):
            exact = total * (w if sum(weights) else 1) / whole
            assert abs(s - exact) < 1


def test_bad_batcher_options_are_refused_with_the_option_named():
    endpoint = ModelEndpoint("batcher-bad", provider=OpenAICompatible("http://127.0.0.1:1/v1"))
    with pytest.raises(ConfigError, match="max_batch_items"):
        EmbeddingBatcher(endpoint, max_batch_items=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        EmbeddingBatcher(endpoint, max_wait_ms=-1)
    with pytest.raises(ConfigError, match="ModelEndpoint"):
        EmbeddingBatcher("emb")  # type: ignore[arg-type]


async def test_a_batch_that_cannot_be_sent_fails_its_steps_instead_of_leaving_them_waiting():
    endpoint = ModelEndpoint(
        "batcher-nokey",
        provider=OpenAICompatible("http://127.0.0.1:1/v1"),
        api_key="env:WEIR_TEST_KEY_THAT_IS_NOT_SET",
    )
    batcher = EmbeddingBatcher(endpoint, max_batch_items=4, max_wait_ms=10)
    outcomes = await asyncio.wait_for(
        asyncio.gather(batcher.embed(["a"]), batcher.embed(["b"]), return_exceptions=True), 10
    )
    assert [type(o) for o in outcomes] == [SecretError, SecretError]


async def test_an_endpoint_with_batching_sends_concurrent_embed_calls_together(servers):
    server = await servers("emb")
    endpoint = ModelEndpoint(
        "batcher-wired",
        provider=OpenAICompatible(server.url),
        price=EMBED_PRICE,
        batching=Batching(max_batch_items=5, max_wait_ms=5000),
    )
    texts = [["a b"], ["c", "d e"], ["f g h", "i"]]
    results = await asyncio.wait_for(asyncio.gather(*(endpoint.embed(t) for t in texts)), 10)
    assert server.batch_sizes == [5]
    assert [r.vectors for r in results] == [[vector(t) for t in ts] for ts in texts]
    assert sum(r.cost_usd for r in results) == EMBED_PRICE.cost(9, 0)
