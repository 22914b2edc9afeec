"""The one way weir connects to Kafka: every producer, consumer and admin client is built here.

``KafkaConnection.of(settings)`` reads the connection settings once (bootstrap,
client id, TLS, SASL, timeouts), resolves their secret references, and then
builds clients that differ only in their own options::

    kafka = KafkaConnection.of(settings)
    producer = kafka.producer(acks="all", enable_idempotence=True)
    consumer = kafka.consumer(group_id="g", isolation_level="read_committed")
    data = kafka.data_producer(client_id="weir-w1", linger_ms=0, batch_bytes=524_288)

``data_producer`` is the worker's data path, on the client ``kafka_client`` names
(aiokafka, or librdkafka through confluent-kafka) behind one ``DataProducer`` seam.

Passwords are ``SecretStr`` until a client is built; neither ``repr`` nor an
error message shows them.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from weir.core._producers import MAX_REQUEST_BYTES, AiokafkaProducer, DataProducer, send_batches
from weir.core.config import (
    KafkaClient,
    KafkaSaslMechanism,
    KafkaSecurityProtocol,
    WeirSettings,
)
from weir.core.errors import BrokerError, ConfigError
from weir.core.oauth import OidcTokenProvider
from weir.core.secrets import SecretResolver, scrub

__all__ = ["DataProducer", "KafkaConnection", "TlsFiles", "send_batches"]

# Options that belong to the connection: a call site may not override them, so one
# client cannot silently bypass TLS or authenticate as someone else.
_CONNECTION_KEYS = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_oauth_token_provider",
    }
)


class TlsFiles(NamedTuple):
    """The TLS files a context was made of: librdkafka reads the files, not the context."""

    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    key_password: SecretStr | None = None
    check_hostname: bool = True


class KafkaConnection:
    """Where and how to connect to Kafka; builds aiokafka clients (and the data producer)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        client_id: str = "weir",
        security_protocol: KafkaSecurityProtocol = "PLAINTEXT",
        sasl_mechanism: KafkaSaslMechanism | None = None,
        sasl_username: str | None = None,
        sasl_password: SecretStr | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token_provider: AbstractTokenProvider | None = None,
        request_timeout_ms: int = 40_000,
        client: KafkaClient = "aiokafka",
        tls_files: TlsFiles | None = None,
    ) -> None:
        self._own_context = ssl_context is not None and tls_files is None
        if security_protocol in ("SSL", "SASL_SSL") and ssl_context is None:
            ssl_context = create_ssl_context()  # the system's CAs, hostname checked
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.security_protocol = security_protocol
        self.sasl_mechanism = sasl_mechanism
        self.sasl_username = sasl_username
        self._sasl_password = sasl_password
        self._ssl_context = ssl_context
        self._token_provider = token_provider
        self.request_timeout_ms = request_timeout_ms
        self.client = client
        self._tls_files = tls_files

    @classmethod
    def of(
        cls,
        settings: WeirSettings,
        *,
        bootstrap: str | None = None,
        resolver: SecretResolver | None = None,
    ) -> KafkaConnection:
        """The connection ``settings`` describe (to ``bootstrap``, when given).

        Resolves the secret references now (``SecretError`` naming the reference
        only) and reads the TLS files (``ConfigError`` naming the file).
        """
        resolver = resolver or SecretResolver(settings)
        password = None
        if settings.kafka_sasl_password is not None and settings.kafka_sasl_mechanism in (
            "PLAIN",
            "SCRAM-SHA-256",
            "SCRAM-SHA-512",
        ):
            password = resolver.resolve_blocking(settings.kafka_sasl_password.get_secret_value())
        context = files = None
        if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
            context, files = _ssl_context(settings, resolver)
        provider = None
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            provider = _token_provider(settings, resolver)
        return cls(
            bootstrap=bootstrap or settings.bootstrap_servers,
            client_id=settings.kafka_client_id,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=password,
            ssl_context=context,
            token_provider=provider,
            request_timeout_ms=settings.kafka_request_timeout_ms,
            client=settings.kafka_client,
            tls_files=files,
        )

    def __repr__(self) -> str:
        user = f", user={self.sasl_username!r}" if self.sasl_username else ""
        mechanism = f", sasl={self.sasl_mechanism}" if self.sasl_mechanism else ""
        return f"KafkaConnection({self.bootstrap!r}, {self.security_protocol}{mechanism}{user})"

    @property
    def secured(self) -> bool:
        return self.security_protocol != "PLAINTEXT"

    def options(self, **own: Any) -> dict[str, Any]:
        """Keyword arguments of an aiokafka client: the connection's, then ``own``."""
        if clash := _CONNECTION_KEYS & own.keys():
            raise TypeError(f"{', '.join(sorted(clash))} belong to the connection, not a client")
        out: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self._ssl_context is not None:
            out["ssl_context"] = self._ssl_context
        if self.sasl_mechanism is not None:
            out["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            out["sasl_plain_username"] = self.sasl_username
        if self._sasl_password is not None:
            out["sasl_plain_password"] = self._sasl_password.get_secret_value()
        if self._token_provider is not None:
            out["sasl_oauth_token_provider"] = self._token_provider
        return out | own

    def producer(self, **own: Any) -> AIOKafkaProducer:
        """A producer (not started) with this connection and ``own`` options."""
        return AIOKafkaProducer(**self.options(**own))

    def data_producer(
        self,
        *,
        client_id: str,
        linger_ms: int,
        batch_bytes: int,
        request_timeout_ms: int = 30_000,
        partitioner: Any = None,
    ) -> DataProducer:
        """The data path's producer (not started) on ``kafka_client``: idempotent, acks=all.

        Keys land on the partitions of Java's murmur2 on both clients (``partitioner``, an
        aiokafka partitioner, is used by aiokafka; librdkafka runs its ``murmur2_random``).
        """
        if self.client == "aiokafka":
            options: dict[str, Any] = {"partitioner": partitioner} if partitioner else {}
            return AiokafkaProducer(
                self.producer(
                    client_id=client_id,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=linger_ms,
                    max_batch_size=batch_bytes,
                    max_request_size=MAX_REQUEST_BYTES,
                    request_timeout_ms=request_timeout_ms,
                    **options,
                ),
                partitioner,
            )
        config = self.rdkafka_options() | {
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "batch.size": batch_bytes,
            "request.timeout.ms": request_timeout_ms,
            # aiokafka fails a batch the broker has not taken within its request timeout;
            # the outbox then decides (send again, or give the input up).
            "message.timeout.ms": request_timeout_ms,
            # aiokafka's max_request_size, so both refuse the same messages.
            "message.max.bytes": MAX_REQUEST_BYTES,
            "partitioner": "murmur2_random",
        }
        try:
            from weir.core._confluent_producer import ConfluentProducer
        except ImportError:
            raise ConfigError(
                "WEIR_KAFKA_CLIENT=confluent needs confluent-kafka: pip install 'weir[confluent]'"
            ) from None
        return ConfluentProducer(
            config,
            token_provider=self._token_provider,
            timeout_s=request_timeout_ms / 1000,
        )

    def rdkafka_options(self) -> dict[str, Any]:
        """librdkafka's configuration of this connection (secrets resolved: never log it)."""
        out: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol.lower(),
            "socket.timeout.ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            files = self._tls_files
            if files is None:
                if self._own_context:
                    raise ConfigError(
                        "kafka_client confluent reads TLS from files: build the connection"
                        " with KafkaConnection.of(settings) (WEIR_KAFKA_SSL_CAFILE, ...), not"
                        " from an ssl.SSLContext"
                    )
                files = TlsFiles()
            # Unset: the system's CAs, which librdkafka finds by probing the usual paths.
            out["ssl.ca.location"] = str(files.cafile) if files.cafile else "probe"
            if files.certfile is not None:
                out["ssl.certificate.location"] = str(files.certfile)
            if files.keyfile is not None:
                out["ssl.key.location"] = str(files.keyfile)
            if files.key_password is not None:
                out["ssl.key.password"] = files.key_password.get_secret_value()
            out["ssl.endpoint.identification.algorithm"] = (
                "https" if files.check_hostname else "none"
            )
        if self.sasl_mechanism is not None:
            out["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            out["sasl.username"] = self.sasl_username
        if self._sasl_password is not None:
            out["sasl.password"] = self._sasl_password.get_secret_value()
        return out

    def consumer(self, *topics: str, **own: Any) -> AIOKafkaConsumer:
        """A consumer (not started) with this connection and ``own`` options."""
        return AIOKafkaConsumer(*topics, **self.options(**own))

    def admin(self, **own: Any) -> AIOKafkaAdminClient:
        """An admin client (not started) with this connection and ``own`` options."""
        return AIOKafkaAdminClient(**self.options(**own))

    async def diagnose(self, *, timeout: float = 15.0) -> str:
        """Why a client cannot connect, in words (TLS, authentication or reachability).

        aiokafka only logs the cause and raises "Unable to bootstrap"; this opens
        one connection to each bootstrap server itself to find it.
        """
        reasons = []
        for server in self.bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                async with asyncio.timeout(timeout):
                    conn = await create_conn(
                        host.strip("[]"),
                        int(port),
                        client_id=self.client_id,
                        request_timeout_ms=self.request_timeout_ms,
                        ssl_context=self._ssl_context,
                        security_protocol=self.security_protocol,
                        sasl_mechanism=self.sasl_mechanism or "PLAIN",
                        sasl_plain_username=self.sasl_username,
                        sasl_plain_password=(
                            self._sasl_password.get_secret_value() if self._sasl_password else None
                        ),
                        sasl_oauth_token_provider=self._token_provider,
                    )
                conn.close()
            except ssl.SSLCertVerificationError as exc:
                reasons.append(
                    f"{server}: the broker's TLS certificate is not trusted"
                    f" ({exc.verify_message}); set WEIR_KAFKA_SSL_CAFILE to the CA that signed"
                    " it (or check the host name it was issued for)"
                )
            except ssl.SSLError as exc:
                reasons.append(
                    f"{server}: TLS handshake failed ({exc.reason or exc}); check"
                    " WEIR_KAFKA_SECURITY_PROTOCOL: the listener may not speak TLS"
                )
            except KafkaError as exc:
                reasons.append(f"{server}: {_kafka_reason(exc, self)}")
            except (OSError, TimeoutError, ValueError) as exc:
                reasons.append(f"{server}: cannot connect ({type(exc).__name__}: {exc})")
            else:
                return f"{server} accepts connections as configured"
        return scrub("; ".join(reasons))

    async def unavailable(self, exc: BaseException) -> BrokerError:
        """The ``BrokerError`` to raise when a client failed to start with ``exc``."""
        why = await self.diagnose()
        hint = (
            " Start the local broker with 'weir broker start' or set WEIR_KAFKA_BOOTSTRAP."
            if not self.secured
            else ""
        )
        return BrokerError(f"cannot connect to Kafka at {self.bootstrap}: {why}.{hint}")


def _kafka_reason(exc: KafkaError, connection: KafkaConnection) -> str:
    text = scrub(str(exc))
    if "uthentication" in text or "SASL" in text or "credentials" in text:
        who = f" as {connection.sasl_username!r}" if connection.sasl_username else ""
        return (
            f"SASL {connection.sasl_mechanism} authentication{who} failed ({text}); check"
            " WEIR_KAFKA_SASL_USERNAME, the secret WEIR_KAFKA_SASL_PASSWORD refers to, and"
            " WEIR_KAFKA_SASL_MECHANISM"
        )
    return text


def _ssl_context(
    settings: WeirSettings, resolver: SecretResolver
) -> tuple[ssl.SSLContext, TlsFiles]:
    key_secret = key_password = None
    if settings.kafka_ssl_key_password is not None:
        ref = settings.kafka_ssl_key_password.get_secret_value()
        key_secret = resolver.resolve_blocking(ref)
        key_password = key_secret.get_secret_value()
    for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} {path} does not exist (WEIR_{name.upper()})")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=key_password,
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"the TLS files (CA {settings.kafka_ssl_cafile}, certificate"
            f" {settings.kafka_ssl_certfile}, key {settings.kafka_ssl_keyfile}) cannot be"
            f" used: {exc.reason or exc}"
        ) from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    files = TlsFiles(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        key_password=key_secret,
        check_hostname=settings.kafka_ssl_check_hostname,
    )
    return context, files


def _token_provider(settings: WeirSettings, resolver: SecretResolver) -> AbstractTokenProvider:
    if settings.kafka_oauth_token_provider:
        module_name, _, attr = settings.kafka_oauth_token_provider.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"kafka_oauth_token_provider {settings.kafka_oauth_token_provider} cannot be"
                f" loaded: {exc}"
            ) from exc
        try:
            provider = factory(settings)
        except Exception as exc:
            raise ConfigError(
                f"kafka_oauth_token_provider {settings.kafka_oauth_token_provider} failed:"
                f" {type(exc).__name__}: {scrub(str(exc))}"
            ) from None
        if not isinstance(provider, AbstractTokenProvider):
            raise ConfigError(
                f"kafka_oauth_token_provider {settings.kafka_oauth_token_provider} returned"
                f" {type(provider).__name__}, not an aiokafka AbstractTokenProvider"
            )
        return provider
    assert settings.kafka_oauth_token_url is not None  # checked by the settings
    secret = None
    if settings.kafka_oauth_client_secret is not None:
        secret = resolver.resolve_blocking(settings.kafka_oauth_client_secret.get_secret_value())
    return OidcTokenProvider(
        token_url=settings.kafka_oauth_token_url,
        client_id=settings.kafka_oauth_client_id or "",
        client_secret=secret,
        scope=settings.kafka_oauth_scope,
    )
