"""`weir dlq list` pages through dead-letter topics longer than a page, as a stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import worker_env
from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import DeadLetter
from weir.streams.replay import DeadLetterQueue
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, TopicSpec

pytestmark = pytest.mark.kafka

TOTAL = 250


async def _dead_letters(settings: WeirSettings, pipeline: str) -> None:
    """``TOTAL`` dead letters of step ``enrich`` (every third a timeout), the first 5 replayed."""
    topics = PipelineTopics(pipeline)
    topic = topics.dead_letter("enrich")
    async with TopicAdmin(settings) as admin:
        await admin.ensure(
            [
                TopicSpec(topic, settings.partitions, 1),
                TopicSpec(topics.replays, settings.partitions, 1, {"cleanup.policy": "compact"}),
            ]
        )
    producer = KafkaConnection.of(settings).producer(linger_ms=5)
    await producer.start()
    try:
        sent = []
        for n in range(TOTAL):
            letter = DeadLetter(
                pipeline=pipeline,
                step="enrich",
                error_type="step_timeout" if n % 3 == 0 else "step_error",
                error_message=f"failure {n}",
                first_failed_at=1,
                last_failed_at=2,
                worker_id="w",
                source_topic=topics.step("enrich"),
                source_partition=n % settings.partitions,
                source_offset=n,
                request_id=f"r-{n}",
            )
            sent.append(
                await producer.send(
                    topic,
                    value=b"{}",
                    key=f"r-{n}".encode(),
                    headers=letter.headers(),
                    partition=n % settings.partitions,
                )
            )
        for future in sent[:5]:
            meta = await future
            marker = f"enrich:{meta.partition}:{meta.offset}".encode()
            await producer.send(topics.replays, key=marker, value=b'{"replay": "rp-test"}')
        await producer.flush()
    finally:
        await producer.stop()


async def test_pages_cover_every_dead_letter_once_in_order(
    kafka: WeirSettings, pipeline_name: str
) -> None:
    await _dead_letters(kafka, pipeline_name)
    queue = DeadLetterQueue(kafka, pipeline_name)
    seen: list[str] = []
    pages = 0
    after: str | None = None
    while True:
        page = await queue.page(step="enrich", after=after, limit=40)
        assert len(page.entries) <= 40
        seen += [e.id for e in page.entries]
        pages += 1
        if page.next_after is None:
            break
        assert page.next_after == page.entries[-1].id
        after = page.next_after
    assert pages == 7  # 6 full pages and one of 10
    assert len(seen) == len(set(seen)) == TOTAL
    order = [tuple(int(x) for x in i.rsplit("/", 2)[1:]) for i in seen]
    assert order == sorted(order)  # partition, then offset

    everything = await queue.entries(step="enrich")
    assert [e.id for e in everything] == seen
    assert sum(e.replayed_by == "rp-test" for e in everything) == 5

    skipped = await queue.page(step="enrich", skip=100, limit=10)
    assert [e.id for e in skipped.entries] == seen[100:110]
    assert skipped.next_after == seen[109]

    timeouts = await queue.page(step="enrich", error_type="step_timeout", limit=1000)
    assert len(timeouts.entries) == len(range(0, TOTAL, 3)) and timeouts.next_after is None
    assert {e.letter.error_type for e in timeouts.entries} == {"step_timeout"}

    one = await queue.get(seen[57])
    assert one.id == seen[57]


async def test_the_command_prints_one_page_and_how_to_get_the_next(
    kafka: WeirSettings, pipeline_name: str, repo_root: Path
) -> None:
    await _dead_letters(kafka, pipeline_name)

    def weir(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weir", "dlq", "list", pipeline_name, "--json", *args],
            cwd=repo_root,
            env=worker_env(kafka),
            capture_output=True,
            text=True,
            timeout=120,
        )

    default = weir()
    assert default.returncode == 0, default.stderr
    assert len(default.stdout.splitlines()) == 100  # the default page
    first = weir("--limit", "60")
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(rows) == 60
    hint = first.stderr.split("--after ", 1)[1].split()[0]
    assert hint == rows[-1]["id"]
    second = weir("--limit", "60", "--after", hint)
    more = [json.loads(line) for line in second.stdout.splitlines()]
    assert len(more) == 60 and not {r["id"] for r in rows} & {r["id"] for r in more}
    by_offset = weir("--offset", "60", "--limit", "60")
    assert [json.loads(line)["id"] for line in by_offset.stdout.splitlines()] == [
        r["id"] for r in more
    ]
    last = weir("--offset", str(TOTAL - 10))
    assert len(last.stdout.splitlines()) == 10 and "--after" not in last.stderr
