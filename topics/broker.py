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
import base64
import contextlib
import fcntl
import hashlib
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import BrokerError
from weir.core.kafka import KafkaConnection
from weir.topics._broker_security import CLIENT_USER, BrokerSecurity

__all__ = ["BrokerStatus", "LocalBroker", "free_port_pair", "new_cluster_id"]

_HOST = "127.0.0.1"
_POM_TEMPLATE = Path(__file__).with_name("kafka-broker.pom.xml")
_LOG_CONFIG = Path(__file__).with_name("log4j2-broker.properties")
_FETCH_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0
_LOG_TAIL_LINES = 30
_POLL_S = 0.2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_JAVA_WHY = "Kafka needs a Java 17+ runtime (e.g. openjdk-17-jre-headless)"

T = TypeVar("T")


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
        self.bootstrap = f"{_HOST}:{self.port}"
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
        # Checked up front: jars without a JVM to run them are no use.
        _require_tool("java", _JAVA_WHY)
        mvn = _require_tool("mvn", "weir resolves Kafka's jars from Maven Central with Maven")
        pom_text = _POM_TEMPLATE.read_text()
        # The marker records what was fetched, so a changed pom or version fetches again.
        stamp = hashlib.sha256(f"{self.version}\n{pom_text}".encode()).hexdigest()
        marker = self.dist_dir / ".fetched"
        self.dist_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.dist_dir / ".lock"):
            if _read_text(marker) == stamp and self.libs_dir.is_dir():
                return self.libs_dir
            pom = self.dist_dir / "pom.xml"
            pom.write_text(pom_text)
            partial = self.dist_dir / "libs.partial"
            shutil.rmtree(partial, ignore_errors=True)
            cmd = [
                mvn,
                "-q",
                "-B",
                # Plain text: the output may end up in an error message.
                "-Dstyle.color=never",
                "-f",
                str(pom),
                f"-Dkafka.version={self.version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={partial}",
                "-DincludeScope=runtime",
            ]
            try:
                # cwd keeps anything Maven writes (target/) in the cache, not the caller's cwd.
                done = subprocess.run(
                    cmd,
                    cwd=self.dist_dir,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=_FETCH_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(
                    f"fetching Kafka {self.version} with Maven took over {_FETCH_TIMEOUT_S:.0f}s;"
                    " check access to Maven Central (repo.maven.apache.org)"
                ) from exc
            # Debian's Maven colours its output even with style.color=never.
            output = _ANSI.sub("", (done.stdout or "") + (done.stderr or ""))
            if done.returncode != 0:
                raise BrokerError(
                    f"fetching Kafka {self.version} with Maven failed (exit {done.returncode});"
                    " check the version exists on Maven Central (org.apache.kafka:kafka_2.13)"
                    f" and that Maven can reach it. Maven said:\n{_tail_text(output)}"
                )
            if not (partial / f"kafka_2.13-{self.version}.jar").is_file():
                raise BrokerError(
                    f"Maven finished but {partial} has no kafka_2.13-{self.version}.jar;"
                    f" Maven said:\n{_tail_text(output)}"
                )
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            partial.rename(self.libs_dir)
            # Written last: its presence means the libs dir is complete.
            marker.write_text(stamp)
        return self.libs_dir

    # -- start -------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> BrokerStatus:
        """Start the broker unless it runs; with ``wait``, return once it serves metadata.

        Blocking; safe to call with or without a running event loop.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.state_dir / "broker.lock"):
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
        with _locked(self.state_dir / "broker.lock"):
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
        _signal_group(pid, signal.SIGKILL)
        self._wait_gone(pid, timeout=10.0)

    # -- status ------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        """Report whether the broker process is alive and its client port accepts."""
        pid = self._live_pid()
        return BrokerStatus(
            running=pid is not None and _port_accepts(self.port),
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
        if not _port_accepts(self.port, timeout=min(timeout, 1.0)):
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
            listed = _run_coroutine(brokers())
        except (KafkaError, OSError, TimeoutError):
            return False
        return any(b.get("node_id") == self.node_id and b.get("port") == self.port for b in listed)

    def _live_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is this broker."""
        text = _read_text(self.pid_file)
        if text is None or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        if self._proc is not None and self._proc.pid == pid:
            return pid if self._proc.poll() is None else None
        # The pid may have been reused after a crash or reboot: only a JVM running this
        # state dir's server.properties counts, so stop() never signals a stranger.  An
        # exited child that another instance spawned is a zombie, whose command line is empty.
        cmdline = _cmdline(pid)
        if cmdline is None or "kafka.Kafka" not in cmdline:
            return None
        return pid if str(self.properties_file) in cmdline else None

    def _check_ports_free(self) -> None:
        if self.controller_port > 65535:
            raise BrokerError(
                f"broker port {self.port} leaves no room for the controller on port + 1;"
                " choose WEIR_BROKER_PORT below 65535"
            )
        for port, role in ((self.port, "client"), (self.controller_port, "controller")):
            if not _port_free(port):
                raise BrokerError(
                    f"cannot start the Kafka broker: {_HOST}:{port} ({role} port) is already in"
                    f" use by another process. Stop that process, or choose another port with"
                    f" WEIR_BROKER_PORT (the broker uses the port and port + 1)."
                )

    def _write_properties(self) -> None:
        listener = "PLAINTEXT" if self.security is None else "SASL_SSL"
        client = f"{listener}://{_HOST}:{self.port}"
        controller = f"CONTROLLER://{_HOST}:{self.controller_port}"
        quorum = ",".join(f"{n}@{_HOST}:{port + 1}" for n, port in sorted(self.voters.items()))
        # Internal topics as replicated as the cluster allows (one broker: one copy).
        replicas = min(3, len(self.voters))
        min_isr = str(max(1, replicas - 1))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": quorum,
            "listeners": f"{client},{controller}",
            "advertised.listeners": client,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
            "log.dirs": str(self.data_dir),
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
        if self.security is not None:
            props |= self.security.listener_properties(listener)
        body = "".join(f"{key}={value}\n" for key, value in props.items())
        # Owner only: a secured broker's file holds its keystore and SCRAM passwords.
        fd = os.open(self.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "# Written by weir (topics/broker.py) on every start; edits are overwritten.\n"
                + body
            )

    @property
    def _mode(self) -> str:
        return "secure" if self.security is not None else "plaintext"

    def _check_mode(self) -> None:
        """Refuse to mix modes: SCRAM users are created when the storage is formatted, and a
        running broker probed on the other listener would never look ready."""
        formatted = (_read_text(self.state_dir / "listener") or "plaintext").strip()
        if formatted != self._mode:
            raise BrokerError(
                f"the broker in {self.state_dir} serves a {formatted} listener, not"
                f" {self._mode} (WEIR_BROKER_SECURE, --secure); use another state directory"
                f" (WEIR_HOME), or stop it and delete {self.state_dir}"
            )

    def _format(self, libs: Path) -> None:
        if (self.data_dir / "meta.properties").is_file():
            self._check_mode()
            return
        cluster_id = _read_text(self.cluster_id_file)
        if not cluster_id:
            cluster_id = self._cluster_id or new_cluster_id()
            self.cluster_id_file.write_text(cluster_id)
        cluster_id = cluster_id.strip()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *self._java_command(libs, heap="256m"),
            "-Dweir.log.level=WARN",
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
            str(self.properties_file),
        ]
        if self.security is not None:
            for user in self.security.scram_users():
                cmd += ["--add-scram", user]
        try:
            done = subprocess.run(
                cmd,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_FORMAT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"formatting the broker's storage in {self.data_dir} took over"
                f" {_FORMAT_TIMEOUT_S:.0f}s"
            ) from exc
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the broker's storage in {self.data_dir} failed"
                f" (exit {done.returncode}); delete {self.state_dir} to start from scratch."
                f" kafka.tools.StorageTool said:\n{_tail_text(done.stdout + done.stderr)}"
            )
        (self.state_dir / "listener").write_text(self._mode)

    def _java_command(self, libs: Path, *, heap: str) -> list[str]:
        java = _require_tool("java", _JAVA_WHY)
        return [
            java,
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # A broker that ran out of heap should die visibly, not limp on.
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            f"{libs}/*",
        ]

    def _spawn(self, libs: Path) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._log_offset = self.log_file.stat().st_size
        cmd = [*self._java_command(libs, heap=self.heap), "kafka.Kafka", str(self.properties_file)]
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
                preexec_fn=_raise_file_limit,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def _terminate(self, pid: int, *, timeout: float) -> None:
        _signal_group(pid, signal.SIGTERM)
        if self._wait_gone(pid, timeout=timeout):
            return
        _signal_group(pid, signal.SIGKILL)
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
                parts.append(f"\n--- last lines of {path} ---\n{_tail_text(text)}")
        return "".join(parts) or f"\n(no output in {self.logs_dir})"


# -- helpers ---------------------------------------------------------------------------


def free_port_pair() -> int:
    """A port p on 127.0.0.1 with p and p + 1 free (a broker's client and controller ports).

    Chosen below Linux's ephemeral range, so outgoing client connections cannot take
    them between this check and a broker's start, or its restart.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000, 2)
        if _port_free(port) and _port_free(port + 1):
            return port
    raise BrokerError(f"no free pair of adjacent ports on {_HOST} in 20000-32000")


def _raise_file_limit() -> None:
    """In the broker's process: open files up to the hard limit.

    Every partition holds files open; a development broker that has seen many
    pipelines' topics otherwise dies of "Too many open files".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(
            f"`{name}` is not on PATH: {why}. Install it, or point weir at an existing"
            " cluster with WEIR_KAFKA_BOOTSTRAP"
        )
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so concurrent processes take turns."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _tail_text(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own generator avoids a leading '-', which CLIs would read as an option.
        if not cid.startswith("-"):
            return cid


def _cmdline(pid: int) -> str | None:
    """The command line of a live, non-zombie process, or None."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        # A zombie has an empty command line.
        return raw.replace(b"\0", b" ").decode(errors="replace") or None
    done = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    )
    line = done.stdout.strip()
    if done.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[-1]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The broker leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _port_free(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` as the JVM does (SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like Java's server sockets: lingering TIME_WAIT connections of a previous broker
        # must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _port_accepts(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in a thread of its own.

    ``wait_ready`` blocks and may be called from a thread that runs a loop already.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weir-broker-probe") as pool:
        return pool.submit(asyncio.run, coro).result()
