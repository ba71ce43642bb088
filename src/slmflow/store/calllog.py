"""The call log: every agent / model call, its feedback, escalation examples and API keys.

Why one small interface with two backends: the improvement loop, the gateway, `slmflow usage` and
the review UI all read and write the same records, on one laptop (embedded SQLite, no server) or
on a fleet (PostgreSQL, many gateway processes writing concurrently). `CallLog` is that interface;
`open_call_log(url)` picks the backend from a URL:

    sqlite:///abs/path/calls.db       (default: $SLMFLOW_HOME/calls.db, WAL journal)
    postgresql://user@host:port/db    (psycopg 3)

Writing without blocking a request (the background writer) and the hooks agents and models use
live in `slmflow.store.writer`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import ConfigError, SlmflowError, mask_url
from ..types import db_text
from .pg import PgConnection, is_pg_url
from .schema import LATEST, MIGRATIONS, statements

__all__ = ["CallRecord", "Feedback", "Example", "ApiKey", "CallLog", "SQLiteCallLog",
           "PostgresCallLog", "AgentInfo", "open_call_log", "default_url", "parse_since", "StoreError"]

log = logging.getLogger("slmflow.store")



def _filters(equal: dict[str, Any], since: Any) -> tuple[str, list[Any]]:
    """A WHERE clause (with placeholders) for column = value pairs (None skipped) and ts >= since."""
    conds = [f"{col} = ?" for col, v in equal.items() if v is not None]
    params: list[Any] = [v for v in equal.values() if v is not None]
    s = parse_since(since)
    if s is not None:
        conds.append("ts >= ?")
        params.append(s)
    return (" WHERE " + " AND ".join(conds)) if conds else "", params

class StoreError(SlmflowError):
    """The call-log store failed (cannot open, migrate, read or write)."""


# ---- records -----------------------------------------------------------------------------------

def new_id() -> str:
    return uuid.uuid4().hex


def hash_key(key: str) -> str:
    """How an API key is stored and looked up (`find_key`): its SHA-256, never the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _txt(v: Any) -> str | None:
    """Text safe for both SQLite and PostgreSQL: no lone surrogates, no NUL bytes."""
    if v is None:
        return None
    return db_text(v if isinstance(v, str) else str(v))


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _dumps(v: Any) -> str | None:
    if v is None:
        return None
    return json.dumps(v, default=_json_default, ensure_ascii=True)


def _loads(s: str | None) -> Any:
    if s is None:
        return None
    try:
        return json.loads(s)
    except ValueError:
        return s


@dataclass
class CallRecord:
    """One call: ``kind`` is agent | model | gateway | workflow. ``input``/``output`` are any
    JSON-able values (stored as JSON text)."""

    kind: str = "agent"
    agent: str | None = None
    workflow: str | None = None
    run_id: str | None = None
    trace_id: str | None = None
    key_name: str | None = None
    model: str | None = None
    adapter: str | None = None
    input: Any = None
    output: Any = None
    latency_s: float | None = None
    confidence: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    escalated: bool = False
    escalation_reason: str | None = None
    cache: str | None = None
    status: str = "ok"
    error: str | None = None
    meta: dict[str, Any] | None = None
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)
    seq: int | None = None

    COLUMNS = ("id", "ts", "kind", "agent", "workflow", "run_id", "trace_id", "key_name", "model",
               "adapter", "input", "output", "latency_s", "confidence", "input_tokens",
               "output_tokens", "cost_usd", "escalated", "escalation_reason", "cache", "status",
               "error", "meta")

    def to_row(self) -> tuple:
        out = []
        for c in self.COLUMNS:
            v = getattr(self, c)
            if c in ("input", "output", "meta"):
                v = _dumps(v)
            elif c == "escalated":
                v = int(bool(v))
            elif c in ("input_tokens", "output_tokens"):
                v = int(v or 0)
            elif isinstance(v, str):
                v = _txt(v)
            out.append(v)
        return tuple(out)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "CallRecord":
        d = dict(zip(("seq",) + cls.COLUMNS, row))
        for c in ("input", "output", "meta"):
            d[c] = _loads(d[c])
        d["escalated"] = bool(d["escalated"])
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Feedback:
    """A user signal attached to a call or a run: thumbs (up/down), a label, a correction."""

    call_id: str | None = None
    run_id: str | None = None
    signal: str | None = None
    label: str | None = None
    correction: Any = None
    by: str | None = None
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)

    COLUMNS = ("id", "ts", "call_id", "run_id", "signal", "label", "correction", "by")


@dataclass
class Example:
    """A training example produced by an escalation: the small model's input and the stronger
    model's accepted output, for fine-tuning the small model."""

    agent: str | None
    input: Any
    output: Any
    source_model: str | None = None
    target_model: str | None = None
    reason: str | None = None
    confidence: float | None = None
    call_id: str | None = None
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)

    COLUMNS = ("id", "ts", "call_id", "agent", "source_model", "target_model", "input", "output",
               "reason", "confidence")


@dataclass
class AgentInfo:
    """What the review UI needs to know about an agent: its output JSON schema (the correction
    form is generated from it) and its instructions. Upserted by name, once per process."""

    name: str
    output_schema: dict[str, Any] | None = None
    instructions: str | None = None
    updated: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.name


@dataclass
class ApiKey:
    name: str
    key_hash: str
    prefix: str
    models: list[str] | None = None
    rpm: int | None = None
    tokens_per_day: int | None = None
    created: float = field(default_factory=time.time)
    revoked: float | None = None

    COLUMNS = ("name", "key_hash", "prefix", "models", "rpm", "tokens_per_day", "created",
               "revoked")


# ---- time ----------------------------------------------------------------------------------------

_DUR = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")


def parse_since(value: Any) -> float | None:
    """None, epoch seconds, a datetime, an ISO date/time, or a duration back from now (``30m``,
    ``24h``, ``7d``) → epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    s = str(value).strip()
    m = _DUR.match(s)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - float(m.group(1)) * mult
    try:
        return parse_since(datetime.fromisoformat(s))
    except ValueError:
        raise ConfigError(f"cannot read {s!r} as a time: use epoch seconds, an ISO date or a "
                          "duration such as 24h or 7d", where="since") from None


# ---- the interface -------------------------------------------------------------------------------

_FILTERS = {"agent": "agent", "workflow": "workflow", "model": "model", "key": "key_name",
            "run_id": "run_id", "trace_id": "trace_id", "kind": "kind", "status": "status"}
_GROUPS = {"key": "key_name", "agent": "agent", "model": "model", "workflow": "workflow",
           "kind": "kind", "status": "status", "day": None}


class CallLog(abc.ABC):
    """The storage interface. Backends implement the few primitive SQL hooks at the bottom;
    everything else is shared, so SQLite and PostgreSQL behave the same."""

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
                               f"({', '.join('?' * len(cols))}) ON CONFLICT (id) DO NOTHING",
                               rows)
            if infos:
                self._many(cur, "INSERT INTO agents (name, output_schema, instructions, updated) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                           "output_schema = excluded.output_schema, "
                           "instructions = excluded.instructions, updated = excluded.updated",
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
                               f"IN ({', '.join('?' * len(chunk))})", chunk):
                rec = CallRecord.from_row(r)
                out[rec.id] = rec
        return out

    def _where(self, since: Any, until: Any, escalated: bool | None,
               filters: dict[str, Any]) -> tuple[str, list[Any]]:
        conds, params = [], []
        s, u = parse_since(since), parse_since(until)
        if s is not None:
            conds.append("ts >= ?")
            params.append(s)
        if u is not None:
            conds.append("ts < ?")
            params.append(u)
        if escalated is not None:
            conds.append("escalated = ?")
            params.append(int(escalated))
        for k, v in filters.items():
            if v is not None:
                if k not in _FILTERS:
                    raise ConfigError(f"unknown filter {k!r} (use {', '.join(_FILTERS)})",
                                      where="CallLog.query")
                conds.append(f"{_FILTERS[k]} = ?")
                params.append(v)
        return (" WHERE " + " AND ".join(conds)) if conds else "", params

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
            cols.append(_GROUPS[b] or self._day_expr())
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

    # -- per-key limits shared by gateway replicas ----------------------------------------------
    # Why in the database and not in process memory: two gateway replicas on one call log must
    # enforce one key's budget and rate together. Each check-and-take is one conditional UPDATE in
    # one transaction (PostgreSQL re-evaluates the WHERE on the locked row; SQLite's BEGIN
    # IMMEDIATE serialises writers), so concurrent requests on any replica cannot both pass.

    def reserve_tokens(self, key_name: str, tokens: int, limit: int,
                       now: float | None = None) -> tuple[bool, int, int]:
        """Add ``tokens`` to the key's counter for the UTC day if the sum stays within ``limit``.
        Returns (reserved, the counter after (or as it stands when refused), the day number).
        The day's row is seeded from the tokens already in the call log for that day."""
        t = time.time() if now is None else now
        day = int(t // 86400)
        with self._tx() as cur:
            self._exec(cur, "SELECT tokens FROM key_budget WHERE key_name = ? AND day = ?",
                       (key_name, day))
            if cur.fetchone() is None:
                self._exec(cur, "INSERT INTO key_budget (key_name, day, tokens) SELECT ?, ?, "
                           "COALESCE(SUM(input_tokens + output_tokens), 0) FROM calls WHERE "
                           "key_name = ? AND ts >= ? ON CONFLICT (key_name, day) DO NOTHING",
                           (key_name, day, key_name, day * 86400.0))
            n = self._exec(cur, "UPDATE key_budget SET tokens = tokens + ? WHERE key_name = ? "
                           "AND day = ? AND tokens + ? <= ?",
                           (int(tokens), key_name, day, int(tokens), int(limit)))
            self._exec(cur, "SELECT tokens FROM key_budget WHERE key_name = ? AND day = ?",
                       (key_name, day))
            used = int(cur.fetchone()[0])
        return bool(n), used, day

    def settle_tokens(self, key_name: str, day: int, delta: int) -> None:
        """Correct a reservation by ``delta`` (real usage minus reserved; never below zero)."""
        if not delta:
            return
        g = self._greatest()
        with self._tx() as cur:
            self._exec(cur, f"UPDATE key_budget SET tokens = {g}(0, tokens + ?) WHERE "
                       "key_name = ? AND day = ?", (int(delta), key_name, int(day)))

    def budget_used(self, key_name: str, now: float | None = None) -> int | None:
        """The key's counter for the UTC day (None before its first reservation that day)."""
        day = int((time.time() if now is None else now) // 86400)
        rows = self._all("SELECT tokens FROM key_budget WHERE key_name = ? AND day = ?",
                         (key_name, day))
        return int(rows[0][0]) if rows else None

    def take_rate(self, key_name: str, rpm: int, now: float | None = None) -> float:
        """Take one request from the key's token bucket (``rpm`` per minute, bursts up to
        ``rpm``): 0.0 if taken, else the seconds until one is available. ``now`` is wall-clock
        time, shared by the replicas (keep their clocks synchronised, as NTP does)."""
        t = time.time() if now is None else now
        rate = rpm / 60.0
        g, lst = self._greatest(), self._least()
        level = f"{lst}(?, level + {g}(0, ? - ts) * ?)"
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO key_rate (key_name, level, ts) VALUES (?, ?, ?) "
                       "ON CONFLICT (key_name) DO NOTHING", (key_name, float(rpm), t))
            n = self._exec(cur, f"UPDATE key_rate SET level = {level} - 1, ts = {g}(ts, ?) "
                           f"WHERE key_name = ? AND {level} >= 1",
                           (float(rpm), t, rate, t, key_name, float(rpm), t, rate))
            if n:
                return 0.0
            self._exec(cur, "SELECT level, ts FROM key_rate WHERE key_name = ?", (key_name,))
            lv, ts = cur.fetchone()
        have = min(float(rpm), float(lv) + max(0.0, t - float(ts)) * rate)
        return max(0.001, (1.0 - have) / rate)

    def tokens_since(self, key_name: str, since: float) -> int:
        r = self._all("SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM calls "
                      "WHERE key_name = ? AND ts >= ?", (key_name, since))
        return int(r[0][0])

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
                       f"({', '.join('?' * len(Feedback.COLUMNS))})", [self._feedback_row(fb)])
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

    # -- API keys (hashes only) ------------------------------------------------------------------
    def create_key(self, key: ApiKey) -> ApiKey:
        if self._all("SELECT 1 FROM api_keys WHERE name = ?", (key.name,)):
            raise ConfigError(f"an API key named {key.name!r} exists already", where="keys")
        with self._tx() as cur:
            self._many(cur, f"INSERT INTO api_keys ({', '.join(ApiKey.COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(ApiKey.COLUMNS))})",
                       [(key.name, key.key_hash, key.prefix, _dumps(key.models), key.rpm,
                         key.tokens_per_day, key.created, key.revoked)])
        return key

    def _key_rows(self, where: str, params: Sequence[Any]) -> list[ApiKey]:
        out = []
        for r in self._all(f"SELECT {', '.join(ApiKey.COLUMNS)} FROM api_keys{where} "
                           "ORDER BY seq", params):
            d = dict(zip(ApiKey.COLUMNS, r))
            d["models"] = _loads(d["models"])
            out.append(ApiKey(**d))
        return out

    def find_key(self, key_hash: str) -> ApiKey | None:
        rows = self._key_rows(" WHERE key_hash = ?", (key_hash,))
        return rows[0] if rows else None

    def list_keys(self) -> list[ApiKey]:
        return self._key_rows("", ())

    def revoke_key(self, name: str) -> bool:
        with self._tx() as cur:
            n = self._exec(cur, "UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS "
                           "NULL", (time.time(), name))
        return bool(n)

    # -- migrations --------------------------------------------------------------------------------
    def schema_version(self) -> int:
        rows = self._all("SELECT MAX(version) FROM schema_version", ())
        return int(rows[0][0] or 0)

    def _migrate(self) -> None:
        with self._tx(lock=True) as cur:
            self._exec(cur, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY "
                       "KEY, applied DOUBLE PRECISION NOT NULL)", ())
            self._lock_schema(cur)
            self._exec(cur, "SELECT MAX(version) FROM schema_version", ())
            current = int(cur.fetchone()[0] or 0)
            if current > LATEST:
                raise StoreError(f"the call log has schema version {current}, newer than this "
                                 f"slmflow knows ({LATEST}): upgrade slmflow", where=self.url_safe)
            for version, sql in MIGRATIONS:
                if version <= current:
                    continue
                for stmt in statements(sql, self.dialect):
                    self._exec(cur, stmt, ())
                self._exec(cur, "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                           (version, time.time()))

    @property
    def url_safe(self) -> str:
        """The URL without a password, for messages."""
        return mask_url(self.url)

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

    def _lock_schema(self, cur: Any) -> None:
        pass

    def _day_expr(self) -> str:
        raise NotImplementedError

    def _greatest(self) -> str:
        return "GREATEST"

    def _least(self) -> str:
        return "LEAST"

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "CallLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url_safe!r})"


# ---- SQLite ----------------------------------------------------------------------------------------

class _SqliteTx:
    def __init__(self, log: "SQLiteCallLog", lock: bool) -> None:
        self.log, self.lock = log, lock

    def __enter__(self) -> Any:
        self.log._lock.acquire()
        self.cur = self.log._conn.cursor()
        try:
            self.cur.execute("BEGIN IMMEDIATE")
        except Exception:
            self.log._lock.release()
            raise
        return self.cur

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.log._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.log._lock.release()


class SQLiteCallLog(CallLog):
    """The embedded store: one SQLite file in WAL mode (readers never block the writer)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        import sqlite3

        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                         isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open the call log: {e}", where=self.url) from None
        self._lock = threading.RLock()
        try:
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot migrate the call log: {e}", where=self.url) from None

    def _tx(self, lock: bool = False) -> Any:
        return _SqliteTx(self, lock)

    def _exec(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, tuple(params))
        return cur.rowcount

    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur.executemany(sql, rows)

    def _all(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _day_expr(self) -> str:
        return "date(ts, 'unixepoch')"

    def _greatest(self) -> str:
        return "max"  # SQLite's multi-argument max/min are the scalar GREATEST/LEAST

    def _least(self) -> str:
        return "min"

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except Exception:
                pass


# ---- PostgreSQL ------------------------------------------------------------------------------------

class _PgTx:
    def __init__(self, log: "PostgresCallLog") -> None:
        self.log = log

    def __enter__(self) -> Any:
        self.log._lock.acquire()
        try:
            conn = self.log._connection()
            self.tx = conn.transaction()
            self.tx.__enter__()
            self.cur = conn.cursor()
        except Exception:
            self.log._lock.release()
            raise
        return self.cur

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.cur.close()
            self.tx.__exit__(exc_type, exc, tb)
        finally:
            self.log._lock.release()


class PostgresCallLog(CallLog):
    """The store at scale: PostgreSQL through psycopg 3 (one connection, serialised per process;
    many gateway processes can write to one database)."""

    dialect = "postgresql"

    def __init__(self, url: str, *, connect_timeout: float = 10) -> None:
        self.url = url
        # reopened after the server drops it: the failed statement raises once, the writer
        # retries, the retry lands (tests/test_pg_restart.py)
        self._pg = PgConnection(url, error=StoreError, what="the call log",
                                connect_timeout=connect_timeout)
        self._psycopg = self._pg.psycopg
        self._lock = self._pg.lock
        self._connection = self._pg.get
        try:
            self._migrate()
        except self._psycopg.Error as e:
            raise StoreError(f"cannot migrate the call log: {str(e).strip()}",
                             where=self.url_safe) from None

    @staticmethod
    def _q(sql: str) -> str:
        return sql.replace("?", "%s")

    def _tx(self, lock: bool = False) -> Any:
        return _PgTx(self)

    def _lock_schema(self, cur: Any) -> None:
        # Two processes opening a fresh database at once: one migrates, the other waits.
        cur.execute("SELECT pg_advisory_xact_lock(727350011)")

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
                raise StoreError(f"query failed: {str(e).strip()}", where=self.url_safe) from None

    def _day_expr(self) -> str:
        return "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

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
    if isinstance(url, Path):
        return SQLiteCallLog(url)
    u = str(url)
    if u.startswith("sqlite:///"):
        return SQLiteCallLog(u[len("sqlite:///"):] if u.startswith("sqlite:////")
                             else u[len("sqlite://"):])
    if u.startswith("sqlite://"):
        raise ConfigError("write SQLite URLs as sqlite:///absolute/path.db", where=u)
    if is_pg_url(u):
        return PostgresCallLog(u.replace("postgresql+psycopg://", "postgresql://"))
    if "://" not in u:
        return SQLiteCallLog(u)
    raise ConfigError(f"unknown call-log URL {u!r}: use sqlite:///path or postgresql://...",
                      where="call log")
