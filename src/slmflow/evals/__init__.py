"""Evals: evaluator registry, per-agent suites, end-to-end scenario evals, reports, the gate.

    from slmflow.evals import run_suite, compare
    report = run_suite(agent, "cases.jsonl", ["routing"], concurrency=2)
    report.scores            # {"accuracy": ..., "macro_f1": ..., "ok_rate": ..., ...}
    compare(report, "baseline.json", tolerance=0.02).passed

Why one package with small modules: the interface and registry (`base`), the built-in
evaluators (`builtin`, `judge`), datasets (`data`), the runner (`suite`), workflow scenarios
(`scenarios`), reports (`report`) and the gate (`gate`) change for different reasons; the
adapter-promotion gate (fine-tuning) only needs `run_suite` and `compare`.

Nothing heavy is imported here: evaluators that need a model resolve it on first use.
"""

from __future__ import annotations

from typing import Any

from .base import (Case, EvalResult, Evaluator, FunctionEvaluator, create, evaluator,
                   get_evaluator_class, list_evaluators, register)
from .data import CaseSet, RowError, load_cases, stratified_sample
from .gate import GateResult, compare, load_baseline
from .suite import RowResult, SuiteReport, Target, arun_suite, as_target, run_suite

__all__ = ["Case", "EvalResult", "Evaluator", "FunctionEvaluator", "register", "create",
           "evaluator", "list_evaluators", "get_evaluator_class", "CaseSet", "RowError",
           "load_cases", "stratified_sample", "GateResult", "compare", "load_baseline",
           "RowResult", "SuiteReport", "Target", "as_target", "run_suite", "arun_suite",
           "run_scenarios", "arun_scenarios", "load_scenarios", "Scenario", "LLMJudge",
           "JudgeTimeoutError", "print_report", "to_html", "write_html"]


def __getattr__(name: str) -> Any:
    if name in ("run_scenarios", "arun_scenarios", "load_scenarios", "Scenario"):
        from . import scenarios

        return getattr(scenarios, name)
    if name in ("LLMJudge", "JudgeTimeoutError", "verdict_model"):
        from . import judge

        return getattr(judge, name)
    if name in ("print_report", "to_html", "write_html"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module 'slmflow.evals' has no attribute {name!r}")
