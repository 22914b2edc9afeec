"""A schema registry the tests start: the Confluent REST subset that serializers, weir and
``confluent-kafka``'s client use, on a real HTTP server in a thread.

Apicurio Registry (whose ``ccompat`` API is the real thing) cannot be run here: Maven
Central has ``apicurio-registry-app`` only as a Quarkus application jar without its runner,
and a Quarkus build of it fails because ``apicurio-registry-schema-util-provider`` (3.3.3,
2.6.13.Final) is not served there.  So the tests use this stand-in: ids are global and
stable, a schema registered twice keeps its id (compared by Avro's parsing canonical
form), and unknown ids answer 404 with Confluent's error body.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form


class SchemaRegistryServer:
    """``with SchemaRegistryServer() as registry: registry.url``; ``requests`` logs the calls."""

    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._auth = (username, password)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SchemaRegistryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def register(self, subject: str, schema_text: str) -> int:
        canonical = to_parsing_canonical_form(fastavro.parse_schema(json.loads(schema_text)))
        with self._lock:
            schema_id = self._ids.get(canonical)
            if schema_id is None:
                schema_id = self._ids[canonical] = len(self._ids) + 1
                self.schemas[schema_id] = schema_text
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
        return schema_id

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _authorized(self) -> bool:
                import base64

                user, password = registry._auth
                if user is None:
                    return True
                expected = base64.b64encode(f"{user}:{password}".encode()).decode()
                if self.headers.get("Authorization") == f"Basic {expected}":
                    return True
                self._send(401, {"error_code": 401, "message": "Unauthorized"})
                return False

            def do_GET(self) -> None:
                registry.requests.append(("GET", self.path))
                if not self._authorized():
                    return
                found = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
                if found and int(found[1]) in registry.schemas:
                    self._send(200, {"schema": registry.schemas[int(found[1])]})
                else:
                    self._send(404, {"error_code": 40403, "message": "Schema not found"})

            def do_POST(self) -> None:
                registry.requests.append(("POST", self.path))
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                found = re.fullmatch(r"/subjects/([^/?]+)/versions(\?.*)?", self.path)
                if not found or body.get("schemaType", "AVRO") != "AVRO":
                    self._send(422, {"error_code": 42201, "message": "Invalid schema"})
                    return
                self._send(200, {"id": registry.register(found[1], body["schema"])})

        return Handler
