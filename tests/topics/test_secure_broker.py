"""weir over TLS and SASL: the local broker's SASL_SSL listener, with SCRAM, PLAIN and
OAUTHBEARER clients; a pipeline runs end to end (worker, sink and CLI as processes)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from tests._kafka import read_results, read_topic
from tests._sink import SinkProcess, free_port, sink_settings
from tests._traced import expected_attempts
from tests.conftest import worker_env
from tests.traces.test_clickhouse_sink import wait_stored
from weir.core.config import BrokerSettings, WeirSettings, load_settings
from weir.core.errors import BrokerError
from weir.core.kafka import KafkaConnection
from weir.streams import WeirClient
from weir.topics._broker_security import BrokerSecurity
from weir.topics.admin import TopicAdmin
from weir.topics.broker import LocalBroker, free_port_pair
from weir.topics.names import PipelineTopics, TopicSpec

pytestmark = pytest.mark.kafka

N = 50
BASE: dict[str, Any] = dict(
    partitions=2,
    commit_interval_s=0.5,
    shutdown_timeout_s=15.0,
    step_timeout_s=30.0,
    max_payload_bytes=64 * 1024,
    web_port=0,
)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    settings = load_settings(
        broker=BrokerSettings(port=free_port_pair(), secure=True, start_timeout_s=180)
    )
    broker = LocalBroker(settings, state_dir=tmp_path_factory.mktemp("secure-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def secure(secure_broker: LocalBroker) -> WeirSettings:
    """Client settings as a user writes them for a SASL_SSL cluster: SCRAM-SHA-512, a CA file."""
    env = secure_broker.client_environment()
    return load_settings(
        kafka_bootstrap=env["WEIR_KAFKA_BOOTSTRAP"],
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="weir",
        kafka_sasl_password=env["WEIR_KAFKA_SASL_PASSWORD"],
        kafka_ssl_cafile=env["WEIR_KAFKA_SSL_CAFILE"],
        **BASE,
    )


def _weir(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weir", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _spawn_worker(repo: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "weir", "worker", "tests._traced:flaky_pipeline"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_a_pipeline_runs_end_to_end_over_sasl_ssl_with_scram(
    secure, secure_broker, pipeline_name, repo_root, tmp_path
):
    password = secure_broker.security.client_password
    settings = sink_settings(secure, pipeline_name, f"chdb://{tmp_path / 'store'}")
    topics = PipelineTopics(pipeline_name)
    sink = SinkProcess(repo_root, settings, tmp_path / "sink.log")
    env = worker_env(
        settings,
        WEIR_TEST_PIPELINE=pipeline_name,
        WEIR_TRACE_TOPIC=settings.trace_topic,
    )
    log = tmp_path / "worker.log"
    worker = _spawn_worker(repo_root, env, log)
    try:
        await sink.wait_placed()
        # The CLI creates the topics over the secured listener, then a client submits.
        created = _weir(repo_root, env, "topics", "create", "tests._traced:flaky_pipeline")
        assert created.returncode == 0, created.stderr
        async with WeirClient(settings) as client:
            ids = await client.submit_many(
                pipeline_name, [{"n": i, "email": f"u{i}@example.com"} for i in range(1, N)]
            )
        # The CLI submits the last one and waits for its transactional result.
        cli = _weir(
            repo_root, env, "submit", pipeline_name, "--json", '{"n": 0, "email": "x@y.z"}',
            "--wait", "--timeout", "150",
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr[-2000:]
        answer = json.loads(cli.stdout.strip().splitlines()[-1])
        assert answer["status"] == "SUCCESS"
        assert answer["output"] == "sent answer 0 to x@y.z"

        results, counts = await read_results(settings, topics.results, N)
        assert set(results) == {*ids, answer["request_id"]}
        assert max(counts.values()) == 1  # read_committed, each answered once
        failed = [r for r in results.values() if r.status == "FAILURE"]
        # n % 100 == 7 always times out: three attempts, then a dead letter.
        assert [r.error_type for r in failed] == ["model_timeout"]
        letters = await read_topic(settings, topics.dead_letter("generate"), until=1)
        assert len(letters) == 1
        expected = sum(expected_attempts(N).values())
        assert await wait_stored(sink.url, pipeline_name, expected) == expected
    finally:
        if worker.poll() is None:
            worker.terminate()
        worker.wait(60)
        sink.stop()
    for text in (log.read_text(), sink.text()):
        assert password not in text


async def test_a_wrong_password_fails_at_start_with_a_clear_message_without_the_password(
    secure, secure_broker, repo_root, tmp_path
):
    wrong = "not-the-password-7781"
    (tmp_path / "pw").write_text(wrong)
    settings = secure.model_copy(
        update={"kafka_sasl_password": SecretStr(f"file:{tmp_path / 'pw'}")}
    )
    with pytest.raises(BrokerError) as caught:
        async with WeirClient(settings):
            pass
    message = str(caught.value)
    assert "SASL SCRAM-SHA-512 authentication as 'weir' failed" in message
    assert wrong not in message
    assert secure_broker.security.client_password not in message

    env = worker_env(settings)
    listed = _weir(repo_root, env, "topics", "list")
    assert listed.returncode == 1
    assert "authentication as 'weir' failed" in listed.stderr
    assert wrong not in listed.stderr + listed.stdout


async def test_a_broker_certificate_from_an_unknown_ca_is_refused_with_a_clear_message(
    secure, tmp_path
):
    other = BrokerSecurity(tmp_path / "other-ca")
    other.ensure()
    settings = secure.model_copy(update={"kafka_ssl_cafile": other.ca_file})
    with pytest.raises(BrokerError) as caught:
        async with TopicAdmin(settings):
            pass
    message = str(caught.value)
    assert "TLS certificate is not trusted" in message
    assert "WEIR_KAFKA_SSL_CAFILE" in message


async def test_a_plaintext_client_on_the_tls_listener_is_told_to_check_the_protocol(secure):
    settings = secure.model_copy(
        update={"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": None}
    )
    with pytest.raises(BrokerError) as caught:
        async with TopicAdmin(settings):
            pass
    assert "cannot connect to Kafka" in str(caught.value)


async def test_sasl_plain_connects_with_the_same_user(secure):
    settings = secure.model_copy(update={"kafka_sasl_mechanism": "PLAIN"})
    async with TopicAdmin(settings) as admin:
        assert isinstance(await admin.list(), dict)
    wrong = settings.model_copy(update={"kafka_sasl_username": "nobody"})
    with pytest.raises(BrokerError, match="SASL PLAIN authentication as 'nobody' failed"):
        async with TopicAdmin(wrong):
            pass


def _unsecured_jwt(subject: str, lifetime_s: int = 3600) -> str:
    """A JWT that Kafka's unsecured validator accepts: ``alg: none``, no signature."""

    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime_s})}."


@pytest.fixture
async def token_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An OIDC token endpoint (client-credentials grant) issuing unsecured JWTs."""
    requests: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        requests.append({k: str(v) for k, v in form.items()})
        if form.get("client_secret") != "oidc-secret-123":
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response(
            {"access_token": _unsecured_jwt(str(form["client_id"])), "expires_in": 3600}
        )

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/token", requests
    finally:
        await runner.cleanup()


def _oauth_settings(secure, url: str, monkeypatch, **own: Any) -> WeirSettings:
    """Settings that authenticate with OAUTHBEARER through the test's token server."""
    monkeypatch.setenv("WEIR_TEST_OIDC_SECRET", "oidc-secret-123")
    return load_settings(
        kafka_bootstrap=secure.kafka_bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_ssl_cafile=secure.kafka_ssl_cafile,
        kafka_oauth_token_url=url,
        kafka_oauth_client_id="weir-app",
        kafka_oauth_client_secret="env:WEIR_TEST_OIDC_SECRET",
        **own,
        **BASE,
    )


async def test_oauthbearer_with_the_oidc_client_credentials_provider(
    secure, token_server, monkeypatch
):
    url, requests = token_server
    settings = _oauth_settings(secure, url, monkeypatch)
    async with TopicAdmin(settings) as admin:
        assert isinstance(await admin.list(), dict)
    assert requests and requests[0]["grant_type"] == "client_credentials"
    assert requests[0]["client_id"] == "weir-app"

    monkeypatch.setenv("WEIR_TEST_OIDC_SECRET", "wrong-secret-456")
    refused = settings.model_copy()
    with pytest.raises(BrokerError) as caught:
        async with TopicAdmin(refused):
            pass
    assert "refused client 'weir-app' (HTTP 401)" in str(caught.value)
    assert "wrong-secret-456" not in str(caught.value)


async def _send_one_with_confluent(settings: WeirSettings) -> int:
    """Send one message with the confluent data producer; its acknowledged offset."""
    topic = f"rdk-{uuid.uuid4().hex[:8]}"
    async with TopicAdmin(settings) as admin:
        await admin.ensure([TopicSpec(topic, 1, None)])
    producer = KafkaConnection.of(settings).data_producer(
        client_id="weir-rdk", linger_ms=0, batch_bytes=16_384, request_timeout_ms=10_000
    )
    await producer.start()
    try:
        ack = await (await producer.send(topic, value=b"v", key=b"k"))
    finally:
        await producer.stop()
    return int(ack.offset)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
async def test_the_confluent_producer_sends_over_sasl_ssl_and_names_a_refusal(
    secure, secure_broker, mechanism, tmp_path
):
    settings = secure.model_copy(
        update={"kafka_client": "confluent", "kafka_sasl_mechanism": mechanism}
    )
    assert await _send_one_with_confluent(settings) == 0
    wrong = "not-the-password-5521"
    (tmp_path / "pw").write_text(wrong)
    refused = settings.model_copy(
        update={"kafka_sasl_password": SecretStr(f"file:{tmp_path / 'pw'}")}
    )
    producer = KafkaConnection.of(refused).data_producer(
        client_id="weir-rdk", linger_ms=0, batch_bytes=16_384, request_timeout_ms=5_000
    )
    with pytest.raises(BrokerError, match="cannot connect to Kafka") as caught:
        await producer.start()
    assert "uthentication" in str(caught.value)
    assert wrong not in str(caught.value)
    assert secure_broker.security.client_password not in str(caught.value)


async def test_the_confluent_producer_authenticates_with_oauthbearer(
    secure, token_server, monkeypatch
):
    url, requests = token_server
    settings = _oauth_settings(secure, url, monkeypatch, kafka_client="confluent")
    assert await _send_one_with_confluent(settings) == 0
    assert requests and requests[-1]["client_id"] == "weir-app"


def test_weir_broker_start_secure_prints_how_to_connect_and_the_cli_connects_so(
    repo_root, tmp_path
):
    port = free_port_pair()
    base = {k: v for k, v in worker_env(load_settings()).items() if not k.startswith("WEIR_")}
    env = base | {"WEIR_HOME": str(tmp_path / "home"), "WEIR_BROKER_PORT": str(port)}
    # A home of its own: the broker's state, and its copy of the jars (from Maven's local
    # repository), stay under tmp_path, away from any developer's local broker.
    started = _weir(repo_root, env, "broker", "start", "--secure")
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in started.stdout.splitlines()
            if line.startswith("export ")
        )
        assert exports["WEIR_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        password_file = Path(exports["WEIR_KAFKA_SASL_PASSWORD"].removeprefix("file:"))
        assert password_file.read_text().strip() not in started.stdout
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        listed = _weir(repo_root, base | exports, "topics", "list", "--json")
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert isinstance(json.loads(listed.stdout), list)
        # Without the credentials the same broker refuses, and says how to connect.
        plain = _weir(repo_root, base | {"WEIR_KAFKA_BOOTSTRAP": exports["WEIR_KAFKA_BOOTSTRAP"]},
                      "topics", "list")  # fmt: skip
        assert plain.returncode == 1
        assert "cannot connect to Kafka" in plain.stderr
    finally:
        _weir(repo_root, env, "broker", "stop")
