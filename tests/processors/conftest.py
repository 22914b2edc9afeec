"""Fixtures of the model-layer tests: real local model servers, stopped after each test, and
the model services that calls made outside a worker use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests._model_servers import ModelServer
from weir.core.config import load_settings
from weir.processors import ModelServices


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


@pytest.fixture(autouse=True)
async def model_services() -> AsyncIterator[ModelServices]:
    """Services for calls outside a worker, stopped (watchers, ledgers) after each test."""
    async with ModelServices(load_settings()) as services:
        yield services
