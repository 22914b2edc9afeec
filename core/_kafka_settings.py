"""The Kafka connection part of the settings: cluster, client id, TLS, SASL, OAuth.

``WeirSettings`` inherits these fields (``WEIR_KAFKA_*``); ``KafkaConnection.of``
turns them into what every client is built from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from weir.core.urls import SecretUrl

__all__ = ["KafkaClient", "KafkaSaslMechanism", "KafkaSecurityProtocol", "KafkaSettings"]

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
KafkaClient = Literal["aiokafka", "confluent"]


class KafkaSettings(BaseSettings):
    """How weir reaches the Kafka cluster (the ``kafka_*`` fields of ``WeirSettings``)."""

    model_config = SettingsConfigDict(env_prefix="WEIR_", extra="forbid")

    kafka_bootstrap: str | None = None
    """An existing cluster (``host:port,...``); when unset, the local broker is used."""
    kafka_client_id: str = Field(default="weir", min_length=1)
    """Client id of connections that do not name their own (brokers log and quota by it)."""
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    """``SSL`` and ``SASL_SSL`` encrypt; ``SASL_*`` authenticate with ``kafka_sasl_mechanism``."""
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    """User of PLAIN and SCRAM (an API key on Confluent Cloud)."""
    kafka_sasl_password: SecretStr | None = None
    """A secret reference (``env:``, ``file:``, ``vault:``, ``aws-sm:``) to the SASL password."""
    kafka_ssl_cafile: Path | None = None
    """PEM file of the CAs that sign the brokers' certificates; unset: the system's CAs."""
    kafka_ssl_certfile: Path | None = None
    """PEM client certificate (mutual TLS), with ``kafka_ssl_keyfile``."""
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    """A secret reference to the password of an encrypted ``kafka_ssl_keyfile``."""
    kafka_ssl_check_hostname: bool = True
    """Check that a broker's certificate names the host connected to."""
    kafka_oauth_token_url: SecretUrl | None = None
    """OAUTHBEARER: the OIDC token endpoint of the client-credentials grant."""
    kafka_oauth_client_id: str | None = None
    kafka_oauth_client_secret: SecretStr | None = None
    """A secret reference to the OIDC client secret."""
    kafka_oauth_scope: str | None = None
    kafka_oauth_token_provider: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
    )
    """OAUTHBEARER: ``package.module:factory``, called with the settings, returning an
    ``aiokafka.abc.AbstractTokenProvider``; replaces the OIDC client-credentials provider."""
    kafka_request_timeout_ms: int = Field(default=40_000, ge=1_000)
    """Request timeout of clients that do not set their own."""
    kafka_client: KafkaClient = "aiokafka"
    """The client of the worker's data-path producer (step outputs, retries, dead letters,
    trace events): ``aiokafka``, or ``confluent`` (librdkafka through confluent-kafka; the
    same durability, security and key partitions).  Consumers and the answer writer's
    transactions stay on aiokafka."""

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> Self:
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        sasl = protocol.startswith("SASL_")
        if sasl and mechanism is None:
            raise ValueError(
                f"kafka_security_protocol {protocol} needs kafka_sasl_mechanism (PLAIN,"
                " SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)"
            )
        if mechanism is not None and not sasl:
            raise ValueError(
                f"kafka_sasl_mechanism {mechanism} needs kafka_security_protocol SASL_SSL"
                " (or SASL_PLAINTEXT on a trusted network)"
            )
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                f"SASL {mechanism} needs kafka_sasl_username and kafka_sasl_password"
                " (a secret reference such as env:KAFKA_PASSWORD)"
            )
        if mechanism == "OAUTHBEARER" and not (
            self.kafka_oauth_token_provider
            or (self.kafka_oauth_token_url and self.kafka_oauth_client_id)
        ):
            raise ValueError(
                "SASL OAUTHBEARER needs kafka_oauth_token_url and kafka_oauth_client_id (with"
                " kafka_oauth_client_secret), or kafka_oauth_token_provider"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together (mutual TLS)")
        return self
