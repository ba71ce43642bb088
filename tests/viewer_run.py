"""A real run of the reference support pipeline on the embedded SmolLM2, recorded for the trace
viewer's tests (tests/test_trace_viewer.py) and its screenshots: spans with content capture on,
the call log, review items flagged from it. Also runnable: ``python tests/viewer_run.py DIR``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "support" / "workflow.yaml"
TICKETS = [
    "My order A-1042 arrived broken, I want a refund. Mail me at ann.lee@example.com",
    "I was charged twice for my subscription this month, account 88231.",
    "Where is my package? Order B-77 has not shipped yet and it has been 10 days.",
]


def record_run(out: Path, tickets: list[str] = TICKETS) -> dict:
    """Run ``tickets`` through the support workflow; returns ``{spans, calls, results}``
    (the SQLite span store and call log paths, and the `RunResult` statuses)."""
    os.environ.setdefault("SUPPORT_RETRIEVAL", "bm25")  # no embedding model download
    sys.path.insert(0, str(SPEC.parent))
    from slmflow import tracing
    from slmflow.loop import flag_calls
    from slmflow.store import CallLogWriter, logging_context, open_call_log
    from slmflow.workflow import load_workflow

    out.mkdir(parents=True, exist_ok=True)
    spans, calls = out / "spans.db", out / "calls.db"
    tracing.configure(db_path=spans, batch=False, capture_content=True)
    log = open_call_log(calls)
    w = CallLogWriter(log)
    results = []
    try:
        wf = load_workflow(SPEC)
        with logging_context(writer=w):
            for t in tickets:
                r = wf.run_sync(t)
                results.append({"status": r.status, "run_id": r.run_id, "detail": r.detail})
            # one ticket zero-shot too: with every agent fine-tuned the tickets above may all end
            # ok, and the viewer and the review queue need a rejected run with flagged calls
            from slmflow.agents import set_adapter_resolver
            from slmflow.finetune.registry import base_model_resolver

            set_adapter_resolver(base_model_resolver)
            try:
                r = load_workflow(SPEC).run_sync(TICKETS[1])
            finally:
                set_adapter_resolver(None)
            results.append({"status": r.status, "run_id": r.run_id, "detail": r.detail})
        tracing.force_flush()
    finally:
        tracing.reset()
        w.flush()
        w.close(close_log=False)
    flag_calls(log, since="1h")
    log.close()
    return {"spans": spans, "calls": calls, "results": results}


def record_eval(out: Path) -> Path:
    """One eval case on the pipeline's router agent, graded by ``exact_match`` on its category
    (expected ``billing`` for a refund ticket, so a correct router fails it and the event has an
    explanation); the spans go to ``out/evals.db``, with the grade as a
    ``gen_ai.evaluation.result`` event on the ``eval_case`` span."""
    sys.path.insert(0, str(SPEC.parent))
    from slmflow import tracing
    from slmflow.evals import run_suite
    from slmflow.evals.base import create
    from slmflow.workflow import load_workflow

    db = out / "evals.db"
    tracing.configure(db_path=db, batch=False)
    try:
        router = load_workflow(SPEC).agent("router")
        run_suite(router, [{"id": "refund-1", "input": {"text": TICKETS[0]},
                            "expected": {"category": "billing"}}],
                  [create("exact_match", field="category")], name="routing", record=True)
        tracing.force_flush()
    finally:
        tracing.reset()
    return db


if __name__ == "__main__":
    import json
    import time

    t0 = time.perf_counter()
    rep = record_run(Path(sys.argv[1]))
    print(json.dumps({**rep, "spans": str(rep["spans"]), "calls": str(rep["calls"]),
                      "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
