"""Conversations in real ``weir worker`` processes: kill -9, two workers, the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._conversations import chat
from tests.conftest import worker_env
from weir.streams import WeirClient
from weir.streams.conversation_store import read_conversation
from weir.topics._aiokafka import KeyPartitioner
from weir.topics.admin import TopicAdmin
from weir.topics.names import topic_specs

pytestmark = pytest.mark.kafka


def _spawn(repo: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "weir", "worker", "tests._conversations:chat_pipeline"],
        cwd=repo,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _settled(logs: list[Path], quiet_s: float = 5.0) -> None:
    """Until every worker has partitions and no assignment changed for ``quiet_s``."""
    seen = ""
    quiet_since = asyncio.get_running_loop().time()
    async with asyncio.timeout(180):
        while True:
            texts = [log.read_text() if log.exists() else "" for log in logs]
            now = asyncio.get_running_loop().time()
            state = "|".join(str(t.count("assigned")) for t in texts)
            if state != seen:
                seen, quiet_since = state, now
            elif all("assigned" in t for t in texts) and now - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.5)


def _said(n: int) -> list[str]:
    """The contents of the turns of questions 0 .. n-1, in order."""
    return [text for i in range(n) for text in (f"q{i:02d}", f"re: q{i:02d}")]


async def test_twenty_turns_across_two_kill_9s_keep_their_history_in_order(
    kafka, pipeline_name, repo_root, tmp_path
):
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(chat(pipeline_name), kafka))
    env = worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name, WEIR_TEST_SLOW_S="0.3")
    log = tmp_path / "worker.log"
    proc = _spawn(repo_root, env, log)
    kills = 0
    try:
        async with WeirClient(kafka) as client:
            for n in range(20):
                rid = await client.submit(pipeline_name, {"text": f"q{n:02d}"}, conversation_id="c")
                if n == 7:
                    # Killed while the step runs: nothing of this turn was written yet.
                    await asyncio.sleep(0.2)
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(30) == -signal.SIGKILL
                    kills += 1
                    proc = _spawn(repo_root, env, log)
                result = await client.result(rid, timeout=120)
                assert result.status == "SUCCESS", result
                assert result.value["seen"] == _said(n), f"turn {n}"
                if n == 13:
                    # Killed right after the answer: the turn is written, its offset most
                    # likely not committed yet, so the request is delivered again.
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(30) == -signal.SIGKILL
                    kills += 1
                    proc = _spawn(repo_root, env, log)
        found = await read_conversation(kafka, "c", pipeline=pipeline_name)
    finally:
        _stop(proc)
    assert kills == 2
    [(_, _, state)] = found
    assert [t.content for t in state.turns] == _said(20)
    assert [t.role for t in state.turns] == ["user", "assistant"] * 20
    assert len({t.request_id for t in state.turns}) == 20


async def test_two_workers_each_keep_the_conversations_of_their_own_partitions(
    kafka, pipeline_name, repo_root, tmp_path
):
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(chat(pipeline_name), kafka))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        _spawn(
            repo_root,
            worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name, WEIR_WORKER_ID=f"worker-{w}"),
            logs[i],
        )
        for i, w in enumerate("ab")
    ]
    conversations = [f"conv-{i}" for i in range(12)]
    try:
        await _settled(logs)
        handled: dict[str, list[str]] = {}
        async with WeirClient(kafka) as client:
            for turn in range(3):
                ids = {
                    c: await client.submit(
                        pipeline_name, {"text": f"{c}/{turn}"}, conversation_id=c
                    )
                    for c in conversations
                }
                for c, rid in ids.items():
                    value = (await client.result(rid, timeout=120)).value
                    handled.setdefault(c, []).append(value["worker"])
                    assert value["seen"] == [
                        text for t in range(turn) for text in (f"{c}/{t}", f"re: {c}/{t}")
                    ], f"{c} turn {turn}: handled by {handled[c]}; {logs[0].read_text()[-1500:]}"
        stored = {
            c: await read_conversation(kafka, c, pipeline=pipeline_name) for c in conversations
        }
    finally:
        for proc in procs:
            _stop(proc)
    parts = list(range(kafka.partitions))
    partition = {c: KeyPartitioner()(c.encode(), parts, parts) for c in conversations}
    by_worker: dict[str, set[int]] = {}
    for c, [(_, _, state)] in stored.items():
        workers = {t.data["worker"] for t in state.turns if t.role == "assistant"}
        assert len(workers) == 1, f"{c} moved between workers: {workers}"
        by_worker.setdefault(workers.pop(), set()).add(partition[c])
    assert set(by_worker) == {"worker-a", "worker-b"}, by_worker
    assert not by_worker["worker-a"] & by_worker["worker-b"], by_worker


async def test_weir_conversation_show_prints_the_turns_in_order(
    kafka, pipeline_name, repo_root, tmp_path
):
    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(chat(pipeline_name), kafka))
    proc = _spawn(
        repo_root, worker_env(kafka, WEIR_TEST_PIPELINE=pipeline_name), tmp_path / "w.log"
    )
    try:
        async with WeirClient(kafka) as client:
            for text in ("hello", "[bold]what is my balance?[/bold]"):
                rid = await client.submit(pipeline_name, {"text": text}, conversation_id="cli-1")
                assert (await client.result(rid, timeout=120)).status == "SUCCESS"
    finally:
        _stop(proc)

    def weir(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weir", "conversation", "show", *args],
            cwd=repo_root,
            env=worker_env(kafka),
            capture_output=True,
            text=True,
            timeout=120,
        )

    shown = await asyncio.to_thread(weir, "cli-1", "--pipeline", pipeline_name, "--json")
    assert shown.returncode == 0, shown.stderr
    [doc] = json.loads(shown.stdout)
    assert doc["pipeline"] == pipeline_name and doc["step"] == "answer"
    assert [(t["role"], t["content"]) for t in doc["turns"]] == [
        ("user", "hello"),
        ("assistant", "re: hello"),
        ("user", "[bold]what is my balance?[/bold]"),
        ("assistant", "re: [bold]what is my balance?[/bold]"),
    ]
    table = await asyncio.to_thread(weir, "cli-1", "--pipeline", pipeline_name)
    assert table.returncode == 0, table.stderr
    assert "4 turns" in table.stdout
    assert "[bold]what is my balance?[/bold]" in table.stdout  # shown as written, not styled
    missing = await asyncio.to_thread(weir, "nobody", "--pipeline", pipeline_name)
    assert missing.returncode != 0
    assert "conversation_not_found" in missing.stderr and "nobody" in missing.stderr
    bad = await asyncio.to_thread(weir, "x" * 300, "--pipeline", pipeline_name)
    assert bad.returncode != 0 and "at most 256" in bad.stderr
