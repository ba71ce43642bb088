"""Reading the span store: `SpanStore` and its queries (the trace list, the viewer's filtered list
and per-trace rollups, the agents view, one trace, spans for stats).

Why one `SpanStore` and not one class per backend: every view (list, show, stats, the UI, scenario
evals, the review queue's context) must give the same answer whichever store holds the spans, so
the queries are written once in SQL both understand; `slmflow.tracing.backends` turns them into
PostgreSQL's. Why a module of its own: the queries are half of what the span store is, and the
exporters that write spans (`slmflow.tracing.store`, which re-exports these names) never read.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import ConfigError
from . import attrs as A
from .backends import _Postgres, _target, connect

__all__ = ["SpanStore", "open_span_store", "TRACE_STATUSES"]


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
