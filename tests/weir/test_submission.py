"""``weir submit --file``: real broker, the real CLI in a subprocess, interrupted and resumed."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._kafka import read_topic
from tests.conftest import worker_env
from weir.core.errors import ConfigError
from weir.streams import Pipeline, WeirClient
from weir.submission import SUFFIX, submit_file
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, topic_specs

pytestmark = pytest.mark.kafka


async def _pipeline(kafka, name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step()
    def echo(text: str) -> str:
        return text

    async with TopicAdmin(kafka) as admin:
        await admin.ensure(topic_specs(p, kafka))
    return p


async def _sent(kafka, name: str, expected: int) -> collections.Counter[str]:
    records = await read_topic(kafka, PipelineTopics(name).requests, until=expected)
    # The key of a request record is its request id.
    return collections.Counter(r.key.decode() for r in records if r.key is not None)


async def test_an_interrupted_submission_resumes_without_sending_acknowledged_lines_again(
    kafka, pipeline_name, tmp_path, repo_root
):
    await _pipeline(kafka, pipeline_name)
    lines = 60_000
    source = tmp_path / "chunks.jsonl"
    source.write_text("".join(json.dumps({"text": f"chunk {i}"}) + "\n" for i in range(lines)))
    progress = tmp_path / ("chunks.jsonl" + SUFFIX)
    command = [sys.executable, "-m", "weir", "submit", pipeline_name, "--file", str(source)]
    env = worker_env(kafka)
    # Paced (12 s at least), so the interruption lands mid-run however fast the machine is;
    # SIGINT as a terminal delivers it (a background job, `make test &`, inherits it ignored).
    first = await asyncio.create_subprocess_exec(
        *command,
        "--rate",
        "5000",
        cwd=repo_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Interrupt once the first acknowledgements are on record, long before the end.
    for _ in range(1200):
        await asyncio.sleep(0.05)
        if progress.exists() and json.loads(progress.read_text())["acked"]:
            break
    first.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(first.communicate(), 60)
    state = json.loads(progress.read_text())
    done_first = sum(b - a for a, b in state["acked"])
    assert 0 < done_first < lines, (done_first, stderr)
    second = await asyncio.to_thread(
        subprocess.run, command, cwd=repo_root, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert f"{lines - done_first} sent and acknowledged, {done_first} already" in second.stderr
    counts = await _sent(kafka, pipeline_name, lines)
    run = state["run"]
    assert set(counts) == {f"{run}-{i + 1}" for i in range(lines)}
    assert max(counts.values()) == 1  # nothing acknowledged was sent again
    third = await asyncio.to_thread(
        subprocess.run, command, cwd=repo_root, env=env, capture_output=True, text=True
    )
    assert third.returncode == 0 and f"0 sent and acknowledged, {lines} already" in third.stderr


async def test_bad_lines_are_reported_and_only_they_are_sent_once_fixed(
    kafka, pipeline_name, tmp_path
):
    await _pipeline(kafka, pipeline_name)
    rows = [json.dumps({"text": f"t{i}"}) for i in range(50)]
    rows[7], rows[30] = '{"text": "unterminated', "[1, 2]"
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + "\n")
    async with WeirClient(kafka) as client:
        report = await submit_file(client, pipeline_name, source)
        assert report.sent == 48 and [n for n, _ in report.bad] == [8, 31]
        assert "not valid JSON" in report.bad[0][1] and "list, not an object" in report.bad[1][1]
        rows[7], rows[30] = json.dumps({"text": "t7"}), json.dumps({"text": "t30"})
        source.write_text("\n".join(rows) + "\n")
        again = await submit_file(client, pipeline_name, source)
    assert again.sent == 2 and again.already == 48 and not again.bad
    counts = await _sent(kafka, pipeline_name, 50)
    assert len(counts) == 50 and max(counts.values()) == 1
    assert again.ids == [report.ids[0].rsplit("-", 1)[0] + s for s in ("-8", "-31")]


async def test_a_file_whose_acknowledged_lines_moved_is_not_resumed(kafka, pipeline_name, tmp_path):
    await _pipeline(kafka, pipeline_name)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(10)))
    async with WeirClient(kafka) as client:
        await submit_file(client, pipeline_name, source)
        source.write_text('{"text": "new first line"}\n' + source.read_text())
        with pytest.raises(ConfigError, match="changed or moved"):
            await submit_file(client, pipeline_name, source)
        restarted = await submit_file(client, pipeline_name, source, restart=True)
    assert restarted.sent == 11


def test_the_progress_file_is_beside_the_input(tmp_path: Path) -> None:
    from weir.submission import FileProgress

    source = tmp_path / "x.jsonl"
    source.write_text('{"a": 1}\n')
    assert (
        FileProgress(source, pipeline="p", restart=False).path == tmp_path / "x.jsonl.weir-progress"
    )


async def test_a_rate_that_is_not_positive_is_refused(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "t"}\n')
    with pytest.raises(ConfigError, match="--rate must be a positive number"):
        await submit_file(None, "p", source, rate=0)
