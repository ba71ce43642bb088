"""Workflow semantics on fake models: sequence, branch, parallel, typed state, handoff contracts
(repair -> escalation -> HandoffError), verifier escalation, tool failures, bad input, and the
invariant: every request ends in an answer or an explicit, recorded failure."""

from __future__ import annotations

import asyncio
import time
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from slmflow import FunctionModel, ScriptedModel
from slmflow.agents import Agent
from slmflow.errors import ConfigError, HandoffError, SlmflowError, ToolError
from slmflow.tools import tool
from slmflow.workflow import Branch, Parallel, RunResult, Step, Workflow
from slmflow.workflow.report import COLUMNS, step_rows


class Ticket(BaseModel):
    text: str = Field(min_length=1)


class Route(BaseModel):
    category: Literal["refund", "other"]


class Fields(BaseModel):
    order_id: Optional[str] = None


class DraftIn(BaseModel):
    text: str
    order_id: str = Field(pattern=r"^A-\d+$")


class Out(BaseModel):
    answer: str


def fm(value, name="fake", confidence=1.0):
    return FunctionModel(lambda m, s: value, name=name, confidence=confidence)


def invariant(r: RunResult) -> None:
    """An answer, or an explicit failure with the error on the result and on a step record."""
    assert isinstance(r, RunResult)
    if r.status in ("ok", "escalated"):
        assert r.error is None and r.answer is not None
    elif r.status == "failed":
        assert r.error is not None and r.answer is None and r.detail
    else:
        assert r.status == "rejected" and r.detail
    for row in step_rows(r):
        assert set(COLUMNS) <= set(row)


def test_sequence_passes_typed_state():
    def shout(t: Ticket) -> Out:
        return Out(answer=t.text.upper())

    wf = Workflow("w", [Step("route", agent=Agent("router", fm({"category": "refund"}),
                                                  input_type=Ticket, output_type=Route)),
                        Step("shout", fn=shout)], input_type=Ticket, output="answer")
    r = wf.run_sync("hi")
    invariant(r)
    assert r.status == "ok" and r.answer == "HI"
    assert r.state["category"] == "refund"
    assert [s.step for s in r.steps] == ["route", "shout"]
    assert r.steps[0].model == "fake" and r.steps[0].confidence == 1.0
    assert all(h.status == "validated" for h in r.handoffs)


def test_branch_follows_router_decision():
    def refund(t: Ticket) -> Out:
        return Out(answer="refund path")

    def other(t: Ticket) -> Out:
        return Out(answer="other path")

    def build(cat):
        return Workflow("w", [
            Step("router", agent=Agent("router", fm({"category": cat}), input_type=Ticket,
                                       output_type=Route)),
            Branch("pick", on="category", cases={"refund": "refund"}, default="other"),
            Step("refund", fn=refund, next="end"),
            Step("other", fn=other)], input_type=Ticket, output="answer")

    assert build("refund").run_sync("x").answer == "refund path"
    r = build("other").run_sync("x")
    assert r.answer == "other path" and "refund" not in [s.step for s in r.steps]
    assert r.steps[1].detail == "category='other' -> other"


def test_branch_without_matching_case_fails_explicitly():
    wf = Workflow("w", [
        Step("router", agent=Agent("router", fm({"category": "other"}), input_type=Ticket,
                                   output_type=Route)),
        Branch("pick", on="category", cases={"refund": "a"}),
        Step("a", fn=lambda s: "done", output_key="answer")], input_type=Ticket, output="answer")
    r = wf.run_sync("x")
    invariant(r)
    assert r.status == "failed" and "no case for category='other'" in r.detail


def test_parallel_steps_run_concurrently():
    async def slow_a(t: Ticket) -> Fields:
        await asyncio.sleep(0.3)
        return Fields(order_id="A-1")

    async def slow_b(t: Ticket) -> Out:
        await asyncio.sleep(0.3)
        return Out(answer="b")

    wf = Workflow("w", [Parallel("both", [Step("a", fn=slow_a), Step("b", fn=slow_b)])],
                  input_type=Ticket, output="answer")
    t0 = time.perf_counter()
    r = wf.run_sync("x")
    assert time.perf_counter() - t0 < 0.55
    assert r.status == "ok" and r.state["order_id"] == "A-1" and r.answer == "b"


def test_parallel_failure_keeps_every_child_record():
    def ok(t: Ticket) -> Out:
        return Out(answer="fine")

    def broken(t: Ticket) -> Fields:
        raise ValueError("bug in user code")

    wf = Workflow("w", [Parallel("both", [Step("ok", fn=ok), Step("bad", fn=broken)])],
                  input_type=Ticket, output="answer")
    r = wf.run_sync("x")
    invariant(r)
    assert r.status == "failed" and isinstance(r.error, ValueError)
    by = {s.step: s for s in r.steps}
    assert by["ok"].status == "ok" and by["bad"].status == "failed"
    assert by["bad"].error is r.error
    with pytest.raises(ValueError, match="bug in user code"):
        r.raise_for_status()


def _pipeline(extract_model, fallback=None):
    extractor = Agent("extractor", extract_model, input_type=Ticket, output_type=Fields,
                      fallback=fallback)

    def draft(d: DraftIn) -> Out:
        return Out(answer=f"about {d.order_id}")

    return Workflow("w", [Step("extract", agent=extractor), Step("draft", fn=draft)],
                    input_type=Ticket, output="answer")


def test_handoff_repaired_by_constrained_regeneration():
    seen = []

    def fn(messages, spec):
        seen.append(spec.json_schema)
        return {"order_id": "1042"} if len(seen) == 1 else {"order_id": "A-1042"}

    r = _pipeline(FunctionModel(fn)).run_sync("order A-1042 broke")
    invariant(r)
    assert r.status == "ok" and r.answer == "about A-1042"
    h = [h for h in r.handoffs if h.target == "draft"][0]
    assert (h.source, h.status) == ("extract", "repaired")
    # the re-generation ran under the consumer's contract (the pattern is in the schema)
    assert seen[1]["properties"]["order_id"]["pattern"] == r"^A-\d+$"
    assert "pattern" not in str(seen[0])


def test_handoff_escalates_to_fallback_when_repair_fails():
    small = fm({"order_id": "x"}, "small")
    big = fm({"order_id": "A-9"}, "big")
    r = _pipeline(small, fallback=big).run_sync("t")
    invariant(r)
    assert r.status == "escalated" and r.answer == "about A-9"
    h = [h for h in r.handoffs if h.target == "draft"][0]
    assert h.status == "escalated"
    esc = r.escalations
    assert len(esc) == 1 and esc[0].model == "big" and esc[0].detail == "handoff repair for draft"


def test_handoff_error_names_edge_payload_and_errors():
    small = fm({"order_id": "x"}, "small")
    big = fm({"order_id": "z"}, "big")
    r = _pipeline(small, fallback=big).run_sync("t")
    invariant(r)
    assert r.status == "failed" and isinstance(r.error, HandoffError)
    e = r.error
    assert e.details["edge"] == "extract -> draft" and e.where == "extract -> draft"
    assert '"order_id": "x"' in e.details["payload"]
    assert any("order_id" in x and "pattern" in x for x in e.details["errors"])
    assert [h.status for h in r.handoffs if h.target == "draft"] == ["failed"]
    # every attempt is on the result: the first run, then the repair that escalated and failed
    assert [s.model for s in r.steps if s.step == "extract"] == ["small", "big"]
    assert "repair: StructuredOutputError" in e.message


def test_function_step_returning_wrong_type_is_handoff_error():
    def bad(t: Ticket) -> Out:
        return "not an Out"  # type: ignore[return-value]

    wf = Workflow("w", [Step("bad", fn=bad), Step("after", fn=lambda s: "x", output_key="z")],
                  input_type=Ticket, output="answer")
    r = wf.run_sync("x")
    invariant(r)
    assert isinstance(r.error, HandoffError) and r.error.details["edge"] == "bad -> after"
    assert "returned str, not Out" in r.error.message


class Need(BaseModel):
    order_id: str


def test_missing_field_from_function_step_cannot_be_regenerated():
    def gives_none(t: Ticket) -> Fields:
        return Fields(order_id=None)

    def use(n: Need) -> Out:
        return Out(answer=n.order_id)

    wf = Workflow("w", [Step("f", fn=gives_none), Step("use", fn=use)], input_type=Ticket,
                  output="answer")
    r = wf.run_sync("x")
    invariant(r)
    assert r.error.details["edge"] == "f -> use"
    assert "is a function step" in r.error.message


@tool(timeout_s=0.2)
async def hangs(order_id: str) -> str:
    """Hangs."""
    await asyncio.sleep(10)
    return "never"


@tool
def raises(order_id: str) -> str:
    """Raises."""
    raise KeyError(order_id)


def _tool_flow(t, on_error):
    def finish(state) -> Out:
        return Out(answer=f"lookup={state.get('lookup')} err={state.get('lookup_error')}")

    return Workflow("w", [
        Step("extract", agent=Agent("x", fm({"order_id": "A-1"}), input_type=Ticket,
                                    output_type=Fields)),
        Step("look", tool=t, args={"order_id": "order_id"}, output_key="lookup",
             on_error=on_error),
        Step("finish", fn=finish)], input_type=Ticket, output="answer")


@pytest.mark.parametrize("t,kind", [(hangs, "timeout"), (raises, "exception")])
def test_tool_failure_fail_mode_ends_run_with_typed_error(t, kind):
    t0 = time.perf_counter()
    r = _tool_flow(t, "fail").run_sync("x")
    assert time.perf_counter() - t0 < 3
    invariant(r)
    assert isinstance(r.error, ToolError) and r.error.details["kind"] == kind
    assert [s.status for s in r.steps if s.step == "look"] == ["failed"]


def test_tool_failure_continue_mode_routes_on_error():
    r = _tool_flow(raises, "continue").run_sync("x")
    invariant(r)
    assert r.status == "ok" and r.answer == "lookup=None err=exception"
    look = [s for s in r.steps if s.step == "look"][0]
    assert look.status == "error_continued" and isinstance(look.error, ToolError)


def test_step_timeout_and_user_exception_are_recorded():
    async def slow(t: Ticket) -> Out:
        await asyncio.sleep(5)
        return Out(answer="x")

    r = Workflow("w", [Step("slow", fn=slow, timeout_s=0.1)], input_type=Ticket,
                 output="answer").run_sync("x")
    invariant(r)
    assert isinstance(r.error, SlmflowError) and "timed out" in r.error.message


@pytest.mark.parametrize("value,needle", [("", "at least 1 character"),
                                          ("x" * 50_000, "at most 20000"),
                                          ({"wrong": 1}, "text")])
def test_bad_requests_fail_explicitly(value, needle):
    wf = Workflow("w", [Step("s", fn=lambda s: "x", output_key="answer")], input_type=Ticket,
                  output="answer")
    r = wf.run_sync(value)
    invariant(r)
    assert isinstance(r.error, HandoffError) and needle in r.error.message
    assert r.error.details["edge"] == "input -> s"
    assert r.handoffs[0].status == "failed"


class Verdict(BaseModel):
    approved: bool


def _verified(writer, verdicts, fallback=None, check=None):
    return Workflow("w", [
        Step("write", agent=Agent("writer", writer, input_type=Ticket, output_type=str,
                                  fallback=fallback), output_key="answer"),
        Step("verify", agent=Agent("verifier", verdicts, output_type=Verdict),
             verifies="write", check=check)], input_type=Ticket, output="answer")


def test_verifier_rejection_escalates_and_reverifies():
    r = _verified(fm("bad draft", "small"), ScriptedModel([{"approved": False},
                                                           {"approved": True}]),
                  fallback=fm("good draft", "big")).run_sync("x")
    invariant(r)
    assert r.status == "escalated" and r.answer == "good draft"
    assert [(s.step, s.status, s.escalated) for s in r.steps] == [
        ("write", "ok", False), ("verify", "rejected", False), ("write", "ok", True),
        ("verify", "approved", False)]
    assert "verifier verify rejected" in r.escalations[0].escalation_reason


def test_verifier_rejection_without_fallback_is_explicit():
    r = _verified(fm("draft"), fm({"approved": True}),
                  check=lambda s: "too short" if len(s["answer"]) < 10 else None).run_sync("x")
    invariant(r)
    assert r.status == "rejected" and "too short" in r.detail and "no fallback" in r.detail
    with pytest.raises(HandoffError, match="rejected"):
        r.raise_for_status()


def test_no_rerun_when_the_fallback_is_the_same_model_at_temperature_zero(monkeypatch):
    """Issue 16: a rejected draft re-run greedily on the same model repeats itself; the run is
    rejected at once, saying why, with one writer call instead of two."""
    calls = []
    writer = FunctionModel(lambda m, s: calls.append(1) or "draft", name="same")
    r = _verified(writer, ScriptedModel([{"approved": False}, {"approved": True}]),
                  fallback=writer).run_sync("x")
    invariant(r)
    assert r.status == "rejected" and "its own model at temperature 0" in r.detail
    assert len(calls) == 1 and [s.step for s in r.steps] == ["write", "verify"]
    # the old behaviour stays reachable for benchmarks
    monkeypatch.setenv("SLMFLOW_ESCALATE_TO_SAME_MODEL", "1")
    r = _verified(writer, ScriptedModel([{"approved": False}, {"approved": True}]),
                  fallback=writer).run_sync("x")
    assert r.status == "escalated" and len(calls) == 3


def test_same_model_name_counts_as_the_same_model():
    a = Agent("w", "smollm2-135m", fallback="smollm2-135m")
    assert a.fallback_repeats_primary and not a.can_escalate
    assert Agent("w", "smollm2-135m", fallback="qwen2.5-coder-1.5b").can_escalate
    assert Agent("w", "smollm2-135m", fallback="smollm2-135m", adapter="x").can_escalate
    assert Agent("w", "smollm2-135m", fallback="smollm2-135m", temperature=0.7).can_escalate


def test_context_comes_first_in_the_system_message():
    class In(BaseModel):
        text: str
        draft: str

    a = Agent("v", fm({"approved": True}), instructions="Judge the reply.", input_type=In,
              context="Ticket: {text}", prompt="Reply: {draft}", output_type=Verdict)
    msgs = a.messages(In(text="refund please", draft="ok"))
    assert msgs[0].content == "Ticket: refund please\n\nJudge the reply."
    assert msgs[1].content == "Reply: ok"
    with pytest.raises(ConfigError, match="context references"):
        Agent("v", fm("x"), input_type=In, context="{nope}")


def test_low_confidence_escalation_shows_in_run():
    a = Agent("w", fm("meh", "small", 0.1), input_type=Ticket, fallback=fm("sure", "big", 0.9),
              confidence_threshold=0.5)
    r = Workflow("w", [Step("w", agent=a, output_key="answer")], input_type=Ticket,
                 output="answer").run_sync("x")
    assert r.status == "escalated" and r.answer == "sure"
    row = step_rows(r)[0]
    assert row["escalated"] == "yes" and row["model"] == "big" and row["conf"] == "0.90"


def test_swapping_one_agent_keeps_the_rest():
    a = Agent("w", fm("one", "m1"), input_type=Ticket)
    b = Agent("v", fm({"approved": True}, "m2"), output_type=Verdict)
    wf = Workflow("w", [Step("w", agent=a, output_key="answer"),
                        Step("v", agent=b, verifies="w")], input_type=Ticket, output="answer")
    wf2 = wf.with_agent("w", a.with_model(fm("two", "m3")))
    assert wf.run_sync("x").answer == "one" and wf2.run_sync("x").answer == "two"
    assert wf2.agents["v"] is b


# ---- build-time errors -------------------------------------------------------------------------

def _s(name, **kw):
    return Step(name, fn=lambda s: "x", output_key=name, **kw)


def test_cycle_is_rejected_at_build():
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        Workflow("w", [_s("a"), _s("b", next="a")])


def test_unknown_target_and_unreachable_and_duplicates():
    with pytest.raises(ConfigError, match="unknown step 'nope'"):
        Workflow("w", [_s("a", next="nope")])
    with pytest.raises(ConfigError, match="never be reached"):
        Workflow("w", [_s("a", next="end"), _s("b")])
    with pytest.raises(ConfigError, match="used twice"):
        Workflow("w", [_s("a"), _s("a")])


def test_missing_input_field_is_caught_at_build():
    def use(d: DraftIn) -> Out:
        return Out(answer="x")

    with pytest.raises(ConfigError, match=r"needs \['order_id'\]"):
        Workflow("w", [Step("use", fn=use)], input_type=Ticket)


def test_unresolvable_hints_are_an_error_not_silently_untyped():
    class Local(BaseModel):
        x: int

    def f(v: Local) -> Out:
        return Out(answer="x")

    with pytest.raises(ConfigError, match="cannot resolve the type hints"):
        Workflow("w", [Step("f", fn=f)])


def test_verifier_must_target_agent_step():
    with pytest.raises(ConfigError, match="not an agent step"):
        Workflow("w", [_s("a"), _s("b", verifies="a")])


def test_agent_model_failure_is_recorded_with_model_identity():
    a = Agent("w", ScriptedModel(["not json", "not json"], name="small"), input_type=Ticket,
              output_type=Out)
    r = Workflow("w", [Step("w", agent=a)], input_type=Ticket, output="answer").run_sync("x")
    invariant(r)
    from slmflow.errors import StructuredOutputError

    assert isinstance(r.error, StructuredOutputError)
    assert r.steps[0].status == "failed" and r.steps[0].model == "small"


def test_spans_for_workflow_agents_tools_and_handoffs():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from slmflow import tracing

    exp = InMemorySpanExporter()
    tracing.configure(store=False, exporters=[exp], batch=False)
    try:
        small = fm({"order_id": "x"}, "small")
        big = fm({"order_id": "A-9"}, "big")
        r = _pipeline(small, fallback=big).run_sync("t")
        assert r.status == "escalated"
        _tool_flow(raises, "continue").run_sync("x")
        spans = exp.get_finished_spans()
        names = [s.name for s in spans]
        assert "invoke_workflow w" in names and "invoke_agent extractor" in names
        assert "execute_tool raises" in names
        h = [s for s in spans if s.name == "handoff extract -> draft"]
        assert h and h[0].attributes["slmflow.handoff.status"] == "escalated"
        agent_spans = [s for s in spans if s.name == "invoke_agent extractor"]
        assert any(ev.name == "slmflow.escalation" for s in agent_spans for ev in s.events)
    finally:
        tracing.reset() if hasattr(tracing, "reset") else None
