"""Evals on fakes: registry, evaluators' arithmetic, datasets and bad rows, error rows, the gate,
reports, evaluation events on traces, workflow scenarios, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from slmflow import Agent, FunctionModel
from slmflow.errors import ConfigError
from slmflow.evals import (Case, EvalResult, Evaluator, compare, create, list_evaluators,
                           load_cases, register, run_suite, stratified_sample)
from slmflow.evals.report import to_html

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "examples" / "support"


class Route(BaseModel):
    intent: str


def _router(answers: dict[str, str], delay: float = 0.0, fail_on: str | None = None) -> Agent:
    def fn(messages, spec):
        text = messages[-1].content
        if fail_on and fail_on in text:
            raise RuntimeError("boom in the model")
        return {"intent": answers.get(text, "other")}

    return Agent(name="router", model=FunctionModel(fn, name="fake", delay_s=delay),
                 output_type=Route)


# ---- registry ----------------------------------------------------------------------------------

def test_registry_lists_builtins_and_rejects_unknown():
    names = {r["name"] for r in list_evaluators()}
    assert {"routing", "exact_match", "fields", "json_schema", "groundedness", "faithfulness",
            "judge", "pii", "toxicity"} <= names
    assert all(r["agreement"] for r in list_evaluators())
    with pytest.raises(ConfigError, match="unknown evaluator 'nope'"):
        create("nope")
    with pytest.raises(ConfigError, match="judge evaluator needs a rubric"):
        create("judge")


def test_register_custom_and_duplicate():
    @register
    class Shouty(Evaluator):
        name = "test_shouty"

        def evaluate(self, case, output):
            return EvalResult(1.0 if str(output).isupper() else 0.0)

    assert isinstance(create("test_shouty"), Shouty)
    assert create({"name": "exact_match", "field": "x"}).field == "x"
    with pytest.raises(ConfigError, match="already registered"):
        @register
        class Other(Evaluator):
            name = "test_shouty"


# ---- evaluator arithmetic ----------------------------------------------------------------------

def test_routing_confusion_and_per_class():
    ev = create("routing", field="intent")
    data = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ("c", "a")]
    rows = []
    for i, (e, p) in enumerate(data):
        c = Case(id=str(i), input="x", expected=e)
        rows.append((c, Route(intent=p), ev.evaluate(c, Route(intent=p))))
    agg = ev.aggregate(rows)
    assert agg["accuracy"] == pytest.approx(3 / 5)
    pc = agg["details"]["per_class"]
    assert pc["a"]["precision"] == pytest.approx(1 / 2)
    assert pc["a"]["recall"] == pytest.approx(1 / 2)
    assert pc["b"]["precision"] == pytest.approx(2 / 3) and pc["b"]["recall"] == 1.0
    assert pc["c"]["recall"] == 0.0
    conf = agg["details"]["confusion"]
    assert conf["labels"] == ["a", "b", "c"]
    assert conf["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    f1b = 2 * (2 / 3) / (2 / 3 + 1)
    assert agg["macro_f1"] == pytest.approx((0.5 + f1b + 0.0) / 3)


def test_fields_precision_recall():
    class F(BaseModel):
        order_id: str | None
        urgent: bool

    ev = create("fields")
    cases = [Case(id="1", input="", expected={"order_id": "A-1", "urgent": True}),
             Case(id="2", input="", expected={"order_id": None, "urgent": False}),
             Case(id="3", input="", expected={"order_id": "B-2", "urgent": False})]
    outs = [F(order_id="a-1", urgent=True), F(order_id="X-9", urgent=False),
            F(order_id=None, urgent=True)]
    rows = [(c, o, ev.evaluate(c, o)) for c, o in zip(cases, outs)]
    assert [r.score for _, _, r in rows] == [1.0, 0.5, 0.0]
    assert rows[0][2].ok and not rows[1][2].ok
    agg = ev.aggregate(rows)
    oid = agg["details"]["per_field"]["order_id"]
    # tp=1 (A-1, case-insensitive), fp=1 (X-9 where none), fn=1 (B-2 missed)
    assert (oid["precision"], oid["recall"]) == (0.5, 0.5)
    assert agg["field_accuracy"] == pytest.approx(0.5)


def test_json_schema_and_exact_match_and_groundedness():
    js = create("json_schema", schema=Route)
    c = Case(id="1", input="")
    assert js.evaluate(c, '{"intent": "x"}').ok
    assert js.evaluate(c, "{nope").label == "not_json"
    assert js.evaluate(c, {"intent": 3}).label == "invalid"
    em = create("exact_match")
    assert em.evaluate(Case(id="1", input="", expected=" Paris "), "paris").ok
    g = create("groundedness")
    ctx = Case(id="1", input="", context=[{"text": "Refunds take 5-7 business days."}])
    assert g.evaluate(ctx, "Refunds take 5-7 business days").ok
    assert not g.evaluate(ctx, "Refunds are paid in bitcoin tomorrow").ok


def test_pii_and_toxicity_evaluators_use_guardrails():
    pytest.importorskip("slmflow.guardrails")
    c = Case(id="1", input="")
    pii = create("pii")
    assert pii.evaluate(c, "Your order ships tomorrow.").ok
    r = pii.evaluate(c, {"reply": "Write to j.doe@example.com"})
    assert not r.ok and r.label == "pii" and "email" in r.explanation
    tox = create("toxicity")
    assert tox.evaluate(c, "Thanks for your patience!").ok
    r = tox.evaluate(c, "You are an idiot.")
    assert not r.ok and r.label == "toxic" and r.score < 0.5


def test_guardrail_evaluators_fail_clearly_when_guardrails_is_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_guardrails(name, globals=None, locals=None, fromlist=(), level=0):
        if "guardrails" in name or (fromlist and "guardrails" in fromlist):
            raise ImportError("No module named 'slmflow.guardrails'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_guardrails)
    with pytest.raises(ConfigError, match="slmflow.guardrails"):
        create("pii")
    with pytest.raises(ConfigError, match="slmflow.guardrails"):
        create("toxicity")


# ---- datasets ----------------------------------------------------------------------------------

def test_load_cases_keeps_bad_rows_as_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "input": "hi", "expected": "x"}\n{not json\n'
                 '{"id": "c", "expected": "y"}\n["a list"]\n'
                 '{"id": "a", "input": "dup"}\n{"input": "no id", "expected": "z"}\n')
    cs = load_cases(p)
    assert [c.id for c in cs.cases] == ["a", "c-6"]
    reasons = {e.id: e.reason for e in cs.errors}
    assert len(cs.errors) == 4
    assert "not JSON" in reasons["c-2"] and "missing field 'input'" in reasons["c"]
    assert "duplicate" in reasons["a"]
    csv = tmp_path / "c.csv"
    csv.write_text("text,category\nhello,greet\nbad,row,extra\nbye,leave\n")
    cs = load_cases(csv, input_field="text", expected_field="category")
    assert [c.input for c in cs.cases] == ["hello", "bye"] and "extra cell" in cs.errors[0].reason
    y = tmp_path / "c.yaml"
    y.write_text("cases:\n  - {id: q1, input: {text: hi}, expected: {x: 1}}\n")
    assert load_cases(y).cases[0].input == {"text": "hi"}
    with pytest.raises(ConfigError, match="dataset not found"):
        load_cases(tmp_path / "missing.jsonl")


def test_stratified_sample_is_fixed_and_balanced():
    cases = [Case(id=str(i), input=str(i), expected=f"k{i % 7}") for i in range(700)]
    a = stratified_sample(cases, 70, seed=0)
    assert [c.id for c in a] == [c.id for c in stratified_sample(cases, 70, seed=0)]
    counts = {}
    for c in a:
        counts[c.expected] = counts.get(c.expected, 0) + 1
    assert set(counts.values()) == {10}
    assert [c.id for c in a] != [c.id for c in stratified_sample(cases, 70, seed=1)]


# ---- the suite runner: errored vs failed -------------------------------------------------------

def test_suite_errors_are_counted_apart_from_failures(tmp_path):
    class Boom(Evaluator):
        name = "boom"

        def evaluate(self, case, output):
            if case.id == "e":
                raise ValueError("evaluator bug")
            return EvalResult(1.0)

    p = tmp_path / "c.jsonl"
    rows = [{"id": "ok", "input": "hello", "expected": "greet"},
            {"id": "bad", "input": "bye", "expected": "greet"},
            {"id": "t", "input": "raise please", "expected": "x"},
            {"id": "e", "input": "hello", "expected": "greet"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    agent = _router({"hello": "greet", "bye": "leave"}, fail_on="raise")
    rep = run_suite(agent, load_cases(p), [create("routing", field="intent"), Boom()],
                    concurrency=3)
    st = {r.id: r for r in rep.rows}
    assert rep.summary == {"total": 5, "passed": 1, "failed": 1, "errored": 3}
    assert st["bad"].status == "failed"
    assert "expected 'greet'" in st["bad"].evals["routing"].explanation
    assert st["t"].error_stage == "target" and "boom in the model" in st["t"].error
    assert st["e"].error_stage == "evaluator" and "evaluator bug" in st["e"].error
    assert st["c-5"].error_stage == "data"
    # accuracy over the rows routing scored: ok, bad, e
    assert rep.scores["accuracy"] == pytest.approx(2 / 3)
    assert rep.scores["ok_rate"] == pytest.approx(2 / 5)
    assert st["ok"].model == "fake" and st["ok"].latency_s is not None
    json.loads(rep.to_json())


def test_judge_timeout_is_an_error_not_a_failure():
    slow = FunctionModel(lambda m, s: {"verdict": "pass", "score": 5, "reason": "fine"},
                         name="slow-judge", delay_s=0.5)
    fast = FunctionModel(lambda m, s: {"verdict": "fail", "score": 1, "reason": "wrong"},
                         name="fast-judge")
    cases = [Case(id="1", input="q", expected="a")]
    rep = run_suite(lambda x: "answer", cases, [create("judge", rubric="Is it right?",
                                                       model=slow, timeout_s=0.05)])
    assert rep.summary["errored"] == 1 and rep.summary["failed"] == 0
    assert "JudgeTimeoutError" in rep.rows[0].error
    rep = run_suite(lambda x: "answer", cases, [create("judge", rubric="Is it right?",
                                                       model=fast)])
    r = rep.rows[0]
    assert r.status == "failed" and r.evals["judge"].label == "fail"
    assert r.evals["judge"].explanation == "wrong"
    # the judge saw the rubric and the case, and answered under the verdict schema
    msgs = fast.calls[0]
    assert "Is it right?" in msgs[0].content and "ANSWER: answer" in msgs[-1].content


def test_concurrency_overlaps_cases():
    import time

    agent = _router({}, delay=0.2)
    cases = [Case(id=str(i), input=f"t{i}", expected="other") for i in range(6)]
    t0 = time.perf_counter()
    rep = run_suite(agent, cases, ["routing"], concurrency=6)
    assert time.perf_counter() - t0 < 0.2 * 6 * 0.6
    assert rep.scores["accuracy"] == 1.0 and rep.concurrency == 6


# ---- gate and reports --------------------------------------------------------------------------

def test_gate_detects_drops_and_missing_metrics(tmp_path):
    base = {"scores": {"accuracy": 0.80, "macro_f1": 0.70}}
    assert compare({"accuracy": 0.79, "macro_f1": 0.70}, base, 0.02).passed
    g = compare({"accuracy": 0.75, "macro_f1": 0.71}, base, 0.02)
    assert not g.passed and list(g.drops) == ["accuracy"] and g.exit_code == 1
    g = compare({"accuracy": 0.9}, base, 0.02)
    assert not g.passed and g.missing == ["macro_f1"]
    assert compare({"accuracy": 0.75}, base, 0.02, metrics=["macro_f1"]).missing == ["macro_f1"]
    p = tmp_path / "b.json"
    p.write_text(json.dumps(base))
    assert compare({"accuracy": 0.8, "macro_f1": 0.7}, p).passed
    with pytest.raises(ConfigError):
        compare({"accuracy": 1}, tmp_path / "nope.json")


def test_html_report_is_self_contained():
    agent = _router({"a": "x", "b": "y", "c": "x"})
    cases = [Case(id=k, input=k, expected=v) for k, v in
             {"a": "x", "b": "x", "c": "x", "d": "y"}.items()]
    rep = run_suite(agent, cases, [create("routing", field="intent")])
    html = to_html(rep, compare(rep, {"accuracy": 0.9}, 0.02))
    assert "<svg" in html and "confusion matrix" in html and "FAILED" in html
    assert "latency" in html and "errored and failed rows" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<script" not in html


def test_evaluations_are_attached_to_traces(tmp_path):
    from slmflow import tracing
    from slmflow.tracing.store import SpanStore

    db = tmp_path / "spans.db"
    tracing.configure(enabled=True, store=True, db_path=db, batch=False)
    try:
        rep = run_suite(_router({"hi": "greet"}),
                        [Case(id="c1", input="hi", expected="greet")], ["routing"])
        tracing.force_flush()
        spans = SpanStore(db).trace(rep.rows[0].trace_id)
    finally:
        tracing.configure(enabled=False)
    names = [s["name"] for s in spans]
    assert "eval_case router/c1" in names and "invoke_agent router" in names
    ev = [e for s in spans for e in s["events"] if e["name"] == "gen_ai.evaluation.result"]
    assert ev and ev[0]["attributes"]["gen_ai.evaluation.name"] == "routing"
    assert ev[0]["attributes"]["gen_ai.evaluation.score.value"] == 1.0


# ---- workflow scenarios on fakes ---------------------------------------------------------------

class _LooseFields(BaseModel):
    """The extractor's output type as it was before issue 16: no id patterns of its own."""
    order_id: str | None = None
    account_id: str | None = None
    urgent: bool


def _support(category="refund", draft=None, extract=None, approve=True, extract_type=None):
    from dataclasses import replace

    from slmflow.workflow import load_workflow

    extract = extract or [{"order_id": "A-1042", "account_id": None, "urgent": False}]
    n = {"i": 0}

    def ex(m, s):
        n["i"] += 1
        return extract[min(n["i"], len(extract)) - 1]

    draft = draft or ("Order A-1042: if an item arrives broken or damaged, we refund it in "
                      "full, including shipping, or send a free replacement.")
    wf = load_workflow(SUPPORT / "workflow.yaml")
    swaps = {"router": FunctionModel(lambda m, s: {"category": category}, name="f-router"),
             "extract": FunctionModel(ex, name="f-extract"),
             "reason": FunctionModel(lambda m, s: {"policy": "damaged-items#0",
                                                   "record": "A-1042 delivered", "draft": draft},
                                     name="f-reason"),
             "verify": FunctionModel(lambda m, s: {"reason": "ok" if approve else "wrong_fact",
                                                   "approved": approve}, name="f-verify")}
    for step, m in swaps.items():
        wf = wf.with_agent(step, wf.agents[step].with_model(m).with_fallback(m))
    if extract_type is not None:
        wf = wf.with_agent("extract", replace(wf.agents["extract"], output_type=extract_type))
    return wf


SCEN = [{"id": "refund", "input": {"text": "My order A-1042 arrived broken, I want a refund"},
         "expect": {"path": ["router", "retrieve", "extract", "order_status", "reason",
                             "verify", "answer"], "not_path": ["account_status"],
                    "handoffs": ["order_status -> reason", "tidy -> verify"],
                    "state": {"category": "refund", "order_id": "A-1042"},
                    "answer_contains": ["A-1042"], "faithful": True}}]


def _without_check(wf):
    """`wf` with its verify step judged by the verifier model alone (no check function)."""
    from dataclasses import replace

    from slmflow.workflow.graph import Step, Workflow

    nodes = [replace(n, check=None) if isinstance(n, Step) and n.name == "verify" else n
             for n in wf.nodes]
    return Workflow(wf.name, nodes, input_type=wf.input_type, output=wf.output,
                    description=wf.description, max_input_chars=wf.max_input_chars)


def _checks(rep):
    r = rep.rows[0]
    return r, {k: v.ok for k, v in r.evals.items()}


def test_scenario_passes_on_a_good_run_and_reads_the_trace():
    from slmflow.evals import run_scenarios

    rep = run_scenarios(_support(), SCEN)
    r, ok = _checks(rep)
    assert r.status == "passed", (r.error, {k: v.explanation for k, v in r.evals.items()})
    assert r.evals["scenario.completed"].explanation == "from trace"
    assert r.trace_id and rep.meta["agent_latency"]["refund"]["router"]


def test_scenario_detects_wrong_path_malformed_handoff_and_unfaithful_answer():
    from slmflow.evals import run_scenarios

    # wrong-path routing: a refund routed as billing runs the account lookup
    r, ok = _checks(run_scenarios(_support(category="billing"), SCEN))
    assert not ok["scenario.path"] and "wrong path" in r.evals["scenario.path"].explanation
    assert not ok["scenario.outcome"]
    # malformed handoff: extraction puts an order id in account_id; repaired, reported, strict fails
    bad = [{"order_id": "A-1042", "account_id": "A-1042", "urgent": False},
           {"order_id": "A-1042", "account_id": None, "urgent": False}]
    strict = [dict(SCEN[0], expect={**SCEN[0]["expect"], "strict_handoffs": True})]
    r, ok = _checks(run_scenarios(_support(extract=bad, extract_type=_LooseFields), strict))
    assert not ok["scenario.handoffs"]
    assert ("malformed handoff order_status -> reason (repaired; produced by extract)"
            == r.evals["scenario.handoffs"].explanation)
    # the shipped extractor's own type carries the id patterns: the same bad output is fixed by
    # the extractor's own repair step, and no malformed handoff reaches the reasoner
    r, ok = _checks(run_scenarios(_support(extract=bad), strict))
    assert ok["scenario.handoffs"], r.evals["scenario.handoffs"].explanation
    # wrong-but-plausible: passes the pipeline's verifier, not faithful to the passages. The
    # reference verify step's grounding check rejects this draft since session 12 (each sentence
    # must take 70% of its words from one passage: test_support_example), so the run here is the
    # same pipeline with the verifier model alone, what the faithfulness metric guards against
    plausible = ("Order A-1042: a broken item is refunded in full, including shipping, once our "
                 "courier collects it from your neighbour with a signed customs form.")
    r, ok = _checks(run_scenarios(_without_check(_support(draft=plausible)), SCEN))
    assert ok["scenario.completed"] and ok["scenario.path"]
    assert not ok["scenario.faithfulness"] and r.status == "failed"
    # dropped request: the verifier rejects, so no verified answer comes back
    r, ok = _checks(run_scenarios(_support(approve=False), SCEN))
    assert not ok["scenario.completed"]
    assert r.evals["scenario.completed"].label == "dropped:rejected"


def test_shipped_scenarios_file_validates():
    from slmflow.evals import load_scenarios

    sf, cs = load_scenarios(SUPPORT / "scenarios.yaml")
    assert sf.workflow == "workflow.yaml" and not cs.errors and len(cs.cases) >= 5


# ---- CLI ---------------------------------------------------------------------------------------

AGENT_PY = '''
from pydantic import BaseModel
from slmflow import Agent, FunctionModel

class R(BaseModel):
    intent: str

def fn(messages, spec):
    t = messages[-1].content
    return {"intent": "greet" if t.startswith("h") else "{WRONG}"}

agent = Agent(name="tiny", model=FunctionModel(fn, name="fake"), output_type=R)
'''


def test_cli_agent_suite_reports_and_gate(tmp_path):
    from typer.testing import CliRunner

    from slmflow.cli import app

    (tmp_path / "good.py").write_text(AGENT_PY.replace("{WRONG}", "leave"))
    (tmp_path / "bad.py").write_text(AGENT_PY.replace("{WRONG}", "greet"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "input": "hello", "expected": "greet"}\n'
                    '{"id": "2", "input": "bye", "expected": "leave"}\n{oops\n')
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "list"])
    assert res.exit_code == 0 and "routing" in res.output and "faithfulness" in res.output
    base = tmp_path / "base.json"
    res = runner.invoke(app, ["eval", "agent", f"{tmp_path}/good.py:agent", "--data", str(data),
                              "-e", "routing", "--field", "intent", "--no-progress",
                              "--save-baseline", str(base), "--html", str(tmp_path / "r.html"),
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "1 errored" in res.output and json.loads(base.read_text())["scores"]["accuracy"] == 1.0
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    res = runner.invoke(app, ["eval", "agent", f"{tmp_path}/bad.py:agent", "--data", str(data),
                              "-e", "routing", "--field", "intent", "--no-progress",
                              "--baseline", str(base), "--tolerance", "0.02"])
    assert res.exit_code == 1 and "regression gate FAILED" in res.output
    assert "DROP accuracy: 1.0000 -> 0.5000" in res.output


def test_import_evals_stays_light():
    code = ("import sys, slmflow, slmflow.evals, slmflow.cli.evals; "
            "heavy = [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_suite_files_load_cleanly():
    import yaml

    suite = yaml.safe_load((ROOT / "examples/banking77/router_suite.yaml").read_text())
    cs = load_cases(ROOT / "examples/banking77" / suite["data"], input_field=suite["input_field"],
                    expected_field=suite["expected_field"], limit=suite["limit"])
    assert len(cs.cases) == 308 and not cs.errors and len({c.expected for c in cs.cases}) == 77
    d = ROOT / "src/slmflow/evals/datasets"
    for f in ("faithfulness", "support_router", "support_extract", "support_reason",
              "support_verifier"):
        cs = load_cases(d / f"{f}.jsonl")
        assert cs.cases and not cs.errors, f
    faith = load_cases(d / "faithfulness.jsonl").cases
    assert sum(c.expected == "faithful" for c in faith) == 26 and len(faith) == 52
