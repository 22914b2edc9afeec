"""A real single-node Apache Kafka broker (KRaft, loopback only) for development and tests.

``LocalBroker`` resolves the broker's jars from Maven Central with ``mvn`` once,
formats its storage once, and runs ``kafka.Kafka`` on Java 17+ as a detached process
that outlives the Python process that started it.  A pid file in the state directory
lets any later process report, restart or stop it.

Layout::

    <home>/kafka-<version>/libs/         jars, shared by every state directory
    <state_dir>/server.properties        rewritten on every start
    <state_dir>/data/                    topic data and the KRaft metadata log
    <state_dir>/logs/server.log          the broker's log (log4j2)
    <state_dir>/logs/kafka.out           the JVM's stdout and stderr
    <state_dir>/broker.pid, cluster.id
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError
from weir.core.kafka import KafkaConnection
from weir.topics._broker_config import (
    format_storage,
    java_command,
    server_properties,
    write_properties,
)
from weir.topics._broker_host import (
    HOST,
    cmdline,
    free_port_pair,
    locked,
    new_cluster_id,
    port_accepts,
    port_free,
    raise_file_limit,
    read_text,
    run_coroutine,
    signal_group,
    tail_text,
)
from weir.topics._broker_security import CLIENT_USER, BrokerSecurity
from weir.topics._kafka_jars import fetch_jars

__all__ = ["BrokerStatus", "LocalBroker", "free_port_pair", "new_cluster_id"]

_POLL_S = 0.2


@dataclass(frozen=True)
class BrokerStatus:
    """What ``LocalBroker.status`` observed."""

    running: bool
    """The process is alive and its client port accepts connections."""
    pid: int | None
    """The broker's process id while the process is alive."""
    bootstrap: str
    version: str
    data_dir: Path
    log_file: Path


class LocalBroker:
    """Fetch, format, start, stop and report one local Kafka broker."""

    def __init__(
        self,
        settings: WeirSettings,
        *,
        state_dir: Path | None = None,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
    ) -> None:
        """``node_id``, ``voters`` (node id -> client port of every node; the controller
        listens on port + 1) and ``cluster_id`` make this one node of a multi-node cluster
        of such brokers; by default it is a cluster of its own."""
        self.version = settings.broker.kafka_version
        self.port = settings.broker.port
        self.node_id = node_id
        self.voters = dict(voters) if voters else {node_id: self.port}
        self._cluster_id = cluster_id
        self.controller_port = self.port + 1
        self.heap = settings.broker.heap
        self.start_timeout_s = settings.broker.start_timeout_s
        self.bootstrap = f"{HOST}:{self.port}"
        self.dist_dir = settings.home / f"kafka-{self.version}"
        self.libs_dir = self.dist_dir / "libs"
        self.state_dir = state_dir if state_dir is not None else settings.home / "broker"
        self.data_dir = self.state_dir / "data"
        self.logs_dir = self.state_dir / "logs"
        self.log_file = self.logs_dir / "server.log"
        self.out_file = self.logs_dir / "kafka.out"
        self.properties_file = self.state_dir / "server.properties"
        self.pid_file = self.state_dir / "broker.pid"
        self.cluster_id_file = self.state_dir / "cluster.id"
        self.security = (
            BrokerSecurity(self.state_dir / "secure") if settings.broker.secure else None
        )
        # Only set in the process that spawned the broker; lets it reap the child and
        # report its exit code.
        self._proc: subprocess.Popen[bytes] | None = None
        # Size of server.log when this instance spawned the broker: errors show only what
        # that run logged.
        self._log_offset = 0

    # -- fetch -------------------------------------------------------------------------

    def fetch(self) -> Path:
        """Resolve the broker's jars into the shared cache once; return the libs dir."""
        return fetch_jars(version=self.version, dist_dir=self.dist_dir)

    # -- start -------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> BrokerStatus:
        """Start the broker unless it runs; with ``wait``, return once it serves metadata.

        Blocking; safe to call with or without a running event loop.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.state_dir / "broker.lock"):
            pid = self._live_pid()
            if pid is not None:
                self._check_mode()
            else:
                self._check_ports_free()
                libs = self.fetch()
                if self.security is not None:
                    self.security.ensure()
                self._write_properties()
                self._format(libs)
                self._spawn(libs)
        if wait:
            return self.wait_ready()
        return self.status()

    def wait_ready(self, timeout: float | None = None) -> BrokerStatus:
        """Block until the broker answers a Metadata request listing itself.

        Raises ``BrokerError`` with the log tail if the process exits or the timeout
        (``broker.start_timeout_s`` by default) passes; on timeout the broker is stopped.
        """
        limit = self.start_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            pid = self._live_pid()
            if pid is None:
                if self._proc is None and not self.pid_file.exists():
                    raise BrokerError(
                        f"no Kafka broker is running from {self.state_dir}; call start() first"
                    )
                self.pid_file.unlink(missing_ok=True)
                code = self._proc.returncode if self._proc is not None else None
                how = f" with code {code}" if code is not None else ""
                raise BrokerError(
                    f"Kafka broker on {self.bootstrap} exited{how} while starting."
                    f"{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if self._probe_ready(timeout=max(0.5, min(5.0, remaining))):
                return self.status()
            if remaining <= 0:
                self._terminate(pid, timeout=10.0)
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"Kafka broker on {self.bootstrap} was not ready within {limit:g}s"
                    " (raise WEIR_BROKER_START_TIMEOUT_S on a slow machine); it was stopped."
                    f"{self._log_tail()}"
                )
            time.sleep(_POLL_S)

    async def wait_ready_async(self) -> BrokerStatus:
        """``wait_ready`` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_ready)

    # -- stop --------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the broker down cleanly (SIGTERM, then SIGKILL); no-op if it is not running."""
        if not self.state_dir.is_dir():
            return
        with locked(self.state_dir / "broker.lock"):
            pid = self._live_pid()
            if pid is not None:
                self._terminate(pid, timeout=timeout)
            self.pid_file.unlink(missing_ok=True)

    def restart(self) -> BrokerStatus:
        """Stop, then start on the same data; return once ready."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the broker as a crash would, leaving its pid file behind."""
        pid = self._live_pid()
        if pid is None:
            return
        signal_group(pid, signal.SIGKILL)
        self._wait_gone(pid, timeout=10.0)

    # -- status ------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        """Report whether the broker process is alive and its client port accepts."""
        pid = self._live_pid()
        return BrokerStatus(
            running=pid is not None and port_accepts(self.port),
            pid=pid,
            bootstrap=self.bootstrap,
            version=self.version,
            data_dir=self.data_dir,
            log_file=self.log_file,
        )

    def connection(self) -> KafkaConnection:
        """How weir's own tools connect: the secured listener as the broker's admin user."""
        if self.security is None:
            return KafkaConnection(bootstrap=self.bootstrap, client_id="weir-broker")
        return KafkaConnection(
            bootstrap=self.bootstrap,
            client_id="weir-broker",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="admin",
            sasl_password=SecretStr(self.security.admin_password),
            ssl_context=create_ssl_context(cafile=self.security.ca_file),
        )

    def client_environment(self) -> dict[str, str]:
        """The ``WEIR_KAFKA_*`` settings a client needs to connect (the password by reference)."""
        env = {"WEIR_KAFKA_BOOTSTRAP": self.bootstrap}
        if self.security is not None:
            env |= {
                "WEIR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "WEIR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "WEIR_KAFKA_SASL_USERNAME": CLIENT_USER,
                "WEIR_KAFKA_SASL_PASSWORD": f"file:{self.security.client_password_file}",
                "WEIR_KAFKA_SSL_CAFILE": str(self.security.ca_file),
            }
        return env

    # -- internals ---------------------------------------------------------------------

    def _probe_ready(self, *, timeout: float) -> bool:
        """Whether the broker answers Metadata and lists itself as a live broker.

        A KRaft broker accepts connections before it has caught up with the metadata log and
        been unfenced; until then Metadata lists no brokers and topic creation fails.
        """
        if not port_accepts(self.port, timeout=min(timeout, 1.0)):
            return False  # not even listening: spare the client's connection errors

        async def brokers() -> list[dict[str, Any]]:
            admin = self.connection().admin(request_timeout_ms=int(timeout * 1000))
            try:
                async with asyncio.timeout(timeout):
                    await admin.start()
                    cluster = await admin.describe_cluster()
            finally:
                await admin.close()
            return list(cluster.get("brokers", []))

        try:
            listed = run_coroutine(brokers())
        except (KafkaError, OSError, TimeoutError):
            return False
        return any(b.get("node_id") == self.node_id and b.get("port") == self.port for b in listed)

    def _live_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is this broker."""
        text = read_text(self.pid_file)
        if text is None or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        if self._proc is not None and self._proc.pid == pid:
            return pid if self._proc.poll() is None else None
        # The pid may have been reused after a crash or reboot: only a JVM running this
        # state dir's server.properties counts, so stop() never signals a stranger.  An
        # exited child that another instance spawned is a zombie, whose command line is empty.
        command = cmdline(pid)
        if command is None or "kafka.Kafka" not in command:
            return None
        return pid if str(self.properties_file) in command else None

    def _check_ports_free(self) -> None:
        if self.controller_port > 65535:
            raise BrokerError(
                f"broker port {self.port} leaves no room for the controller on port + 1;"
                " choose WEIR_BROKER_PORT below 65535"
            )
        for port, role in ((self.port, "client"), (self.controller_port, "controller")):
            if not port_free(port):
                raise BrokerError(
                    f"cannot start the Kafka broker: {HOST}:{port} ({role} port) is already in"
                    f" use by another process. Stop that process, or choose another port with"
                    f" WEIR_BROKER_PORT (the broker uses the port and port + 1)."
                )

    def _write_properties(self) -> None:
        props = server_properties(
            node_id=self.node_id,
            port=self.port,
            voters=self.voters,
            data_dir=self.data_dir,
            security=self.security,
        )
        write_properties(self.properties_file, props)

    def _format(self, libs: Path) -> None:
        if (self.data_dir / "meta.properties").is_file():
            self._check_mode()
            return
        cluster_id = read_text(self.cluster_id_file)
        if not cluster_id:
            cluster_id = self._cluster_id or new_cluster_id()
            self.cluster_id_file.write_text(cluster_id)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        format_storage(
            libs,
            cluster_id=cluster_id.strip(),
            properties_file=self.properties_file,
            state_dir=self.state_dir,
            data_dir=self.data_dir,
            logs_dir=self.logs_dir,
            security=self.security,
        )
        (self.state_dir / "listener").write_text(self._mode)

    @property
    def _mode(self) -> str:
        return "secure" if self.security is not None else "plaintext"

    def _check_mode(self) -> None:
        """Refuse to mix modes: SCRAM users are created when the storage is formatted, and a
        running broker probed on the other listener would never look ready."""
        formatted = (read_text(self.state_dir / "listener") or "plaintext").strip()
        if formatted != self._mode:
            raise BrokerError(
                f"the broker in {self.state_dir} serves a {formatted} listener, not"
                f" {self._mode} (WEIR_BROKER_SECURE, --secure); use another state directory"
                f" (WEIR_HOME), or stop it and delete {self.state_dir}"
            )

    def _spawn(self, libs: Path) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._log_offset = self.log_file.stat().st_size
        cmd = [
            *java_command(libs, heap=self.heap, logs_dir=self.logs_dir),
            "kafka.Kafka",
            str(self.properties_file),
        ]
        with self.out_file.open("wb") as out:
            # A new session: the broker outlives this process and ignores its terminal's
            # Ctrl-C; stop() signals the whole group.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=raise_file_limit,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def _terminate(self, pid: int, *, timeout: float) -> None:
        signal_group(pid, signal.SIGTERM)
        if self._wait_gone(pid, timeout=timeout):
            return
        signal_group(pid, signal.SIGKILL)
        if not self._wait_gone(pid, timeout=10.0):
            raise BrokerError(f"Kafka broker (pid {pid}) survived SIGKILL; check it with ps")

    def _wait_gone(self, pid: int, *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._live_pid() != pid:
                return True
            time.sleep(0.1)
        return self._live_pid() != pid

    def _log_tail(self) -> str:
        parts: list[str] = []
        for path in (self.out_file, self.log_file):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            # A rotated log is shorter than the offset; then all of it is this run's.
            if path == self.log_file and len(raw) >= self._log_offset:
                raw = raw[self._log_offset :]
            text = raw.decode(errors="replace")
            if text.strip():
                parts.append(f"\n--- last lines of {path} ---\n{tail_text(text)}")
        return "".join(parts) or f"\n(no output in {self.logs_dir})"
