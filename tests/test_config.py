"""Settings: TOML file, then environment, then overrides; every problem is a ConfigError."""

import os
from pathlib import Path

import pytest

from weir.core.config import BrokerSettings, WeirSettings, load_settings
from weir.core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WEIR_* variable of the surrounding shell leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("WEIR_"):
            monkeypatch.delenv(key)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "weir.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings()
    assert settings.partitions == 4
    assert settings.results_format == "json"
    assert settings.kafka_bootstrap is None
    assert settings.broker == BrokerSettings()


def test_values_come_from_a_toml_file(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'partitions = 8\nresults_format = "avro"\nstep_timeout_s = 2.5\n\n[broker]\nport = 20000\n',
    )
    settings = load_settings(path)
    assert settings.partitions == 8
    assert settings.results_format == "avro"
    assert settings.step_timeout_s == 2.5
    assert settings.broker.port == 20000


def test_values_may_sit_in_a_weir_table(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[weir]\npartitions = 6\n\n[weir.broker]\nheap = '1g'\n")
    settings = load_settings(str(path))
    assert settings.partitions == 6
    assert settings.broker.heap == "1g"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _toml(tmp_path, "partitions = 8\nmax_in_flight = 50\n")
    monkeypatch.setenv("WEIR_PARTITIONS", "3")
    settings = load_settings(path)
    assert settings.partitions == 3
    assert settings.max_in_flight == 50


def test_overrides_beat_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(tmp_path, "partitions = 8\n")
    monkeypatch.setenv("WEIR_PARTITIONS", "3")
    assert load_settings(path, partitions=12).partitions == 12


def test_weir_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIR_CONFIG", str(_toml(tmp_path, "partitions = 9\n")))
    assert load_settings().partitions == 9


def test_environment_overrides_a_nested_broker_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(tmp_path, "[broker]\nport = 20000\nheap = '1g'\n")
    monkeypatch.setenv("WEIR_BROKER_PORT", "21000")
    settings = load_settings(path)
    assert settings.broker.port == 21000
    assert settings.broker.heap == "1g"


def test_broker_environment_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIR_BROKER_PORT", "21000")
    assert load_settings().broker.port == 21000


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("partitions = 0\n", "partitions"),
        ("step_timeout_s = -1\n", "step_timeout_s"),
        ("results_format = 'xml'\n", "results_format"),
        ("max_payload_bytes = 'big'\n", "max_payload_bytes"),
        ("[broker]\nport = 80\n", "broker.port"),
        ("no_such_setting = 1\n", "no_such_setting"),
    ],
)
def test_bad_file_value_raises_config_error_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, text))
    assert field in str(info.value)
    assert info.value.error_type == "config_invalid"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("WEIR_PARTITIONS", "many", "partitions"),
        ("WEIR_COMMIT_INTERVAL_S", "0", "commit_interval_s"),
    ],
)
def test_bad_environment_value_raises_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=field):
        load_settings()


def test_bad_override_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="replication_factor"):
        load_settings(replication_factor=0)


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)


def test_missing_file_named_by_weir_config_raises_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIR_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_invalid_toml_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_toml(tmp_path, "partitions = = 3\n"))


def test_unreadable_config_path_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(tmp_path)


def test_bootstrap_servers_fall_back_to_the_local_broker_port() -> None:
    settings = load_settings(broker=BrokerSettings(port=20001))
    assert settings.bootstrap_servers == "127.0.0.1:20001"
    assert settings.uses_local_broker
    assert load_settings().bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_bootstrap_means_the_local_broker(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    monkeypatch.setenv("WEIR_KAFKA_BOOTSTRAP", blank)
    settings = load_settings()
    assert settings.kafka_bootstrap is None
    assert settings.bootstrap_servers == "127.0.0.1:19092"


def test_configured_bootstrap_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIR_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    settings = load_settings()
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert not settings.uses_local_broker


def test_settings_object_reads_the_environment_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIR_MAX_IN_FLIGHT", "7")
    assert WeirSettings().max_in_flight == 7


def test_an_aliased_environment_variable_beats_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "weir.toml"
    config.write_text('vault_addr = "http://file:8200"\notel_service_name = "from-file"\n')
    monkeypatch.setenv("VAULT_ADDR", "http://env:8200")
    settings = load_settings(config)
    assert settings.vault_addr is not None
    assert settings.vault_addr.get_secret_value() == "http://env:8200"
    assert settings.otel_service_name == "from-file"


def test_urls_with_credentials_are_shown_masked_and_given_whole_only_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEIR_CLICKHOUSE_DSN", "http://weir:dsn-canary-pw@ch.internal:8123/weir")
    monkeypatch.setenv("VAULT_ADDR", "https://ops:vault-canary-pw@vault:8200")
    settings = load_settings(otel_exporter_otlp_endpoint="http://u:otlp-canary-pw@otel:4318")
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    assert not [s for s in shown if "canary-pw" in s]
    assert "http://weir:***@ch.internal:8123/weir" in repr(settings)
    assert f"{settings.trace_store_dsn}" == "http://weir:***@ch.internal:8123/weir"
    assert settings.trace_store_dsn.get_secret_value().startswith("http://weir:dsn-canary-pw@")


def test_a_bad_dsn_is_refused_without_repeating_its_password() -> None:
    with pytest.raises(ConfigError, match=r"clickhouse_dsn") as info:
        load_settings(clickhouse_dsn="tcp://weir:dsn-canary-pw@ch:9000")
    assert "dsn-canary-pw" not in str(info.value)


def test_redaction_limits_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIR_REDACT_MAX_BYTES", "4096")
    settings = load_settings(redact_offload_chars=0)
    assert (settings.redact_max_bytes, settings.redact_offload_chars) == (4096, 0)
    with pytest.raises(ConfigError, match="redact_max_bytes"):
        load_settings(redact_max_bytes=10)


def test_the_web_token_is_a_secret_reference_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEIR_WEB_TOKEN", "env:MY_WEB_TOKEN")
    settings = load_settings()
    assert settings.web_token is not None
    assert settings.web_token.get_secret_value() == "env:MY_WEB_TOKEN"
    assert "MY_WEB_TOKEN" not in repr(settings)  # even the reference stays out of logs
    monkeypatch.setenv("WEIR_WEB_TOKEN", "")
    assert load_settings().web_token is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sse_max_lifetime_s", float("nan")),
        ("sse_max_lifetime_s", float("inf")),
        ("sse_max_lifetime_s", 0),
        ("sse_max_streams", 0),
        ("step_threads", 0),
        ("step_stuck_threads_max", 0),
        ("budget_max_keys", 0),
        ("cost_events_seen_max", 0),
        ("answered_max_per_partition", 0),
        ("sink_seen_max", 0),
    ],
)
def test_limits_must_be_positive_and_finite(name: str, value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{name: value})
    assert name in str(caught.value)
