"""Avro encoding in the Confluent wire format, and JSON for the same records.

Framing: byte 0 is the magic ``0``, bytes 1-4 the schema id (big-endian int32),
then the Avro binary body.  Without a schema registry, a schema's id is the low
31 bits of its CRC-64-AVRO (Rabin) fingerprint over the parsing canonical form,
so a client in any language can compute it from the ``.avsc`` file alone.  With
one (``weir.schemas.registry``), ids are the registry's, and a record written
with another (compatible) schema is decoded by Avro schema resolution.
"""

from __future__ import annotations

import io
import json
import struct
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from weir.core.errors import SchemaInvalidError, UndecodableError

__all__ = ["MAGIC_BYTE", "AvroSchema", "load_schema"]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class AvroSchema:
    """One ``.avsc`` schema: parsed once, with its wire id and framed codec."""

    def __init__(self, name: str, definition: dict[str, Any]) -> None:
        self.name = name
        self.definition = definition
        self.parsed = fastavro.parse_schema(definition)
        canonical = to_parsing_canonical_form(self.parsed)
        # fastavro prints the 64-bit fingerprint's bytes little-endian first; the spec's
        # value (Java's SchemaNormalization.parsingFingerprint64) is their integer reading.
        rabin = int.from_bytes(bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")), "little")
        self.schema_id = rabin & 0x7FFFFFFF
        self._header = _HEADER.pack(MAGIC_BYTE, self.schema_id)

    @property
    def header(self) -> bytes:
        """The Confluent framing of this schema: magic byte and schema id."""
        return self._header

    def encode(self, record: dict[str, Any], *, schema_id: int | None = None) -> bytes:
        """Avro body framed with the magic byte and this schema's id (or ``schema_id``,
        its id in a schema registry)."""
        buf = io.BytesIO()
        buf.write(self._header if schema_id is None else _HEADER.pack(MAGIC_BYTE, schema_id))
        try:
            fastavro.schemaless_writer(buf, self.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaInvalidError(f"record does not match {self.name}: {exc}") from exc
        return buf.getvalue()

    def is_framed(self, raw: bytes) -> bool:
        """True when ``raw`` carries this schema's Confluent header."""
        return raw[:5] == self._header

    def decode(self, raw: bytes, *, writer: Any = None) -> dict[str, Any]:
        """Decode a framed Avro message written with this schema, or with ``writer`` (a
        parsed schema from a registry: the record is resolved into this one)."""
        if len(raw) < 5 or raw[0] != MAGIC_BYTE:
            raise UndecodableError(f"not an Avro {self.name}: missing the Confluent magic byte")
        (_, schema_id) = _HEADER.unpack_from(raw)
        if writer is None and schema_id != self.schema_id:
            raise UndecodableError(
                f"Avro schema id {schema_id} is not {self.name} (expected id {self.schema_id};"
                " records framed with a schema registry's ids need WEIR_SCHEMA_REGISTRY_URL)"
            )
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(raw[5:]), writer if writer is not None else self.parsed, self.parsed
            )
        except fastavro.read.SchemaResolutionError as exc:
            raise UndecodableError(
                f"Avro schema id {schema_id} cannot be read as {self.name}: {exc}"
            ) from exc
        except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
            raise UndecodableError(f"truncated or corrupt Avro {self.name}: {exc}") from exc
        if not isinstance(record, dict):
            raise UndecodableError(f"Avro {self.name} did not decode to a record")
        return record

    def validate(self, record: dict[str, Any]) -> None:
        """Raise ``SchemaInvalidError`` naming the first field that does not fit."""
        try:
            fastavro.validation.validate(record, self.parsed, raise_errors=True)
        except fastavro.validation.ValidationError as exc:
            raise SchemaInvalidError(f"{self.name} is invalid: {_first_problem(exc)}") from exc

    def encode_json(self, record: dict[str, Any]) -> bytes:
        """The same record as a JSON object (UTF-8)."""
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _first_problem(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return str(errors[0])
    return str(exc)


def load_schema(name: str) -> AvroSchema:
    """Load ``schemas/<name>.avsc`` shipped with the package."""
    text = resources.files("weir.schemas").joinpath(f"{name}.avsc").read_text()
    return AvroSchema(name, json.loads(text))
