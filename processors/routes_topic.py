"""The routes topic's records: read all of them, publish some, tell rule sets from notes.

Rule sets (``weir.processors.routes``), router announcements
(``weir.processors.announcements``) and router statuses
(``weir.processors.router_status``) share the one-partition routes topic; a
header marks the workers' notes so each reader takes only its own records.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from weir.core.config import WeirSettings
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import ROUTES_HISTORY_TOPIC, ROUTES_TOPIC, global_topic_specs

__all__ = [
    "ANNOUNCEMENT_HEADER",
    "ANNOUNCEMENT_KIND",
    "ensure_topics",
    "is_announcement",
    "publish",
    "read_all",
]


async def ensure_topics(settings: WeirSettings) -> None:
    """Create the routes topic and its history if missing."""
    wanted = {ROUTES_TOPIC, ROUTES_HISTORY_TOPIC}
    async with TopicAdmin(settings) as admin:
        await admin.ensure([s for s in global_topic_specs(settings) if s.name in wanted])


ANNOUNCEMENT_HEADER = "weir.record"
"""Header marking a worker's note on the routes topic (not a rule set): a router
announcement (``weir.processors.announcements``) or a status
(``weir.processors.router_status``)."""
ANNOUNCEMENT_KIND = b"router-announcement"


def is_announcement(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a routes-topic record is a worker's note rather than a rule set."""
    return any(k == ANNOUNCEMENT_HEADER for k, _ in headers or ())


async def read_all(
    settings: WeirSettings, topic: str, *, announcements: bool = False
) -> list[tuple[str, bytes | None, int]]:
    """``(key, value, timestamp)`` of every record of one-partition ``topic`` as of now.

    Rule sets only, or with ``announcements`` the workers' router announcements only.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[tuple[str, bytes | None, int]] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    if r.key is not None and is_announcement(r.headers) == announcements:
                        out.append((r.key.decode(), r.value, r.timestamp))
    finally:
        await stop_consumer(consumer)
    return out


async def publish(
    settings: WeirSettings,
    records: Iterable[tuple[str, bytes | None]],
    *,
    history: bool = True,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Write ``records`` to the routes topic (and, with ``history``, to its history first)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in records:
            # History first: a version in force is always in the history.
            if history:
                await producer.send_and_wait(ROUTES_HISTORY_TOPIC, value, key=key.encode())
            await producer.send_and_wait(ROUTES_TOPIC, value, key=key.encode(), headers=headers)
    finally:
        await producer.stop()
