"""Fixtures of the model-layer tests: real local model servers, stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests._model_servers import ModelServer


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[str], Awaitable[ModelServer]]]:
    """``await servers("name")`` starts a model server for this test."""
    started: list[ModelServer] = []

    async def start(name: str = "model") -> ModelServer:
        server = await ModelServer(name).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()
