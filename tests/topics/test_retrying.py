"""``retrying``: Kafka errors are retried until ``timeout``; anything else is not."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from weir.topics._aiokafka import retrying


async def test_kafka_errors_are_retried_until_the_operation_answers(caplog):
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise KafkaConnectionError("broker restarting")
        return "answered"

    with caplog.at_level(logging.INFO, logger="weir.kafka"):
        assert await retrying(flaky, what="reading offsets", timeout=10) == "answered"
    assert calls == 3
    assert [r.getMessage() for r in caplog.records][:1] == [
        "reading offsets failed (KafkaConnectionError: broker restarting); retrying in 0.1s"
    ]


async def test_the_last_kafka_error_is_raised_once_the_timeout_would_pass():
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise KafkaConnectionError(f"down {calls}")

    with pytest.raises(KafkaConnectionError, match=r"down \d+"):
        await retrying(down, what="connecting", timeout=0.5)
    assert 2 <= calls <= 5  # 0.1 s, 0.2 s, ... never a sleep past the half second


async def test_other_errors_are_not_retried():
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not the broker")

    with pytest.raises(ValueError, match="a bug"):
        await retrying(broken, what="reading", timeout=10)
    assert calls == 1


async def test_a_lambda_returning_an_awaitable_is_awaited():
    async def offsets() -> dict[str, int]:
        return {"p0": 7}

    assert await retrying(lambda: offsets(), what="reading first offsets") == {"p0": 7}
