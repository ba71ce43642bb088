"""The local span store: an OpenTelemetry `SpanExporter` writing to SQLite, and its queries.

Why SQLite: tracing is on by default, so the default sink must need no server, no port and no
set-up; one file under ``$SLMFLOW_HOME`` is backed up or wiped with the rest of the project. WAL
mode lets ``slmflow traces`` and ``slmflow ui`` read while a run writes. The exporter runs on the
batch processor's thread, never on the caller's.

Why some attributes get their own columns (agent, model, tokens, cost, confidence): the list,
show and stats views filter and sum by them; everything else stays in a JSON ``attributes``
column, as OpenTelemetry sent it. Retention: rows older than ``retention_days`` (and the oldest
beyond ``max_spans``) are pruned when the store opens and then at most once an hour.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from . import attrs as A

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
"""

_COLUMNS = ("trace_id", "span_id", "parent_id", "name", "operation", "start_ns", "end_ns",
            "status", "status_message", "agent", "workflow", "model", "input_tokens",
            "output_tokens", "cost_usd", "confidence", "attributes", "events", "service")
_INSERT = (f"INSERT OR REPLACE INTO spans ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")
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


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=10)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


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


# ---- reading ---------------------------------------------------------------------------------

def _span_dict(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["attributes"] = json.loads(d["attributes"] or "{}")
    d["events"] = json.loads(d["events"] or "[]")
    d["duration_ms"] = (d["end_ns"] - d["start_ns"]) / 1e6
    return d


class SpanStore:
    """Read access to a span database (``slmflow traces``, ``slmflow ui``, tests)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from .setup import db_path

            path = db_path()
        self.path = Path(path)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            conn = connect(self.path)  # creates an empty store: "no traces yet", not an error
        else:
            conn = connect(self.path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def list_traces(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first: root name, start, duration, span count, errors, tokens, cost."""
        sql = """
        SELECT trace_id, MIN(start_ns) AS start_ns, MAX(end_ns) AS end_ns, COUNT(*) AS spans,
               SUM(status = 'ERROR') AS errors, SUM(COALESCE(input_tokens, 0)) AS input_tokens,
               SUM(COALESCE(output_tokens, 0)) AS output_tokens, SUM(cost_usd) AS cost_usd,
               SUM(name LIKE 'handoff %' AND attributes LIKE '%"slmflow.handoff.status":"escalated"%')
                   + SUM(events LIKE '%"slmflow.escalation"%') AS escalations,
               (SELECT s2.name FROM spans s2 WHERE s2.trace_id = s.trace_id
                ORDER BY (s2.parent_id IS NOT NULL), s2.start_ns LIMIT 1) AS root
        FROM spans s GROUP BY trace_id ORDER BY start_ns DESC LIMIT ? OFFSET ?"""
        with self._conn() as conn:
            rows = [dict(r) for r in conn.execute(sql, (limit, offset))]
        for r in rows:
            r["duration_ms"] = (r["end_ns"] - r["start_ns"]) / 1e6
        return rows

    def resolve(self, trace_id: str) -> str | None:
        """A full trace id from a unique prefix (or ``last`` for the newest trace)."""
        with self._conn() as conn:
            if trace_id in ("last", "latest"):
                r = conn.execute("SELECT trace_id FROM spans ORDER BY start_ns DESC LIMIT 1")
                row = r.fetchone()
                return row[0] if row else None
            ids = [r[0] for r in conn.execute(
                "SELECT DISTINCT trace_id FROM spans WHERE trace_id LIKE ? LIMIT 2",
                (trace_id.lower() + "%",))]
        if len(ids) > 1:
            from ..errors import ConfigError

            raise ConfigError(f"trace id prefix {trace_id!r} is ambiguous", where="traces")
        return ids[0] if ids else None

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of one trace (a full id or unique prefix), in start order."""
        full = self.resolve(trace_id)
        if full is None:
            return []
        with self._conn() as conn:
            return [_span_dict(r) for r in conn.execute(
                "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns", (full,))]

    def spans(self, *, since_ns: int | None = None, limit: int = 200_000) -> list[dict[str, Any]]:
        """Spans (newest traces first) for stats; ``since_ns`` bounds by start time."""
        q = "SELECT * FROM spans"
        args: list[Any] = []
        if since_ns is not None:
            q += " WHERE start_ns >= ?"
            args.append(since_ns)
        q += " ORDER BY start_ns DESC LIMIT ?"
        args.append(limit)
        with self._conn() as conn:
            return [_span_dict(r) for r in conn.execute(q, args)]

    def count(self) -> int:
        with self._conn() as conn:
            return conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
