"""The flagging job: pick the calls a person should look at, by rule, with a priority and a budget.

`slmflow loop flag --since 24h` reads a window of the call log and queues review items for the
agent calls that match any enabled rule:

    low_confidence         confidence under the threshold (default 0.5)
    negative_feedback      a thumbs-down on the call, or on the workflow run it was part of
    user_correction        a user sent the right answer (it pre-fills the review form)
    escalated              the agent escalated to its fallback model
    fallback_disagreement  ... and the fallback's answer differed from the agent's own
    failed_eval            an online evaluator failed the output (feedback ``by="eval:<name>"``)
    verifier_rejection     a verifier step rejected the output (written by the workflow runner)
    malformed_handoff      the output broke the next step's contract (written by the runner)
    error                  the call failed (gateway records with status ``error``)

Why SQL first and Python second: on a log of millions of rows the window scan and the rule
predicates run in the database (indexed on ``ts``); only the matching rows (a few percent) come
back to Python, where the reasons are merged per call, the priority computed and the budget
applied. Feedback is selected by *its own* time, so a thumbs-down given today on last week's call
is flagged today.

Priority: the sum of the weights of the call's reasons, plus up to 0.5 for how far under the
threshold its confidence is. Budget: at most ``budget_per_agent`` *pending* items per agent (a
daily job never buries the reviewers; the highest priorities go first). Idempotent: a call is
queued at most once (unique ``call_id``), so running the job twice over the same window adds
nothing the second time. Each run is recorded in ``flag_runs``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..store.calllog import CallLog, parse_since
from ..store.review import ReviewItem, ReviewQueue

__all__ = ["RULES", "WEIGHTS", "FlagRules", "FlagReport", "flag_calls"]

RULES = ("low_confidence", "negative_feedback", "user_correction", "escalated",
         "fallback_disagreement", "failed_eval", "verifier_rejection", "malformed_handoff",
         "error")
WEIGHTS: Mapping[str, float] = {
    "user_correction": 1.2, "negative_feedback": 1.0, "verifier_rejection": 0.9,
    "failed_eval": 0.8, "malformed_handoff": 0.8, "fallback_disagreement": 0.7, "error": 0.6,
    "escalated": 0.4, "low_confidence": 0.3}


@dataclass(frozen=True)
class FlagRules:
    """Which rules run, the confidence threshold, the per-agent budget and the agents."""

    rules: tuple[str, ...] = RULES
    confidence_below: float = 0.5
    budget_per_agent: int | None = 50
    agents: tuple[str, ...] | None = None
    weights: Mapping[str, float] = field(default_factory=lambda: dict(WEIGHTS))

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise ConfigError(f"unknown flag rule(s) {unknown}; rules: {', '.join(RULES)}",
                              where="loop flag")
        if not 0 < self.confidence_below <= 1:
            raise ConfigError("confidence_below must be in (0, 1]", where="loop flag")
        if self.budget_per_agent is not None and self.budget_per_agent < 0:
            raise ConfigError("budget_per_agent must be >= 0", where="loop flag")


@dataclass
class FlagReport:
    run_id: str
    since: float | None
    until: float
    scanned: int = 0
    candidates: int = 0
    already_queued: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    over_budget: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.flagged.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


_CALL_COLS = "id, agent, confidence, escalated, status, CASE WHEN escalated = 1 THEN meta END, ts"


class _Cand:
    __slots__ = ("id", "agent", "confidence", "reasons", "suggestion", "ts")

    def __init__(self, row: Sequence[Any]) -> None:
        self.id, self.agent, self.confidence = row[0], row[1], row[2]
        self.reasons: dict[str, None] = {}
        self.suggestion: Any = None
        self.ts = row[6]


def _feedback_reason(by: str | None, signal: str | None, has_correction: bool) -> str:
    by = by or ""
    if by.startswith("verifier:"):
        return "verifier_rejection"
    if by.startswith("handoff:"):
        return "malformed_handoff"
    if by.startswith("eval:"):
        return "failed_eval"
    return "user_correction" if has_correction else "negative_feedback"


def flag_calls(log: CallLog, *, since: Any = "24h", until: Any = None,
               rules: FlagRules = FlagRules(), dry_run: bool = False) -> FlagReport:
    """Queue review items for the calls in [since, until) that match the rules; see the module
    doc. dry_run: compute and report, write nothing."""
    t0 = time.perf_counter()
    s = parse_since(since)
    u = parse_since(until) if until is not None else time.time()
    rep = FlagReport(uuid.uuid4().hex, s, u, dry_run=dry_run)
    on = set(rules.rules)
    lo = s if s is not None else float("-inf")
    window, wparams = "ts >= ? AND ts < ?", [lo, u]
    agent_cond, aparams = "", []
    if rules.agents:
        agent_cond = f" AND agent IN ({', '.join('?' * len(rules.agents))})"
        aparams = list(rules.agents)

    rep.scanned = int(log._all(f"SELECT COUNT(*) FROM calls WHERE kind = 'agent' AND {window}"
                               + agent_cond, wparams + aparams)[0][0])
    cands: dict[str, _Cand] = {}

    # 1. predicates on the call rows themselves
    preds, pparams = [], []
    if "low_confidence" in on:
        preds.append("confidence < ?")
        pparams.append(rules.confidence_below)
    if on & {"escalated", "fallback_disagreement"}:
        preds.append("escalated = 1")
    if "error" in on:
        preds.append("status = 'error'")
    if preds:
        rows = log._all(f"SELECT {_CALL_COLS} FROM calls WHERE kind = 'agent' AND agent IS NOT "
                        f"NULL AND {window}{agent_cond} AND ({' OR '.join(preds)})",
                        wparams + aparams + pparams)
        for r in rows:
            _add_call_reasons(cands, r, on, rules)

    # 2. feedback given in the window (by its own time)
    fb_rules = on & {"negative_feedback", "user_correction", "failed_eval", "verifier_rejection",
                     "malformed_handoff"}
    if fb_rules:
        fb = log._all("SELECT call_id, run_id, signal, by, correction FROM feedback WHERE "
                      "ts >= ? AND ts < ? AND (signal = 'down' OR correction IS NOT NULL)",
                      [lo, u])
        by_call: dict[str, list[tuple[str, Any]]] = {}
        by_run: dict[str, str] = {}
        for call_id, run_id, signal, by, corr in fb:
            reason = _feedback_reason(by, signal, corr is not None)
            if reason not in on:
                continue
            if call_id:
                by_call.setdefault(call_id, []).append((reason, corr))
            elif run_id:
                by_run[run_id] = reason
        # by id (and by run id below) only: kind and agent are checked here, in Python, so the
        # database looks these rows up by their unique index instead of scanning by kind
        missing = [c for c in by_call if c not in cands]
        for chunk in _chunks(missing):
            for r in log._all(f"SELECT {_CALL_COLS}, kind FROM calls WHERE id IN "
                              f"({', '.join('?' * len(chunk))})", chunk):
                if _wanted(r, 7, rules):
                    _add_call_reasons(cands, r, on, rules)
        for call_id, found in by_call.items():
            c = cands.get(call_id)
            if c is None:
                continue  # feedback on a call that is gone, or on another kind/agent
            for reason, corr in found:
                c.reasons[reason] = None
                if corr is not None:
                    c.suggestion = json.loads(corr) if isinstance(corr, str) else corr
        runs = list(by_run)
        for chunk in _chunks(runs):
            for r in log._all(f"SELECT {_CALL_COLS}, run_id, kind FROM calls WHERE run_id IN "
                              f"({', '.join('?' * len(chunk))})", chunk):
                if not _wanted(r, 8, rules):
                    continue
                c = cands.get(r[0])
                if c is None:
                    c = cands[r[0]] = _Cand(r)
                c.reasons[by_run[r[7]]] = None

    cands = {k: c for k, c in cands.items() if c.reasons}
    rep.candidates = len(cands)
    queue = ReviewQueue(log)
    queued = queue.queued(list(cands))
    rep.already_queued = len(queued)
    fresh = [c for k, c in cands.items() if k not in queued]
    for c in fresh:
        for r in c.reasons:
            rep.by_reason[r] = rep.by_reason.get(r, 0) + 1

    # 3. priority and the per-agent budget
    def priority(c: _Cand) -> float:
        p = sum(rules.weights.get(r, 0.0) for r in c.reasons)
        if c.confidence is not None and c.confidence < rules.confidence_below:
            p += 0.5 * (rules.confidence_below - c.confidence) / rules.confidence_below
        return round(p, 6)

    per_agent: dict[str, list[_Cand]] = {}
    for c in fresh:
        per_agent.setdefault(c.agent, []).append(c)
    pending = queue.pending_counts()
    items: list[ReviewItem] = []
    for agent, cs in per_agent.items():
        cs.sort(key=lambda c: (-priority(c), c.ts))
        room = len(cs) if rules.budget_per_agent is None else \
            max(0, rules.budget_per_agent - pending.get(agent, 0))
        take, rest = cs[:room], cs[room:]
        if rest:
            rep.over_budget[agent] = len(rest)
        rep.flagged[agent] = len(take)
        items += [ReviewItem(call_id=c.id, agent=agent, reasons=list(c.reasons),
                             priority=priority(c), correction=c.suggestion,
                             flag_run=rep.run_id) for c in take]
    if not dry_run:
        added = queue.add(items)
        if added != len(items):  # another flag job raced us on some calls: report what landed
            rep.already_queued += len(items) - added
        rep.wall_s = time.perf_counter() - t0
        with log._tx() as cur:
            log._exec(cur, "INSERT INTO flag_runs (id, ts, since, until, config, scanned, "
                      "candidates, flagged, wall_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (rep.run_id, time.time(), s, u,
                       json.dumps({"rules": list(rules.rules),
                                   "confidence_below": rules.confidence_below,
                                   "budget_per_agent": rules.budget_per_agent,
                                   "agents": list(rules.agents or [])}),
                       rep.scanned, rep.candidates, added, rep.wall_s))
    rep.wall_s = time.perf_counter() - t0
    return rep


def _add_call_reasons(cands: dict[str, _Cand], r: Sequence[Any], on: set[str],
                      rules: FlagRules) -> None:
    c = cands.get(r[0])
    if c is None:
        c = cands[r[0]] = _Cand(r)
    conf, escalated, status, meta = r[2], r[3], r[4], r[5]
    if "low_confidence" in on and conf is not None and conf < rules.confidence_below:
        c.reasons["low_confidence"] = None
    if escalated:
        if "escalated" in on:
            c.reasons["escalated"] = None
        if "fallback_disagreement" in on and meta and '"disagreed": true' in meta:
            c.reasons["fallback_disagreement"] = None
    if "error" in on and status == "error":
        c.reasons["error"] = None


def _wanted(r: Sequence[Any], kind_at: int, rules: FlagRules) -> bool:
    return r[kind_at] == "agent" and r[1] is not None and (not rules.agents
                                                           or r[1] in rules.agents)


def _chunks(ids: list[str], n: int = 500) -> list[list[str]]:
    return [ids[i:i + n] for i in range(0, len(ids), n)]
