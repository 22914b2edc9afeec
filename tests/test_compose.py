"""docker-compose.yml cannot run here (no Docker engine); check what a parse would."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_has_kafka_clickhouse_and_a_worker() -> None:
    services = _compose()["services"]
    assert {"kafka", "clickhouse", "worker"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    env = services["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["worker"]["environment"]["WEIR_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_every_published_port_is_bound_to_loopback() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_references_resolve() -> None:
    doc = _compose()
    services = doc["services"]
    volumes = set(doc.get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes", []):
            source = str(mount).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"


def test_kafka_version_matches_the_local_broker() -> None:
    from weir.core.config import BrokerSettings

    image = _compose()["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{BrokerSettings().kafka_version}"
