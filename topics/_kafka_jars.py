"""The local broker's jars: Kafka and its dependencies, resolved from Maven Central once.

The jars live in ``<home>/kafka-<version>/libs/``, shared by every state directory;
a marker records what was fetched, so a changed pom or version fetches again.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from weir.core.errors import BrokerError
from weir.topics._broker_host import locked, read_text, require_tool, tail_text

__all__ = ["JAVA_WHY", "fetch_jars"]

_POM_TEMPLATE = Path(__file__).with_name("kafka-broker.pom.xml")
_FETCH_TIMEOUT_S = 900.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
JAVA_WHY = "Kafka needs a Java 17+ runtime (e.g. openjdk-17-jre-headless)"


def fetch_jars(*, version: str, dist_dir: Path) -> Path:
    """Resolve Kafka ``version``'s jars into ``dist_dir/libs`` once; return that directory."""
    libs_dir = dist_dir / "libs"
    # Checked up front: jars without a JVM to run them are no use.
    require_tool("java", JAVA_WHY)
    mvn = require_tool("mvn", "weir resolves Kafka's jars from Maven Central with Maven")
    pom_text = _POM_TEMPLATE.read_text()
    # The marker records what was fetched, so a changed pom or version fetches again.
    stamp = hashlib.sha256(f"{version}\n{pom_text}".encode()).hexdigest()
    marker = dist_dir / ".fetched"
    dist_dir.mkdir(parents=True, exist_ok=True)
    with locked(dist_dir / ".lock"):
        if read_text(marker) == stamp and libs_dir.is_dir():
            return libs_dir
        pom = dist_dir / "pom.xml"
        pom.write_text(pom_text)
        partial = dist_dir / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            # Plain text: the output may end up in an error message.
            "-Dstyle.color=never",
            "-f",
            str(pom),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        try:
            # cwd keeps anything Maven writes (target/) in the cache, not the caller's cwd.
            done = subprocess.run(
                cmd,
                cwd=dist_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_FETCH_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"fetching Kafka {version} with Maven took over {_FETCH_TIMEOUT_S:.0f}s;"
                " check access to Maven Central (repo.maven.apache.org)"
            ) from exc
        # Debian's Maven colours its output even with style.color=never.
        output = _ANSI.sub("", (done.stdout or "") + (done.stderr or ""))
        if done.returncode != 0:
            raise BrokerError(
                f"fetching Kafka {version} with Maven failed (exit {done.returncode});"
                " check the version exists on Maven Central (org.apache.kafka:kafka_2.13)"
                f" and that Maven can reach it. Maven said:\n{tail_text(output)}"
            )
        if not (partial / f"kafka_2.13-{version}.jar").is_file():
            raise BrokerError(
                f"Maven finished but {partial} has no kafka_2.13-{version}.jar;"
                f" Maven said:\n{tail_text(output)}"
            )
        shutil.rmtree(libs_dir, ignore_errors=True)
        partial.rename(libs_dir)
        # Written last: its presence means the libs dir is complete.
        marker.write_text(stamp)
    return libs_dir
