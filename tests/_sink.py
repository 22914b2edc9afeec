"""``weir sink`` as a real process, for the observability tests."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import worker_env
from weir.core.config import WeirSettings
from weir.core.urls import SecretUrl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sink_settings(kafka: WeirSettings, name: str, dsn: str, **extra: object) -> WeirSettings:
    """Settings of a sink (and the workers feeding it) isolated on a trace topic of its own."""
    return kafka.model_copy(
        update={
            "trace_topic": f"weir.traces.{name}",
            "clickhouse_dsn": SecretUrl(dsn),
            "sink_group": f"sink-{name}",
            "sink_batch_size": 500,
            "sink_flush_interval_s": 0.3,
            "sink_max_backoff_s": 1.0,
            "sink_web_port": free_port(),
            **extra,
        }
    )


class SinkProcess:
    """``python -m weir sink`` with its log in a file."""

    def __init__(self, repo: Path, settings: WeirSettings, log: Path) -> None:
        self.log = log
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.sink_web_port}"
        env = worker_env(
            settings,
            WEIR_TRACE_TOPIC=settings.trace_topic,
            WEIR_CLICKHOUSE_DSN=(
                settings.clickhouse_dsn.get_secret_value() if settings.clickhouse_dsn else ""
            ),
            WEIR_SINK_GROUP=settings.sink_group,
            WEIR_SINK_BATCH_SIZE=str(settings.sink_batch_size),
            WEIR_SINK_FLUSH_INTERVAL_S=str(settings.sink_flush_interval_s),
            WEIR_SINK_MAX_BACKOFF_S=str(settings.sink_max_backoff_s),
            WEIR_SINK_WEB_PORT=str(settings.sink_web_port),
            WEIR_SINK_START=settings.sink_start,
        )
        self._fh = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir", "sink"],
            cwd=repo,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    async def wait_placed(self, timeout: float = 60) -> None:
        """Until the sink has its partitions and knows where each starts."""
        async with asyncio.timeout(timeout):
            while not re.search(r"sink placed \d+ partition", self.text()):
                if self.proc.poll() is not None:
                    raise AssertionError(f"sink exited:\n{self.text()[-3000:]}")
                await asyncio.sleep(0.2)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._fh.close()
        return code
