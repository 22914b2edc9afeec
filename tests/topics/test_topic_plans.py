"""How weir sizes its topics for the cluster, and ``weir topics create --dry-run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._pipelines import linear
from tests.conftest import worker_env
from weir.core.config import WeirSettings, load_settings
from weir.core.errors import ConfigError
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, topic_specs

pytestmark = pytest.mark.kafka


def _weir(
    repo: Path, settings: WeirSettings, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weir", *args],
        cwd=repo,
        env=worker_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_unset_replication_follows_the_cluster_size_with_one_replica_of_slack(
    kafka, pipeline_name
):
    async with TopicAdmin(kafka) as admin:
        plans = await admin.plan(topic_specs(linear(pipeline_name), kafka))
    requests = next(p for p in plans if p.name == PipelineTopics(pipeline_name).requests)
    # One broker: one replica, and min.insync.replicas cannot exceed it.
    assert (requests.replication_factor, requests.config["min.insync.replicas"]) == (1, "1")
    assert requests.config["cleanup.policy"] == "delete"
    assert not requests.exists


async def test_more_replicas_than_brokers_is_refused_before_anything_is_created(
    kafka, pipeline_name
):
    settings = kafka.model_copy(update={"replication_factor": 3})
    async with TopicAdmin(settings) as admin:
        with pytest.raises(ConfigError, match="replication_factor 3 needs 3 brokers but"):
            await admin.ensure(topic_specs(linear(pipeline_name), settings))
        listed = await admin.list()
    assert PipelineTopics(pipeline_name).requests not in listed


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_insync_replicas 3 is above replication_factor 2"):
        load_settings(replication_factor=2, min_insync_replicas=3)


def test_topics_create_dry_run_prints_the_plan_and_creates_nothing(kafka, pipeline_name, repo_root):
    spec = "tests._pipelines:diamond_pipeline"
    env = {"WEIR_TEST_PIPELINE": pipeline_name}
    dry = _weir(repo_root, kafka, "topics", "create", spec, "--dry-run", "--json", **env)
    assert dry.returncode == 0, dry.stderr
    plans = {p["topic"]: p for p in json.loads(dry.stdout)}
    requests = PipelineTopics(pipeline_name).requests
    assert plans[requests]["exists"] is False
    assert plans[requests]["partitions"] == kafka.partitions
    assert plans[requests]["replication_factor"] == 1
    assert plans[requests]["config"]["min.insync.replicas"] == "1"
    assert "would be created" in dry.stderr

    listed = _weir(repo_root, kafka, "topics", "list", "--json")
    assert requests not in {t["topic"] for t in json.loads(listed.stdout)}

    created = _weir(repo_root, kafka, "topics", "create", spec, "--json", **env)
    assert created.returncode == 0, created.stderr
    assert requests in json.loads(created.stdout)["created"]
    again = _weir(repo_root, kafka, "topics", "create", spec, "--dry-run", "--json", **env)
    assert all(p["exists"] for p in json.loads(again.stdout))
    table = _weir(repo_root, kafka, "topics", "create", spec, "--dry-run", **env)
    assert f"{requests}" in table.stdout and "exists" in table.stdout
    assert "0 of" in table.stderr
