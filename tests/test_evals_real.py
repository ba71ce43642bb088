"""Evals on the real embedded model (SmolLM2-135M on llama.cpp): the BANKING77 router suite and a
judge, end to end. Assertions hold whatever the 135M model answers: schema-constrained outputs
always parse, so no row may error, and every verdict is one of the judge's labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slmflow.evals import Case, create, run_suite

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "banking77"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(smollm):
    pytest.importorskip("llama_cpp")
    return smollm


def test_banking77_router_suite_on_the_embedded_model(model):
    import eval_router
    import router

    cases = eval_router.cases(limit=6)
    assert len(cases.cases) == 6 and len({c.expected for c in cases.cases}) == 6  # stratified
    rep = run_suite(eval_router.make_agent(model), cases, eval_router.evaluators(),
                    concurrency=2, name="banking77-router")
    assert rep.summary["total"] == 6 and rep.summary["errored"] == 0, \
        [r.error for r in rep.errors]
    assert rep.summary["passed"] + rep.summary["failed"] == 6
    for r in rep.rows:
        assert r.output.intent in router.INTENTS
        assert r.model == "smollm2-135m" and 0 < r.confidence <= 1 and r.latency_s > 0
        assert r.evals["routing"].label == r.output.intent
    assert {"accuracy", "macro_f1", "macro_precision", "macro_recall", "ok_rate"} <= set(rep.scores)
    assert rep.scores["accuracy"] == pytest.approx(rep.summary["passed"] / 6)
    conf = rep.details["routing"]["confusion"]
    assert len(conf["labels"]) >= 77 and sum(map(sum, conf["matrix"])) == 6


def test_faithfulness_judge_on_the_embedded_model_always_parses(model):
    ctx = ("Refunds are issued to the original payment method within 5-7 business days after "
           "we approve them.")
    cases = [Case(id="f", input="q", context=ctx, expected="faithful"),
             Case(id="u", input="q", context=ctx, expected="unfaithful")]
    answers = {"f": "Refunds go back to the original payment method within 5-7 business days.",
               "u": "Refunds are paid in cash at our store the same day."}
    ev = create("faithfulness", model=model, timeout_s=120)
    rep = run_suite(lambda x: x, [c.model_copy(update={"input": answers[c.id]}) for c in cases],
                    [ev])
    assert rep.summary["errored"] == 0, [r.error for r in rep.errors]
    for r in rep.rows:
        v = r.evals["faithfulness"]
        assert v.label in ("faithful", "unfaithful") and len(v.explanation) <= 160
        assert 1 <= v.data["judge_score"] <= 5
