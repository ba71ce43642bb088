"""The span store: OpenTelemetry `SpanExporter`s writing to SQLite or PostgreSQL, and the queries.

Why SQLite by default: tracing is on by default, so the default sink must need no server, no port
and no set-up; one file under ``$SLMFLOW_HOME`` is backed up or wiped with the rest of the project.
WAL mode lets ``slmflow traces`` and ``slmflow ui`` read while a run writes. The exporter runs on
the batch processor's thread, never on the caller's.

Why PostgreSQL as well: a file is only shared by the processes of one machine. When several
machines or many processes (gateway replicas, Ray workers, a scenario eval on another host) write
traces that one ``slmflow ui`` or ``slmflow traces`` must read, they all point
``$SLMFLOW_TRACES_URL`` at one database (psycopg 3, imported only then):

    sqlite:///abs/path/spans.db      (or unset: $SLMFLOW_HOME/spans.db)
    postgresql://user@host:5432/db

Why one `SpanStore` and not one class per backend: every view must give the same answer whichever
store holds the spans, so the queries are written once (`slmflow.tracing.queries`) and the
backends differ only where SQL does (`slmflow.tracing.backends`). `open_span_store` picks the
backend from a URL or a path.

Why some attributes get their own columns (agent, model, tokens, cost, confidence): the list,
show and stats views filter and sum by them; everything else stays in a JSON ``attributes``
column, as OpenTelemetry sent it. Retention: rows older than ``retention_days`` (and the oldest
beyond ``max_spans``) are pruned when the store opens and then at most once an hour.

Failures: an exporter raises on a failed write (the guard around every exporter in `setup` counts
the spans as dropped and warns; the traced run goes on); PostgreSQL failures become
`TraceStoreError`, naming the URL with its password masked. An unreachable server at start-up
does not stop tracing: the exporter connects on its first export and again after a lost
connection.

What is not about spans comes from `slmflow.storage` (the layer below every store): the URL
parser, the SQLite connect (WAL, read-only mode), the reconnecting PostgreSQL connection, the
dialect translation and the advisory-lock table creation.

Where things are: this module holds the exporters (writing, pruning); the table, its connections
and the URL → backend choice are `slmflow.tracing.backends`'s; `SpanStore` and its queries are
`slmflow.tracing.queries`'s. Every name this module held before that split is still importable
from it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from ..storage import dialect
from ..storage.urls import url_safe
from . import attrs as A
from .backends import (_COLUMNS, _INSERT, _PG_INSERT, _PG_LOCK, _PG_SCHEMA, _SCHEMA,
                       TraceStoreError, _pg_sql, _Postgres, _setup, _target, connect)
from .queries import (_ESC, _LIST_PATTERNS, _LIST_SQL, TRACE_STATUSES, SpanStore,
                      open_span_store)

__all__ = ["SpanStore", "SQLiteSpanExporter", "PostgresSpanExporter", "open_span_store",
           "span_exporter", "default_url", "TraceStoreError", "url_safe"]

# the names other modules, tests and benchmarks imported from here before the split
_REEXPORTED = (_COLUMNS, _ESC, _LIST_PATTERNS, _LIST_SQL, _PG_LOCK, _PG_SCHEMA, _SCHEMA,
               TRACE_STATUSES, _pg_sql, _setup)

log = logging.getLogger("slmflow.tracing")

_PRUNE_EVERY_S = 3600.0


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _num(v: Any, kind: type) -> Any:
    try:
        return kind(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _row(s: ReadableSpan) -> tuple:
    a = dict(s.attributes or {})
    ctx = s.context
    parent = s.parent
    status = s.status.status_code
    events = [{"name": e.name, "time_ns": e.timestamp,
               "attributes": dict(e.attributes or {})} for e in s.events]
    res = s.resource.attributes.get("service.name") if s.resource else None
    return (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"),
            format(parent.span_id, "016x") if parent is not None else None,
            s.name, a.get(A.OPERATION_NAME), s.start_time or 0, s.end_time or s.start_time or 0,
            "ERROR" if status is StatusCode.ERROR else ("OK" if status is StatusCode.OK
                                                        else "UNSET"),
            s.status.description, a.get(A.AGENT_NAME), a.get(A.WORKFLOW_NAME),
            a.get(A.RESPONSE_MODEL) or a.get(A.REQUEST_MODEL),
            _num(a.get(A.USAGE_INPUT_TOKENS), int), _num(a.get(A.USAGE_OUTPUT_TOKENS), int),
            _num(a.get(A.COST_USD), float), _num(a.get(A.CONFIDENCE), float),
            _json(a), _json(events), res)



class SQLiteSpanExporter(SpanExporter):
    """Writes finished spans to ``path``; prunes by age (``retention_days``) and count."""

    def __init__(self, path: str | Path, *, retention_days: float | None = 14.0,
                 max_spans: int | None = None) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.max_spans = max_spans
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._last_prune = 0.0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path)
            self.prune()
        return self._conn

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = [_row(s) for s in spans]
        with self._lock:
            conn = self._connection()
            try:
                with conn:
                    conn.executemany(_INSERT, rows)
            except sqlite3.Error:
                raise  # counted as a drop by the guard around every exporter
            if time.monotonic() - self._last_prune > _PRUNE_EVERY_S:
                self.prune()
        return SpanExportResult.SUCCESS

    def prune(self) -> int:
        """Delete spans past retention; returns how many went."""
        conn = self._conn or connect(self.path)
        self._last_prune = time.monotonic()
        n = 0
        try:
            with conn:
                if self.retention_days:
                    cutoff = time.time_ns() - int(self.retention_days * 86400e9)
                    n += conn.execute("DELETE FROM spans WHERE start_ns < ?", (cutoff,)).rowcount
                if self.max_spans:
                    n += conn.execute(
                        "DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans "
                        "ORDER BY start_ns DESC LIMIT -1 OFFSET ?)", (self.max_spans,)).rowcount
        except sqlite3.Error:
            pass
        return n

    def shutdown(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True



# ---- PostgreSQL --------------------------------------------------------------------------------

_pg_text = dialect.text  # PostgreSQL text takes no NUL byte and no lone surrogate (SQLite does)


class PostgresSpanExporter(SpanExporter):
    """Writes finished spans to the PostgreSQL database at ``url`` (the ``spans`` table, created
    if missing, same columns and indexes as SQLite), in one batched upsert per export; prunes by
    age (``retention_days``) and count like `SQLiteSpanExporter`. Connects on the first export."""

    def __init__(self, url: str, *, retention_days: float | None = 14.0,
                 max_spans: int | None = None, connect_timeout: float = 5) -> None:
        self._db = _Postgres(url, connect_timeout=connect_timeout)
        self.url, self.url_safe = self._db.url, self._db.url_safe
        self.retention_days = retention_days
        self.max_spans = max_spans
        self._last_prune: float | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = [tuple(_pg_text(v) for v in _row(s)) for s in spans]

        def write(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_PG_INSERT, rows)

        # raises TraceStoreError: counted as a drop (with its reason) by the guard around every
        # exporter, as SQLite's errors are; the traced run never sees it
        self._db.run("cannot write spans", write)
        if self._last_prune is None or time.monotonic() - self._last_prune > _PRUNE_EVERY_S:
            self.prune()
        return SpanExportResult.SUCCESS

    def prune(self) -> int:
        """Delete spans past retention; returns how many went (0, with a warning, on failure)."""
        self._last_prune = time.monotonic()

        def delete(conn: Any) -> int:
            n = 0
            with conn.transaction(), conn.cursor() as cur:
                if self.retention_days:
                    cutoff = time.time_ns() - int(self.retention_days * 86400e9)
                    cur.execute("DELETE FROM spans WHERE start_ns < %s", (cutoff,))
                    n += cur.rowcount
                if self.max_spans:
                    cur.execute("DELETE FROM spans WHERE ctid IN (SELECT ctid FROM spans "
                                "ORDER BY start_ns DESC OFFSET %s)", (self.max_spans,))
                    n += cur.rowcount
            return n

        try:
            return self._db.run("cannot prune spans", delete)
        except TraceStoreError as e:
            log.warning("slmflow tracing: %s", e)
            return 0

    def shutdown(self) -> None:
        self._db.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True



def default_url() -> str:
    """``$SLMFLOW_TRACES_URL``, or ``sqlite:///$SLMFLOW_HOME/spans.db``."""
    url = os.environ.get("SLMFLOW_TRACES_URL", "").strip()
    if url:
        return url
    from .setup import default_db_path

    return f"sqlite:///{default_db_path()}"


def span_exporter(url_or_path: str | Path, *, retention_days: float | None = 14.0,
                  max_spans: int | None = None) -> SpanExporter:
    """The store exporter for a URL or path: `SQLiteSpanExporter` or `PostgresSpanExporter`."""
    kind, where = _target(url_or_path)
    if kind == "postgresql":
        return PostgresSpanExporter(where, retention_days=retention_days, max_spans=max_spans)
    return SQLiteSpanExporter(where, retention_days=retention_days, max_spans=max_spans)

