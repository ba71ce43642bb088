"""Online evaluation: run reference-free evaluators over logged calls, so the flagging job's
``failed_eval`` rule has something to read.

Production calls have no expected answer, so only evaluators that judge an output on its own apply
(toxicity, PII, JSON-schema validity, groundedness against the call's context, an LLM judge with a
rubric). Each judgement becomes a feedback row ``by="eval:<name>"`` on the call (``signal="down"``
for a failure, ``"up"`` for a pass) with the evaluator's label and explanation; a call already
judged by that evaluator is skipped, so the job can run before every flag run without piling up
duplicates.

A judge-type evaluator (an SLM with a rubric) is also recorded in the ``judges`` table, so the
review UI can offer "judge right / judge wrong" on the calls it judged and `slmflow loop retrain
--judge NAME` can rebuild it (`slmflow.store.judges`, `slmflow.loop.judges`).

    slmflow loop evaluate --agent reasoner --evaluator toxicity --since 24h
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..store.calllog import CallLog, Feedback

__all__ = ["OnlineEvalReport", "evaluate_calls"]


@dataclass
class OnlineEvalReport:
    evaluator: str
    checked: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def evaluate_calls(log: CallLog, evaluator: Any, *, agent: str | None = None,
                   since: Any = "24h", limit: int | None = 10_000) -> OnlineEvalReport:
    """Judge the window's calls of ``agent`` with ``evaluator`` (a registry name, an `Evaluator`
    or a spec dict); write a ``by="eval:<name>"`` thumbs-down for each failure."""
    from ..evals.base import Case, create
    from ..models.base import run_sync

    ev = create(evaluator)
    by = f"eval:{ev.name}"
    if getattr(ev, "kind", None) == "judge" and hasattr(ev, "judge"):
        # a judge: recorded so reviewers can mark its verdicts right or wrong and a retrain
        # can rebuild it (`slmflow.store.judges`)
        from ..store.judges import JudgeInfo, JudgeReviews

        spec = ev.spec() if hasattr(ev, "spec") else {}
        JudgeReviews(log).register(JudgeInfo(
            ev.name, type(ev).name, spec, list(ev.judge.labels), list(ev.judge.pass_labels)))
    calls = log.query(since=since, agent=agent, kind="agent", limit=limit)
    rep = OnlineEvalReport(ev.name)
    done = set()
    ids = [c.id for c in calls]
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        done.update(r[0] for r in log._all(
            f"SELECT call_id FROM feedback WHERE by = ? AND call_id IN "
            f"({', '.join('?' * len(chunk))})", [by, *chunk]))

    async def judge(todo: Sequence[Any]) -> list[Any]:
        out = []
        for c in todo:
            ctx = (c.meta or {}).get("context")
            try:
                out.append(await ev.aevaluate(Case(id=c.id, input=c.input, context=ctx),
                                              c.output))
            except Exception as e:  # noqa: BLE001 - an evaluator error is reported, not fatal
                out.append(e)
        return out

    todo = [c for c in calls if c.id not in done]
    rep.skipped = len(calls) - len(todo)
    results = run_sync(judge(todo)) if todo else []
    fbs = []
    for c, r in zip(todo, results):
        if isinstance(r, Exception):
            rep.errors.append(f"{c.id}: {type(r).__name__}: {r}")
            continue
        rep.checked += 1
        rep.failed += not r.ok
        # every judgement is kept (a pass as "up"): the next run skips what is judged already
        fbs.append(Feedback(call_id=c.id, signal="up" if r.ok else "down", by=by,
                            label=f"{r.label or ('passed' if r.ok else 'failed')}: "
                                  f"{r.explanation}"[:500]))
    if fbs:
        log.append(fbs)
    return rep
