"""weir with a Confluent-compatible schema registry: its schemas registered, requests written
by ``confluent-kafka``'s ``AvroSerializer`` (with an evolved schema too) answered, results
read back by its ``AvroDeserializer``."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests._pipelines import linear
from tests._schema_registry import SchemaRegistryServer
from weir.core.config import load_settings
from weir.core.errors import SchemaRegistryError, UndecodableError
from weir.core.urls import SecretUrl
from weir.schemas import REQUEST_SCHEMA, RESULT_SCHEMA, Request
from weir.schemas.registry import SchemaRegistry
from weir.streams import WeirClient, Worker
from weir.topics.names import PipelineTopics

N = 100


def evolved_request_schema() -> dict[str, object]:
    """weir's request schema as a producer evolved it: a field added, with a default."""
    schema = copy.deepcopy(REQUEST_SCHEMA.definition)
    fields = schema["fields"]
    assert isinstance(fields, list)
    fields.append({"name": "priority", "type": "string", "default": "normal"})
    return schema


@pytest.fixture
def registry_server() -> Iterator[SchemaRegistryServer]:
    with SchemaRegistryServer() as server:
        yield server


async def test_registering_twice_keeps_the_id_and_writer_schemas_are_fetched_once(
    registry_server,
):
    async with SchemaRegistry(SecretUrl(registry_server.url)) as registry:
        first = await registry.register("weir.x.requests-value", REQUEST_SCHEMA)
        assert await registry.register("weir.x.requests-value", REQUEST_SCHEMA) == first
        evolved_id = registry_server.register(
            "weir.x.requests-value", json.dumps(evolved_request_schema())
        )
        assert evolved_id != first
        raw = (
            b"\x00"
            + evolved_id.to_bytes(4, "big")
            + _avro_body(evolved_request_schema(), {"priority": "urgent"})
        )
        writers = await asyncio.gather(*(registry.writer(raw) for _ in range(5)))
        assert all(w is writers[0] for w in writers)
        request = Request.from_wire(
            raw, pipeline="x", key=None, max_bytes=1 << 20, writer=writers[0]
        )
        assert request.payload == {"text": "a b", "n": 1}  # the added field is skipped
        assert registry_server.requests.count(("GET", f"/schemas/ids/{evolved_id}")) == 1
        assert await registry.writer(b'{"json": true}') is None
        # A request framed with weir's fingerprint id (a client without the registry).
        own = Request(pipeline="x", payload={"n": 2}).to_avro()
        assert await registry.writer(own) is REQUEST_SCHEMA.parsed


def _avro_body(schema: dict[str, object], extra: dict[str, object]) -> bytes:
    import io

    import fastavro

    buf = io.BytesIO()
    record = {
        "request_id": "r1",
        "pipeline": "x",
        "payload": json.dumps({"text": "a b", "n": 1}),
        "submitted_at": 1,
        "options": {},
        "traceparent": None,
        **extra,
    }
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


async def test_an_unknown_id_is_undecodable_and_a_down_registry_says_so(registry_server):
    raw = b"\x00" + (4242).to_bytes(4, "big") + b"\x02"
    async with SchemaRegistry(SecretUrl(registry_server.url)) as registry:
        with pytest.raises(UndecodableError, match="schema id 4242 is not registered"):
            await registry.writer(raw)
    async with SchemaRegistry(SecretUrl("http://127.0.0.1:9")) as down:
        with pytest.raises(SchemaRegistryError, match="cannot reach the schema registry"):
            await down.writer(raw)


async def test_registry_credentials_are_a_secret_reference_and_never_shown(monkeypatch):
    monkeypatch.setenv("WEIR_TEST_SR_PASSWORD", "sr-secret-998877")
    with SchemaRegistryServer(username="weir", password="sr-secret-998877") as server:
        settings = load_settings(
            schema_registry_url=server.url,
            schema_registry_username="weir",
            schema_registry_password="env:WEIR_TEST_SR_PASSWORD",
        )
        async with SchemaRegistry.of(settings) as registry:
            assert await registry.register("s-value", RESULT_SCHEMA) == 1
            assert "sr-secret" not in repr(registry)
        monkeypatch.setenv("WEIR_TEST_SR_PASSWORD", "wrong-password-1")
        async with SchemaRegistry.of(settings) as refused:
            with pytest.raises(SchemaRegistryError, match="HTTP 401") as caught:
                await refused.register("s-value", RESULT_SCHEMA)
            assert "wrong-password-1" not in str(caught.value)


@pytest.mark.kafka
async def test_avro_serializer_requests_are_answered_and_avro_deserializer_reads_the_results(
    kafka, pipeline_name, registry_server
):
    settings = kafka.model_copy(
        update={"schema_registry_url": SecretUrl(registry_server.url), "results_format": "avro"}
    )
    topics = PipelineTopics(pipeline_name)
    client = SchemaRegistryClient({"url": registry_server.url})
    current = AvroSerializer(client, json.dumps(REQUEST_SCHEMA.definition))
    evolved = AvroSerializer(client, json.dumps(evolved_request_schema()))
    context = SerializationContext(topics.requests, MessageField.VALUE)

    def produce() -> None:
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": "all"})
        for i in range(N):
            record = {
                "request_id": f"r{i}",
                "pipeline": pipeline_name,
                "payload": json.dumps({"text": "x " * (i % 5 + 1), "n": i}),
                "submitted_at": int(time.time() * 1000),
                "options": {},
                "traceparent": None,
            }
            if i % 2:
                value = evolved(record | {"priority": "high"}, context)
            else:
                value = current(record, context)
            producer.produce(topics.requests, key=record["request_id"], value=value)
        assert producer.flush(60) == 0

    deserialize = AvroDeserializer(client)

    def consume() -> dict[str, dict[str, object]]:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"{pipeline_name}-reader",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([topics.results])
        results: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 120
        try:
            while len(results) < N + 2 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                result = deserialize(
                    message.value(), SerializationContext(topics.results, MessageField.VALUE)
                )
                assert isinstance(result, dict)
                results[str(result["request_id"])] = result
        finally:
            consumer.close()
        return results

    async with Worker(linear(pipeline_name), settings):
        await asyncio.to_thread(produce)
        # weir's own client frames Avro with the registered id, or, without a registry
        # configured, with the fingerprint id; both are answered.
        async with WeirClient(settings) as client:
            await client.submit(
                pipeline_name, {"text": "a", "n": N}, request_id=f"r{N}", fmt="avro"
            )
        async with WeirClient(kafka) as plain:
            await plain.submit(
                pipeline_name, {"text": "a", "n": N + 1}, request_id=f"r{N + 1}", fmt="avro"
            )
        results = await asyncio.to_thread(consume)
    assert sorted(results) == sorted(f"r{i}" for i in range(N + 2))
    assert {r["status"] for r in results.values()} == {"SUCCESS"}
    assert json.loads(str(results["r3"]["output"])) == "request 3 has 4 words"
    # weir registered its own schemas under the conventional subjects.
    assert f"{topics.requests}-value" in registry_server.subjects
    assert f"{topics.results}-value" in registry_server.subjects
    assert len(registry_server.subjects[f"{topics.requests}-value"]) == 2  # current, evolved
