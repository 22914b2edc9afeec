"""TLS material and SASL users of the local broker's secured listener (``WEIR_BROKER_SECURE``).

Generated once per state directory with the JDK's ``keytool`` (the broker needs a
Java runtime anyway): a private CA, a broker certificate for ``127.0.0.1`` and
``localhost`` signed by it, and random passwords for the broker's own user
(``admin``, inter-broker traffic) and the clients' user (``weir``).  Every file is
readable by the owner only.

Layout::

    <state_dir>/secure/ca.pem              the CA clients trust (WEIR_KAFKA_SSL_CAFILE)
    <state_dir>/secure/weir.password       the clients' password (file: reference)
    <state_dir>/secure/admin.password      the broker's own SCRAM password
    <state_dir>/secure/broker.p12          the broker's key and certificate chain
    <state_dir>/secure/truststore.p12      the CA, for the broker's inter-broker client
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from weir.core.errors import BrokerError

__all__ = ["CLIENT_USER", "BrokerSecurity"]

CLIENT_USER = "weir"
_ADMIN_USER = "admin"
_SAN = "SAN=dns:localhost,ip:127.0.0.1"
_VALIDITY_DAYS = "3650"
_KEYTOOL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BrokerSecurity:
    """Paths and passwords of one state directory's secured listener."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def client_password_file(self) -> Path:
        return self.directory / "weir.password"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.directory / "truststore.p12"

    def _secret(self, name: str) -> str:
        return (self.directory / name).read_text().strip()

    @property
    def admin_password(self) -> str:
        return self._secret("admin.password")

    @property
    def client_password(self) -> str:
        return self._secret("weir.password")

    @property
    def store_password(self) -> str:
        return self._secret("store.password")

    def ensure(self) -> None:
        """Generate the CA, the broker's keystore and the passwords unless they exist."""
        if (self.directory / ".complete").is_file():
            return
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, mode=0o700)
        for name in ("admin.password", "weir.password", "store.password"):
            _write_private(self.directory / name, secrets.token_urlsafe(24))
        store = self.store_password
        ca_store = self.directory / "ca.p12"
        common = ["-storetype", "PKCS12", "-storepass", store, "-keypass", store]
        self._keytool(
            "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
            "-dname", "CN=weir local broker CA", "-ext", "bc:c", "-validity", _VALIDITY_DAYS,
            "-keystore", str(ca_store), *common,
        )  # fmt: skip
        self._keytool(
            "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store),
            "-storepass", store, "-file", str(self.ca_file),
        )  # fmt: skip
        self._keytool(
            "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
            "-dname", "CN=localhost", "-ext", _SAN, "-validity", _VALIDITY_DAYS,
            "-keystore", str(self.keystore), *common,
        )  # fmt: skip
        csr, signed = self.directory / "broker.csr", self.directory / "broker.pem"
        self._keytool(
            "-certreq", "-alias", "broker", "-keystore", str(self.keystore),
            "-storepass", store, "-file", str(csr),
        )  # fmt: skip
        self._keytool(
            "-gencert", "-rfc", "-alias", "ca", "-keystore", str(ca_store), "-storepass", store,
            "-infile", str(csr), "-outfile", str(signed), "-ext", _SAN,
            "-validity", _VALIDITY_DAYS,
        )  # fmt: skip
        for alias, cert, keystore in (
            ("ca", self.ca_file, self.keystore),
            ("broker", signed, self.keystore),
            ("ca", self.ca_file, self.truststore),
        ):
            self._keytool(
                "-importcert", "-noprompt", "-alias", alias, "-file", str(cert),
                "-keystore", str(keystore), "-storetype", "PKCS12", "-storepass", store,
            )  # fmt: skip
        csr.unlink()
        for path in self.directory.iterdir():
            path.chmod(0o600)
        (self.directory / ".complete").touch()

    def scram_users(self) -> list[str]:
        """``kafka-storage format --add-scram`` arguments creating both users."""
        return [
            f"SCRAM-SHA-{bits}=[name={user},password={password}]"
            for bits in (256, 512)
            for user, password in (
                (_ADMIN_USER, self.admin_password),
                (CLIENT_USER, self.client_password),
            )
        ]

    def listener_properties(self, listener: str) -> dict[str, str]:
        """Broker properties of the SASL_SSL ``listener`` (also the inter-broker one)."""
        name = listener.lower()
        admin = f'username="{_ADMIN_USER}" password="{self.admin_password}"'
        scram = f"org.apache.kafka.common.security.scram.ScramLoginModule required {admin};"
        plain_users = (
            f'user_{_ADMIN_USER}="{self.admin_password}"'
            f' user_{CLIENT_USER}="{self.client_password}"'
        )
        return {
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.store_password,
            "ssl.key.password": self.store_password,
            "ssl.truststore.type": "PKCS12",
            "ssl.truststore.location": str(self.truststore),
            "ssl.truststore.password": self.store_password,
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN,OAUTHBEARER",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            f"listener.name.{name}.scram-sha-512.sasl.jaas.config": scram,
            f"listener.name.{name}.scram-sha-256.sasl.jaas.config": scram,
            f"listener.name.{name}.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required"
                f" {admin} {plain_users};"
            ),
            # Kafka's unsecured JWT validator: any unsigned token with a subject is accepted.
            # Enough to exercise OAUTHBEARER clients on a development broker, never more.
            f"listener.name.{name}.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required"
                f' unsecuredLoginStringClaim_sub="{_ADMIN_USER}";'
            ),
        }

    def _keytool(self, *args: str) -> None:
        keytool = shutil.which("keytool")
        if keytool is None:
            raise BrokerError(
                "`keytool` is not on PATH: the secured local broker generates its certificates"
                " with the JDK's keytool (e.g. openjdk-17-jdk-headless)"
            )
        try:
            done = subprocess.run(
                [keytool, *args],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_KEYTOOL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"keytool {args[0]} took over {_KEYTOOL_TIMEOUT_S:.0f}s") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).replace(self.store_password, "***")
            raise BrokerError(f"keytool {args[0]} failed in {self.directory}: {output.strip()}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
