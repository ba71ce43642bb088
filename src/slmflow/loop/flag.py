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

On Ray (``ray=ADDRESS``, `slmflow loop flag --ray`): the window is cut into ``slices`` contiguous
time slices and each slice's candidate selection (`select_candidates`: the SQL above, for calls
*and* feedback timed in the slice) runs as a Ray task that opens the call log from its URL. The
driver merges the slices (`merge_candidates`: the union of a call's reasons, so a thumbs-down in
one slice on a call of another still counts) and does the rest in one process: already queued,
priority, budget, insert, ``flag_runs``. The result is the single-process run's, item for item,
because both paths go through the same merge: reasons in `RULES` order, and when a call has
several corrections the latest (by feedback time, then id) pre-fills the form.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ..store.calllog import CallLog, parse_since
from ..store.review import ReviewItem, ReviewQueue

__all__ = ["RULES", "WEIGHTS", "FlagRules", "FlagReport", "Candidate", "flag_calls",
           "select_candidates", "merge_candidates", "time_slices"]

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
    slices: int = 1
    ray: dict[str, Any] | None = None  # how the slices ran on Ray (`RayStats.to_dict`), or None

    @property
    def total(self) -> int:
        return sum(self.flagged.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


_CALL_COLS = "id, agent, confidence, escalated, status, CASE WHEN escalated = 1 THEN meta END, ts"


@dataclass(frozen=True)
class Candidate:
    """A call one slice's selection found, as plain (picklable) data for the driver's merge.
    ``correction_at`` is (feedback ts, feedback id) of the correction: the latest wins."""

    id: str
    agent: str
    ts: float
    confidence: float | None
    reasons: tuple[str, ...]
    correction: Any = None
    correction_at: tuple[float, str] | None = None


class _Cand:
    __slots__ = ("id", "agent", "confidence", "reasons", "suggestion", "at", "ts")

    def __init__(self, row: Sequence[Any]) -> None:
        self.id, self.agent, self.confidence = row[0], row[1], row[2]
        self.reasons: dict[str, None] = {}
        self.suggestion: Any = None
        self.at: tuple[float, str] | None = None
        self.ts = row[6]

    def correct(self, value: Any, at: tuple[float, str]) -> None:
        if self.at is None or at > self.at:
            self.suggestion, self.at = value, at

    def frozen(self) -> Candidate:
        return Candidate(self.id, self.agent, self.ts, self.confidence,
                         tuple(r for r in RULES if r in self.reasons), self.suggestion, self.at)


def _feedback_reason(by: str | None, signal: str | None, has_correction: bool) -> str:
    by = by or ""
    if by.startswith("verifier:"):
        return "verifier_rejection"
    if by.startswith("handoff:"):
        return "malformed_handoff"
    if by.startswith("eval:"):
        return "failed_eval"
    return "user_correction" if has_correction else "negative_feedback"


def select_candidates(log: CallLog, lo: float, hi: float,
                      rules: FlagRules = FlagRules()) -> tuple[int, list[Candidate]]:
    """The SQL half of the job for one time slice [lo, hi): the agent calls timed in it that
    match a rule on their own row, plus the calls that feedback timed in it points at (by call or
    by run, wherever those calls are in time). Returns (agent calls in the slice, candidates)."""
    on = set(rules.rules)
    window, wparams = "ts >= ? AND ts < ?", [lo, hi]
    agent_cond, aparams = "", []
    if rules.agents:
        agent_cond = f" AND agent IN ({', '.join('?' * len(rules.agents))})"
        aparams = list(rules.agents)
    scanned = int(log._all(f"SELECT COUNT(*) FROM calls WHERE kind = 'agent' AND {window}"
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

    # 2. feedback given in the slice (by its own time)
    fb_rules = on & {"negative_feedback", "user_correction", "failed_eval", "verifier_rejection",
                     "malformed_handoff"}
    if fb_rules:
        fb = log._all("SELECT call_id, run_id, signal, by, correction, ts, id FROM feedback "
                      "WHERE ts >= ? AND ts < ? AND (signal = 'down' OR correction IS NOT NULL)",
                      [lo, hi])
        by_call: dict[str, list[tuple[str, Any, tuple[float, str]]]] = {}
        by_run: dict[str, dict[str, None]] = {}
        for call_id, run_id, signal, by, corr, fts, fid in fb:
            reason = _feedback_reason(by, signal, corr is not None)
            if reason not in on:
                continue
            if call_id:
                by_call.setdefault(call_id, []).append((reason, corr, (float(fts), fid)))
            elif run_id:
                by_run.setdefault(run_id, {})[reason] = None
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
            for reason, corr, at in found:
                c.reasons[reason] = None
                if corr is not None:
                    c.correct(json.loads(corr) if isinstance(corr, str) else corr, at)
        for chunk in _chunks(list(by_run)):
            for r in log._all(f"SELECT {_CALL_COLS}, run_id, kind FROM calls WHERE run_id IN "
                              f"({', '.join('?' * len(chunk))})", chunk):
                if not _wanted(r, 8, rules):
                    continue
                c = cands.get(r[0])
                if c is None:
                    c = cands[r[0]] = _Cand(r)
                c.reasons.update(by_run[r[7]])
    return scanned, [c.frozen() for c in cands.values() if c.reasons]


def merge_candidates(parts: Iterable[Iterable[Candidate]]) -> list[Candidate]:
    """One candidate per call from the slices' lists: the union of its reasons (in `RULES`
    order) and the latest correction. Sorted by call id (the result does not depend on how the
    window was cut or in which order the slices finished)."""
    merged: dict[str, _Cand] = {}
    for part in parts:
        for k in part:
            c = merged.get(k.id)
            if c is None:
                c = merged[k.id] = _Cand((k.id, k.agent, k.confidence, 0, 0, 0, k.ts))
            c.reasons.update(dict.fromkeys(k.reasons))
            if k.correction_at is not None:
                c.correct(k.correction, k.correction_at)
    return [merged[i].frozen() for i in sorted(merged)]


def time_slices(log: CallLog, lo: float, hi: float, n: int) -> list[tuple[float, float]]:
    """[lo, hi) cut into ``n`` contiguous slices of equal length (the first starts at ``lo``
    even when that is -inf: the cuts then start at the oldest call or feedback)."""
    if n <= 1:
        return [(lo, hi)]
    start = lo
    if lo == float("-inf"):
        firsts = [r[0] for t in ("calls", "feedback")
                  for r in log._all(f"SELECT MIN(ts) FROM {t} WHERE ts < ?", [hi])]
        firsts = [float(x) for x in firsts if x is not None]
        start = min(firsts) if firsts else hi
    n = int(n) if start < hi else 1
    edges = [lo] + [start + (hi - start) * i / n for i in range(1, n)] + [hi]
    return list(zip(edges[:-1], edges[1:]))


@dataclass(frozen=True)
class _SliceJob:
    """What a Ray task runs: open the call log from its URL, select one slice's candidates."""

    url: str
    rules: FlagRules

    def __call__(self, window: tuple[float, float]) -> tuple[int, list[Candidate]]:
        from ..store import open_call_log

        log = open_call_log(self.url)
        try:
            return select_candidates(log, window[0], window[1], self.rules)
        finally:
            log.close()


def _select(log: CallLog, lo: float, u: float, rules: FlagRules, rep: FlagReport,
            ray: str | None, slices: int | None) -> list[Candidate]:
    address = None
    if ray is not None:
        from ..scale.distributed import resolve_address

        address = resolve_address(ray)  # ``env`` with $SLMFLOW_RAY_ADDRESS unset: this process
    if address is None:
        parts = [select_candidates(log, a, b, rules)
                 for a, b in time_slices(log, lo, u, slices or 1)]
        rep.slices = len(parts)
    else:
        parts = _on_ray(log, lo, u, rules, rep, address, slices)
    rep.scanned = sum(n for n, _ in parts)
    return merge_candidates(c for _, c in parts)


def _on_ray(log: CallLog, lo: float, u: float, rules: FlagRules, rep: FlagReport, address: str,
            slices: int | None) -> list[tuple[int, list[Candidate]]]:
    from ..scale.distributed import RayStats, connect, ray_map

    if ":memory:" in log.url:
        raise ConfigError("Ray workers cannot read an in-memory call log: use a file or "
                          "PostgreSQL", where="loop flag")
    connected = connect(address)  # says so when Ray is not installed
    import ray as ray_mod

    try:
        if slices is None:  # one slice per CPU of the cluster
            slices = max(1, int(ray_mod.cluster_resources().get("CPU", 1)))
        windows = time_slices(log, lo, u, slices)
        st = RayStats(address)
        path = getattr(log, "path", None)  # SQLite: absolute (workers start elsewhere)
        url = f"sqlite:///{Path(path).resolve()}" if path is not None else log.url
        parts = ray_map(_SliceJob(url, rules), windows, address=address, batch_size=1,
                        stats=st)
    finally:
        if connected:
            ray_mod.shutdown()
    rep.slices, rep.ray = len(windows), st.to_dict()
    return parts


def flag_calls(log: CallLog, *, since: Any = "24h", until: Any = None,
               rules: FlagRules = FlagRules(), dry_run: bool = False, ray: str | None = None,
               slices: int | None = None) -> FlagReport:
    """Queue review items for the calls in [since, until) that match the rules; see the module
    doc. dry_run: compute and report, write nothing. ray: a Ray address (``env``: from
    ``$SLMFLOW_RAY_ADDRESS``; unset there means this process): the window's ``slices``
    (default: one per cluster CPU) are selected as Ray tasks. ``slices`` without ``ray`` cuts
    the window the same way in this process."""
    t0 = time.perf_counter()
    s = parse_since(since)
    u = parse_since(until) if until is not None else time.time()
    rep = FlagReport(uuid.uuid4().hex, s, u, dry_run=dry_run)
    lo = s if s is not None else float("-inf")
    if slices is not None and slices < 1:
        raise ConfigError("slices must be >= 1", where="loop flag")
    cands = _select(log, lo, u, rules, rep, ray, slices)
    rep.candidates = len(cands)
    queue = ReviewQueue(log)
    queued = queue.queued([c.id for c in cands])
    rep.already_queued = len(queued)
    fresh = [c for c in cands if c.id not in queued]
    for c in fresh:
        for r in c.reasons:
            rep.by_reason[r] = rep.by_reason.get(r, 0) + 1

    # 3. priority and the per-agent budget
    def priority(c: Candidate) -> float:
        p = sum(rules.weights.get(r, 0.0) for r in c.reasons)
        if c.confidence is not None and c.confidence < rules.confidence_below:
            p += 0.5 * (rules.confidence_below - c.confidence) / rules.confidence_below
        return round(p, 6)

    per_agent: dict[str, list[Candidate]] = {}
    for c in fresh:
        per_agent.setdefault(c.agent, []).append(c)
    pending = queue.pending_counts()
    items: list[ReviewItem] = []
    for agent in sorted(per_agent):
        cs = sorted(per_agent[agent], key=lambda c: (-priority(c), c.ts, c.id))
        room = len(cs) if rules.budget_per_agent is None else \
            max(0, rules.budget_per_agent - pending.get(agent, 0))
        take, rest = cs[:room], cs[room:]
        if rest:
            rep.over_budget[agent] = len(rest)
        rep.flagged[agent] = len(take)
        items += [ReviewItem(call_id=c.id, agent=agent, reasons=list(c.reasons),
                             priority=priority(c), correction=c.correction,
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
                                   "agents": list(rules.agents or []),
                                   "slices": rep.slices, "ray": bool(rep.ray)}),
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
