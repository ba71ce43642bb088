"""Workflows: a small explicit graph of agents, functions and tools with checked handoffs.

Why a package of four small modules: the graph (what runs after what, checked at build time), the
runner (handoff contracts, escalation, the result every request ends in), the YAML spec (the same
graph declared in a file, with errors naming file, line and field) and the report (the per-step
table) change for different reasons and are tested apart.
"""

from __future__ import annotations

from .graph import END, Branch, Parallel, Step, Workflow
from .runner import HandoffRecord, RunResult, StepRecord, run_workflow

__all__ = ["Workflow", "Step", "Parallel", "Branch", "END", "RunResult", "StepRecord",
           "HandoffRecord", "run_workflow", "load_workflow", "step_table", "print_result"]


def __getattr__(name: str):
    if name == "load_workflow":
        from .spec import load_workflow

        return load_workflow
    if name in ("step_table", "print_result"):
        from . import report

        return getattr(report, name)
    raise AttributeError(name)
