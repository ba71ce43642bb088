"""End-to-end scenario evals: run a workflow on scenarios, read each run's trace, check it.

A scenario names an input and what should happen (every part optional)::

    - id: refund-broken-mug
      input: {text: "My order A-1042 arrived broken, I want a refund"}
      expect:
        status: [ok, escalated]          # allowed outcomes; anything else is a dropped request
        path: [router, order_status, reason, verify, answer]   # in this order (gaps allowed)
        not_path: [account_status]       # steps that must not run (wrong-path routing)
        handoffs: ["router -> retrieve", "extract -> reason"]  # must happen and validate/repair
        state: {category: refund, order_id: A-1042}             # the outcome
        answer_contains: ["A-1042"]
        answer_not_contains: ["500 EUR"]  # e.g. what a prompt injection asked to be promised
        faithful: true                   # the answer is supported by what was retrieved

Each expectation is one check (an `Evaluator`), so the suite machinery does the rest: concurrency,
errored vs failed rows, ``gen_ai.evaluation.result`` events on the run's trace, reports, the gate.

What each check detects, and from where:

* ``scenario.completed`` (dropped requests): the run's status (``slmflow.workflow.status`` on the
  ``invoke_workflow`` span) is allowed, and an answer exists;
* ``scenario.handoffs`` (malformed handoffs): every ``handoff a -> b`` span of the trace; one
  with status ``failed`` fails the check, a ``repaired``/``escalated`` one is reported in the
  explanation and fails only with ``strict_handoffs: true``; a listed handoff that never happened
  fails it too;
* ``scenario.path`` (wrong-path routing): the steps that ran (the runner's step records: function
  steps open no span of their own) against ``path`` and ``not_path``;
* ``scenario.outcome``: expected state values and answer substrings;
* ``scenario.faithfulness`` (wrong-but-plausible answers): the final answer against the passages
  retrieved *in that run* (plus the request text and the tool lookups, which an answer may
  restate), lexically (``groundedness``) or by a judge model (``judge=...``).

Traces: the local span store must be on; `run_scenarios` turns it on for the run (with a
synchronous exporter) if tracing is off, and turns it back off afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import tracing
from ..errors import ConfigError
from .base import Case, EvalResult, Evaluator
from .builtin import Faithfulness, Groundedness, as_plain, context_text
from .data import CaseSet, RowError
from .suite import SuiteReport, Target, arun_suite

__all__ = ["Scenario", "Expect", "ScenarioFile", "load_scenarios", "run_scenarios",
           "arun_scenarios", "ScenarioOutput"]


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: list[str] = Field(default_factory=lambda: ["ok", "escalated"])
    path: list[str] | None = None
    not_path: list[str] = Field(default_factory=list)
    handoffs: list[str] | None = None
    strict_handoffs: bool = False
    state: dict[str, Any] = Field(default_factory=dict)
    answer_contains: list[str] = Field(default_factory=list)
    answer_not_contains: list[str] = Field(default_factory=list)
    faithful: bool | None = None


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    input: Any
    expect: Expect = Field(default_factory=Expect)
    description: str = ""


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str | None = None
    answer_field: str | None = "reply"
    context_key: str = "passages"
    faithfulness_threshold: float = 0.6
    scenarios: list[Any]


@dataclass
class ScenarioOutput:
    """What a scenario run produced: the `RunResult` and the spans of its trace."""

    result: Any
    trace_id: str | None
    spans: list[dict[str, Any]] = field(default_factory=list)
    loaded: bool = False

    def load_trace(self) -> list[dict[str, Any]]:
        if not self.loaded:
            self.loaded = True
            if self.trace_id and tracing.is_enabled():
                tracing.force_flush()
                from ..tracing.store import open_span_store

                # the store this process's spans went to (SQLite file or PostgreSQL)
                with open_span_store() as store:
                    self.spans = store.trace(self.trace_id)
        return self.spans

    def model_dump(self, mode: str = "json") -> dict[str, Any]:  # for the report's rows
        r = self.result
        return {"status": r.status, "answer": as_plain(r.answer), "detail": r.detail,
                "steps": [s.step for s in r.steps], "trace_id": self.trace_id}


def load_scenarios(path: str | Path) -> tuple[ScenarioFile, CaseSet]:
    """Read a scenarios YAML file; scenarios that do not validate become `RowError`s."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"scenarios file not found: {p}", where=str(p))
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"not YAML: {e}", where=str(p)) from None
    if isinstance(doc, list):
        doc = {"scenarios": doc}
    try:
        sf = ScenarioFile.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(f"invalid scenarios file: {e.errors()[0]['msg']} at "
                          f"{'.'.join(map(str, e.errors()[0]['loc']))}", where=str(p)) from None
    return sf, to_scenario_cases(sf.scenarios, where=str(p))


def to_scenario_cases(items: Sequence[Any], where: str = "scenarios") -> CaseSet:
    cs = CaseSet([], source=where)
    for i, item in enumerate(items):
        cs.total_rows += 1
        try:
            s = item if isinstance(item, Scenario) else Scenario.model_validate(item)
        except ValidationError as e:
            rid = str(item.get("id")) if isinstance(item, dict) and item.get("id") else \
                f"scenario-{i + 1}"
            cs.errors.append(RowError(i, rid, "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()),
                f"{where}[{i}]"))
            continue
        cs.cases.append(Case(id=s.id, input=s.input, expected=s.expect.model_dump(),
                             metadata={"description": s.description}))
    return cs


# ---- checks ------------------------------------------------------------------------------------

def _na() -> EvalResult:
    return EvalResult(None, "n/a", passed=True)


def _workflow_span(spans: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((s for s in spans if s["name"].startswith("invoke_workflow")), None)


class Completed(Evaluator):
    name = "scenario.completed"
    description = "the request ended in an allowed status with an answer (no dropped request)"

    def evaluate(self, case: Case, out: ScenarioOutput) -> EvalResult:
        exp = Expect.model_validate(case.expected)
        spans = out.load_trace()
        wf = _workflow_span(spans)
        status = (wf or {}).get("attributes", {}).get("slmflow.workflow.status") \
            or out.result.status
        src = "trace" if wf else "run result (no trace)"
        if status not in exp.status:
            return EvalResult(0.0, f"dropped:{status}", f"status {status!r} not in {exp.status} "
                              f"({src}): {out.result.detail}"[:400])
        if out.result.answer is None and status in ("ok", "escalated"):
            return EvalResult(0.0, "no_answer", "the run ended without an answer")
        return EvalResult(1.0, status, f"from {src}")


class Handoffs(Evaluator):
    name = "scenario.handoffs"
    description = "every handoff in the trace validated (or was repaired) and expected ones ran"

    def evaluate(self, case: Case, out: ScenarioOutput) -> EvalResult:
        exp = Expect.model_validate(case.expected)
        spans = out.load_trace()
        seen = [(s["attributes"].get("slmflow.handoff.source"),
                 s["attributes"].get("slmflow.handoff.target"),
                 s["attributes"].get("slmflow.handoff.status") or "unknown")
                for s in spans if s["name"].startswith("handoff ")]
        if not spans:  # no trace: fall back to the runner's records
            seen = [(h.source, h.target, h.status) for h in out.result.handoffs]
        # the runner's record names the step that produced the bad field (the span is named
        # after the latest upstream step, before the repair finds the owner)
        owner = {(h.target, h.status): h.source for h in out.result.handoffs
                 if h.status != "validated"}
        problems, notes = [], []
        for src, dst, st in seen:
            by = owner.get((dst, st))
            who = f"; produced by {by}" if by and by != src else ""
            if st == "failed":
                problems.append(f"malformed handoff {src} -> {dst} (failed{who})")
            elif st in ("repaired", "escalated"):
                (problems if exp.strict_handoffs else notes).append(
                    f"malformed handoff {src} -> {dst} ({st}{who})")
        names = {f"{a} -> {b}" for a, b, _ in seen}
        for h in exp.handoffs or []:
            if " ".join(h.split()) not in names:
                problems.append(f"expected handoff {h} did not happen")
        if not seen and not exp.handoffs:
            return _na()
        expl = "; ".join(problems + notes)
        return EvalResult(0.0 if problems else 1.0, "malformed" if problems else
                          ("repaired" if notes else "valid"), expl, passed=not problems)


class PathCheck(Evaluator):
    name = "scenario.path"
    description = "the steps that ran follow the expected path (wrong-path routing)"

    def evaluate(self, case: Case, out: ScenarioOutput) -> EvalResult:
        exp = Expect.model_validate(case.expected)
        if exp.path is None and not exp.not_path:
            return _na()
        ran = [s.step for s in out.result.steps]
        problems = []
        if exp.path:
            it = iter(ran)
            missing = [p for p in exp.path if not any(p == r for r in it)]
            if missing:
                problems.append(f"expected path {exp.path}, ran {ran} (first missing: "
                                f"{missing[0]})")
        bad = [p for p in exp.not_path if p in ran]
        if bad:
            problems.append(f"ran {bad}, which it should not (wrong path)")
        return EvalResult(0.0 if problems else 1.0, "wrong_path" if problems else "path_ok",
                          "; ".join(problems))


class Outcome(Evaluator):
    name = "scenario.outcome"
    description = "expected state values and answer substrings"

    def __init__(self, answer_field: str | None = "reply") -> None:
        self.answer_field = answer_field

    def evaluate(self, case: Case, out: ScenarioOutput) -> EvalResult:
        exp = Expect.model_validate(case.expected)
        if not exp.state and not exp.answer_contains and not exp.answer_not_contains:
            return _na()
        r = out.result
        problems = []
        for k, v in exp.state.items():
            got = as_plain(r.state.get(k))
            if got != v:
                problems.append(f"{k}: expected {v!r}, got {got!r}")
        ans = _answer_text(r.answer, self.answer_field)
        for s in exp.answer_contains:
            if s.lower() not in ans.lower():
                problems.append(f"answer does not contain {s!r}")
        for s in exp.answer_not_contains:
            if s.lower() in ans.lower():
                problems.append(f"answer contains {s!r}, which it must not")
        n = len(exp.state) + len(exp.answer_contains) + len(exp.answer_not_contains)
        return EvalResult(1 - len(problems) / n,
                          "outcome_ok" if not problems else "wrong_outcome",
                          "; ".join(problems), passed=not problems)


def _answer_text(answer: Any, field: str | None) -> str:
    a = as_plain(answer)
    if isinstance(a, dict) and field:
        a = a.get(field)
    return a if isinstance(a, str) else ("" if a is None else str(a))


class FaithfulAnswer(Evaluator):
    name = "scenario.faithfulness"
    description = "the final answer is supported by the passages retrieved in the run"

    def __init__(self, answer_field: str | None = "reply", context_key: str = "passages",
                 threshold: float = 0.6, judge: Any = None,
                 extra_keys: Sequence[str] = ("text", "lookup")) -> None:
        self.answer_field, self.context_key = answer_field, context_key
        self.extra_keys = tuple(extra_keys)
        self.inner: Evaluator = (Faithfulness(model=judge) if judge is not None
                                 else Groundedness(threshold=threshold))
        if judge is not None:
            self.kind = "judge"  # type: ignore[misc]

    async def aevaluate(self, case: Case, out: ScenarioOutput) -> EvalResult:
        exp = Expect.model_validate(case.expected)
        if not exp.faithful:
            return _na()
        r = out.result
        if r.answer is None:
            return EvalResult(0.0, "no_answer", "no answer to check")
        ctx = as_plain(r.state.get(self.context_key))
        if not ctx:
            return EvalResult(0.0, "no_context", f"nothing retrieved ({self.context_key!r} "
                                                 "empty): an answer cannot be grounded")
        # the answer may also restate the request and what the tools looked up (ids, items)
        extra = [context_text(as_plain(r.state.get(k))) or json.dumps(as_plain(r.state.get(k)),
                                                                      default=str)
                 for k in self.extra_keys if r.state.get(k) is not None]
        c = Case(id=case.id, input=case.input, context=[context_text(ctx), *extra])
        res = await self.inner.aevaluate(c, _answer_text(r.answer, self.answer_field))
        return EvalResult(res.score, res.label, res.explanation, passed=res.ok, data=res.data)


# ---- running -----------------------------------------------------------------------------------

async def arun_scenarios(workflow: Any, scenarios: Any, *, concurrency: int = 1,
                         judge: Any = None, progress: bool = False, name: str | None = None,
                         answer_field: str | None = None, context_key: str | None = None,
                         faithfulness_threshold: float | None = None,
                         timeout_s: float | None = None) -> SuiteReport:
    """Run ``workflow`` (a `Workflow` or a YAML path) on ``scenarios`` (a scenarios YAML path, or
    a list of `Scenario`/dicts) and check each run from its trace; see the module docstring."""
    sf = ScenarioFile(scenarios=[])
    base = Path(".")
    if isinstance(scenarios, (str, Path)):
        sf, cs = load_scenarios(scenarios)
        base = Path(scenarios).parent
    else:
        cs = to_scenario_cases(list(scenarios))
    if workflow is None:
        if not sf.workflow:
            raise ConfigError("no workflow given and the scenarios file names none",
                              where=str(scenarios))
        workflow = base / sf.workflow
    if isinstance(workflow, (str, Path)):
        from ..workflow import load_workflow

        workflow = load_workflow(workflow)
    from ..workflow.runner import run_workflow

    wf = workflow
    af = answer_field if answer_field is not None else sf.answer_field
    ck = context_key or sf.context_key
    th = faithfulness_threshold if faithfulness_threshold is not None \
        else sf.faithfulness_threshold

    async def run_one(x: Any) -> tuple[ScenarioOutput, dict[str, Any]]:
        r = await run_workflow(wf, x)
        return ScenarioOutput(r, tracing.current_trace_id()), {
            "latency_s": r.latency_s, "agent": wf.name,
            "escalated": r.status == "escalated"}

    evs = [Completed(), Handoffs(), PathCheck(), Outcome(af),
           FaithfulAnswer(af, ck, th, judge=judge)]
    turned_on = False
    if not tracing.is_enabled():
        tracing.configure(enabled=True, store=True, batch=False)
        turned_on = True
    try:
        rep = await arun_suite(Target(wf.name, run_one), cs, evs, concurrency=concurrency,
                               name=name or f"{wf.name}-scenarios", progress=progress,
                               timeout_s=timeout_s)
    finally:
        if turned_on:
            tracing.force_flush()
            tracing.configure(enabled=False)
    lat: dict[str, dict[str, list[float]]] = {}
    for row in rep.rows:
        if isinstance(row.output, ScenarioOutput):
            per: dict[str, list[float]] = {}
            for s in row.output.result.steps:
                if s.kind == "agent":
                    per.setdefault(s.step, []).append(s.latency_s)
            lat[row.id] = per
            row.output = row.output.model_dump()
    rep.meta["agent_latency"] = lat
    return rep


def run_scenarios(workflow: Any, scenarios: Any, **kwargs: Any) -> SuiteReport:
    """Synchronous `arun_scenarios`."""
    from ..models.base import run_sync

    return run_sync(arun_scenarios(workflow, scenarios, **kwargs))
