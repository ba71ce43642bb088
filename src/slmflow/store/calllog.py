"""The call log: every agent / model call, its feedback, escalation examples and API keys.

Why one small interface with two backends: the improvement loop, the gateway, `slmflow usage` and
the review UI all read and write the same records, on one laptop (embedded SQLite, no server) or
on a fleet (PostgreSQL, many gateway processes writing concurrently). `CallLog` is that interface;
`open_call_log(url)` picks the backend from a URL (read by `slmflow.storage.urls`, as every
store's is):

    sqlite:///abs/path/calls.db       (default: $SLMFLOW_HOME/calls.db, WAL journal)
    postgresql://user@host:port/db    (psycopg 3)

This module holds the queries and the two backends. The records and their row helpers are in
`slmflow.store.records`, the API-key methods in `slmflow.store.keys` (a mixin of `CallLog`); the
SQLite connect, the reconnecting PostgreSQL connection, the dialect helpers and the migration
runner are `slmflow.storage`'s, shared with the span store and the adapter registry. Every name
this module exported before the split is still importable from it.

Writing without blocking a request (the background writer) is `slmflow.store.batch_writer`'s;
the hooks agents and models use live in `slmflow.store.writer`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import ConfigError, StorageError
from ..storage.dialect import marks, to_pg, upsert, utc_day
from ..storage.migrations import ADVISORY_LOCKS, migrate
from ..storage.pg import PgConnection
from ..storage.sqlite import connect as sqlite_connect
from ..storage.urls import parse_url
from ..storage.urls import url_safe as _url_safe
from .keys import KeyStore, hash_key
from .records import (_DUR, AgentInfo, ApiKey, CallRecord, Example, Feedback, _dumps,
                      _json_default, _loads, _txt, new_id, parse_since)
from .schema import MIGRATIONS, statements

__all__ = ["CallRecord", "Feedback", "Example", "ApiKey", "CallLog", "SQLiteCallLog",
           "PostgresCallLog", "AgentInfo", "open_call_log", "default_url", "parse_since", "StoreError"]

# the names other modules imported from here before the split (records, keys), still importable
_REEXPORTED = (_DUR, _json_default, hash_key, new_id)

log = logging.getLogger("slmflow.store")


class StoreError(StorageError):
    """The call-log store failed (cannot open, migrate, read or write)."""


def _filters(equal: dict[str, Any], since: Any = None,
             until: Any = None) -> tuple[str, list[Any]]:
    """A WHERE clause (with placeholders) for column = value pairs (None skipped), ts >= since
    and ts < until; every table of the call log's database filters through it."""
    conds = [f"{col} = ?" for col, v in equal.items() if v is not None]
    params: list[Any] = [v for v in equal.values() if v is not None]
    for op, t in ((">=", parse_since(since)), ("<", parse_since(until))):
        if t is not None:
            conds.append(f"ts {op} ?")
            params.append(t)
    return (" WHERE " + " AND ".join(conds)) if conds else "", params


# ---- the interface -------------------------------------------------------------------------------

_FILTERS = {"agent": "agent", "workflow": "workflow", "model": "model", "key": "key_name",
            "run_id": "run_id", "trace_id": "trace_id", "kind": "kind", "status": "status"}
_GROUPS = {"key": "key_name", "agent": "agent", "model": "model", "workflow": "workflow",
           "kind": "kind", "status": "status", "day": None}


class CallLog(KeyStore, abc.ABC):
    """The storage interface. Backends implement the few primitive SQL hooks at the bottom;
    everything else is shared, so SQLite and PostgreSQL behave the same. The API-key methods
    (`create_key`, `find_key`, `reserve_tokens`, `take_rate`, ...) come from `KeyStore`."""

    url: str
    dialect: str

    # -- calls --------------------------------------------------------------------------------
    def append(self, records: Iterable[CallRecord | Example | Feedback | AgentInfo]) -> int:
        """Write a batch in one transaction (calls, examples, feedback and agent infos may be
        mixed, written in that order: feedback lands with or after its call); returns the count.
        A record already stored (same id) is skipped, so a retried batch never duplicates."""
        records = list(records)
        calls = [r.to_row() for r in records if isinstance(r, CallRecord)]
        exs = [self._example_row(r) for r in records if isinstance(r, Example)]
        fbs = [self._feedback_row(r) for r in records if isinstance(r, Feedback)]
        infos = {r.name: r for r in records if isinstance(r, AgentInfo)}
        if not calls and not exs and not fbs and not infos:
            return 0
        with self._tx() as cur:
            for table, cols, rows in (("calls", CallRecord.COLUMNS, calls),
                                      ("examples", Example.COLUMNS, exs),
                                      ("feedback", Feedback.COLUMNS, fbs)):
                if rows:
                    self._many(cur, f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                               f"({marks(len(cols))}) ON CONFLICT (id) DO NOTHING",
                               rows)
            if infos:
                self._many(cur, upsert("agents", ("name", "output_schema", "instructions",
                                              "updated"), ("name",)),
                           [(_txt(i.name), _dumps(i.output_schema), _txt(i.instructions),
                             i.updated) for i in infos.values()])
        return len(calls) + len(exs) + len(fbs) + len(infos)

    def _feedback_row(self, fb: Feedback) -> tuple:
        return (fb.id, fb.ts, fb.call_id, fb.run_id, fb.signal, _txt(fb.label),
                _dumps(fb.correction), _txt(fb.by))

    def agent_info(self, name: str) -> AgentInfo | None:
        rows = self._all("SELECT name, output_schema, instructions, updated FROM agents "
                         "WHERE name = ?", (name,))
        if not rows:
            return None
        n, sch, ins, up = rows[0]
        return AgentInfo(n, _loads(sch), ins, up)

    def _example_row(self, e: Example) -> tuple:
        return (e.id, e.ts, e.call_id, _txt(e.agent), _txt(e.source_model), _txt(e.target_model),
                _dumps(e.input), _dumps(e.output), _txt(e.reason), e.confidence)

    def get(self, call_id: str) -> CallRecord | None:
        rows = self._all(f"SELECT seq, {', '.join(CallRecord.COLUMNS)} FROM calls WHERE id = ?",
                         (call_id,))
        return CallRecord.from_row(rows[0]) if rows else None

    def get_many(self, call_ids: Iterable[str]) -> dict[str, CallRecord]:
        """The calls with these ids that exist, by id (one query per 500 ids)."""
        ids = list(dict.fromkeys(call_ids))
        out: dict[str, CallRecord] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for r in self._all(f"SELECT seq, {', '.join(CallRecord.COLUMNS)} FROM calls WHERE id "
                               f"IN ({marks(len(chunk))})", chunk):
                rec = CallRecord.from_row(r)
                out[rec.id] = rec
        return out

    def _where(self, since: Any, until: Any, escalated: bool | None,
               filters: dict[str, Any]) -> tuple[str, list[Any]]:
        unknown = [k for k, v in filters.items() if v is not None and k not in _FILTERS]
        if unknown:
            raise ConfigError(f"unknown filter {unknown[0]!r} (use {', '.join(_FILTERS)})",
                              where="CallLog.query")
        equal = {"escalated": None if escalated is None else int(escalated),
                 **{_FILTERS[k]: v for k, v in filters.items() if v is not None}}
        return _filters(equal, since, until)

    def query(self, *, since: Any = None, until: Any = None, escalated: bool | None = None,
              limit: int | None = 1000, newest_first: bool = False,
              **filters: Any) -> list[CallRecord]:
        """Calls matching every filter given (agent, workflow, model, key, run_id, trace_id,
        kind, status), in time order."""
        where, params = self._where(since, until, escalated, filters)
        sql = (f"SELECT seq, {', '.join(CallRecord.COLUMNS)} FROM calls{where} ORDER BY seq"
               + (" DESC" if newest_first else ""))
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [CallRecord.from_row(r) for r in self._all(sql, params)]

    def count(self, *, since: Any = None, until: Any = None, escalated: bool | None = None,
              **filters: Any) -> int:
        where, params = self._where(since, until, escalated, filters)
        return int(self._all(f"SELECT COUNT(*) FROM calls{where}", params)[0][0])

    def iter_since(self, seq: int = 0, *, batch: int = 500) -> Iterator[CallRecord]:
        """Every call written after cursor ``seq`` (a record's ``.seq``), oldest first, in pages:
        the improvement loop keeps the last ``seq`` it saw and resumes from it."""
        while True:
            rows = self._all(f"SELECT seq, {', '.join(CallRecord.COLUMNS)} FROM calls "
                             f"WHERE seq > ? ORDER BY seq LIMIT {int(batch)}", (seq,))
            for r in rows:
                rec = CallRecord.from_row(r)
                seq = rec.seq or seq
                yield rec
            if len(rows) < batch:
                return

    def usage(self, by: Sequence[str] = ("key", "agent", "model"), *, since: Any = None,
              until: Any = None, **filters: Any) -> list[dict[str, Any]]:
        """Calls, tokens and cost summed per group (key, agent, model, workflow, kind, status,
        day); ``rejected`` counts the requests the gateway refused (401/403/404/429)."""
        cols = []
        for b in by:
            if b not in _GROUPS:
                raise ConfigError(f"cannot group by {b!r} (use {', '.join(_GROUPS)})",
                                  where="CallLog.usage")
            cols.append(_GROUPS[b] or utc_day("ts", self.dialect))
        where, params = self._where(since, until, None, filters)
        sel = ", ".join(f"{c} AS g{i}" for i, c in enumerate(cols))
        grp = ", ".join(f"g{i}" for i in range(len(cols)))
        sql = (f"SELECT {sel}{', ' if sel else ''}COUNT(*), COALESCE(SUM(input_tokens), 0), "
               f"COALESCE(SUM(output_tokens), 0), SUM(cost_usd), "
               f"COALESCE(SUM(escalated), 0), COALESCE(SUM(CASE WHEN cache IS NOT NULL AND "
               f"cache <> 'miss' THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN status = "
               f"'rejected' THEN 1 ELSE 0 END), 0) FROM calls{where}"
               + (f" GROUP BY {grp} ORDER BY {grp}" if grp else ""))
        out = []
        for r in self._all(sql, params):
            d = {b: r[i] for i, b in enumerate(by)}
            n = len(by)
            d.update(calls=int(r[n]), input_tokens=int(r[n + 1]), output_tokens=int(r[n + 2]),
                     cost_usd=None if r[n + 3] is None else float(r[n + 3]),
                     escalated=int(r[n + 4]), cache_hits=int(r[n + 5]),
                     rejected=int(r[n + 6]))
            out.append(d)
        return out

    # -- feedback --------------------------------------------------------------------------------
    def add_feedback(self, call_id: str | None = None, *, run_id: str | None = None,
                     signal: str | None = None, label: str | None = None,
                     correction: Any = None, by: str | None = None) -> Feedback:
        """Attach a user signal to a call (``call_id``) or a whole workflow run (``run_id``).
        signal: "up" | "down" | None. Raises `ConfigError` for an unknown id or an empty signal."""
        if (call_id is None) == (run_id is None):
            raise ConfigError("feedback needs exactly one of call_id and run_id",
                              where="add_feedback")
        if signal not in (None, "up", "down"):
            raise ConfigError(f"signal must be 'up' or 'down', got {signal!r}",
                              where="add_feedback")
        if signal is None and label is None and correction is None:
            raise ConfigError("feedback needs a signal, a label or a correction",
                              where="add_feedback")
        if call_id is not None:
            found = self._all("SELECT 1 FROM calls WHERE id = ?", (call_id,))
        else:
            found = self._all("SELECT 1 FROM calls WHERE run_id = ? LIMIT 1", (run_id,))
        if not found:
            what = f"call {call_id!r}" if call_id else f"run {run_id!r}"
            raise ConfigError(f"no {what} in the call log", where=self.url_safe)
        fb = Feedback(call_id=call_id, run_id=run_id, signal=signal, label=_txt(label),
                      correction=correction, by=_txt(by))
        with self._tx() as cur:
            self._many(cur, f"INSERT INTO feedback ({', '.join(Feedback.COLUMNS)}) VALUES "
                       f"({marks(len(Feedback.COLUMNS))})", [self._feedback_row(fb)])
        return fb

    def feedback(self, call_id: str | None = None, *, run_id: str | None = None,
                 since: Any = None) -> list[Feedback]:
        where, params = _filters({"call_id": call_id, "run_id": run_id}, since)
        rows = self._all(f"SELECT {', '.join(Feedback.COLUMNS)} FROM feedback{where} ORDER BY seq",
                         params)
        out = []
        for r in rows:
            d = dict(zip(Feedback.COLUMNS, r))
            d["correction"] = _loads(d["correction"])
            out.append(Feedback(**d))
        return out

    # -- escalation examples ---------------------------------------------------------------------
    def examples(self, agent: str | None = None, *, since: Any = None) -> list[Example]:
        where, params = _filters({"agent": agent}, since)
        rows = self._all(f"SELECT {', '.join(Example.COLUMNS)} FROM examples{where} ORDER BY seq",
                         params)
        out = []
        for r in rows:
            d = dict(zip(Example.COLUMNS, r))
            d["input"], d["output"] = _loads(d["input"]), _loads(d["output"])
            out.append(Example(**d))
        return out

    # -- migrations --------------------------------------------------------------------------------
    def schema_version(self) -> int:
        rows = self._all("SELECT MAX(version) FROM schema_version", ())
        return int(rows[0][0] or 0)

    def _migrate(self) -> None:
        # on PostgreSQL two processes opening a fresh database at once: one migrates, the other
        # waits for its advisory lock
        with self._tx(lock=True) as cur:
            migrate(cur, self._exec, migrations=[(v, statements(sql, self.dialect))
                                                 for v, sql in MIGRATIONS],
                    dialect=self.dialect, what="the call log", where=self.url_safe,
                    error=StoreError, lock=ADVISORY_LOCKS["calls"])

    @property
    def url_safe(self) -> str:
        """The URL without a password, for messages."""
        return _url_safe(self.url)

    # -- backend hooks -----------------------------------------------------------------------------
    @abc.abstractmethod
    def _tx(self, lock: bool = False) -> Any:
        """A context manager: a cursor inside one transaction (committed on exit)."""

    @abc.abstractmethod
    def _exec(self, cur: Any, sql: str, params: Sequence[Any]) -> int: ...

    @abc.abstractmethod
    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    def _all(self, sql: str, params: Sequence[Any]) -> list[tuple]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "CallLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url_safe!r})"


# ---- SQLite ----------------------------------------------------------------------------------------

class SQLiteCallLog(CallLog):
    """The embedded store: one SQLite file in WAL mode (readers never block the writer)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        import sqlite3

        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        try:
            self._conn = sqlite_connect(self.path, timeout=30, autocommit=True)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open the call log: {e}", where=self.url) from None
        self._lock = threading.RLock()
        try:
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot migrate the call log: {e}", where=self.url) from None

    @contextlib.contextmanager
    def _tx(self, lock: bool = False) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _exec(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, tuple(params))
        return cur.rowcount

    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur.executemany(sql, rows)

    def _all(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except Exception:
                pass


# ---- PostgreSQL ------------------------------------------------------------------------------------

class PostgresCallLog(CallLog):
    """The store at scale: PostgreSQL through psycopg 3 (one connection, serialised per process;
    many gateway processes can write to one database)."""

    dialect = "postgresql"

    def __init__(self, url: str, *, connect_timeout: float = 10) -> None:
        # reopened after the server drops it: the failed statement raises once, the writer
        # retries, the retry lands (tests/test_pg_restart.py)
        self._pg = PgConnection(url, error=StoreError, what="the call log",
                                connect_timeout=connect_timeout)
        self.url = self._pg.url
        self._psycopg = self._pg.psycopg
        self._lock = self._pg.lock
        self._connection = self._pg.get
        try:
            self._migrate()
        except self._psycopg.Error as e:
            raise self._pg.fail("cannot migrate the call log", e) from None

    _q = staticmethod(to_pg)

    @contextlib.contextmanager
    def _tx(self, lock: bool = False) -> Iterator[Any]:
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur

    def _exec(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(self._q(sql), tuple(params))
        return cur.rowcount

    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur.executemany(self._q(sql), rows)

    def _all(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._lock:
            try:
                with self._connection().cursor() as cur:
                    cur.execute(self._q(sql), tuple(params))
                    return cur.fetchall()
            except self._psycopg.Error as e:
                raise self._pg.fail("query failed", e) from None

    def close(self) -> None:
        self._pg.close()


# ---- opening -----------------------------------------------------------------------------------------

def default_url() -> str:
    """``$SLMFLOW_CALLS_URL`` or ``sqlite:///$SLMFLOW_HOME/calls.db``."""
    import os

    url = os.environ.get("SLMFLOW_CALLS_URL")
    if url:
        return url
    from ..home import home

    return f"sqlite:///{home() / 'calls.db'}"


def open_call_log(url: str | Path | None = None) -> CallLog:
    """Open (creating and migrating as needed) the call log at ``url``; see the module doc."""
    if url is None:
        url = default_url()
    kind, where = parse_url(url, what="call-log", where="call log")
    if kind == "postgresql":
        return PostgresCallLog(where)
    return SQLiteCallLog(where)
