"""Reviewers' decisions on *judges*: was the judge's verdict on a flagged call right or wrong?

Why: the review queue labels what an agent should have answered; an agent's failures are found by
evaluators, and the judge-type ones (an SLM with a rubric: ``faithfulness``, ``judge``) are wrong
often enough to matter (docs/evals.md: kappa near chance for a 135M judge). A reviewer looking at a
flagged item sees the judge's verdict anyway, so one more click ("judge right" / "judge wrong",
with the right label) turns the queue into labelled data for the judge too, and `slmflow loop
retrain --judge NAME` (`slmflow.loop.judges`) learns from it.

Two tables (migration 5, same SQL on SQLite and PostgreSQL):

- ``judges``: the judge-type evaluators that ran online (`slmflow.loop.online` upserts one row
  per name when it runs one): evaluator class, the keyword arguments that rebuild it (rubric,
  labels, model...), its labels and pass labels. A judge name is *known* when it is here.
- ``judge_reviews``: one decision per (review item, judge): the judge's label and pass/fail as
  the call's ``eval:<judge>`` feedback recorded it, whether the reviewer says it was right, the
  right label (the judge's own when right), the reviewer, a note and ``used_in`` (which rubric or
  adapter version consumed it). Recorded with an insert that does nothing on conflict, then read
  back: the first reviewer wins, a second with a different decision gets `ReviewConflict` (the
  same decision again is answered with the stored one), as for the item's own review.

The judge's verdict on a call is read from the feedback the online job wrote (``by="eval:<name>"``,
``signal`` up = pass, ``label`` = ``"<verdict label>: <reason>"``); nothing else in the call log
changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError
from .calllog import CallLog, _filters
from .records import _dumps, _loads, _txt, new_id
from .review import ReviewConflict, ReviewError, ReviewQueue, add_used_in

__all__ = ["JudgeInfo", "JudgeVerdict", "JudgeDecision", "JudgeReviews", "JUDGE_VERDICTS"]

JUDGE_VERDICTS = ("right", "wrong")


@dataclass
class JudgeInfo:
    """A judge-type evaluator as it ran online: enough to rebuild it and to check labels."""

    name: str
    evaluator: str
    spec: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: ["pass", "fail"])
    pass_labels: list[str] = field(default_factory=lambda: ["pass"])
    updated: float = field(default_factory=time.time)


@dataclass
class JudgeVerdict:
    """What a judge said about one call (from its ``eval:<judge>`` feedback)."""

    judge: str
    label: str | None
    passed: bool
    reason: str
    labels: list[str]
    pass_labels: list[str]
    ts: float
    decision: "JudgeDecision | None" = None

    def as_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "label": self.label, "passed": self.passed,
                "reason": self.reason, "labels": self.labels, "pass_labels": self.pass_labels,
                "decision": self.decision.as_dict() if self.decision else None}


@dataclass
class JudgeDecision:
    item_id: str
    call_id: str
    judge: str
    judge_label: str | None
    judge_passed: bool
    judge_right: bool
    label: str
    passed: bool
    reviewer: str
    note: str | None = None
    used_in: list[str] = field(default_factory=list)
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)

    COLUMNS = ("id", "ts", "item_id", "call_id", "judge", "judge_label", "judge_passed",
               "judge_right", "label", "passed", "reviewer", "note", "used_in")

    def to_row(self) -> tuple:
        return (self.id, self.ts, self.item_id, self.call_id, self.judge, _txt(self.judge_label),
                int(self.judge_passed), int(self.judge_right), self.label, int(self.passed),
                _txt(self.reviewer), _txt(self.note), _dumps(self.used_in))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "JudgeDecision":
        d = dict(zip(cls.COLUMNS, row))
        for k in ("judge_passed", "judge_right", "passed"):
            d[k] = bool(d[k])
        d["used_in"] = _loads(d["used_in"]) or []
        return cls(**d)

    @property
    def verdict(self) -> str:
        return "right" if self.judge_right else "wrong"

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in self.COLUMNS} | {"verdict": self.verdict}


class JudgeReviews:
    """Judges and reviewers' decisions on their verdicts, on a `CallLog`."""

    def __init__(self, log: CallLog) -> None:
        self.log = log

    # -- judges --------------------------------------------------------------------------------
    def register(self, info: JudgeInfo) -> None:
        """Upsert a judge (the online job calls this each time it runs one)."""
        if not info.labels or set(info.pass_labels) - set(info.labels):
            raise ConfigError(f"judge {info.name!r}: pass labels {info.pass_labels} must be "
                              f"among labels {info.labels}", where="judges")
        with self.log._tx() as cur:
            self.log._exec(cur, "INSERT INTO judges (name, evaluator, spec, labels, pass_labels, "
                           "updated) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                           "evaluator = excluded.evaluator, spec = excluded.spec, "
                           "labels = excluded.labels, pass_labels = excluded.pass_labels, "
                           "updated = excluded.updated",
                           (info.name, info.evaluator, _dumps(info.spec), _dumps(info.labels),
                            _dumps(info.pass_labels), info.updated))

    def judges(self) -> dict[str, JudgeInfo]:
        rows = self.log._all("SELECT name, evaluator, spec, labels, pass_labels, updated "
                             "FROM judges ORDER BY name", ())
        return {r[0]: JudgeInfo(r[0], r[1], _loads(r[2]) or {}, _loads(r[3]), _loads(r[4]), r[5])
                for r in rows}

    def judge(self, name: str, *, where: str = "judges") -> JudgeInfo:
        """The judge called ``name``, or a `ConfigError` naming the known ones."""
        known = self.judges()
        if name not in known:
            have = ", ".join(known) or ("none (run `slmflow loop evaluate` with a judge "
                                        "evaluator first)")
            raise ConfigError(f"unknown judge {name!r}; judges in the call log: {have}",
                              where=f"{where} ({self.log.url_safe})")
        return known[name]

    # -- verdicts on a call ----------------------------------------------------------------------
    def verdicts(self, call_id: str) -> list[JudgeVerdict]:
        """The known judges' latest verdicts on this call, with any reviewer decision."""
        known = self.judges()
        if not known:
            return []
        rows = self.log._all("SELECT by, signal, label, ts FROM feedback WHERE call_id = ? AND "
                             "by LIKE ? ORDER BY ts, seq", (call_id, "eval:%"))
        latest: dict[str, JudgeVerdict] = {}
        for by, signal, label, ts in rows:
            name = by[len("eval:"):]
            info = known.get(name)
            if info is None:
                continue
            head, _, reason = (label or "").partition(": ")
            lab = head if head in info.labels else None
            latest[name] = JudgeVerdict(name, lab, signal == "up", reason if lab else label or "",
                                        list(info.labels), list(info.pass_labels), float(ts))
        return list(latest.values())

    def verdicts_for_item(self, item_id: str) -> list[JudgeVerdict]:
        item = ReviewQueue(self.log).get(item_id, with_call=False)
        out = self.verdicts(item.call_id)
        decided = {d.judge: d for d in self.decisions(item_id=item_id)}
        for v in out:
            v.decision = decided.get(v.judge)
        return out

    # -- deciding --------------------------------------------------------------------------------
    def decide(self, item_id: str, verdict: str, *, reviewer: str, judge: str | None = None,
               label: str | None = None, note: str | None = None) -> JudgeDecision:
        """Record "judge right" / "judge wrong" for the judge's verdict on the item's call.

        judge: which judge (optional when exactly one judged the call). label: the right label;
        with ``right`` it must be the judge's own (or omitted); with ``wrong`` it is needed
        unless the judge has two labels (then it is the other one)."""
        where = f"judge review {item_id}"
        if verdict not in JUDGE_VERDICTS:
            raise ConfigError(f"a judge verdict is 'right' or 'wrong', got {verdict!r}",
                              where=where)
        if not reviewer or not str(reviewer).strip():
            raise ConfigError("a judge review needs the reviewer's name", where=where)
        item = ReviewQueue(self.log).get(item_id, with_call=False)
        verdicts = {v.judge: v for v in self.verdicts(item.call_id)}
        if not verdicts:
            raise ReviewError(
                f"item {item_id} carries no judge verdict: call {item.call_id} has no feedback "
                f"from a judge evaluator (judges known: {', '.join(self.judges()) or 'none'}); "
                "flagged by " + (", ".join(item.reasons) or "nothing"), where=where)
        if judge is None:
            if len(verdicts) > 1:
                raise ConfigError(f"item {item_id} was judged by {', '.join(sorted(verdicts))}: "
                                  "name the judge", where=where)
            judge = next(iter(verdicts))
        if judge not in verdicts:
            self.judge(judge, where=where)  # an unknown name says so first
            raise ReviewError(f"judge {judge!r} gave no verdict on item {item_id}; its verdicts "
                              f"are from {', '.join(sorted(verdicts))}", where=where)
        v = verdicts[judge]
        right = verdict == "right"
        if label is not None and label not in v.labels:
            raise ConfigError(f"label {label!r} is not one of judge {judge}'s labels "
                              f"{v.labels}", where=where)
        if right:
            if label is not None and v.label is not None and label != v.label:
                raise ConfigError(f"'right' keeps the judge's label {v.label!r}; a different "
                                  f"label ({label!r}) means the judge was wrong", where=where)
            label = label or v.label
            if label is None:  # a verdict whose label could not be read: pass/fail only
                label = v.pass_labels[0] if v.passed else \
                    next(x for x in v.labels if x not in v.pass_labels)
        else:
            if label is None:
                others = [x for x in v.labels if x != v.label and
                          (x in v.pass_labels) != v.passed]
                if len(others) != 1:
                    raise ConfigError(f"judge {judge} has labels {v.labels}: give the right "
                                      "one with the 'wrong' verdict", where=where)
                label = others[0]
            if label == v.label:
                raise ConfigError(f"'wrong' needs a label other than the judge's ({label!r})",
                                  where=where)
        dec = JudgeDecision(item_id=item_id, call_id=item.call_id, judge=judge,
                            judge_label=v.label, judge_passed=v.passed, judge_right=right,
                            label=label, passed=label in v.pass_labels, reviewer=str(reviewer),
                            note=note)
        cols = JudgeDecision.COLUMNS
        with self.log._tx() as cur:
            self.log._exec(cur, f"INSERT INTO judge_reviews ({', '.join(cols)}) VALUES "
                           f"({', '.join('?' * len(cols))}) ON CONFLICT (item_id, judge) DO "
                           "NOTHING", dec.to_row())
        stored = self.decisions(item_id=item_id, judge=judge)[0]
        if stored.id != dec.id and (stored.reviewer, stored.judge_right, stored.label) != \
                (dec.reviewer, dec.judge_right, dec.label):
            raise ReviewConflict(
                f"judge {judge}'s verdict on item {item_id} was already reviewed by "
                f"{stored.reviewer} ({stored.verdict}, {stored.label})", where=where,
                reviewer=stored.reviewer, verdict=stored.verdict)
        return stored

    # -- reading decisions -----------------------------------------------------------------------
    def decisions(self, judge: str | None = None, *, item_id: str | None = None
                  ) -> list[JudgeDecision]:
        where, params = _filters({"judge": judge, "item_id": item_id})
        rows = self.log._all(f"SELECT {', '.join(JudgeDecision.COLUMNS)} FROM judge_reviews"
                             f"{where} ORDER BY ts, seq", params)
        return [JudgeDecision.from_row(r) for r in rows]

    def mark_used(self, ids: Sequence[str], tag: str) -> None:
        """Record that these decisions went into ``tag`` (a rubric, an adapter)."""
        add_used_in(self.log, "judge_reviews", ids, tag)
