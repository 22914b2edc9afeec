"""Secret references: API keys are named, never written down, and resolved at call time.

A reference says where the secret lives:

    env:NAME                 an environment variable
    file:/path/to/key        a file's content (trailing newline dropped)
    vault:secret/path#key    HashiCorp Vault, KV version 2 (mount ``secret``), field ``key``
    aws-sm:name#key          AWS Secrets Manager; ``#key`` picks a field of a JSON secret

Anything else, in particular a literal key, is refused when the reference is
parsed (that is, when the pipeline is defined), and the message never repeats
it.  Resolved values are ``SecretStr``: their ``repr`` and ``str`` are masked;
only the code that builds an HTTP header calls ``get_secret_value``.  Every
value resolved in this process is remembered so that ``scrub`` can take it out
of any text (error bodies that echo a key, for example) before that text
reaches a log, an exception, a trace or a dead letter.

>>> SecretRef.parse("env:OPENAI_API_KEY")
SecretRef('env:OPENAI_API_KEY')
>>> SecretRef.parse("vault:secret/llm/openai#api_key").key
'api_key'
>>> SecretRef.parse("sk-live-1234")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
weir.core.errors.SecretError: a literal secret is not allowed here: give a reference ...
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import SecretError, SecretStoreError

__all__ = ["SecretRef", "SecretResolver", "scrub"]

Scheme = Literal["env", "file", "vault", "aws-sm"]
_SCHEMES: tuple[Scheme, ...] = ("env", "file", "vault", "aws-sm")
_MIN_SCRUB_LENGTH = 6
"""Shorter values are not scrubbed: they would mangle ordinary text and are no real key."""

_AWS_TRANSIENT = frozenset({"ThrottlingException", "InternalServiceError", "ServiceUnavailable"})
"""Secrets Manager error codes that say "try again later", not "this reference is wrong"."""

_known: set[str] = set()
_known_lock = threading.Lock()


def scrub(text: str) -> str:
    """``text`` with every secret value resolved in this process replaced by ``***``."""
    if not _known:
        return text
    with _known_lock:
        values = sorted(_known, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, "***")
    return text


def _remember(value: str) -> None:
    if len(value) >= _MIN_SCRUB_LENGTH:
        with _known_lock:
            _known.add(value)


@dataclass(frozen=True)
class SecretRef:
    """A parsed secret reference (never the secret)."""

    scheme: Scheme
    path: str
    """Variable name, file path, Vault ``mount/path`` or AWS secret id."""
    key: str | None = None
    """Field inside the secret (``#key``)."""

    def __repr__(self) -> str:
        return f"SecretRef({str(self)!r})"

    def __str__(self) -> str:
        return f"{self.scheme}:{self.path}" + (f"#{self.key}" if self.key else "")

    @classmethod
    def parse(cls, text: str | SecretRef) -> SecretRef:
        """Parse ``text``; ``SecretError`` for literal keys and malformed references."""
        if isinstance(text, SecretRef):
            return text
        if not isinstance(text, str):
            raise SecretError(f"a secret reference must be a string, got {type(text).__name__}")
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in _SCHEMES:
            # Never echo ``text``: it may be the key itself.
            raise SecretError(
                "a literal secret is not allowed here: give a reference (env:NAME,"
                " file:/path, vault:mount/path#key or aws-sm:name#key)"
            )
        path, _, key = rest.partition("#")
        path, key = path.strip(), key.strip()
        where = f"secret reference {scheme}:{path}"
        if not path:
            raise SecretError(f"{where} names nothing after '{scheme}:'")
        if scheme == "env":
            if key or not path.replace("_", "").isalnum():
                raise SecretError(f"{where}: env: takes a variable name (letters, digits, _)")
        elif scheme == "vault":
            if "/" not in path.strip("/") or not key:
                raise SecretError(
                    f"{where}: vault: needs mount/path#key, e.g. vault:secret/llm/openai#api_key"
                )
        elif scheme == "file" and key:
            raise SecretError(f"{where}: file: takes a path only, no #key")
        return cls(scheme, path, key or None)


class SecretResolver:
    """Resolves references at call time and caches values for ``secret_cache_ttl_s``."""

    def __init__(self, settings: WeirSettings) -> None:
        self._settings = settings
        self._cache: dict[SecretRef, tuple[float, SecretStr]] = {}
        self._lock = threading.Lock()
        self._vault: Any = None
        self._aws: Any = None

    async def resolve(self, ref: str | SecretRef) -> SecretStr:
        """The secret's value; ``SecretError`` (naming the reference only) when unavailable."""
        parsed = SecretRef.parse(ref)
        cached = self._cached(parsed)
        if cached is not None:
            return cached
        if parsed.scheme == "env":
            value = self._resolve_now(parsed)
        else:  # file system and network clients block: keep them off the event loop
            value = await asyncio.to_thread(self._resolve_now, parsed)
        return value

    def resolve_blocking(self, ref: str | SecretRef) -> SecretStr:
        """``resolve`` for synchronous callers (commands), never on an event loop."""
        parsed = SecretRef.parse(ref)
        return self._cached(parsed) or self._resolve_now(parsed)

    def _cached(self, ref: SecretRef) -> SecretStr | None:
        hit = self._cache.get(ref)
        if hit is not None and time.monotonic() < hit[0]:
            return hit[1]
        return None

    def invalidate(self, ref: str | SecretRef | None = None) -> None:
        """Forget one cached value (e.g. after the provider answered 401), or all."""
        with self._lock:
            if ref is None:
                self._cache.clear()
            else:
                self._cache.pop(SecretRef.parse(ref), None)

    def _resolve_now(self, ref: SecretRef) -> SecretStr:
        try:
            raw = self._fetch(ref)
        except SecretError:
            raise
        except OSError as exc:  # requests' (so hvac's) network errors are OSErrors
            raise SecretStoreError(
                f"cannot reach the secret store for {ref}: {type(exc).__name__}"
            ) from None
        except Exception as exc:
            # The library's message may quote a response; keep only the type.
            raise SecretError(
                f"cannot resolve secret reference {ref}: {type(exc).__name__}"
            ) from None
        if not raw:
            raise SecretError(f"secret reference {ref} resolved to an empty value")
        _remember(raw)
        value = SecretStr(raw)
        with self._lock:
            self._cache[ref] = (time.monotonic() + self._settings.secret_cache_ttl_s, value)
        return value

    def _fetch(self, ref: SecretRef) -> str:
        if ref.scheme == "env":
            # Secret references are the one documented exception to "only WeirSettings
            # reads the environment": naming the variable is the user's explicit choice.
            raw = os.environ.get(ref.path)
            if raw is None:
                raise SecretError(f"secret reference {ref}: environment variable is not set")
            return raw.strip()
        if ref.scheme == "file":
            try:
                return Path(ref.path).read_text().strip()
            except OSError as exc:
                raise SecretError(
                    f"secret reference {ref}: cannot read the file ({exc.strerror})"
                ) from None
        if ref.scheme == "vault":
            return self._from_vault(ref)
        return self._from_aws(ref)

    def _from_vault(self, ref: SecretRef) -> str:
        settings = self._settings
        if not settings.vault_addr:
            raise SecretError(f"secret reference {ref}: set WEIR_VAULT_ADDR (or VAULT_ADDR)")
        try:
            import hvac
            import hvac.exceptions
        except ImportError:
            raise SecretError(
                f"secret reference {ref} needs hvac: pip install 'weir[vault]'"
            ) from None
        if self._vault is None:
            token = settings.vault_token.get_secret_value() if settings.vault_token else None
            if token:
                _remember(token)
            self._vault = hvac.Client(
                url=settings.vault_addr.get_secret_value(),
                token=token,
                namespace=settings.vault_namespace,
            )
        mount, _, path = ref.path.strip("/").partition("/")
        try:
            response = self._vault.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            raise SecretError(f"secret reference {ref}: no such path in Vault") from None
        except hvac.exceptions.Forbidden:
            raise SecretError(f"secret reference {ref}: Vault refused the token") from None
        except (
            hvac.exceptions.VaultDown,
            hvac.exceptions.InternalServerError,
            hvac.exceptions.BadGateway,
            hvac.exceptions.RateLimitExceeded,
        ) as exc:
            raise SecretStoreError(
                f"secret reference {ref}: Vault answered {type(exc).__name__}"
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise SecretError(
                f"secret reference {ref}: Vault answered {type(exc).__name__}"
            ) from None
        data = (response or {}).get("data", {}).get("data", {})
        if ref.key not in data:
            raise SecretError(f"secret reference {ref}: the Vault secret has no field {ref.key!r}")
        return str(data[ref.key])

    def _from_aws(self, ref: SecretRef) -> str:
        try:
            import boto3
            import botocore.exceptions
        except ImportError:
            raise SecretError(
                f"secret reference {ref} needs boto3: pip install 'weir[aws]'"
            ) from None
        if self._aws is None:
            self._aws = boto3.client(
                "secretsmanager",
                region_name=self._settings.aws_region,
                endpoint_url=(
                    self._settings.aws_endpoint_url.get_secret_value()
                    if self._settings.aws_endpoint_url
                    else None
                ),
            )
        try:
            response = self._aws.get_secret_value(SecretId=ref.path)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            kind = SecretStoreError if code in _AWS_TRANSIENT else SecretError
            raise kind(f"secret reference {ref}: Secrets Manager answered {code}") from None
        except (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
        ) as exc:
            raise SecretStoreError(
                f"secret reference {ref}: Secrets Manager unreachable ({type(exc).__name__})"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:  # no credentials, bad region, ...
            raise SecretError(
                f"secret reference {ref}: Secrets Manager client failed ({type(exc).__name__})"
            ) from None
        raw = response.get("SecretString")
        if raw is None:
            raise SecretError(f"secret reference {ref}: the secret is binary, not a string")
        if ref.key is None:
            return str(raw)
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError:
            raise SecretError(
                f"secret reference {ref}: #{ref.key} given but the secret is not JSON"
            ) from None
        if not isinstance(fields, dict) or ref.key not in fields:
            raise SecretError(f"secret reference {ref}: the secret has no field {ref.key!r}")
        return str(fields[ref.key])
