"""Shared fixtures: one real Kafka broker for the whole session, started by weir itself."""

from __future__ import annotations

import faulthandler
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from weir.core.config import BrokerSettings, WeirSettings, load_settings
from weir.topics.broker import free_port_pair

_CRASH_FILE = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # The real stderr (output capture is suspended here), for crash reports: a test that
    # segfaults kills the process, and its captured output with it.
    config.stash[_CRASH_FILE] = os.dup(2)


@pytest.fixture(autouse=True)
def _crash_reports(pytestconfig: pytest.Config) -> None:
    """Before each test, fatal signals go to faulthandler on the real stderr: an earlier
    test's embedded ClickHouse session installs handlers that die without a word, and the
    store re-arms faulthandler onto the captured stderr, which a crash loses."""
    if faulthandler.is_enabled():
        faulthandler.disable()
        faulthandler.enable(file=pytestconfig.stash[_CRASH_FILE], all_threads=True)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeirSettings]:
    """Settings pointing at a live broker: ``WEIR_TEST_KAFKA_BOOTSTRAP``, or a local one."""
    external = os.environ.get("WEIR_TEST_KAFKA_BOOTSTRAP")
    base = dict(
        partitions=4,
        commit_interval_s=0.5,
        shutdown_timeout_s=15.0,
        step_timeout_s=30.0,
        max_payload_bytes=64 * 1024,
        web_port=0,
    )
    if external:
        yield load_settings(kafka_bootstrap=external, **base)
        return
    from weir.topics.broker import LocalBroker

    port = free_port_pair()
    local = load_settings(broker=BrokerSettings(port=port), **base)
    broker = LocalBroker(local, state_dir=tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        yield local
    finally:
        broker.stop()


@pytest.fixture
def pipeline_name(request: pytest.FixtureRequest) -> str:
    """A pipeline name unique to this test, so tests never share topics."""
    base = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return f"{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def worker_env(settings: WeirSettings, **extra: str) -> dict[str, str]:
    """Environment for a ``weir worker`` subprocess that talks to the test broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")}
    env.update(
        WEIR_KAFKA_BOOTSTRAP=settings.bootstrap_servers,
        WEIR_PARTITIONS=str(settings.partitions),
        WEIR_COMMIT_INTERVAL_S=str(settings.commit_interval_s),
        WEIR_SHUTDOWN_TIMEOUT_S=str(settings.shutdown_timeout_s),
        WEIR_MAX_PAYLOAD_BYTES=str(settings.max_payload_bytes),
        WEIR_WEB_PORT=str(settings.web_port),
        PYTHONUNBUFFERED="1",
    )
    env.update(_security_env(settings))
    if settings.kafka_client != "aiokafka":
        env["WEIR_KAFKA_CLIENT"] = settings.kafka_client
    env.update(extra)
    return env


def _security_env(settings: WeirSettings) -> dict[str, str]:
    """The TLS/SASL settings of ``settings`` as ``WEIR_KAFKA_*`` (secrets stay references)."""
    env: dict[str, str] = {}
    for name in (
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_oauth_token_url",
        "kafka_oauth_client_id",
        "kafka_oauth_client_secret",
    ):
        value = getattr(settings, name)
        if value is None or value == "PLAINTEXT":
            continue
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        env[f"WEIR_{name.upper()}"] = text
    return env
