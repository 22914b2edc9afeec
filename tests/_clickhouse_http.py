"""ClickHouse's HTTP interface in front of the embedded engine, for tests.

A real HTTP server speaking the part of ClickHouse's protocol that
clickhouse-connect uses (POST a query, ``param_*`` bindings, ``INSERT ...
FORMAT Native`` with the data in the body, ``X-ClickHouse-*`` error headers),
executed by chDB on a data directory of its own.  The sink under test talks
to it through an ``http://`` DSN, as it would to a ClickHouse server; the test
stops and restarts the listener to make the store unavailable (connection
refused) and available again, while the data stays.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import chdb
from aiohttp import web

_INSERT = re.compile(
    rb"\s*INSERT\s+INTO\s+(?P<table>[^\s(]+)\s*(?:\((?P<cols>[^)]*)\))?\s*"
    rb"(?:SETTINGS\s+.*?)?FORMAT\s+(?P<fmt>\w+)[ \t]*\r?\n?",
    re.I | re.S,
)
_INPUT = re.compile(
    r"\binput\((?P<structure>'(?:[^'\\]|\\.)*')\)\s*FORMAT\s+(?P<fmt>\w+)\s*$", re.S
)
"""``INSERT ... SELECT ... FROM input('<structure>') FORMAT <fmt>``: the body is the input."""
_INSERT_SETTINGS = {
    "insert_deduplication_token",
    "insert_deduplicate",
    "deduplicate_blocks_in_dependent_materialized_views",
}


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _settings(params: dict[str, str]) -> str:
    """The request's insert settings as a trailing ``SETTINGS`` clause."""
    settings = {k: v for k, v in params.items() if k in _INSERT_SETTINGS}
    if not settings:
        return ""
    return " SETTINGS " + ", ".join(f"{k} = {_quote(v)}" for k, v in settings.items())


class ClickHouseHttp:
    """Start with ``await start()``, make unavailable with ``await stop()``."""

    def __init__(self, path: Path, port: int) -> None:
        self.port = port
        self.dsn = f"http://127.0.0.1:{port}?compress=false"
        self._conn = chdb.connect(str(path))
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self.inserts = 0
        self.after_insert: Callable[[], None] | None = None
        """Called after an insert is stored, before it is answered (to kill a client there)."""

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def close(self) -> None:
        self._conn.close()

    def query(self, sql: str) -> str:
        """Run ``sql`` on the store directly (TabSeparated text)."""
        with self._lock:
            return bytes(self._conn.query(sql, "TabSeparated").bytes()).decode()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/ping":
            return web.Response(text="Ok.\n")
        body = await request.read()
        params = request.query
        full = (params["query"].encode() + b"\n" if "query" in params else b"") + body
        try:
            out = await asyncio.to_thread(self._execute, full, dict(params))
        except Exception as exc:  # the engine's error, as ClickHouse reports it
            text = str(exc)
            code = re.search(r"Code: (\d+)", text)
            return web.Response(
                status=500,
                text=text if text.startswith("Code:") else f"Code: 1001. DB::Exception: {text}",
                headers={"X-ClickHouse-Exception-Code": code[1] if code else "1001"},
            )
        summary = {"read_rows": "0", "written_rows": "0"}
        return web.Response(
            body=out,
            headers={"X-ClickHouse-Summary": json.dumps(summary), "X-ClickHouse-Timezone": "UTC"},
        )

    def _execute(self, full: bytes, params: dict[str, str]) -> bytes:
        binds = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        with self._lock:
            if database := params.get("database"):
                self._conn.query(f"USE `{database}`", "TabSeparated")
            select = _INPUT.search(params.get("query", ""))
            insert = None if select else _INSERT.match(full)
            if select:
                out = self._insert_select(params["query"], select, full, params)
            elif insert:
                out = self._insert(insert, full[insert.end() :], params)
            else:
                out = bytes(self._conn.query(full.decode(), "TabSeparated", params=binds).bytes())
        if (insert or select) and self.after_insert is not None:
            self.after_insert()
        return out

    def _insert_select(
        self, query: str, match: re.Match[str], full: bytes, params: dict[str, str]
    ) -> bytes:
        """The request's body read through ``input()``: chDB reads it from a file instead."""
        data = full[len(query.encode()) + 1 :]
        with tempfile.NamedTemporaryFile(suffix=".input") as fh:
            fh.write(data)
            fh.flush()
            source = f"file({_quote(fh.name)}, '{match['fmt']}', {match['structure']})"
            self._conn.query(f"{query[: match.start()]}{source}{_settings(params)}", "TabSeparated")
        self.inserts += 1
        return b""

    def _insert(self, match: re.Match[bytes], data: bytes, params: dict[str, str]) -> bytes:
        clause = _settings(params)
        cols = f" ({match['cols'].decode()})" if match["cols"] else ""
        with tempfile.NamedTemporaryFile(suffix=".native") as fh:
            fh.write(data)
            fh.flush()
            self._conn.query(
                f"INSERT INTO {match['table'].decode()}{cols} FROM INFILE {_quote(fh.name)}"
                f"{clause} FORMAT {match['fmt'].decode()}",
                "TabSeparated",
            )
        self.inserts += 1
        return b""
