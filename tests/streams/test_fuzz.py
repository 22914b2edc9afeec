"""10,000 malformed messages interleaved with valid requests: the worker answers and goes on."""

from __future__ import annotations

import collections
import json
import random

import pytest

from tests._kafka import read_results, read_topic
from tests._pipelines import diamond
from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import DeadLetter, Request
from weir.streams import Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

MALFORMED = 10_000
VALID = 1_000


def _malformed(
    rng: random.Random, settings: WeirSettings, pipeline: str
) -> list[tuple[str, bytes, str]]:
    """``(where, value, expected error type)``; ``where`` is "requests" or "start"."""
    avro = Request(pipeline=pipeline, payload={"n": 7}, request_id="avro-ok").to_avro()
    out: list[tuple[str, bytes, str]] = []
    kinds = ["bytes", "avro", "json", "envelope"]
    for i in range(MALFORMED - 50):
        kind = kinds[i % len(kinds)]
        if kind == "bytes":
            first = rng.choice([b for b in range(1, 256) if chr(b) not in "{ \t\r\n\x0b\x0c"])
            value = bytes([first]) + rng.randbytes(rng.randint(0, 200))
            out.append(("requests", value, "undecodable"))
        elif kind == "avro":
            out.append(("requests", avro[: rng.randint(1, len(avro) - 1)], "undecodable"))
        elif kind == "json":
            wrong = rng.choice(
                [
                    {"payload": {"n": "seven"}},
                    {"payload": [1, 2, 3]},
                    {"payload": {"m": 1}},
                    {"request_id": 12, "payload": {"n": 1}},
                    {"payload": {"n": 1}, "options": ["fast"]},
                    {"payload": {"n": 1}, "surprise": True},
                    {"payload": {"n": 1}, "submitted_at": "yesterday"},
                ]
            )
            out.append(("requests", json.dumps(wrong).encode(), "schema_invalid"))
        else:  # garbage where a step expects an envelope
            value = bytes([0]) + rng.randbytes(rng.randint(4, 120))
            out.append(("start", value, "undecodable"))
    big = b'{"payload": {"n": 1, "pad": "' + b"x" * (settings.max_payload_bytes + 1) + b'"}}'
    out += [("requests", big, "payload_too_large")] * 50
    rng.shuffle(out)
    return out


async def test_malformed_messages_are_dead_lettered_and_every_valid_request_answered(
    kafka, pipeline_name
):
    rng = random.Random(1234)
    pipeline = diamond(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    bad = _malformed(rng, kafka, pipeline.name)
    assert len(bad) == MALFORMED
    async with Worker(pipeline, kafka) as worker:
        producer = KafkaConnection.of(kafka).producer(linger_ms=5)
        await producer.start()
        valid_ids = []
        try:
            # Interleave: a valid request after every ten malformed messages.
            for i, (where, value, _) in enumerate(bad):
                topic = topics.requests if where == "requests" else topics.step("start")
                await producer.send(topic, value=value)
                if i % 10 == 9:
                    rid = f"valid-{i // 10}"
                    request = Request(pipeline=pipeline.name, payload={"n": i}, request_id=rid)
                    raw = request.to_avro() if i % 20 == 19 else request.to_json()
                    await producer.send(topics.requests, value=raw, key=rid.encode())
                    valid_ids.append((rid, i))
            await producer.flush()
        finally:
            await producer.stop()
        assert len(valid_ids) == VALID
        results, counts = await read_results(kafka, topics.results, VALID, timeout=180)
        dead_requests = await read_topic(
            kafka, topics.dead_letter("requests"), until=sum(w == "requests" for w, *_ in bad)
        )
        dead_start = await read_topic(
            kafka, topics.dead_letter("start"), until=sum(w == "start" for w, *_ in bad)
        )
        assert not worker._stopped.is_set()
        alive = [t for t in worker._tasks if not t.done()]
        assert len(alive) == len(worker._tasks), "a worker loop died"
    for rid, n in valid_ids:
        assert counts[rid] == 1
        assert results[rid].status == "SUCCESS"
        assert results[rid].value["sum"] == 2 * (n + 1) + (n + 1) ** 2
    # Every malformed message is in its dead-letter topic, unchanged, with the right type.
    expected = collections.Counter((where, value, t) for where, value, t in bad)
    found = collections.Counter()
    for where, records in (("requests", dead_requests), ("start", dead_start)):
        for r in records:
            letter = DeadLetter.from_message(r.key, r.value, list(r.headers))
            assert letter.error_message
            found[(where, r.value, letter.error_type)] += 1
    assert found == expected
    by_type = collections.Counter(t for _, _, t in bad)
    print(f"\nfuzz: {dict(by_type)} dead-lettered; {VALID} valid requests answered once each")
