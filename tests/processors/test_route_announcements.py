"""Workers announce their routers and report what they run; rules are checked against them.

A real ``weir worker`` process runs a routed pipeline; ``weir routes apply`` and
``weir submit --option`` run as real commands against the test broker.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import worker_env
from weir.processors.announcements import read_announcements
from weir.processors.router_status import read_statuses
from weir.processors.routes import apply_rule_set
from weir.processors.rules import RuleSet

pytestmark = pytest.mark.kafka

MODULE = """
from weir.processors import LocalModel, ModelEndpoint, Router
from weir.streams import Pipeline

fast = ModelEndpoint("{name}-fast", provider=LocalModel(model=lambda messages: "fast"))
big = ModelEndpoint("{name}-big", provider=LocalModel(model=lambda messages: "big"))
router = Router("{name}-router", default=big, endpoints=[fast])
pipeline = Pipeline("{name}")


@pipeline.step()
async def answer(text: str) -> str:
    return (await router.chat([{{"role": "user", "content": text}}])).endpoint
"""

RULES = """router: {name}-router
default: {name}-big
rules:
  - name: urgent
    condition: options.latency_sla < 500
    endpoint: {endpoint}
"""


class WorkerProcess:
    def __init__(self, cwd: Path, env: dict[str, str], target: str) -> None:
        self.log = cwd / "worker.log"
        self._fh = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir", "worker", target],
            cwd=cwd,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    async def wait_for(self, pattern: str, timeout: float = 90) -> None:
        async with asyncio.timeout(timeout):
            while not re.search(pattern, self.log.read_text()):
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited:\n{self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._fh.close()
        return code


async def weir(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_rules_are_checked_against_announced_routers_and_options_route_as_written(
    kafka, pipeline_name, tmp_path
):
    name = pipeline_name
    module = f"routed_{name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(MODULE.format(name=name))
    env = worker_env(kafka)
    worker = WorkerProcess(tmp_path, env, f"{module}:pipeline")
    try:
        await worker.wait_for(rf"announced router\(s\) {re.escape(name)}-router")
        announced = (await read_announcements(kafka))[f"{name}-router"]
        assert announced.endpoints == [f"{name}-big", f"{name}-fast"]
        assert announced.pipeline == name

        # A misspelt endpoint: refused by the dry run, without --pipeline.
        typo = tmp_path / "typo.yaml"
        typo.write_text(RULES.format(name=name, endpoint=f"{name}-fsat"))
        dry = await weir(tmp_path, env, "routes", "apply", str(typo), "--dry-run")
        assert dry.returncode == 2, dry.stdout + dry.stderr
        assert f"unknown endpoint(s) ['{name}-fsat']" in dry.stderr
        assert f"did you mean '{name}-fast'" in dry.stderr
        applied = await weir(tmp_path, env, "routes", "apply", str(typo))
        assert applied.returncode == 2 and "unknown endpoint" in applied.stderr  # nor applied
        shown = await weir(tmp_path, env, "routes", "show", f"{name}-router", "--json")
        assert json.loads(shown.stdout) == []

        # Spelt right: the dry run passes quietly, and the rule routes as written.
        good = tmp_path / "good.yaml"
        good.write_text(RULES.format(name=name, endpoint=f"{name}-fast"))
        dry = await weir(tmp_path, env, "routes", "apply", str(good), "--dry-run")
        assert dry.returncode == 0 and "valid (not published)" in dry.stdout, dry.stderr
        assert "not checked" not in dry.stderr
        done = await weir(tmp_path, env, "routes", "apply", str(good))
        assert done.returncode == 0 and "version 1 applied" in done.stdout, done.stderr

        async def answer(*options: str) -> str:
            args = ["submit", name, "--json", '{"text": "block my card"}', "--wait"]
            sent = await weir(tmp_path, env, *args, *options)
            assert sent.returncode == 0, sent.stderr
            return str(json.loads(sent.stdout)["output"])

        # Workers switch within seconds: ask until the new version answers.
        async with asyncio.timeout(60):
            while await answer("--option", "latency_sla=200") != f"{name}-fast":
                await asyncio.sleep(0.5)
        assert await answer("-o", "latency_sla=800") == f"{name}-big"
        assert await answer() == f"{name}-big"

        # What each worker runs is on the topic; a version a worker refuses says why.
        async def workers() -> list[dict[str, object]]:
            shown = await weir(tmp_path, env, "routes", "show", f"{name}-router", "--json")
            assert shown.returncode == 0, shown.stderr
            return list(json.loads(shown.stdout)[0]["workers"])

        async with asyncio.timeout(60):
            while [w["version"] for w in await workers()] != [1]:
                await asyncio.sleep(0.5)
        # A tool that skips the checks publishes a rule set naming an endpoint no worker has.
        ghost = RuleSet(router=f"{name}-router", default=f"{name}-ghost")
        await apply_rule_set(kafka, ghost, comment="skips the checks")
        async with asyncio.timeout(60):
            while (status := (await workers())[0])["refused_version"] != 2:
                await asyncio.sleep(0.5)
        assert status["version"] == 1 and f"{name}-ghost" in str(status["refused_reason"])
        shown = await weir(tmp_path, env, "routes", "show", f"{name}-router")
        assert "version 1 in force; refused version 2: " in shown.stdout, shown.stdout
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
    # A worker that stopped runs nothing: its status is withdrawn.
    assert (await read_statuses(kafka)).get(f"{name}-router", []) == []


async def test_a_router_no_worker_announced_is_noted_not_refused(kafka, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(name="nobody-runs-this", endpoint="x"))
    dry = await weir(tmp_path, worker_env(kafka), "routes", "apply", str(rules), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "no worker has announced it" in dry.stderr and "--pipeline" in dry.stderr
