"""``weir results --to``: real broker, real worker, the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import worker_env
from weir.core.errors import ConfigError
from weir.result_files import open_result_file, vectors_of
from weir.streams import Pipeline, WeirClient, Worker


def _vector(text: str) -> list[float]:
    return [b / 256 for b in hashlib.sha256(text.encode()).digest()[:4]]  # exact in float32


def _pipeline(name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step()
    def embed(texts: list[str]) -> list[list[float]]:
        if "bad" in texts:
            raise ValueError("bad text")
        return [_vector(t) for t in texts]

    return p


@pytest.mark.kafka
async def test_results_are_written_to_jsonl_as_they_arrive_and_to_parquet_with_vectors(
    kafka, pipeline_name, tmp_path, repo_root
):
    p = _pipeline(pipeline_name)
    jsonl, parquet = tmp_path / "vectors.jsonl", tmp_path / "vectors.parquet"
    env = worker_env(kafka)
    base = [sys.executable, "-m", "weir", "results", p.name]
    async with Worker(p, kafka), WeirClient(kafka) as client:
        follower = await asyncio.create_subprocess_exec(
            *base, "--follow", "--idle-timeout", "300", "--to", str(jsonl),
            cwd=repo_root, env=env, stderr=subprocess.PIPE,
        )  # fmt: skip
        first = [{"texts": [f"a{i}", f"b{i}"]} for i in range(100)]
        ids = await client.submit_many(p.name, first)
        # The file fills while the command still runs.
        for _ in range(1200):
            await asyncio.sleep(0.1)
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 100:
                break
        assert follower.returncode is None
        assert len(jsonl.read_text().splitlines()) == 100
        ids += await client.submit_many(p.name, [{"texts": ["bad"]}])
        await client.wait_for(p.name, ids, timeout=120)
        for _ in range(600):
            if len(jsonl.read_text().splitlines()) >= 101:
                break
            await asyncio.sleep(0.1)
        assert follower.returncode is None
        follower.terminate()
        await asyncio.wait_for(follower.communicate(), 60)
        done = await asyncio.to_thread(
            subprocess.run,
            [*base, "--to", str(parquet)],
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
        )
    assert done.returncode == 0, done.stderr
    assert "101 result(s) written" in done.stderr
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    by_id = {row["request_id"]: row for row in lines}
    for rid, payload in zip(ids, first, strict=False):
        assert by_id[rid]["output"] == [_vector(t) for t in payload["texts"]]
    table = pq.read_table(parquet).to_pylist()
    rows = {row["request_id"]: row for row in table}
    assert len(rows) == 101
    for rid, payload in zip(ids, first, strict=False):
        assert rows[rid]["status"] == "SUCCESS"
        assert rows[rid]["vectors"] == [_vector(t) for t in payload["texts"]]
    failed = rows[ids[-1]]
    assert failed["status"] == "FAILURE" and failed["vectors"] is None
    assert failed["error_type"] == "step_error"


def test_vectors_are_recognised_only_in_vector_shaped_outputs():
    assert vectors_of([0.5, 1]) == [[0.5, 1.0]]
    assert vectors_of([[1, 2], [3, 4]]) == [[1.0, 2.0], [3.0, 4.0]]
    assert vectors_of({"v": [1, 2]}) is None
    assert vectors_of([True, False]) is None
    assert vectors_of([]) is None and vectors_of([[1], ["x"]]) is None


def test_an_unknown_suffix_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"\.jsonl or \.parquet"):
        open_result_file(tmp_path / "out.csv")
