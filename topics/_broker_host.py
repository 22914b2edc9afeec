"""The local broker's host: ports, processes, lock files and the tools it runs.

Plain functions over the operating system, kept apart from ``LocalBroker`` (what
the broker does with them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from weir.core.errors import BrokerError

__all__ = [
    "HOST",
    "LOG_TAIL_LINES",
    "cmdline",
    "free_port_pair",
    "locked",
    "new_cluster_id",
    "port_accepts",
    "port_free",
    "raise_file_limit",
    "read_text",
    "require_tool",
    "run_coroutine",
    "signal_group",
    "tail_text",
]

HOST = "127.0.0.1"
LOG_TAIL_LINES = 30

T = TypeVar("T")


def free_port_pair() -> int:
    """A port p on 127.0.0.1 with p and p + 1 free (a broker's client and controller ports).

    Chosen below Linux's ephemeral range, so outgoing client connections cannot take
    them between this check and a broker's start, or its restart.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000, 2)
        if port_free(port) and port_free(port + 1):
            return port
    raise BrokerError(f"no free pair of adjacent ports on {HOST} in 20000-32000")


def raise_file_limit() -> None:
    """In the broker's process: open files up to the hard limit.

    Every partition holds files open; a development broker that has seen many
    pipelines' topics otherwise dies of "Too many open files".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(
            f"`{name}` is not on PATH: {why}. Install it, or point weir at an existing"
            " cluster with WEIR_KAFKA_BOOTSTRAP"
        )
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so concurrent processes take turns."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def tail_text(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own generator avoids a leading '-', which CLIs would read as an option.
        if not cid.startswith("-"):
            return cid


def cmdline(pid: int) -> str | None:
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


def signal_group(pid: int, sig: signal.Signals) -> None:
    # The broker leads its own session, so its process group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def port_free(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` as the JVM does (SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like Java's server sockets: lingering TIME_WAIT connections of a previous broker
        # must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in a thread of its own.

    ``wait_ready`` blocks and may be called from a thread that runs a loop already.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weir-broker-probe") as pool:
        return pool.submit(asyncio.run, coro).result()
