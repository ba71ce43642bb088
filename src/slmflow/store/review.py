"""The review queue: flagged calls waiting for a person, and what the person decided.

Why it lives in the call log's database (same tables on SQLite and PostgreSQL): an item is a
pointer to a call (``call_id`` is unique, so flagging the same call twice is a no-op), the review
UI joins items to calls, and the retrain step joins reviews back to the calls and traces they came
from (lineage). One database, one transaction per decision.

Why a decision is a conditional UPDATE (``... WHERE id = ? AND status = 'pending'``): two
reviewers on the same item must not both win, and a double-click must not record two labels. The
first writer wins; the second gets `ReviewConflict` naming who decided first (the same person
submitting the same decision again is answered with the stored review, not an error).

Statuses: ``pending`` → ``reviewed`` (verdict ``accept`` | ``correct`` | ``reject``) or
``orphaned`` (the call was deleted before anyone reviewed it). ``used_in`` lists what consumed a
reviewed item (``adapter:router@v3``, ``evals:path``), so a retrain never counts a label twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import ConfigError, SlmflowError
from .calllog import CallLog, _filters
from .records import CallRecord, _dumps, _loads, _txt, new_id

__all__ = ["ReviewItem", "ReviewQueue", "ReviewError", "ReviewConflict", "VERDICTS"]

VERDICTS = ("accept", "correct", "reject")


class ReviewError(SlmflowError):
    """A review cannot be recorded (unknown item, the call is gone, a bad correction)."""


class ReviewConflict(ReviewError):
    """Somebody else already decided this item."""


@dataclass
class ReviewItem:
    call_id: str
    agent: str | None = None
    reasons: list[str] = field(default_factory=list)
    priority: float = 0.0
    status: str = "pending"
    verdict: str | None = None
    correction: Any = None
    reviewer: str | None = None
    reviewed_ts: float | None = None
    note: str | None = None
    flag_run: str | None = None
    used_in: list[str] = field(default_factory=list)
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)
    call: CallRecord | None = None  # filled by `ReviewQueue.get(..., with_call=True)`

    COLUMNS = ("id", "ts", "call_id", "agent", "reasons", "priority", "status", "verdict",
               "correction", "reviewer", "reviewed_ts", "note", "flag_run", "used_in")

    def to_row(self) -> tuple:
        return (self.id, self.ts, self.call_id, _txt(self.agent), _dumps(self.reasons),
                float(self.priority), self.status, self.verdict, _dumps(self.correction),
                _txt(self.reviewer), self.reviewed_ts, _txt(self.note), self.flag_run,
                _dumps(self.used_in))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "ReviewItem":
        d = dict(zip(cls.COLUMNS, row))
        d["reasons"] = _loads(d["reasons"]) or []
        d["correction"] = _loads(d["correction"])
        d["used_in"] = _loads(d["used_in"]) or []
        return cls(**d)

    @property
    def target(self) -> Any:
        """What the agent should have answered: the correction, or the accepted output."""
        if self.verdict == "correct":
            return self.correction
        if self.verdict == "accept" and self.call is not None:
            return self.call.output
        return None

    def as_dict(self) -> dict[str, Any]:
        d = {c: getattr(self, c) for c in self.COLUMNS}
        if self.call is not None:
            d["call"] = self.call.as_dict()
        return d


class ReviewQueue:
    """Review items on a `CallLog` (SQLite or PostgreSQL)."""

    def __init__(self, log: CallLog) -> None:
        self.log = log

    # -- adding (the flagging job) ------------------------------------------------------------
    def add(self, items: Iterable[ReviewItem]) -> int:
        """Insert items; an item for an already queued call is skipped. Returns how many were
        new."""
        rows = [i.to_row() for i in items]
        if not rows:
            return 0
        cols = ReviewItem.COLUMNS
        with self.log._tx() as cur:
            self.log._exec(cur, "SELECT COUNT(*) FROM review_items", ())
            before = int(cur.fetchone()[0])
            self.log._many(cur, f"INSERT INTO review_items ({', '.join(cols)}) VALUES "
                           f"({', '.join('?' * len(cols))}) ON CONFLICT (call_id) DO NOTHING",
                           rows)
            self.log._exec(cur, "SELECT COUNT(*) FROM review_items", ())
            return int(cur.fetchone()[0]) - before

    def queued(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these calls already have an item (any status)."""
        out: set[str] = set()
        ids = list(call_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.log._all(f"SELECT call_id FROM review_items WHERE call_id IN "
                                 f"({', '.join('?' * len(chunk))})", chunk)
            out.update(r[0] for r in rows)
        return out

    def pending_counts(self) -> dict[str, int]:
        rows = self.log._all("SELECT agent, COUNT(*) FROM review_items WHERE status = 'pending' "
                             "GROUP BY agent", ())
        return {r[0]: int(r[1]) for r in rows}

    # -- reading -------------------------------------------------------------------------------
    def items(self, agent: str | None = None, status: str | None = "pending",
              limit: int | None = 200) -> list[ReviewItem]:
        """Items, highest priority first (then oldest)."""
        where, params = _filters({"agent": agent, "status": status})
        sql = (f"SELECT {', '.join(ReviewItem.COLUMNS)} FROM review_items{where} "
               "ORDER BY priority DESC, ts, seq")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [ReviewItem.from_row(r) for r in self.log._all(sql, params)]

    def get(self, item_id: str, *, with_call: bool = True) -> ReviewItem:
        rows = self.log._all(f"SELECT {', '.join(ReviewItem.COLUMNS)} FROM review_items "
                             "WHERE id = ?", (item_id,))
        if not rows:
            raise ReviewError(f"no review item {item_id!r}", where=self.log.url_safe)
        item = ReviewItem.from_row(rows[0])
        if with_call:
            item.call = self.log.get(item.call_id)
        return item

    def stats(self) -> dict[str, dict[str, int]]:
        """{agent: {pending: n, accept: n, correct: n, reject: n, orphaned: n}}."""
        rows = self.log._all("SELECT agent, status, verdict, COUNT(*) FROM review_items "
                             "GROUP BY agent, status, verdict", ())
        out: dict[str, dict[str, int]] = {}
        for agent, status, verdict, n in rows:
            key = verdict if status == "reviewed" else status
            out.setdefault(agent or "-", {})[key] = int(n)
        return out

    def reviewed(self, agent: str, *, unused_by: str | None = None,
                 verdicts: Sequence[str] = ("accept", "correct")) -> list[ReviewItem]:
        """Reviewed items of ``agent`` with their calls, oldest first. unused_by: skip items
        whose ``used_in`` already has an entry starting with this prefix (``adapter:``)."""
        rows = self.log._all(f"SELECT {', '.join(ReviewItem.COLUMNS)} FROM review_items "
                             "WHERE agent = ? AND status = 'reviewed' ORDER BY reviewed_ts, seq",
                             (agent,))
        items = [it for it in map(ReviewItem.from_row, rows) if it.verdict in verdicts and not (
            unused_by and any(u.startswith(unused_by) for u in it.used_in))]
        calls = self.log.get_many(it.call_id for it in items)
        for it in items:
            it.call = calls.get(it.call_id)
        return [it for it in items if it.call is not None]

    # -- deciding --------------------------------------------------------------------------------
    def review(self, item_id: str, verdict: str, *, reviewer: str, correction: Any = None,
               note: str | None = None) -> ReviewItem:
        """Record one decision (see the module doc for conflicts). A correction is validated
        against the agent's output schema when the call log knows it."""
        if verdict not in VERDICTS:
            raise ConfigError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}",
                              where="review")
        if not reviewer or not str(reviewer).strip():
            raise ConfigError("a review needs the reviewer's name", where="review")
        item = self.get(item_id)
        if item.status == "reviewed":
            if (item.reviewer, item.verdict, item.correction) == (reviewer, verdict,
                                                                  correction):
                return item  # the same decision submitted twice (a double click)
            raise ReviewConflict(
                f"item {item_id} was already reviewed by {item.reviewer} "
                f"({item.verdict}) at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(item.reviewed_ts or 0))} UTC",
                where=f"review {item_id}", reviewer=item.reviewer, verdict=item.verdict)
        if item.call is None:
            with self.log._tx() as cur:
                self.log._exec(cur, "UPDATE review_items SET status = 'orphaned' WHERE id = ? "
                               "AND status = 'pending'", (item_id,))
            raise ReviewError(f"call {item.call_id} of item {item_id} no longer exists in the "
                              "call log; the item is closed as orphaned", where=f"review {item_id}")
        if verdict == "correct":
            if correction is None or correction == "":
                raise ConfigError("a correction needs the corrected output", where="review")
            correction = self._check_correction(item, correction)
        else:
            correction = None
        now = time.time()
        with self.log._tx() as cur:
            n = self.log._exec(cur, "UPDATE review_items SET status = 'reviewed', verdict = ?, "
                               "correction = ?, reviewer = ?, reviewed_ts = ?, note = ? "
                               "WHERE id = ? AND status = 'pending'",
                               (verdict, _dumps(correction), _txt(reviewer), now, _txt(note),
                                item_id))
        if n != 1:  # lost the race between our read and our write
            return self.review(item_id, verdict, reviewer=reviewer, correction=correction,
                               note=note)
        return self.get(item_id)

    def _check_correction(self, item: ReviewItem, correction: Any) -> Any:
        info = self.log.agent_info(item.agent) if item.agent else None
        schema = info.output_schema if info else None
        if schema is None:
            return correction
        if isinstance(correction, str) and schema.get("type") == "object":
            import json

            try:
                correction = json.loads(correction)
            except ValueError:
                raise ReviewError(f"the correction must be a JSON object for agent {item.agent}",
                                  where=f"review {item.id}") from None
        import jsonschema

        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(correction),
                        key=lambda e: list(e.path))
        if errors:
            msgs = "; ".join(f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}"
                             for e in errors[:3])
            raise ReviewError(f"the correction does not fit agent {item.agent}'s output: {msgs}",
                              where=f"review {item.id}")
        return correction

    def mark_used(self, item_ids: Sequence[str], tag: str) -> None:
        """Record that these reviewed items went into ``tag`` (an adapter, an eval set)."""
        add_used_in(self.log, "review_items", item_ids, tag)


def add_used_in(log: CallLog, table: str, ids: Sequence[str], tag: str) -> None:
    """Add ``tag`` to the ``used_in`` list of these rows of ``table`` (review items, judges'
    decisions), in one transaction; ids that do not exist are skipped."""
    with log._tx() as cur:
        for i in ids:
            log._exec(cur, f"SELECT used_in FROM {table} WHERE id = ?", (i,))
            row = cur.fetchone()
            if row is None:
                continue
            used = _loads(row[0]) or []
            if tag not in used:
                log._exec(cur, f"UPDATE {table} SET used_in = ? WHERE id = ?",
                          (_dumps([*used, tag]), i))
