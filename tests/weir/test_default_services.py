"""``weir.Worker`` and ``weir.run_local`` bring model services of their own; the runtime's don't."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import pytest

import weir
from tests._model_servers import ModelServer
from weir.core.errors import ConfigError
from weir.processors import ModelEndpoint, ModelServices, OpenAICompatible
from weir.schemas.messages import Result
from weir.streams import Pipeline, WeirClient
from weir.streams import Worker as StreamsWorker
from weir.streams import run_local as streams_run_local

ENDPOINT = "roof-llm"  # one name in both pipelines: each worker must still list only its own


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    server = await ModelServer("roof").start()
    yield server
    await server.stop()


def model_pipeline(name: str, url: str) -> Pipeline:
    llm = ModelEndpoint(ENDPOINT, provider=OpenAICompatible(url), model="m")
    p = Pipeline(name)

    @p.step()
    async def answer(text: str) -> str:
        return (await llm.chat([{"role": "user", "content": text}], max_tokens=8)).text

    return p


@pytest.mark.kafka
async def test_two_weir_workers_without_services_answer_model_steps_with_their_own(
    kafka, pipeline_name, model
):
    settings_a = kafka.model_copy(update={"worker_id": "roof-a"})
    settings_b = kafka.model_copy(update={"worker_id": "roof-b"})
    p_a = model_pipeline(f"{pipeline_name}-a", model.url)
    p_b = model_pipeline(f"{pipeline_name}-b", model.url)
    worker_a, worker_b = weir.Worker(p_a, settings_a), weir.Worker(p_b, settings_b)
    services_a, services_b = worker_a.services, worker_b.services
    assert isinstance(services_a, ModelServices) and isinstance(services_b, ModelServices)
    assert services_a is not services_b
    assert services_a.settings.worker_id == "roof-a"
    assert services_b.settings.worker_id == "roof-b"

    # A fresh context: no `async with ModelServices(...)` of the test's is in use.
    async def run() -> tuple[Result, Result]:
        async with worker_a, worker_b, WeirClient(kafka) as client:
            assert services_a.started and services_b.started
            id_a = await client.submit(p_a.name, {"text": "from a"})
            id_b = await client.submit(p_b.name, {"text": "from b"})
            return await client.result(id_a, timeout=90), await client.result(id_b, timeout=90)

    task = asyncio.get_running_loop().create_task(run(), context=contextvars.Context())
    result_a, result_b = await task

    assert (result_a.status, result_a.value) == ("SUCCESS", "you said from a")
    assert (result_b.status, result_b.value) == ("SUCCESS", "you said from b")
    # Each worker's call went through its own services, and stopping it stopped them.
    assert list(services_a.endpoint_states()) == [ENDPOINT]
    assert list(services_b.endpoint_states()) == [ENDPOINT]
    assert services_a.stopped and services_b.stopped


def test_a_weir_worker_keeps_services_it_is_given_and_the_runtime_worker_adds_none(kafka):
    p = model_pipeline("roof-given", "http://127.0.0.1:1/v1")
    given = ModelServices(kafka)
    assert weir.Worker(p, kafka, services=given).services is given
    assert StreamsWorker(p, kafka).services is None


async def test_weir_run_local_answers_a_model_step_outside_any_services(kafka, model):
    p = model_pipeline("roof-local", model.url)
    context = contextvars.Context()
    loop = asyncio.get_running_loop()

    done = await loop.create_task(
        weir.run_local(p, {"text": "hi"}, settings=kafka), context=context
    )
    assert done == ("you said hi", ["answer"])
    # The runtime's own run_local, in the same kind of context, has no services to call with.
    with pytest.raises(ConfigError, match=r"ModelServices"):
        await loop.create_task(streams_run_local(p, {"text": "hi"}), context=contextvars.Context())
