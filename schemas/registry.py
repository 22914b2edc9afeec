"""A Confluent-compatible schema registry: weir's schemas registered, writers' schemas fetched.

Speaks the REST subset every compatible registry serves (Confluent Schema Registry,
Apicurio Registry's ``/apis/ccompat/v7``, Redpanda, Karapace):

* ``POST /subjects/<subject>/versions`` registers a schema and returns its id
  (the same id again for a schema already registered);
* ``GET /schemas/ids/<id>`` returns the schema an id stands for.

Ids are global and immutable, so a writer schema, once fetched, is cached for the
life of the process.  Records framed with weir's fingerprint ids (written without a
registry) stay readable.  Records written with another version of a schema are read by
Avro schema resolution into weir's own (reader) schema: fields the writer added
are skipped, fields it lacks take their defaults.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import fastavro
import httpx
from fastavro.schema import to_parsing_canonical_form

from weir.core.config import WeirSettings
from weir.core.errors import ConfigError, SchemaRegistryError, UndecodableError
from weir.core.secrets import SecretResolver, scrub
from weir.core.urls import SecretUrl
from weir.schemas._codec import MAGIC_BYTE, AvroSchema
from weir.schemas.messages import REQUEST_SCHEMA, RESULT_SCHEMA

__all__ = ["SchemaRegistry"]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ID = struct.Struct(">I")


class SchemaRegistry:
    """One registry's client, with the schemas it has fetched; ``async with`` or ``aclose``."""

    def __init__(
        self,
        url: SecretUrl,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        fingerprinted: tuple[AvroSchema, ...] = (REQUEST_SCHEMA, RESULT_SCHEMA),
    ) -> None:
        self.url = url
        # Records framed with weir's own fingerprint ids (clients without the registry) stay
        # readable: an id the registry does not know is looked up here.
        self._fingerprinted = {s.schema_id: s.parsed for s in fingerprinted}
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._http = httpx.AsyncClient(
            base_url=url.get_secret_value().rstrip("/"),
            auth=auth,
            timeout=timeout_s,
            headers={"Accept": _CONTENT_TYPE},
        )
        self._writers: dict[int, Any] = {}
        self._fetching: dict[int, asyncio.Future[Any]] = {}

    @classmethod
    def of(cls, settings: WeirSettings) -> SchemaRegistry:
        """The registry ``settings`` name (``schema_registry_url``); its password resolved."""
        if settings.schema_registry_url is None:
            raise ConfigError("no schema registry is configured (WEIR_SCHEMA_REGISTRY_URL)")
        password = None
        if settings.schema_registry_password is not None:
            ref = settings.schema_registry_password.get_secret_value()
            password = SecretResolver(settings).resolve_blocking(ref).get_secret_value()
        return cls(
            settings.schema_registry_url,
            username=settings.schema_registry_username,
            password=password,
        )

    def __repr__(self) -> str:
        return f"SchemaRegistry({str(self.url)!r})"

    async def __aenter__(self) -> SchemaRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def register(self, subject: str, schema: AvroSchema) -> int:
        """Register ``schema`` under ``subject`` (e.g. ``weir.shop.requests-value``); its id.

        Registering a schema the subject already has returns its existing id.
        """
        body = {"schemaType": "AVRO", "schema": json.dumps(schema.definition)}
        data = await self._call("POST", f"/subjects/{subject}/versions", json=body)
        schema_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(schema_id, int):
            raise SchemaRegistryError(
                f"the schema registry at {self.url} answered the registration of {subject}"
                " without an id"
            )
        self._writers.setdefault(schema_id, schema.parsed)
        return schema_id

    async def writer(self, raw: bytes | None) -> Any:
        """The parsed schema an Avro record in the Confluent framing was written with.

        ``None`` for anything else (JSON), so callers can ask of every message.  Raises
        ``UndecodableError`` for an id the registry does not know and ``SchemaRegistryError``
        while the registry cannot be reached.
        """
        if raw is None or len(raw) < 5 or raw[0] != MAGIC_BYTE:
            return None
        (schema_id,) = _ID.unpack_from(raw, 1)
        found = self._writers.get(schema_id)
        if found is not None:
            return found
        # Concurrent records with a new id share one request.
        pending = self._fetching.get(schema_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(schema_id))
            self._fetching[schema_id] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(schema_id, None))
        return await asyncio.shield(pending)

    async def _fetch(self, schema_id: int) -> Any:
        data = await self._call("GET", f"/schemas/ids/{schema_id}", missing_ok=True)
        if data is None and schema_id in self._fingerprinted:
            return self._fingerprinted[schema_id]
        if data is None:
            raise UndecodableError(
                f"Avro schema id {schema_id} is not registered in the schema registry at {self.url}"
            )
        text = data.get("schema") if isinstance(data, dict) else None
        kind = data.get("schemaType", "AVRO") if isinstance(data, dict) else None
        if kind != "AVRO" or not isinstance(text, str):
            raise UndecodableError(
                f"schema id {schema_id} in the registry at {self.url} is not an Avro schema"
                f" ({kind})"
            )
        try:
            parsed = fastavro.parse_schema(json.loads(text))
            to_parsing_canonical_form(parsed)
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
            raise UndecodableError(
                f"schema id {schema_id} in the registry at {self.url} does not parse: {exc}"
            ) from exc
        self._writers[schema_id] = parsed
        return parsed

    async def _call(
        self, method: str, path: str, *, json: Any = None, missing_ok: bool = False
    ) -> Any:
        headers = {"Content-Type": _CONTENT_TYPE} if json is not None else None
        try:
            response = await self._http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(
                f"cannot reach the schema registry at {self.url}: {type(exc).__name__}"
            ) from None
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise SchemaRegistryError(
                f"the schema registry at {self.url} answered {method} {path} with HTTP"
                f" {response.status_code}: {scrub(response.text[:300])}"
            )
        try:
            return response.json()
        except ValueError:
            raise SchemaRegistryError(
                f"the schema registry at {self.url} answered {method} {path} with no JSON"
            ) from None
