"""The trace store: ``pipeline_events`` in one ClickHouse database, opened, written and read.

The same code serves the embedded engine (``chdb://path``, in-process, one
process per data directory) and a ClickHouse server (``http(s)://``).
"""

from __future__ import annotations

import faulthandler
import logging
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from weir.core.config import WeirSettings
from weir.core.errors import (
    TraceQueryError,
    TraceRowsRejectedError,
    TraceSchemaMissingError,
    TraceStoreError,
)
from weir.core.urls import mask_url
from weir.traces._arrow_block import arrow_block, has_arrow
from weir.traces._event_insert import STRUCTURE, insert_select
from weir.traces.queries import StoreQueries
from weir.traces.schema import (
    EVENTS_TABLE,
    LATENCY_TABLE,
    LATENCY_VIEW,
    ddl,
    event_columns,
    latency_view_query,
)

__all__ = ["TraceStore"]

log = logging.getLogger("weir.trace_store")


class TraceStore(StoreQueries):
    """``pipeline_events`` in one ClickHouse database, through clickhouse-connect.

    Thread-safe: calls are serialized (the embedded engine's client is not
    meant for concurrent use, and the sink calls it from a worker thread).
    """

    def __init__(self, client: Any, *, database: str, ttl_days: int, dsn: str) -> None:
        self._client = client
        self.database = database
        self.ttl_days = ttl_days
        self.dsn = mask_url(dsn)
        """Where the store is, for messages: its DSN with any password masked."""
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, settings: WeirSettings, *, dsn: str | None = None, create_schema: bool = True
    ) -> TraceStore:
        """Open the store named by the settings (or ``dsn``) and create what is missing.

        ``create_schema=False`` opens it for reading only: nothing is created or
        altered (web pages and commands read; the sink and the worker create),
        and a store without the tables raises ``TraceSchemaMissingError``.
        Raises ``TraceStoreError`` when it cannot be reached or opened.
        """
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        dsn = dsn or settings.trace_store_dsn.get_secret_value()
        if dsn.startswith("chdb://"):
            Path(dsn[len("chdb://") :]).mkdir(parents=True, exist_ok=True)
        try:
            client = clickhouse_connect.get_client(dsn=dsn)
        except (ClickHouseError, OSError) as exc:
            raise TraceStoreError(_unreachable(dsn, exc)) from exc
        store = cls(
            client, database=settings.clickhouse_database, ttl_days=settings.trace_ttl_days, dsn=dsn
        )
        try:
            if create_schema:
                store.ensure_schema()
            else:
                store.check_schema()
        except TraceStoreError:
            store.close()
            raise
        if dsn.startswith("chdb://"):
            _rearm_faulthandler()
        return store

    def check_schema(self) -> None:
        """``TraceSchemaMissingError`` unless the tables exist; reads ``system.tables`` only."""
        found = {
            str(row[0])
            for row in self._query(
                "SELECT name FROM system.tables WHERE database = {db:String}", db=self.database
            )
        }
        missing = sorted({EVENTS_TABLE, LATENCY_TABLE} - found)
        if missing:
            raise TraceSchemaMissingError(
                f"the trace store {self.dsn} has no {', '.join(missing)} in database"
                f" {self.database!r} yet: `weir sink` (or a starting `weir worker`) creates it;"
                " pages and queries never do"
            )
        columns = {
            str(row[0])
            for row in self._query(
                "SELECT name FROM system.columns"
                " WHERE database = {db:String} AND table = {t:String}",
                db=self.database,
                t=EVENTS_TABLE,
            )
        }
        if "replay_id" not in columns:  # read-only: it stays as it is until a sink migrates it
            self.live_only = ""
        self._client.database = self.database

    def ensure_schema(self) -> None:
        """Create the database, table, aggregate table and view if missing; apply the TTL."""
        create_db, *tables = ddl(self.database, self.ttl_days)
        self._command(create_db)
        # Unqualified names (ad-hoc SQL such as the dashboards') resolve to our database.
        self._client.database = self.database
        for statement in tables:
            self._command(statement)
        view = self._query(
            "SELECT create_table_query FROM system.tables"
            " WHERE database = {db:String} AND name = {t:String}",
            db=self.database,
            t=LATENCY_VIEW,
        )
        if view and "replay_id" not in str(view[0][0]):
            # An earlier weir's view counts replay attempts as live traffic.  MODIFY QUERY
            # swaps it in place: no insert goes unaggregated while it changes.
            log.info("making %s count live attempts only", LATENCY_VIEW)
            self._command(
                f"ALTER TABLE `{self.database}`.{LATENCY_VIEW}"
                f" MODIFY QUERY {latency_view_query(self.database)}"
            )
        engine = self._query(
            "SELECT engine_full FROM system.tables"
            " WHERE database = {db:String} AND name = {t:String}",
            db=self.database,
            t=EVENTS_TABLE,
        )
        wanted = f"toIntervalDay({self.ttl_days})"
        if engine and wanted not in str(engine[0][0]):
            log.info("setting the TTL of %s to %d days", EVENTS_TABLE, self.ttl_days)
            for table, column in (
                (EVENTS_TABLE, "toDateTime(created_at)"),
                (LATENCY_TABLE, "minute"),
            ):
                self._command(
                    f"ALTER TABLE `{self.database}`.{table}"
                    f" MODIFY TTL {column} + INTERVAL {self.ttl_days} DAY"
                )

    def close(self) -> None:
        with self._lock:
            try:
                self._client.close()
            except Exception as exc:  # closing must not hide the error that led here
                log.debug("closing the trace store: %s", exc)

    # -- low level ---------------------------------------------------------------------------

    def _command(self, sql: str) -> None:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                self._client.command(sql)
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc

    def _query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                result = self._client.query(sql, parameters=params or None)
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc
        return list(result.result_rows)

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run any SELECT in the store's database (``{name:Type}`` parameters)."""
        return self._query(sql, **params)

    def select(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement as given (``weir sql``): column names, types, rows.

        ``readonly=2`` refuses writes and DDL, so the sink's HTTP API can serve
        it; a statement ClickHouse rejects is a ``TraceQueryError``.
        """
        from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError

        with self._lock:
            try:
                result = self._client.query(sql, settings={"readonly": 2})
            except DatabaseError as exc:
                raise TraceQueryError(_refused(exc)) from exc
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc
        types = [getattr(t, "name", str(t)) for t in result.column_types]
        return list(result.column_names), types, list(result.result_rows)

    def ping(self) -> None:
        """Raise ``TraceStoreError`` unless the store answers."""
        self._query("SELECT 1")

    # -- writing -----------------------------------------------------------------------------

    def insert(self, rows: Sequence[Sequence[Any]], *, token: str, arrow: bool = False) -> None:
        """Insert ``rows`` (``event_columns()`` order) as one block.

        ``token`` is ClickHouse's ``insert_deduplication_token``: inserting the
        same rows again with the same token (a retry after an answer was lost)
        stores them once, in the table and in the aggregates.  ``arrow``: send the
        block in Arrow format, converted by pyarrow (when installed), rather than
        through clickhouse-connect's Native writer.  The stored values are the same;
        Arrow measured no faster here (BENCHMARKS.md), so Native is the default.
        """
        from clickhouse_connect.driver.exceptions import ClickHouseError

        if not rows:
            return
        arrow = arrow and has_arrow()
        settings = _deduplicated(token)
        table = f"`{self.database}`.{EVENTS_TABLE}"
        # Built outside the lock: the sink's next block is converted while one is inserted.
        block: Any = None
        if arrow:
            try:
                block = arrow_block(rows)
            except (ValueError, TypeError, OverflowError) as exc:  # pyarrow's Arrow* errors
                # A value Arrow will not take as typed: the Native writer says what it is.
                log.debug("inserting without Arrow: %s", exc)
                arrow = False
        if not arrow:
            block = [list(c) for c in zip(*rows, strict=True)]
        with self._lock:
            try:
                if arrow:
                    self._client.insert_arrow(table, block, settings=settings)
                else:
                    self._client.insert(
                        table,
                        block,
                        column_names=list(event_columns()),
                        column_oriented=True,
                        settings=settings,
                    )
            except (ClickHouseError, OSError) as exc:
                raise TraceStoreError(_unreachable(self.dsn, exc)) from exc

    def insert_events(self, block: bytes, *, token: str) -> None:
        """Insert an Avro container block of trace events, decoded by ClickHouse itself.

        ``block`` comes from ``weir.traces._event_block.container``; each of its
        records becomes the row ``weir.traces.rows.event_row`` would make.  ``token``
        deduplicates as in ``insert``.  Over HTTP the block is the request's body
        (``input()``); the embedded engine reads it from a file (``file()``).
        Raises ``TraceRowsRejectedError`` when the store refuses a value in it (a
        cost that is not a number: the caller reads those events in Python), and
        ``TraceStoreError`` when the store cannot be reached.
        """
        from clickhouse_connect.driver.exceptions import (
            ClickHouseError,
            DatabaseError,
            OperationalError,
        )

        structure = _quoted(STRUCTURE)
        try:
            if self.dsn.startswith("chdb://"):
                with tempfile.NamedTemporaryFile(prefix="weir-events-", suffix=".avro") as fh:
                    fh.write(block)
                    fh.flush()
                    source = f"file({_quoted(fh.name)}, 'Avro', {structure})"
                    sql = insert_select(self.database, source)
                    with self._lock:
                        self._client.command(sql, settings=_deduplicated(token))
            else:
                sql = insert_select(self.database, f"input({structure})") + " FORMAT Avro"
                with self._lock:
                    self._client.command(sql, data=block, settings=_deduplicated(token))
        except OperationalError as exc:  # not reached, or the connection broke
            raise TraceStoreError(_unreachable(self.dsn, exc)) from exc
        except DatabaseError as exc:  # it answered: an error about this block
            raise TraceRowsRejectedError(
                f"trace store {self.dsn} refused a block of events: {_first_line(exc)}"
            ) from exc
        except (ClickHouseError, OSError) as exc:
            raise TraceStoreError(_unreachable(self.dsn, exc)) from exc

    def progress(self, topic: Iterable[int] | None = None) -> dict[int, int]:
        """Per trace-topic partition, the next offset not yet stored (highest stored + 1)."""
        rows = self._query(
            f"SELECT trace_partition, max(trace_offset) FROM {EVENTS_TABLE}"
            " GROUP BY trace_partition"
        )
        wanted = None if topic is None else set(topic)
        return {int(p): int(o) + 1 for p, o in rows if wanted is None or p in wanted}


def _deduplicated(token: str) -> dict[str, Any]:
    """The settings that make a retried insert with ``token`` store its rows once."""
    return {
        "insert_deduplication_token": token,
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }


def _quoted(text: str) -> str:
    """``text`` as a ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(exc: BaseException) -> str:
    """The error's first line (at most 500 characters), any URL's password masked first."""
    text = str(exc).strip()
    return mask_url(text.splitlines()[0] if text else type(exc).__name__)[:500]


def _refused(exc: BaseException) -> str:
    """ClickHouse's reason for refusing a statement, without the driver's additions."""
    text = str(exc).strip()
    code = re.search(r"\(([A-Z_]+)\)\s*$", text)
    if code and code[1] == "READONLY":
        return "weir sql only reads: the trace store is written by `weir sink` alone"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"the query failed: {first[:500]}" + (f" ({code[1]})" if code else "")


def _unreachable(dsn: str, exc: BaseException) -> str:
    # These messages reach logs and HTTP responses (the dashboard): the DSN, and any
    # URL the client library quotes in its error, are shown without their passwords.
    dsn = mask_url(dsn)
    text = _first_line(exc)
    if dsn.startswith("chdb://") and (
        "EmbeddedServer" in text or "Unable to open the chdb engine" in text
    ):
        return (
            f"the embedded trace store {dsn} cannot be opened: another process holds it (a"
            " data directory can be open in one process at a time). If it is a `weir sink`"
            " started before this one announced itself, restart it; otherwise wait for the"
            " other weir command to finish"
        )
    return f"trace store {dsn} is unavailable: {text}"


def _rearm_faulthandler() -> None:
    """Give fatal signals back to Python's ``faulthandler`` if it was on.

    The embedded engine's session installs ClickHouse's handlers for SIGSEGV, SIGBUS,
    SIGILL, SIGFPE and SIGABRT; they report to a server log the embedded engine does not
    have, so a native crash anywhere in the process (a C extension, the Kafka client) ended
    it without a word.  Queries on the open session do not install them again.
    """
    if faulthandler.is_enabled():
        faulthandler.disable()
        faulthandler.enable()
