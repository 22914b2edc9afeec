"""OAUTHBEARER tokens for Kafka from an OIDC provider (the client-credentials grant)."""

from __future__ import annotations

import asyncio
import time

import httpx
from aiokafka.abc import AbstractTokenProvider
from pydantic import SecretStr

from weir.core.errors import BrokerError
from weir.core.urls import SecretUrl

__all__ = ["OidcTokenProvider"]

_REFRESH_BEFORE_S = 60.0
"""A token this close to expiring is replaced before it is handed out."""


class OidcTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka.abc is untyped
    """Fetches an access token with ``client_id``/``client_secret`` and reuses it until
    shortly before it expires (``expires_in``), as aiokafka asks of a token provider."""

    def __init__(
        self,
        *,
        token_url: SecretUrl,
        client_id: str,
        client_secret: SecretStr | None,
        scope: str | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        self._url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._timeout_s = timeout_s
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OidcTokenProvider({str(self._url)!r}, client_id={self._client_id!r})"

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires - _REFRESH_BEFORE_S:
                self._token, lifetime = await self._fetch()
                self._expires = time.monotonic() + lifetime
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "client_id": self._client_id}
        if self._secret is not None:
            form["client_secret"] = self._secret.get_secret_value()
        if self._scope:
            form["scope"] = self._scope
        where = str(self._url)
        try:
            async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                response = await client.post(self._url.get_secret_value(), data=form)
        except httpx.HTTPError as exc:
            raise BrokerError(
                f"cannot get an OAUTHBEARER token from {where}: {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            # The body may echo the request (the secret); report the status only.
            raise BrokerError(
                f"the OIDC token endpoint {where} refused client {self._client_id!r}"
                f" (HTTP {response.status_code}); check WEIR_KAFKA_OAUTH_CLIENT_ID and the"
                " secret WEIR_KAFKA_OAUTH_CLIENT_SECRET refers to"
            )
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise BrokerError(
                f"the OIDC token endpoint {where} answered without an access_token"
            ) from None
        if not isinstance(token, str) or not token:
            raise BrokerError(f"the OIDC token endpoint {where} answered an empty access_token")
        return token, lifetime
