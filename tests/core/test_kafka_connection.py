"""The Kafka connection factory: what it builds, what it refuses, what it never shows."""

from __future__ import annotations

import pytest

from weir.core.config import load_settings
from weir.core.errors import ConfigError, SecretError
from weir.core.kafka import KafkaConnection


@pytest.fixture
def scram(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WEIR_TEST_KAFKA_PW", "s3cret-scram-password")
    return load_settings(
        kafka_bootstrap="broker-1:9096,broker-2:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc-weir",
        kafka_sasl_password="env:WEIR_TEST_KAFKA_PW",
        kafka_client_id="weir-test",
    )


def test_every_client_carries_the_connection_and_its_own_options(scram) -> None:
    kafka = KafkaConnection.of(scram)
    options = kafka.options(acks="all", client_id="weir-worker-1")
    assert options["bootstrap_servers"] == "broker-1:9096,broker-2:9096"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc-weir"
    assert options["sasl_plain_password"] == "s3cret-scram-password"
    assert options["ssl_context"].check_hostname  # system CAs, host names checked
    assert options["acks"] == "all"
    assert options["client_id"] == "weir-worker-1"  # a client may name itself
    assert kafka.options()["client_id"] == "weir-test"


def test_a_client_cannot_override_the_connections_security(scram) -> None:
    with pytest.raises(TypeError, match="security_protocol belong to the connection"):
        KafkaConnection.of(scram).producer(security_protocol="PLAINTEXT")


def test_the_password_is_never_in_repr(scram) -> None:
    kafka = KafkaConnection.of(scram)
    assert "s3cret" not in repr(kafka)
    assert repr(kafka) == (
        "KafkaConnection('broker-1:9096,broker-2:9096', SASL_SSL, sasl=SCRAM-SHA-512,"
        " user='svc-weir')"
    )
    assert "s3cret" not in repr(scram)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs kafka_sasl_mechanism"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "needs kafka_security_protocol SASL_SSL"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256"},
            "needs kafka_sasl_username and kafka_sasl_password",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"},
            "needs kafka_oauth_token_url",
        ),
        ({"kafka_sasl_password": "hunter2-literal"}, "a literal secret is not allowed"),
        ({"kafka_ssl_certfile": "/tmp/c.pem"}, "go together"),
        ({"kafka_oauth_token_provider": "not a path"}, "kafka_oauth_token_provider"),
    ],
)
def test_inconsistent_security_settings_are_refused_when_read(settings, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(**settings)
    assert "hunter2" not in str(caught.value)


def test_a_missing_ca_file_is_named(tmp_path) -> None:
    settings = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"kafka_ssl_cafile .*ca.pem does not exist"):
        KafkaConnection.of(settings)


def test_an_unset_password_variable_names_the_reference_only(monkeypatch) -> None:
    monkeypatch.delenv("WEIR_TEST_UNSET_PW", raising=False)
    settings = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="env:WEIR_TEST_UNSET_PW",
    )
    with pytest.raises(SecretError, match="env:WEIR_TEST_UNSET_PW"):
        KafkaConnection.of(settings)


def test_a_token_provider_hook_must_return_a_token_provider() -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_oauth_token_provider="builtins:repr",
    )
    with pytest.raises(ConfigError, match="not an aiokafka AbstractTokenProvider"):
        KafkaConnection.of(settings)


def test_a_failing_token_provider_hook_is_a_config_error() -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_oauth_token_provider="json:dumps",
    )
    with pytest.raises(ConfigError, match="json:dumps failed: TypeError"):
        KafkaConnection.of(settings)
