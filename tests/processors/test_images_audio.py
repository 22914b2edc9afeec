"""Image generation and audio transcription on the OpenAI-compatible provider, priced per unit."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests._kafka import read_results
from tests._model_servers import image_bytes
from weir.core.errors import ConfigError, RateLimitedError
from weir.processors import ModelEndpoint, OpenAICompatible, Price
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.names import PipelineTopics

IMAGE_PRICE = Price.per_unit(image="0.04")
AUDIO_PRICE = Price.per_unit(audio_second="0.0001")


async def test_an_image_call_costs_the_price_per_image_times_the_images(servers, tmp_path):
    server = await servers("img")
    ep = ModelEndpoint("img-1", provider=OpenAICompatible(server.url), price=IMAGE_PRICE)
    urls = await ep.generate_image("a red fox", n=3)
    assert urls.cost_usd == Decimal("0.12") and urls.usage.images == 3
    assert [i.url for i in urls.images] == [f"https://images.example/img/{i}.png" for i in range(3)]
    inline = await ep.generate_image("a red fox", n=2, response_format="b64_json")
    assert inline.cost_usd == Decimal("0.08")
    # The bytes go to a file (a blob store's path); a step returns the path, not the bytes.
    written = inline.images[1].write(tmp_path / "fox.png")
    assert written.read_bytes() == image_bytes("a red fox", 1)
    with pytest.raises(ValueError, match="no bytes"):
        urls.images[0].write(tmp_path / "x.png")


async def test_a_transcription_costs_the_price_per_second_of_audio(servers):
    server = await servers("stt")
    ep = ModelEndpoint("stt-1", provider=OpenAICompatible(server.url), price=AUDIO_PRICE)
    audio = b"hello world " * 5125  # 61,500 bytes: 61.5 s at the server's 1 KB/s
    result = await ep.transcribe(audio, filename="call.wav")
    assert result.text == audio.decode() and result.language == "en"
    assert result.duration_s == 61.5 and result.usage.audio_seconds == Decimal("61.5")
    assert result.cost_usd == Decimal("0.00615") and result.usage.source == "provider"


async def test_bad_image_and_audio_arguments_are_refused_before_any_call(servers):
    server = await servers("bad")
    ep = ModelEndpoint("bad-1", provider=OpenAICompatible(server.url), price=IMAGE_PRICE)
    with pytest.raises(ConfigError, match="prompt"):
        await ep.generate_image("")
    with pytest.raises(ConfigError, match="n must be"):
        await ep.generate_image("x", n=0)
    with pytest.raises(ConfigError, match="bytes"):
        await ep.transcribe(b"")
    assert server.total == 0


async def test_a_429_with_retry_after_holds_every_later_call_of_the_process(servers):
    server = await servers("slow")
    server.behaviour.throttle = [1.5]
    ep = ModelEndpoint("slow-1", provider=OpenAICompatible(server.url), price=IMAGE_PRICE)
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(RateLimitedError):
        await ep.generate_image("first")
    # Other calls (other steps' calls, in a worker) wait out the Retry-After: none reaches
    # the server before it has passed, and none fails.
    started = time.monotonic()
    results = await asyncio.gather(*(ep.generate_image(f"p{i}") for i in range(4)))
    assert time.monotonic() - started >= 1.4
    assert all(r.cost_usd == Decimal("0.04") for r in results)
    assert min(server.call_times) - t0 >= 1.4
    assert server.calls["throttled"] == 1 and server.calls["images"] == 4


@pytest.mark.kafka
async def test_image_and_audio_calls_in_a_pipeline_are_traced_and_charged(
    kafka, pipeline_name, servers, tmp_path
):
    server = await servers("media")
    painter = ModelEndpoint(
        f"{pipeline_name}-img", provider=OpenAICompatible(server.url), price=IMAGE_PRICE
    )
    listener = ModelEndpoint(
        f"{pipeline_name}-stt", provider=OpenAICompatible(server.url), price=AUDIO_PRICE
    )
    p = Pipeline(pipeline_name)

    @p.step()
    async def transcribe(audio_text: str) -> str:
        return (await listener.transcribe(audio_text.encode())).text

    @p.step(depends_on=[transcribe])
    async def illustrate(transcribe: str) -> str:
        answer = await painter.generate_image(transcribe, response_format="b64_json")
        return str(answer.images[0].write(tmp_path / f"{abs(hash(transcribe))}.png"))

    texts = ["x" * 2000, "y" * 500]
    async with Worker(p, kafka), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"audio_text": t} for t in texts])
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
    for rid, text in zip(ids, texts, strict=True):
        result = results[rid]
        assert result.status == "SUCCESS", result
        seconds = Decimal(len(text)) / 1000
        assert result.cost_usd == AUDIO_PRICE.units_cost(audio_seconds=seconds) + Decimal("0.04")
        calls = {c.operation: c for c in result.model_calls()}
        assert set(calls) == {"transcription", "image_generation"}
        assert calls["image_generation"].cost_usd == Decimal("0.04")
        written = await asyncio.to_thread(Path(result.value).read_bytes)
        assert written == image_bytes(text, 0)
