"""The one typed configuration object, read from the environment (``WEIR_*``) once.

``WeirSettings()`` reads ``WEIR_*`` variables and, when ``WEIR_CONFIG`` names a
TOML file, that file's values first (environment wins).  Everything below the
CLI receives a settings object; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from weir.core._kafka_settings import (
    KafkaClient,
    KafkaSaslMechanism,
    KafkaSecurityProtocol,
    KafkaSettings,
)
from weir.core.errors import ConfigError
from weir.core.urls import SecretUrl, mask_url

__all__ = [
    "BrokerSettings",
    "KafkaClient",
    "KafkaSaslMechanism",
    "KafkaSecurityProtocol",
    "ModelPrice",
    "WeirSettings",
    "load_settings",
]

DEFAULT_HOME = Path.home() / ".cache" / "weir"


class BrokerSettings(BaseSettings):
    """The local single-node broker that ``weir broker`` fetches and runs."""

    model_config = SettingsConfigDict(env_prefix="WEIR_BROKER_", extra="forbid")

    kafka_version: str = "4.1.1"
    """Apache Kafka release resolved from Maven Central (``org.apache.kafka:kafka_2.13``)."""
    port: int = Field(default=19092, ge=1024, le=65535)
    """Client port on 127.0.0.1; the KRaft controller listens on ``port + 1``."""
    heap: str = "768m"
    """JVM heap (``-Xmx``) for the broker."""
    start_timeout_s: float = Field(default=90.0, gt=0)
    secure: bool = False
    """Serve clients on a SASL_SSL listener (SCRAM, PLAIN, unsecured OAUTHBEARER) with a CA
    and users generated in the state directory; ``weir broker start`` prints how to connect."""


class ModelPrice(BaseModel):
    """A model's list price in USD per million tokens (``model_prices`` entries)."""

    model_config = {"extra": "forbid", "frozen": True}

    input_per_1m: Decimal = Field(ge=0)
    output_per_1m: Decimal = Field(default=Decimal(0), ge=0)


class WeirSettings(KafkaSettings):
    """All of weir's settings; build once at the edge and pass down."""

    model_config = SettingsConfigDict(env_prefix="WEIR_", extra="forbid")

    home: Path = DEFAULT_HOME
    """Cache for the broker's jars, its data and logs (never inside the repository)."""
    broker: BrokerSettings = Field(default_factory=BrokerSettings)

    partitions: int = Field(default=4, ge=1)
    """Partitions of every topic weir creates; fan-out is bounded by it."""
    replication_factor: int | None = Field(default=None, ge=1)
    """Replicas of every topic weir creates; unset: 3, or as many brokers as the cluster has
    when fewer (1 on the local broker)."""
    min_insync_replicas: int | None = Field(default=None, ge=1)
    """``min.insync.replicas`` of every topic weir creates; unset: the replication factor
    minus one (2 of 3), at least 1.  With ``acks=all`` (every weir producer) a write then
    survives the loss of one broker and is refused, not silently under-replicated, beyond."""
    event_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000)
    """Retention of event topics (requests, steps, results, dead letters, traces)."""

    max_in_flight: int = Field(default=1000, ge=1)
    """Messages a worker processes concurrently (all steps together)."""
    max_poll_records: int = Field(default=500, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    retry_poll_ms: int = Field(default=250, ge=0)
    """How often a worker fetches its retry partitions that had nothing new (0: in every
    fetch).  Each idle partition a fetch names delays every record it brings (BENCHMARKS.md,
    "Retry partitions at rest"); a retry waits its delay (a second or more) plus up to this."""
    producer_batch_bytes: int = Field(default=524_288, ge=16_384, le=1_000_000)
    """The worker producer's batch per partition (aiokafka's ``max_batch_size``).

    aiokafka keeps one open batch per partition; once it is full every further send
    waits for it to drain, so small batches cap throughput (BENCHMARKS.md).
    """
    producer_linger_ms: int = Field(default=0, ge=0)
    """How long the worker's producer waits to fill a batch; 0 measured best (BENCHMARKS.md):
    under load batches fill anyway, unloaded every hop saves the wait."""
    gc_gen0_threshold: int = Field(default=50_000, ge=0)
    """The worker's generation-0 GC threshold (Python's default is 700; 0: leave the GC as is).

    A started worker freezes what it allocated while starting (``gc.freeze``), so full
    collections stop walking long-lived objects.  A fetched batch's objects live until its
    send is acknowledged, so a young generation smaller than a burst's live objects is
    collected over and over, each time walking (and promoting) objects still in use: at
    5,000 that was 11-14% of a busy worker's CPU (130 collections in a 10,000-request
    burst); at 50,000 it is under 1% (one collection), the same peak RSS (BENCHMARKS.md,
    "The young generation").  Cyclic garbage waits until that many more objects are alive.
    """
    gc_gen2_threshold: int = Field(default=10, ge=1)
    """Generation-1 collections between full ones (Python's default: 10).  After
    ``gc.freeze`` hardly anything counts as long-lived, so each of them is a full one."""
    in_place_steps: bool = True
    """A small batch of inline steps runs the next inline step (no join, no conversation) on
    its outputs in the same task when this worker holds that output's partition: the record
    is still written (marked ``weir.in_place``) but not read back and decoded here, and the
    step runs while it is on its way (BENCHMARKS.md, "inline steps in place by default")."""
    in_place_max_batch: int = Field(default=16, ge=1)
    """Only batches of at most this many records run steps in place.  A small batch is a
    worker waiting on round trips: running in place takes them off a request's path (a
    lower unloaded p50 in every run); a large one is a worker under load, where reading the
    records back costs less CPU per request than holding a batch through its whole chain."""
    max_payload_bytes: int = Field(default=262_144, ge=1024)
    """Larger requests are dead-lettered as ``payload_too_large``.

    Every envelope carries the request, next to a step's output, and Kafka takes
    about 1 MB per message by default: keep requests well below that.
    """
    step_timeout_s: float = Field(default=60.0, gt=0)
    """Default timeout of one step attempt."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """How long a stopping worker waits for in-flight work before handing it back."""
    results_format: Literal["json", "avro"] = "json"
    """Encoding of result events (both follow ``schemas/result.avsc``)."""
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    answer_dedup_window_s: float = Field(default=900.0, ge=1.0)
    """How long an answered request id is remembered, so a redelivered duplicate is dropped."""
    answer_open_ahead_ms: float = Field(default=1.0, ge=0)
    """An answers writer idle this long after a commit opens its next transaction, with the
    result and marker partitions registered, so the next answer saves a round trip to the
    coordinator (0: off).  At once, the coordinator is still finishing the last transaction
    and the registration waits out aiokafka's 20 ms retry; after 1 ms it mostly has
    (BENCHMARKS.md, "The answer's transaction opened ahead")."""
    join_ttl_s: float = Field(default=7 * 24 * 3600.0, ge=1.0)
    """A fan-in still missing an input after this long ends its request with a FAILURE."""
    max_waiting_joins: int = Field(default=100_000, ge=1)
    """Fan-ins waiting for inputs, per join step and worker; beyond it the oldest is evicted
    and its request ends with a FAILURE (``join_evicted``)."""
    journal_calls: bool = True
    """Journal completed model calls, so a step redelivered after a crash replays them
    instead of calling (and paying) again."""
    journal_retention_s: float = Field(default=3600.0, gt=0)
    """How long journaled calls are kept (topic retention, and in each worker's memory)."""
    journal_max_entries: int = Field(default=100_000, ge=1)
    """Journaled calls a worker keeps in memory at most (oldest dropped first)."""
    review_deadline_s: float = Field(default=3600.0, gt=0)
    """An escalated request no person answered within this long ends with its fallback
    (``Escalate(deadline_s=...)`` overrides it per request)."""
    review_check_interval_s: float = Field(default=1.0, gt=0)
    """How often a worker's review desk looks for reviews past their deadline."""
    dead_letter_patience_s: float = Field(default=120.0, gt=0)
    """How long a worker keeps trying to dead-letter one record before letting it go."""
    stuck_record_after_s: float = Field(default=300.0, gt=0)
    """A record in flight this long is reported as stuck by ``/health`` and ``/stats``."""
    max_retry_topics: int = Field(default=5, ge=1, le=20)
    """Delayed retry topics per step (attempt n waits on ``retry.<step>.<min(n-1, this)>``)."""

    trace_events: bool = True
    """Emit one trace event per step attempt to the trace topic."""
    trace_topic: str = Field(default="weir.traces", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """The topic trace events go to and the ClickHouse sink reads."""
    otel_enabled: bool = True
    """Create OpenTelemetry spans (exported only when an OTLP endpoint is set)."""
    otel_exporter_otlp_endpoint: SecretUrl | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "otel_exporter_otlp_endpoint",
            "WEIR_OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    )
    """OTLP/HTTP collector (e.g. ``http://127.0.0.1:4318``); unset: spans are not exported.

    URLs that can carry credentials are ``SecretUrl``: shown with the password masked.
    """
    otel_service_name: str = "weir"

    redact_patterns: dict[str, str] = Field(default_factory=dict)
    """Extra PII patterns (kind -> regular expression) for everything the redactor covers."""
    redact_max_bytes: int = Field(default=1_048_576, ge=1024)
    """Longer texts are cut to this many UTF-8 bytes before redaction.

    The cut is marked ``…[truncated N bytes]`` and made at a word boundary, so
    no value is half kept (a half e-mail address would not be recognised).
    """
    redact_offload_chars: int = Field(default=65_536, ge=0)
    """Async callers redact longer texts in a thread, so the event loop keeps serving."""

    clickhouse_dsn: SecretUrl | None = None
    """Trace store: ``chdb:///path`` (embedded engine) or ``http(s)://host:8123``.

    Unset: the embedded engine with its data under ``<home>/clickhouse``.
    """
    clickhouse_database: str = Field(default="weir", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Database holding ``pipeline_events`` and its dashboard aggregates."""
    trace_ttl_days: int = Field(default=30, ge=1, le=3650)
    """Trace events (and their per-minute aggregates) older than this are dropped."""
    sink_group: str = Field(default="weir-trace-sink", min_length=1)
    """Consumer group of the ClickHouse sink on the trace topic."""
    sink_start: Literal["earliest", "latest"] = "earliest"
    """Where a sink group with no committed offsets starts reading the trace topic."""
    sink_batch_size: int = Field(default=50_000, ge=1, le=1_000_000)
    """Trace events per insert; a batch is also flushed after ``sink_flush_interval_s``."""
    sink_flush_interval_s: float = Field(default=1.0, gt=0)
    sink_max_backoff_s: float = Field(default=30.0, gt=0)
    """Longest wait between attempts while the trace store is unavailable."""
    sink_web_port: int = Field(default=6067, ge=0, le=65535)
    """The sink's HTTP server (dashboard and trace queries); 0 turns it off."""

    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    """The worker's HTTP server (health, stats, token streams, dashboard); 0 turns it off."""
    web_token: SecretStr | None = None
    """A secret reference (``env:NAME``, ``file:/path``, ``vault:...``, ``aws-sm:...``) to
    the bearer token every HTTP route but ``/health`` then requires; unset: no token."""
    sse_max_streams: int = Field(default=64, ge=1)
    """Server-Sent Event streams one HTTP server serves at once; more are refused with 503."""
    sse_max_lifetime_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    """Longest life of one SSE stream; then it ends with a ``timeout`` event."""

    step_threads: int = Field(default=64, ge=1, le=4096)
    """Threads that run synchronous steps (per worker)."""
    step_stuck_threads_max: int = Field(default=16, ge=1)
    """Threads a timed-out synchronous step may hold before sync steps fail fast
    (``step_threads_exhausted``, retriable); see "Limits" in the README."""
    budget_max_keys: int = Field(default=100_000, ge=1)
    """Budget keys (tenants, API keys, ...) whose spend a worker keeps in memory."""
    cost_events_seen_max: int = Field(default=100_000, ge=1)
    """Cost-event ids the ledger remembers to count an event sent twice once."""
    answered_max_per_partition: int = Field(default=200_000, ge=1)
    """Answered request ids remembered per answers partition (within the dedup window)."""
    sink_seen_max: int = Field(default=200_000, ge=1)
    """Trace-event ids the ClickHouse sink remembers to drop redelivered events."""

    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Prices by model name; they override weir's default table (an endpoint's own price wins)."""
    secret_cache_ttl_s: float = Field(default=300.0, ge=0)
    """How long a resolved secret is reused before it is resolved again (0: every call)."""
    vault_addr: SecretUrl | None = Field(
        default=None, validation_alias=AliasChoices("vault_addr", "WEIR_VAULT_ADDR", "VAULT_ADDR")
    )
    """HashiCorp Vault for ``vault:`` secret references (e.g. ``https://vault:8200``)."""
    vault_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("vault_token", "WEIR_VAULT_TOKEN", "VAULT_TOKEN"),
    )
    vault_namespace: str | None = None
    aws_region: str | None = None
    """Region of AWS Secrets Manager for ``aws-sm:`` references (else boto3's default)."""
    aws_endpoint_url: SecretUrl | None = None
    """A Secrets Manager endpoint other than AWS's own (a VPC endpoint, a local emulator)."""
    schema_registry_url: SecretUrl | None = None
    """A Confluent-compatible schema registry (Confluent, Apicurio's ``/apis/ccompat/v7``,
    Redpanda, Karapace).  Set: weir registers its schemas under ``<topic>-value``, decodes Avro
    requests written with any registered schema id and frames Avro results with its ids."""
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    """A secret reference to the registry password (basic auth; an API secret on Confluent)."""
    routes_wait_s: float = Field(default=5.0, ge=0)
    """How long a router's first call waits for the rule sets on the routes topic."""

    @field_validator("clickhouse_dsn", mode="before")
    @classmethod
    def _dsn_scheme(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None or (isinstance(text, str) and not text.strip()):
            return None
        if isinstance(text, str) and not text.startswith(("chdb://", "http://", "https://")):
            raise ValueError(
                "must start with chdb:// (embedded engine) or http(s):// (a ClickHouse server),"
                f" got {mask_url(text)!r}"
            )
        return value

    @field_validator("redact_patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, regex in value.items():
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(
                    f"pattern {kind!r} is not a valid regular expression: {exc}"
                ) from exc
        return value

    @field_validator(
        "web_token",
        "kafka_sasl_password",
        "kafka_ssl_key_password",
        "kafka_oauth_client_secret",
        "schema_registry_password",
    )
    @classmethod
    def _secret_is_a_reference(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from weir.core.errors import SecretError
        from weir.core.secrets import SecretRef  # weir.core.secrets imports this module

        try:
            SecretRef.parse(value.get_secret_value())
        except SecretError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _topics_consistent(self) -> WeirSettings:
        if (
            self.replication_factor is not None
            and self.min_insync_replicas is not None
            and self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"min_insync_replicas {self.min_insync_replicas} is above replication_factor"
                f" {self.replication_factor}: no write could ever succeed"
            )
        return self

    @property
    def trace_store_dsn(self) -> SecretUrl:
        """Where trace events are stored: ``clickhouse_dsn``, else the embedded engine.

        ``str()`` of it is safe to show; only the store's client gets ``get_secret_value()``.
        """
        return self.clickhouse_dsn or SecretUrl(f"chdb://{self.home / 'clickhouse'}")

    @property
    def bootstrap_servers(self) -> str:
        """Where clients connect: the configured cluster, or the local broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker.port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka_bootstrap is None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> WeirSettings:
    """Read settings from an optional TOML file, then the environment, then ``overrides``.

    >>> load_settings(partitions=8).partitions
    8
    """
    file_values: dict[str, Any] = {}
    path = config_file or os.environ.get("WEIR_CONFIG")
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
        file_values = file_values.get("weir", file_values)
    try:
        # Environment beats the file: drop file keys that the environment sets, under
        # their WEIR_ name or an alias (VAULT_ADDR, OTEL_EXPORTER_OTLP_ENDPOINT, ...).
        env = {k.upper() for k in os.environ}
        env_keys = {k[len("WEIR_") :].lower() for k in env if k.startswith("WEIR_")}
        for name, info in WeirSettings.model_fields.items():
            alias = info.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            if any(isinstance(c, str) and c.upper() in env for c in choices):
                env_keys.add(name)
        merged = {k: v for k, v in file_values.items() if k not in env_keys}
        if isinstance(merged.get("broker"), dict):
            merged["broker"] = {
                k: v for k, v in merged["broker"].items() if f"broker_{k}" not in env_keys
            }
        merged |= overrides
        return WeirSettings(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid weir settings: {problems}") from exc
