"""The spans table in SQLite and in PostgreSQL: its schema on each, opening it, and which one a URL
names; what the span store's exporters (`slmflow.tracing.store`) and its queries
(`slmflow.tracing.queries`) both stand on.

Why a module of its own: the writing side and the reading side must agree on one table, and
neither should import the other. The backends differ only in placeholders (``?`` vs ``%s``), in
how a connection is opened (a SQLite file per use, in WAL mode; one reconnecting PostgreSQL
connection, opened on first use), in column widths (``BIGINT`` nanoseconds, ``DOUBLE PRECISION``
costs) and in ``LIKE`` (ASCII case-insensitive in SQLite, so ``ILIKE`` in PostgreSQL). The URL
parser, the SQLite connect, the PostgreSQL connection class and the dialect translation are
`slmflow.storage`'s.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Sequence

from ..errors import StorageError
from ..storage import dialect, sqlite
from ..storage.migrations import ADVISORY_LOCKS, create_tables
from ..storage.pg import PgConnection
from ..storage.urls import parse_url

__all__ = ["TraceStoreError", "connect"]


class TraceStoreError(StorageError):
    """The span store failed: cannot connect, create its table, read or write."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    operation TEXT,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT,
    agent TEXT,
    workflow TEXT,
    model TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    confidence REAL,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    service TEXT,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns);
CREATE INDEX IF NOT EXISTS spans_agent ON spans (agent, operation);
CREATE INDEX IF NOT EXISTS spans_roots ON spans (start_ns, trace_id) WHERE parent_id IS NULL;
CREATE INDEX IF NOT EXISTS spans_agent_calls ON spans (start_ns) WHERE operation = 'invoke_agent';
"""

_COLUMNS = ("trace_id", "span_id", "parent_id", "name", "operation", "start_ns", "end_ns",
            "status", "status_message", "agent", "workflow", "model", "input_tokens",
            "output_tokens", "cost_usd", "confidence", "attributes", "events", "service")
_INSERT = (f"INSERT OR REPLACE INTO spans ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")

# The same table in PostgreSQL: nanosecond times need 64 bits, costs double precision (REAL is
# 4 bytes there). Token columns stay INTEGER so that SUM() returns an int in both, not a Decimal.
_PG_SCHEMA = [
    _SCHEMA.split(";")[0].replace("start_ns INTEGER", "start_ns BIGINT")
    .replace("end_ns INTEGER", "end_ns BIGINT").replace(" REAL", " DOUBLE PRECISION"),
    "CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns)",
    "CREATE INDEX IF NOT EXISTS spans_agent ON spans (agent, operation)",
    "CREATE INDEX IF NOT EXISTS spans_roots ON spans (start_ns, trace_id) WHERE parent_id IS NULL",
    "CREATE INDEX IF NOT EXISTS spans_agent_calls ON spans (start_ns) "
    "WHERE operation = 'invoke_agent'",
]
_PG_INSERT = dialect.to_pg(dialect.upsert("spans", _COLUMNS, ("trace_id", "span_id")))
_PG_LOCK = ADVISORY_LOCKS["spans"]  # two processes creating the table at once


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the SQLite span store at ``path`` (rows as `sqlite3.Row`); writable ones
    create the table if missing."""
    conn = sqlite.connect(path, readonly=readonly, timeout=10, row_factory=sqlite3.Row)
    if not readonly:
        conn.executescript(_SCHEMA)
    return conn


def _pg_sql(sql: str) -> str:
    """A query written for SQLite, for PostgreSQL: ``%s`` placeholders; ``ILIKE`` because SQLite's
    LIKE ignores ASCII case. (The shared queries keep ``%`` and ``?`` out of their literals.)"""
    return dialect.to_pg(sql, ilike=True)


def _setup(conn: Any) -> None:
    # the store's queries are small lookups; JIT compiling them costs more than it saves
    # (27 ms of a 54 ms trace list at 300k spans, measured)
    conn.execute("SET jit = off")
    with conn.transaction():
        create_tables(conn, _PG_LOCK, _PG_SCHEMA)


class _Postgres(PgConnection):
    """The span store's `PgConnection`: opened on first use (an unreachable server at start-up
    does not stop tracing), rows as dicts, the table created on every new connection; psycopg
    errors become `TraceStoreError`. `close` only drops the connection: a span store or exporter
    used again reconnects, as it always has."""

    dialect = "postgresql"

    def __init__(self, url: str, *, connect_timeout: float = 10) -> None:
        super().__init__(url, error=TraceStoreError, what="the span store",
                         connect_timeout=connect_timeout, dict_rows=True, setup=_setup,
                         connect_failed="cannot connect to the PostgreSQL span store",
                         setup_failed="cannot create the spans table")
        self.connect_timeout = connect_timeout

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows (dicts) of a query written for SQLite (see `_pg_sql`)."""
        return self.fetchall("span store query failed", _pg_sql(sql), params)

    def close(self) -> None:
        self.drop()



def _target(url_or_path: str | Path) -> tuple[str, str]:
    """``("sqlite", path)`` or ``("postgresql", url)`` from a URL or a plain path."""
    return parse_url(url_or_path, what="span store", where="traces")
