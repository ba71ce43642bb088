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

Why one `SpanStore` and not one class per backend: every view (list, show, stats, the UI, scenario
evals, the review queue's context) must give the same answer whichever store holds the spans, so
the queries are written once in SQL both understand; the backends differ only in placeholders
(``?`` vs ``%s``), in how a connection is opened, in column widths (``BIGINT`` nanoseconds,
``DOUBLE PRECISION`` costs) and in ``LIKE`` (ASCII case-insensitive in SQLite, so ``ILIKE`` in
PostgreSQL). `open_span_store` picks the backend from a URL or a path.

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from ..errors import ConfigError, StorageError
from ..storage import dialect, sqlite
from ..storage.migrations import ADVISORY_LOCKS, create_tables
from ..storage.pg import PgConnection
from ..storage.urls import parse_url, url_safe
from . import attrs as A

__all__ = ["SpanStore", "SQLiteSpanExporter", "PostgresSpanExporter", "open_span_store",
           "span_exporter", "default_url", "TraceStoreError", "url_safe"]

log = logging.getLogger("slmflow.tracing")


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
_PRUNE_EVERY_S = 3600.0

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
    """A connection to the SQLite span store at ``path`` (rows as `sqlite3.Row`); writable ones
    create the table if missing."""
    conn = sqlite.connect(path, readonly=readonly, timeout=10, row_factory=sqlite3.Row)
    if not readonly:
        conn.executescript(_SCHEMA)
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


# ---- PostgreSQL --------------------------------------------------------------------------------

_pg_text = dialect.text  # PostgreSQL text takes no NUL byte and no lone surrogate (SQLite does)


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


def _target(url_or_path: str | Path) -> tuple[str, str]:
    """``("sqlite", path)`` or ``("postgresql", url)`` from a URL or a plain path."""
    return parse_url(url_or_path, what="span store", where="traces")


def span_exporter(url_or_path: str | Path, *, retention_days: float | None = 14.0,
                  max_spans: int | None = None) -> SpanExporter:
    """The store exporter for a URL or path: `SQLiteSpanExporter` or `PostgresSpanExporter`."""
    kind, where = _target(url_or_path)
    if kind == "postgresql":
        return PostgresSpanExporter(where, retention_days=retention_days, max_spans=max_spans)
    return SQLiteSpanExporter(where, retention_days=retention_days, max_spans=max_spans)


# ---- reading ---------------------------------------------------------------------------------

def _span_dict(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["attributes"] = json.loads(d["attributes"] or "{}")
    d["events"] = json.loads(d["events"] or "[]")
    d["duration_ms"] = (d["end_ns"] - d["start_ns"]) / 1e6
    return d


# Patterns are parameters, not literals: a literal % would clash with psycopg's placeholders.
_LIST_SQL = """
SELECT trace_id, MIN(start_ns) AS start_ns, MAX(end_ns) AS end_ns, COUNT(*) AS spans,
       SUM(CASE WHEN status = 'ERROR' THEN 1 ELSE 0 END) AS errors,
       SUM(COALESCE(input_tokens, 0)) AS input_tokens,
       SUM(COALESCE(output_tokens, 0)) AS output_tokens, SUM(cost_usd) AS cost_usd,
       SUM(CASE WHEN name LIKE ? AND attributes LIKE ? THEN 1 ELSE 0 END)
           + SUM(CASE WHEN events LIKE ? THEN 1 ELSE 0 END) AS escalations,
       (SELECT s2.name FROM spans s2 WHERE s2.trace_id = s.trace_id
        ORDER BY (s2.parent_id IS NOT NULL), s2.start_ns, s2.span_id LIMIT 1) AS root
FROM spans s {where} GROUP BY trace_id ORDER BY start_ns DESC, trace_id LIMIT ? OFFSET ?"""
_LIST_PATTERNS = ("handoff %", '%"slmflow.handoff.status":"escalated"%', '%"slmflow.escalation"%')


TRACE_STATUSES = ("ok", "escalated", "rejected", "failed")
_ESC = '%"slmflow.escalated":true%'


def _wf_status(status: str) -> str:
    return f'%"{A.WORKFLOW_STATUS}":"{status}"%'


def _like_escape(text: str) -> str:
    """A literal LIKE pattern fragment (``!`` is the escape character: no backslash rules)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class SpanStore:
    """Read access to a span store (``slmflow traces``, ``slmflow ui``, scenario evals, the review
    queue, tests): a SQLite file (a path or ``sqlite:///path``) or a PostgreSQL URL. ``None``: the
    store this process writes to, else ``$SLMFLOW_TRACES_URL``, else ``$SLMFLOW_HOME/spans.db``.
    The same spans give the same answers from either backend."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from .setup import store_url

            path = store_url()
        self.dialect, where = _target(path)
        self._pg: _Postgres | None = None
        if self.dialect == "postgresql":
            self._pg = _Postgres(where)
            self.url, self.url_safe = self._pg.url, self._pg.url_safe
            self.path: Path | None = None
        else:
            self.path = Path(where)
            self.url = self.url_safe = f"sqlite:///{self.path}"

    def __repr__(self) -> str:
        return f"SpanStore({self.url_safe!r})"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        assert self.path is not None
        if not self.path.exists():
            conn = connect(self.path)  # creates an empty store: "no traces yet", not an error
        else:
            conn = connect(self.path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts: the one place the backends differ when reading."""
        if self._pg is not None:
            return self._pg.query(sql, params)
        with self._conn() as conn:
            return [dict(r) for r in conn.execute(sql, tuple(params))]

    def list_traces(self, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first: root name, start, duration, span count, errors, tokens, cost.

        Why two steps: aggregating every stored span per page grows with the store (70 ms at
        100k spans). The newest ``k`` spans (the start-time index) name candidate traces, the
        aggregation runs on those only, and the answer is exact once at least ``limit + offset``
        candidates *started* after the k-th newest span's start (a trace that started later has
        all its spans among the k, so none is missed); otherwise ``k`` grows."""
        want = limit + offset
        k = max(64, 8 * want)
        total = None
        while True:
            newest = self._rows("SELECT trace_id, start_ns FROM spans ORDER BY start_ns DESC "
                                "LIMIT ?", (k,))
            if len(newest) < k:  # fewer than k spans: aggregate them all
                rows = self._rows(_LIST_SQL.format(where=""), (*_LIST_PATTERNS, limit, offset))
                break
            # every span that started after t is among the k: a trace whose first span started
            # after t is complete here (ties at t may not be: hence the strict >)
            t = newest[-1]["start_ns"]
            ids = list(dict.fromkeys(r["trace_id"] for r in newest))
            marks = ", ".join("?" * len(ids))
            rows = self._rows(_LIST_SQL.format(where=f"WHERE trace_id IN ({marks})"),
                              (*_LIST_PATTERNS, *ids, len(ids), 0))
            exact = [r for r in rows if r["start_ns"] > t]
            if len(exact) >= want:
                rows = exact[offset:offset + limit]
                break
            total = total if total is not None else self.count()
            if k >= total:
                rows = self._rows(_LIST_SQL.format(where=""), (*_LIST_PATTERNS, limit, offset))
                break
            k *= 4
        for r in rows:
            r["duration_ms"] = (r["end_ns"] - r["start_ns"]) / 1e6
        return rows

    def find_traces(self, *, workflow: str | None = None, agent: str | None = None,
                    status: str | None = None, escalated: bool | None = None,
                    since_ns: int | None = None, until_ns: int | None = None,
                    min_ms: float | None = None, text: str | None = None,
                    trace_ids: Sequence[str] = (), limit: int = 50,
                    offset: int = 0) -> list[dict[str, Any]]:
        """The trace viewer's list: one row per trace (its root span), newest first, filtered.

        Why roots: every filter but ``agent`` and ``text`` is a property of the run, which its
        root span carries (workflow, status, escalated, start, duration), and the partial index
        ``spans_roots`` holds only roots, so a page is a short backward walk of that index
        whatever the store's size; ``agent`` and ``text`` test the trace's other spans through
        the primary key (a trace's spans are adjacent). Status: the workflow's own
        (``slmflow.workflow.status``), else ``failed`` for an ERROR root, ``escalated`` for an
        escalated one, else ``ok``. ``text`` is a trace id prefix (6+ hex digits, through the
        primary key) when one matches, else matched in any span's attributes, events, status
        message or name (case-insensitive; a scan of the roots' traces); ``trace_ids``: these traces
        (a call id resolved through the call log). A trace is listed once its root has ended
        (its span is exported last); a trace continued from a remote parent has no root here.
        Each row: ``trace_id``, ``root``, ``workflow``, ``start_ns``, ``duration_ms``,
        ``status``, ``detail``, ``run_id``, ``request`` (the captured input, if any) and
        ``attributes`` (the root's); `trace_rollups` adds the per-trace aggregates."""
        conds, args = ["parent_id IS NULL"], []
        st = ("(CASE WHEN (status = 'ERROR' OR attributes LIKE ?) THEN 'failed' "
              "WHEN attributes LIKE ? THEN 'rejected' WHEN attributes LIKE ? THEN 'escalated' "
              "ELSE 'ok' END)")
        st_args = [_wf_status("failed"), _wf_status("rejected"), _ESC]
        if workflow:
            conds.append("workflow = ?")
            args.append(workflow)
        if status:
            if status not in TRACE_STATUSES:
                raise ConfigError(f"status must be one of {', '.join(TRACE_STATUSES)}, got "
                                  f"{status!r}", where="traces")
            conds.append(f"{st} = ?")
            args += [*st_args, status]
        if escalated is not None:
            conds.append("attributes LIKE ?" if escalated else "attributes NOT LIKE ?")
            args.append(_ESC)
        if since_ns is not None:
            conds.append("start_ns >= ?")
            args.append(int(since_ns))
        if until_ns is not None:
            conds.append("start_ns < ?")
            args.append(int(until_ns))
        if min_ms:
            conds.append("end_ns - start_ns >= ?")
            args.append(int(min_ms * 1e6))
        if agent:
            conds.append("EXISTS (SELECT 1 FROM spans a WHERE a.trace_id = s.trace_id "
                         "AND a.agent = ?)")
            args.append(agent)
        if text or trace_ids:
            alts = []
            if trace_ids:
                alts.append(f"s.trace_id IN ({', '.join('?' * len(trace_ids))})")
                args += list(trace_ids)
            hits = self._id_prefix(text) if text else []
            if hits:  # a trace id (prefix): those traces, no text scan
                alts.append(f"s.trace_id IN ({', '.join('?' * len(hits))})")
                args += hits
            elif text:
                pat = "%" + _like_escape(text) + "%"
                alts.append("EXISTS (SELECT 1 FROM spans a WHERE a.trace_id = s.trace_id AND "
                            "(a.attributes LIKE ? ESCAPE '!' OR a.events LIKE ? ESCAPE '!' OR "
                            "a.status_message LIKE ? ESCAPE '!' OR a.name LIKE ? ESCAPE '!'))")
                args += [pat] * 4
            conds.append("(" + " OR ".join(alts) + ")")
        sql = (f"SELECT trace_id, span_id, name, workflow, start_ns, end_ns, status_message, "
               f"attributes, {st} AS run_status FROM spans s WHERE {' AND '.join(conds)} "
               "ORDER BY start_ns DESC, trace_id DESC LIMIT ? OFFSET ?")
        rows = self._rows(sql, (*st_args, *args, int(limit), int(offset)))
        out = []
        for r in rows:
            a = json.loads(r["attributes"] or "{}")
            out.append({
                "trace_id": r["trace_id"], "root": r["name"], "workflow": r["workflow"],
                "start_ns": r["start_ns"], "duration_ms": (r["end_ns"] - r["start_ns"]) / 1e6,
                "status": r["run_status"],
                "detail": a.get(A.WORKFLOW_DETAIL) or r["status_message"] or None,
                "run_id": a.get(A.RUN_ID), "request": a.get(A.INPUT), "attributes": a})
        return out

    def _id_prefix(self, text: str) -> list[str]:
        """Trace ids starting with ``text`` (6 to 32 hex digits), through the primary key."""
        t = text.strip().lower()
        if not 6 <= len(t) <= 32 or any(c not in "0123456789abcdef" for c in t):
            return []
        hi = t[:-1] + chr(ord(t[-1]) + 1) if t[-1] != "f" else t + "g"
        rows = self._rows("SELECT DISTINCT trace_id FROM spans WHERE trace_id >= ? AND "
                          "trace_id < ? LIMIT 100", (t, hi))
        return [r["trace_id"] for r in rows]

    def trace_rollups(self, trace_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per trace: ``spans``, ``errors``, ``input_tokens``, ``output_tokens``, ``cost_usd``,
        ``agents`` (in order of first call), ``escalated_agents``, ``error_messages`` (at most
        3) and ``call_ids`` (the agent calls, for the call log). Reads only these traces' spans
        (primary key), never their attributes beyond two LIKE tests."""
        ids = list(dict.fromkeys(trace_ids))
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        out: dict[str, dict[str, Any]] = {
            t: {"spans": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                "cost_usd": None, "agents": [], "escalated_agents": [], "error_messages": []}
            for t in ids}
        rows = self._rows(
            "SELECT trace_id, name, agent, operation, status, status_message, input_tokens, "
            "output_tokens, cost_usd, CASE WHEN attributes LIKE ? THEN 1 ELSE 0 END AS esc "
            f"FROM spans WHERE trace_id IN ({marks}) ORDER BY start_ns", (_ESC, *ids))
        for r in rows:
            o = out[r["trace_id"]]
            o["spans"] += 1
            if r["operation"] == "chat":  # the model calls hold the usage (agents sum them)
                o["input_tokens"] += r["input_tokens"] or 0
                o["output_tokens"] += r["output_tokens"] or 0
            if r["cost_usd"] is not None:
                o["cost_usd"] = (o["cost_usd"] or 0.0) + r["cost_usd"]
            if r["operation"] == "invoke_agent" and r["agent"]:
                if r["agent"] not in o["agents"]:
                    o["agents"].append(r["agent"])
                if r["esc"] and r["agent"] not in o["escalated_agents"]:
                    o["escalated_agents"].append(r["agent"])
            if r["status"] == "ERROR":
                o["errors"] += 1
                msg = f"{r['name']}: {r['status_message'] or 'error'}"
                if len(o["error_messages"]) < 3 and msg not in o["error_messages"]:
                    o["error_messages"].append(msg)
        return out

    def agent_stats(self, since_ns: int, until_ns: int, buckets: int = 24) -> dict[str, Any]:
        """The agents view, aggregated in the database over ``invoke_agent`` spans that started
        in [since_ns, until_ns): per agent and per time bucket (``buckets`` equal slices),
        calls, errors, escalated calls, confidence sum and count, tokens, the newest start and
        nearest-rank p50 (and per agent p95) latency through window functions; cost from the
        agents' ``chat`` children; the model identity of each agent's newest call. Returns
        ``{"buckets": [row...], "p": {agent: {"p50_ms", "p95_ms"}}, "cost": {agent: usd},
        "serving": {agent: model}}``. The partial index ``spans_agent_calls`` holds only agent
        spans, so a window reads those and not the model, tool and handoff spans around them."""
        width = max(1, (until_ns - since_ns) // buckets)
        win = "operation = 'invoke_agent' AND agent IS NOT NULL AND start_ns >= ? AND start_ns < ?"
        rows = self._rows(
            "SELECT agent, (start_ns - ?) / ? AS b, COUNT(*) AS n, "
            "SUM(CASE WHEN status = 'ERROR' THEN 1 ELSE 0 END) AS errors, "
            "SUM(CASE WHEN attributes LIKE ? THEN 1 ELSE 0 END) AS esc, "
            "SUM(confidence) AS conf_sum, COUNT(confidence) AS conf_n, "
            "SUM(COALESCE(input_tokens, 0)) AS input_tokens, "
            "SUM(COALESCE(output_tokens, 0)) AS output_tokens, MAX(start_ns) AS newest "
            f"FROM spans WHERE {win} GROUP BY agent, b",
            (since_ns, width, _ESC, since_ns, until_ns))
        # nearest rank k = ceil(q * n / 100) = (q * n + 99) / 100 in integer arithmetic
        p: dict[str, dict[str, Any]] = {}
        for r in self._rows(
                "SELECT agent, d, rn, n FROM (SELECT agent, end_ns - start_ns AS d, "
                "ROW_NUMBER() OVER (PARTITION BY agent ORDER BY end_ns - start_ns) AS rn, "
                f"COUNT(*) OVER (PARTITION BY agent) AS n FROM spans WHERE {win}) x "
                "WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100",
                (since_ns, until_ns)):
            d = p.setdefault(r["agent"], {})
            if r["rn"] == (r["n"] * 50 + 99) // 100:
                d["p50_ms"] = r["d"] / 1e6
            if r["rn"] == (r["n"] * 95 + 99) // 100:
                d["p95_ms"] = r["d"] / 1e6
        by_b = self._rows(
            "SELECT agent, b, d FROM (SELECT agent, (start_ns - ?) / ? AS b, "
            "end_ns - start_ns AS d, ROW_NUMBER() OVER (PARTITION BY agent, (start_ns - ?) / ? "
            "ORDER BY end_ns - start_ns) AS rn, COUNT(*) OVER (PARTITION BY agent, "
            f"(start_ns - ?) / ?) AS n FROM spans WHERE {win}) x "
            "WHERE rn = (n * 50 + 99) / 100",
            (since_ns, width, since_ns, width, since_ns, width, since_ns, until_ns))
        med = {(r["agent"], r["b"]): r["d"] / 1e6 for r in by_b}
        for r in rows:
            r["p50_ms"] = med.get((r["agent"], r["b"]))
        cost = {r["agent"]: r["cost"] for r in self._rows(
            "SELECT p.agent AS agent, SUM(c.cost_usd) AS cost FROM spans c JOIN spans p ON "
            "p.trace_id = c.trace_id AND p.span_id = c.parent_id WHERE c.operation = 'chat' "
            "AND c.start_ns >= ? AND c.start_ns < ? AND p.operation = 'invoke_agent' "
            "GROUP BY p.agent", (since_ns, until_ns)) if r["cost"] is not None}
        newest: dict[str, int] = {}
        for r in rows:
            newest[r["agent"]] = max(newest.get(r["agent"], 0), r["newest"])
        serving = {}
        for agent, t in newest.items():
            got = self._rows("SELECT model FROM spans WHERE start_ns = ? AND agent = ? AND "
                             "operation = 'invoke_agent' LIMIT 1", (t, agent))
            serving[agent] = got[0]["model"] if got else None
        return {"buckets": rows, "p": p, "cost": cost, "serving": serving, "width_ns": width}

    def resolve(self, trace_id: str) -> str | None:
        """A full trace id from a unique prefix (or ``last`` for the newest trace)."""
        if trace_id in ("last", "latest"):
            rows = self._rows("SELECT trace_id FROM spans ORDER BY start_ns DESC, trace_id "
                              "LIMIT 1")
            return rows[0]["trace_id"] if rows else None
        tid = trace_id.lower()
        if len(tid) == 32:  # a full id: the primary key answers (a prefix scans)
            rows = self._rows("SELECT trace_id FROM spans WHERE trace_id = ? LIMIT 1", (tid,))
            return rows[0]["trace_id"] if rows else None
        ids = [r["trace_id"] for r in self._rows(
            "SELECT DISTINCT trace_id FROM spans WHERE trace_id LIKE ? LIMIT 2", (tid + "%",))]
        if len(ids) > 1:
            raise ConfigError(f"trace id prefix {trace_id!r} is ambiguous", where="traces")
        return ids[0] if ids else None

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of one trace (a full id or unique prefix), in start order."""
        full = self.resolve(trace_id)
        if full is None:
            return []
        return [_span_dict(r) for r in self._rows(
            "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns, end_ns DESC, span_id",
            (full,))]

    def spans(self, *, since_ns: int | None = None, limit: int = 200_000) -> list[dict[str, Any]]:
        """Spans (newest traces first) for stats; ``since_ns`` bounds by start time."""
        q = "SELECT * FROM spans"
        args: list[Any] = []
        if since_ns is not None:
            q += " WHERE start_ns >= ?"
            args.append(since_ns)
        q += " ORDER BY start_ns DESC, trace_id, span_id LIMIT ?"
        args.append(limit)
        return [_span_dict(r) for r in self._rows(q, args)]

    def count(self) -> int:
        return int(self._rows("SELECT COUNT(*) AS n FROM spans")[0]["n"])

    def close(self) -> None:
        """Close the PostgreSQL connection (SQLite opens one per query)."""
        if self._pg is not None:
            self._pg.close()

    def __enter__(self) -> "SpanStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_span_store(url_or_path: str | Path | None = None) -> SpanStore:
    """The span store at a URL (``sqlite:///path``, ``postgresql://...``) or a path; ``None``:
    the one this process writes to, else ``$SLMFLOW_TRACES_URL``, else the SQLite default."""
    return SpanStore(url_or_path)
