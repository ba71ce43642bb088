"""Per-agent suites: cases + a target (an agent, a model or a function) + evaluators -> a report.

Execution is concurrent (``asyncio.gather`` under a semaphore of ``concurrency``): a llama.cpp
model built with ``pool_size=2`` serves two cases at once; a remote model many more.

Every row ends in one of three states, never an exception out of `run_suite`:

* ``passed``: every evaluator says ok;
* ``failed``: the target answered and some evaluator says not ok;
* ``errored``: the row could not be *judged*: the dataset row did not parse, the target raised
  or timed out, or an evaluator (a judge timing out, say) raised. The reason is kept on the row.

Scores (`SuiteReport.scores`, all higher-is-better, what the regression gate compares) are
computed over the rows each evaluator scored; ``ok_rate`` (share of rows not errored) keeps a
target that errors more from looking better.

Each case runs in an ``eval_case {suite}/{id}`` span; the evaluator results are recorded on it as
``gen_ai.evaluation.result`` events, so a trace shows the agent's spans and its grades together.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .. import tracing
from ..errors import SlmflowError
from ..hooks import logging_context
from .base import Case, EvalResult, Evaluator, create
from .data import CaseSet, RowError, to_cases

__all__ = ["RowResult", "SuiteReport", "run_suite", "arun_suite", "Target", "as_target"]


@dataclass
class RowResult:
    id: str
    status: str  # passed | failed | errored
    input: Any = None
    expected: Any = None
    output: Any = None
    error: str | None = None
    error_stage: str | None = None  # data | target | evaluator
    evals: dict[str, EvalResult] = field(default_factory=dict)
    latency_s: float | None = None
    agent: str | None = None
    model: str | None = None
    confidence: float | None = None
    escalated: bool = False
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from .builtin import as_plain

        d = {k: getattr(self, k) for k in ("id", "status", "error", "error_stage",
                                           "latency_s", "agent", "model", "confidence",
                                           "escalated", "trace_id")}
        d["evals"] = {k: v.to_dict() for k, v in self.evals.items()}
        for k in ("input", "expected", "output"):
            d[k] = _jsonable(as_plain(getattr(self, k)))
        return d


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return repr(v)[:2000]


@dataclass
class SuiteReport:
    """The outcome of a suite: rows, scores (higher is better), summary counts and details."""

    name: str
    target: str
    rows: list[RowResult]
    scores: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    evaluators: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    concurrency: int = 1
    started: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        c = {"total": len(self.rows), "passed": 0, "failed": 0, "errored": 0}
        for r in self.rows:
            c[r.status] += 1
        return c

    @property
    def errors(self) -> list[RowResult]:
        return [r for r in self.rows if r.status == "errored"]

    @property
    def failures(self) -> list[RowResult]:
        return [r for r in self.rows if r.status == "failed"]

    @property
    def cases_per_s(self) -> float:
        return len(self.rows) / self.duration_s if self.duration_s else 0.0

    def latency(self) -> dict[str, float | None]:
        lat = sorted(r.latency_s for r in self.rows if r.latency_s is not None)
        if not lat:
            return {"mean": None, "p50": None, "p95": None}
        return {"mean": statistics.fmean(lat), "p50": lat[len(lat) // 2],
                "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}

    def to_dict(self, rows: bool = True) -> dict[str, Any]:
        d = {"name": self.name, "target": self.target, "started": self.started,
             "duration_s": self.duration_s, "concurrency": self.concurrency,
             "cases_per_s": self.cases_per_s, "summary": self.summary, "scores": self.scores,
             "latency_s": self.latency(), "evaluators": self.evaluators,
             "details": self.details, "meta": self.meta}
        if rows:
            d["rows"] = [r.to_dict() for r in self.rows]
        return d

    def to_json(self, rows: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(rows), indent=indent, default=str)

    def save(self, path: str | Path, rows: bool = True) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json(rows))
        return p


# ---- targets -----------------------------------------------------------------------------------

@dataclass
class Target:
    """What a suite runs per case: ``call(input) -> (output, info)``."""

    name: str
    call: Callable[[Any], Any]


def as_target(obj: Any, *, schema: Any = None,
              messages: Callable[[Any], Any] | None = None) -> Target:
    """An `Agent`, a `Model` (with an optional ``schema`` and ``messages(input)`` builder) or a
    function ``fn(input)`` (sync or async) as a `Target`."""
    from ..agents import Agent
    from ..models.base import Model

    if isinstance(obj, Target):
        return obj
    if isinstance(obj, Agent):
        async def run_agent(x: Any) -> tuple[Any, dict[str, Any]]:
            r = await obj.run(x)
            return r.output, {"latency_s": r.latency_s, "model": r.model_identity,
                              "confidence": r.confidence, "escalated": r.escalated,
                              "agent": r.agent}

        return Target(obj.name, run_agent)
    if isinstance(obj, Model):
        async def run_model(x: Any) -> tuple[Any, dict[str, Any]]:
            msgs = messages(x) if messages is not None else x
            r = await obj.generate(msgs, schema=schema)
            return (r.parsed if schema is not None else r.text), {
                "latency_s": r.latency_s, "model": r.model.identity, "confidence": r.confidence}

        return Target(obj.info.identity, run_model)
    if callable(obj):
        async def run_fn(x: Any) -> tuple[Any, dict[str, Any]]:
            t0 = time.perf_counter()
            out = obj(x)
            if inspect.isawaitable(out):
                out = await out
            return out, {"latency_s": time.perf_counter() - t0}

        return Target(getattr(obj, "__name__", "function"), run_fn)
    from ..errors import ConfigError

    raise ConfigError(f"cannot evaluate {obj!r}: pass an Agent, a Model or a function",
                      where="evals.run_suite")


def _reason(e: BaseException) -> str:
    if isinstance(e, SlmflowError):
        return f"{type(e).__name__}: {e}"
    if isinstance(e, asyncio.TimeoutError):
        return "TimeoutError: timed out"
    return f"{type(e).__name__}: {e}"[:1000]


def as_caseset(cases: Any) -> CaseSet:
    if isinstance(cases, CaseSet):
        return cases
    if isinstance(cases, (str, Path)):
        from .data import load_cases

        return load_cases(cases)
    items = list(cases)
    if all(isinstance(c, Case) for c in items):
        return CaseSet(items, total_rows=len(items))
    if all(isinstance(c, (Case, RowError)) for c in items):
        return CaseSet([c for c in items if isinstance(c, Case)],
                       [c for c in items if isinstance(c, RowError)], total_rows=len(items))
    return to_cases([c.model_dump() if isinstance(c, Case) else c for c in items])


# ---- running -----------------------------------------------------------------------------------

async def arun_suite(target: Any, cases: Any, evaluators: Sequence[Any], *,
                     concurrency: int = 1, name: str | None = None,
                     timeout_s: float | None = None, progress: bool = False,
                     record: bool = True, schema: Any = None,
                     messages: Callable[[Any], Any] | None = None,
                     on_row: Callable[[RowResult], None] | None = None) -> SuiteReport:
    """The async form of `run_suite`."""
    tgt = as_target(target, schema=schema, messages=messages)
    cs = as_caseset(cases)
    evs: list[Evaluator] = [create(e) for e in evaluators]
    suite = name or tgt.name
    sem = asyncio.Semaphore(max(1, concurrency))
    rows: list[RowResult] = [RowResult(e.id, "errored", error=e.reason, error_stage="data")
                             for e in cs.errors]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    bar = _Progress(len(cs.cases) + len(rows), suite) if progress else None
    if bar:
        bar.advance(len(rows))

    async def one(c: Case) -> RowResult:
        async with sem:
            # eval traffic is not production traffic: keep it out of the call log (the
            # flagging job would queue eval cases for review)
            with logging_context(enabled=False):
                row = RowResult(c.id, "passed", input=c.input, expected=c.expected)
                with tracing.span("eval_case", f"{suite}/{c.id}", attributes={
                        "slmflow.eval.suite": suite, "slmflow.eval.case": c.id}) as sp:
                    row.trace_id = tracing.current_trace_id()
                    try:
                        work = tgt.call(c.input)
                        out, info = await (asyncio.wait_for(work, timeout_s) if timeout_s else work)
                    except asyncio.CancelledError:
                        raise
                    except BaseException as e:  # noqa: BLE001 - every failure becomes a row
                        row.status, row.error, row.error_stage = "errored", _reason(e), "target"
                        if isinstance(e, asyncio.TimeoutError):
                            row.error = f"TimeoutError: the target took more than {timeout_s:g}s"
                        return _done(row)
                    row.output = out
                    row.latency_s = info.get("latency_s")
                    row.model = info.get("model")
                    row.agent = info.get("agent", tgt.name)
                    row.confidence = info.get("confidence")
                    row.escalated = bool(info.get("escalated"))
                    ev_errors = []
                    for ev in evs:
                        try:
                            res = await ev.aevaluate(c, out)
                        except asyncio.CancelledError:
                            raise
                        except BaseException as e:  # noqa: BLE001
                            ev_errors.append(f"{ev.name}: {_reason(e)}")
                            continue
                        row.evals[ev.name] = res
                        if record:
                            tracing.record_evaluation(ev.name, score=res.score, label=res.label,
                                                      explanation=res.explanation or None, sp=sp)
                    if ev_errors:
                        row.status, row.error, row.error_stage = ("errored", "; ".join(ev_errors),
                                                                  "evaluator")
                    elif not all(r.ok for r in row.evals.values()):
                        row.status = "failed"
                    return _done(row)

    def _done(row: RowResult) -> RowResult:
        if bar:
            bar.advance(1)
        if on_row:
            on_row(row)
        return row

    try:
        rows += await asyncio.gather(*(one(c) for c in cs.cases))
    finally:
        if bar:
            bar.close()
    duration = time.perf_counter() - t0
    scores, details = aggregate_rows(rows, cs.cases, evs)
    return SuiteReport(suite, tgt.name, rows, scores, details, [e.name for e in evs], duration,
                       concurrency, started, meta={"source": cs.source,
                                                   "data_errors": len(cs.errors)})


def aggregate_rows(rows: list[RowResult], cases: list[Case],
                   evs: list[Evaluator]) -> tuple[dict[str, float], dict[str, Any]]:
    """The suite's scores and per-evaluator details from its rows (one place, so a suite run in
    batches on Ray scores exactly as one run in a single process)."""
    by_id = {c.id: c for c in cases}
    scores: dict[str, float] = {}
    details: dict[str, Any] = {}
    for ev in evs:
        scored = [(by_id[r.id], r.output, r.evals[ev.name]) for r in rows
                  if ev.name in r.evals and r.id in by_id]
        agg = dict(ev.aggregate(scored)) if scored else {}
        if "details" in agg:
            details[ev.name] = agg.pop("details")
        for k, v in agg.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                scores[k] = float(v)
        vals = [r.score for _, _, r in scored if r.score is not None]
        details.setdefault(ev.name, {})
        if isinstance(details[ev.name], dict):
            details[ev.name]["scores"] = vals
            details[ev.name]["n"] = len(scored)
    n = len(rows)
    if n:
        scores["ok_rate"] = sum(r.status != "errored" for r in rows) / n
        scores["pass_rate"] = sum(r.status == "passed" for r in rows) / n
    return scores, details


class _Progress:
    """A rich progress bar on stderr (quiet when stderr is not a terminal)."""

    def __init__(self, total: int, title: str) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.p.start()
        self.task = self.p.add_task(f"eval {title}", total=total)

    def advance(self, n: int) -> None:
        self.p.advance(self.task, n)

    def close(self) -> None:
        self.p.stop()


def run_suite(target: Any, cases: Iterable[Any] | CaseSet | str | Path,
              evaluators: Sequence[Any], *, concurrency: int = 1, **kwargs: Any) -> SuiteReport:
    """Run ``target`` (an `Agent`, a `Model` or a function of the input) on every case, grade each
    output with ``evaluators`` (names, dicts or `Evaluator`s) and return a `SuiteReport`.

    kwargs: name, timeout_s (per case, for the target), progress (a bar on stderr), record
    (``gen_ai.evaluation.result`` events on each case's span), schema / messages (for a bare
    `Model` target), on_row (a callback per finished row).
    """
    from ..models.base import run_sync

    return run_sync(arun_suite(target, cases, evaluators, concurrency=concurrency, **kwargs))
