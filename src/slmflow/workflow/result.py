"""What a workflow run gives back: `RunResult`, one `StepRecord` per executed node, one
`HandoffRecord` per checked edge, and `StepError`.

Why a module of its own: these are the values users, reports, evals and the gateway read
(``result.status``, ``result.steps``, ``result.trace_id``); the runner that fills them is the
part that changes. Keeping them apart lets a report or an eval import the result types without
the runner's machinery, and keeps `runner.py` one job (running).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..agents import AgentResult
from ..errors import HandoffError, SlmflowError
from ..types import Usage

__all__ = ["RunResult", "StepRecord", "HandoffRecord", "StepError"]


class StepError(SlmflowError):
    """A step's own code tried to end the process (`SystemExit`, `KeyboardInterrupt`)."""


@dataclass
class StepRecord:
    """What one execution of one node did (a re-run after escalation is a second record)."""

    step: str
    kind: str  # agent | function | tool | branch
    status: str = "running"  # ok | failed | error_continued | rejected | approved
    model: str = "-"
    latency_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    confidence: float | None = None
    escalated: bool = False
    escalation_reason: str | None = None
    repaired: bool = False
    detail: str = ""
    error: BaseException | None = None
    output: Any = None
    input: Any = field(default=None, repr=False)
    agent_result: AgentResult | None = field(default=None, repr=False)

    @property
    def model_latency_s(self) -> float:
        if self.agent_result is None:
            return 0.0
        return sum(a.latency_s for a in self.agent_result.attempts)


@dataclass
class HandoffRecord:
    source: str
    target: str
    status: str  # validated | repaired | escalated | failed
    errors: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of one request: ``status`` ok | escalated | rejected | failed."""

    workflow: str
    status: str
    answer: Any
    state: dict[str, Any]
    steps: list[StepRecord]
    handoffs: list[HandoffRecord]
    error: BaseException | None = None
    latency_s: float = 0.0
    detail: str = ""
    run_id: str | None = None  # the call log's run id: feedback on the run attaches to it
    # the id of the trace this run opened (its ``invoke_workflow`` span's; the span store and
    # `slmflow traces show` take it); None when tracing is off
    trace_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "escalated")

    @property
    def escalations(self) -> list[StepRecord]:
        return [s for s in self.steps if s.escalated]

    @property
    def usage(self) -> Usage:
        return sum((s.usage for s in self.steps), Usage())

    @property
    def model_latency_s(self) -> float:
        return sum(s.model_latency_s for s in self.steps)

    def raise_for_status(self) -> "RunResult":
        if self.error is not None:
            raise self.error
        if self.status == "rejected":
            raise HandoffError(f"the verifier rejected the answer: {self.detail}",
                               where=f"workflow {self.workflow}")
        return self
