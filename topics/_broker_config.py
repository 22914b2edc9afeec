"""The local broker's files and command lines: ``server.properties``, the JVM, storage format.

What ``LocalBroker`` writes and runs, as functions of its settings, kept apart
from the process it manages.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from weir.core.errors import BrokerError
from weir.topics._broker_host import HOST, require_tool, tail_text
from weir.topics._broker_security import BrokerSecurity
from weir.topics._kafka_jars import JAVA_WHY

__all__ = ["format_storage", "java_command", "server_properties", "write_properties"]

_LOG_CONFIG = Path(__file__).with_name("log4j2-broker.properties")
_FORMAT_TIMEOUT_S = 120.0


def server_properties(
    *,
    node_id: int,
    port: int,
    voters: Mapping[int, int],
    data_dir: Path,
    security: BrokerSecurity | None,
) -> dict[str, str]:
    """A KRaft node's ``server.properties``: broker and controller on ``port`` and ``port + 1``."""
    listener = "PLAINTEXT" if security is None else "SASL_SSL"
    client = f"{listener}://{HOST}:{port}"
    controller = f"CONTROLLER://{HOST}:{port + 1}"
    quorum = ",".join(f"{n}@{HOST}:{p + 1}" for n, p in sorted(voters.items()))
    # Internal topics as replicated as the cluster allows (one broker: one copy).
    replicas = min(3, len(voters))
    min_isr = str(max(1, replicas - 1))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": quorum,
        "listeners": f"{client},{controller}",
        "advertised.listeners": client,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
        "log.dirs": str(data_dir),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
        # After a crash the restarted broker cannot register until the controller times out
        # the dead one's session; 4 s instead of 9 s keeps crash recovery quick.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
        # Consumers of a fresh group start at once instead of after 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # weir creates its topics explicitly; a typo must not create a topic.
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        # Small segments keep a development disk small and retention effective.
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    if security is not None:
        props |= security.listener_properties(listener)
    return props


def write_properties(path: Path, props: Mapping[str, str]) -> None:
    """Write ``props`` to ``path``, readable by its owner only."""
    body = "".join(f"{key}={value}\n" for key, value in props.items())
    # Owner only: a secured broker's file holds its keystore and SCRAM passwords.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by weir (topics/broker.py) on every start; edits are overwritten.\n" + body
        )


def java_command(libs: Path, *, heap: str, logs_dir: Path) -> list[str]:
    """The JVM command line (up to the main class) for Kafka's jars in ``libs``."""
    java = require_tool("java", JAVA_WHY)
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        # A broker that ran out of heap should die visibly, not limp on.
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{libs}/*",
    ]


def format_storage(
    libs: Path,
    *,
    cluster_id: str,
    properties_file: Path,
    state_dir: Path,
    data_dir: Path,
    logs_dir: Path,
    security: BrokerSecurity | None,
) -> None:
    """Format the node's storage (``kafka.tools.StorageTool``), adding the SCRAM users."""
    cmd = [
        *java_command(libs, heap="256m", logs_dir=logs_dir),
        "-Dweir.log.level=WARN",
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(properties_file),
    ]
    if security is not None:
        for user in security.scram_users():
            cmd += ["--add-scram", user]
    try:
        done = subprocess.run(
            cmd,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FORMAT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"formatting the broker's storage in {data_dir} took over {_FORMAT_TIMEOUT_S:.0f}s"
        ) from exc
    if done.returncode != 0:
        raise BrokerError(
            f"formatting the broker's storage in {data_dir} failed"
            f" (exit {done.returncode}); delete {state_dir} to start from scratch."
            f" kafka.tools.StorageTool said:\n{tail_text(done.stdout + done.stderr)}"
        )
