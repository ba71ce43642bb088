"""Tracing: spans land in the local store with the right tree and GenAI attributes; cost, views,
CLI, decorators; and tracing never breaks a run (collector down, disk full, bad attributes)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import time

import pytest
from typer.testing import CliRunner

from slmflow import FunctionModel, ModelInfo, Response, Usage
from slmflow import tracing
from slmflow.cli import app
from slmflow.tracing import attrs as A
from slmflow.tracing import views
from slmflow.tracing.cost import Price, PriceTable, configure_prices
from slmflow.tracing.setup import _state
from slmflow.tracing.store import SpanStore, SQLiteSpanExporter


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "spans.db"
    tracing.configure(db_path=path, batch=False)
    yield path
    tracing.reset()
    configure_prices(None)


def _by_name(spans):
    return {s["name"]: s for s in spans}


def _echo_model(name="echo", **kw):
    return FunctionModel(lambda msgs, spec: "ok " + msgs[-1].content, name=name, **kw)


def run_pipeline(model=None, *, fail_tool=False):
    """A small hand-made workflow through the facade, as agents/workflow instrument it."""
    model = tracing.Traced(model or _echo_model())
    with tracing.span("invoke_workflow", "support",
                      attributes={A.WORKFLOW_NAME: "support"}) as wf:
        with tracing.span("invoke_agent", "triage", attributes={A.AGENT_NAME: "triage"}):
            r1 = model.generate_sync("classify this ticket")
            with tracing.span("execute_tool", "lookup", attributes={A.TOOL_NAME: "lookup"}):
                if fail_tool:
                    raise RuntimeError("lookup backend down")
        with tracing.handoff("triage", "resolver", status="validated"):
            pass
        with tracing.span("invoke_agent", "resolver", attributes={A.AGENT_NAME: "resolver"}):
            r2 = model.generate_sync("answer this ticket")
            tracing.record_escalation("low confidence", source="resolver", target="human")
        tracing.record_evaluation("exact_match", score=1.0, label="pass", sp=wf)
        return tracing.current_trace_id(), r1, r2


def test_nested_spans_land_in_store_as_a_tree(db):
    trace_id, r1, r2 = run_pipeline()
    assert r1.text == "ok classify this ticket"
    spans = SpanStore(db).trace(trace_id)
    names = [s["name"] for s in spans]
    assert names == ["invoke_workflow support", "invoke_agent triage", "chat echo",
                     "execute_tool lookup", "handoff triage -> resolver",
                     "invoke_agent resolver", "chat echo"]
    by_id = {s["span_id"]: s for s in spans}
    parent = {s["name"] + str(i): by_id[s["parent_id"]]["name"] if s["parent_id"] else None
              for i, s in enumerate(spans)}
    assert parent == {"invoke_workflow support0": None,
                      "invoke_agent triage1": "invoke_workflow support",
                      "chat echo2": "invoke_agent triage",
                      "execute_tool lookup3": "invoke_agent triage",
                      "handoff triage -> resolver4": "invoke_workflow support",
                      "invoke_agent resolver5": "invoke_workflow support",
                      "chat echo6": "invoke_agent resolver"}
    assert {s["trace_id"] for s in spans} == {trace_id}
    wf = spans[0]
    assert wf["attributes"][A.OPERATION_NAME] == "invoke_workflow"
    assert wf["attributes"][A.WORKFLOW_NAME] == "support" and wf["workflow"] == "support"
    ev = [e for e in wf["events"] if e["name"] == A.EVALUATION_EVENT]
    assert ev and ev[0]["attributes"] == {A.EVALUATION_NAME: "exact_match",
                                          A.EVALUATION_SCORE_VALUE: 1.0,
                                          A.EVALUATION_SCORE_LABEL: "pass"}
    resolver = spans[5]
    assert resolver["attributes"][A.ESCALATED] is True
    assert resolver["events"][0]["name"] == A.ESCALATION_EVENT
    assert resolver["events"][0]["attributes"][A.ESCALATION_TARGET] == "human"
    h = spans[4]["attributes"]
    assert (h[A.OPERATION_NAME], h[A.HANDOFF_SOURCE], h[A.HANDOFF_TARGET], h[A.HANDOFF_STATUS]) \
        == ("handoff", "triage", "resolver", "validated")
    assert spans[3]["attributes"][A.TOOL_NAME] == "lookup"
    assert spans[1]["agent"] == "triage"


def test_chat_span_attributes_and_cost(db):
    model = FunctionModel(lambda m, s: Response(
        text="fine", model=ModelInfo("function", "tiny", adapter="support-v3"),
        usage=Usage(1000, 200), latency_s=1.8, finish_reason="length", confidence=0.75))
    model.info = ModelInfo("function", "tiny", adapter="support-v3")
    configure_prices({"compute_usd_per_hour": 0.5})
    with tracing.span("invoke_agent", "a", attributes={A.AGENT_NAME: "a"}):
        tracing.Traced(model).generate_sync("hi", settings=None)
    (chat,) = [s for s in SpanStore(db).trace("last") if s["operation"] == "chat"]
    a = chat["attributes"]
    assert chat["name"] == "chat tiny+support-v3"
    assert a[A.PROVIDER_NAME] == "function"
    assert a[A.REQUEST_MODEL] == "tiny"
    assert a[A.RESPONSE_MODEL] == "tiny+support-v3"  # the adapter is part of the identity
    assert a[A.ADAPTER] == "support-v3"
    assert a[A.USAGE_INPUT_TOKENS] == 1000 and a[A.USAGE_OUTPUT_TOKENS] == 200
    assert a[A.RESPONSE_FINISH_REASONS] == ["length"]
    assert a[A.REQUEST_MAX_TOKENS] == 256 and a[A.REQUEST_TEMPERATURE] == 0.0
    assert a[A.CONFIDENCE] == 0.75 and chat["confidence"] == 0.75
    assert a[A.COST_USD] == pytest.approx(0.5 * 1.8 / 3600)  # local: compute $/h x latency
    assert A.INPUT_MESSAGES not in a and A.OUTPUT_MESSAGES not in a  # content is opt-in


def test_price_table():
    t = PriceTable({"gpt-4o-mini": {"input_per_1m": 0.15, "output_per_1m": 0.60},
                    "qwen2.5-*": Price(usd_per_hour=1.0)}, compute_usd_per_hour=0.2)
    u = Usage(2_000_000, 1_000_000)
    assert t.cost(ModelInfo("openai", "gpt-4o-mini"), u, 9.0) == pytest.approx(0.3 + 0.6)
    assert t.cost(ModelInfo("llama.cpp", "qwen2.5-coder-0.5b"), u, 36.0) == pytest.approx(0.01)
    assert t.cost(ModelInfo("llama.cpp", "smollm2-135m"), u, 36.0) == pytest.approx(0.002)
    assert t.cost(ModelInfo("openai", "unknown-hosted"), u, 1.0) is None  # unknown, not free


def test_price_table_from_yaml(tmp_path):
    p = tmp_path / "prices.yaml"
    p.write_text("compute_usd_per_hour: 3.6\nmodels:\n  big: {input_per_1m: 1, output_per_1m: 2}\n")
    t = PriceTable.from_file(p)
    assert t.cost(ModelInfo("openai", "big"), Usage(1_000_000, 1_000_000), 0) == 3.0
    assert t.cost(ModelInfo("transformers", "x"), Usage(), 2.0) == pytest.approx(0.002)


def test_content_capture_is_opt_in(tmp_path):
    tracing.configure(db_path=tmp_path / "s.db", batch=False, capture_content=True)
    try:
        tracing.Traced(_echo_model()).generate_sync("secret question")
        (chat,) = SpanStore(tmp_path / "s.db").trace("last")
        a = chat["attributes"]
        assert json.loads(a[A.INPUT_MESSAGES])[0]["parts"][0]["content"] == "secret question"
        assert "ok secret question" in a[A.OUTPUT_MESSAGES]
    finally:
        tracing.reset()


def test_views_rollup_and_stats(db):
    for _ in range(3):
        run_pipeline()
    with pytest.raises(RuntimeError):
        run_pipeline(fail_tool=True)
    store = SpanStore(db)
    spans = store.trace("last")
    roots = views.build_tree(spans)
    assert len(roots) == 1
    root = roots[0]
    chats = [s for s in spans if s["operation"] == "chat"]
    assert root["total_input_tokens"] == sum(s["input_tokens"] for s in chats) > 0
    assert root["status"] == "ERROR" and "lookup backend down" in root["status_message"]
    tool = next(s for s in spans if s["operation"] == "execute_tool")
    assert tool["status"] == "ERROR" and tool["attributes"][A.ERROR_TYPE] == "RuntimeError"
    rows = {r["agent"]: r for r in views.stats(store.spans(), by="agent")}
    assert rows["triage"]["calls"] == 4 and rows["resolver"]["calls"] == 3
    assert rows["triage"]["error_rate"] == pytest.approx(0.25)
    assert rows["resolver"]["error_rate"] == 0
    assert rows["resolver"]["escalation_rate"] == 1.0 and rows["triage"]["escalation_rate"] == 0
    assert rows["triage"]["p50_ms"] <= rows["triage"]["p95_ms"]
    assert rows["triage"]["input_tokens"] == 4 * 3  # "classify this ticket", four times
    assert rows["triage"]["cost_usd"] > 0
    models = views.stats(store.spans(), by="model")
    assert models[0]["model"] == "echo" and models[0]["calls"] == 7
    summary = views.trace_summary(store.trace("last"))
    assert summary["errors"] == 3 and summary["cost_usd"] > 0
    assert views.percentile([5, 1, 4, 2, 3], 50) == 3
    assert views.percentile(list(range(1, 101)), 95) == 95


def test_cli_list_show_stats(db):
    trace_id, *_ = run_pipeline()
    with pytest.raises(RuntimeError):
        run_pipeline(fail_tool=True)
    r = CliRunner().invoke(app, ["traces", "list", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 2 and rows[1]["trace_id"] == trace_id
    assert rows[0]["root"] == "invoke_workflow support" and rows[0]["errors"] == 3
    r = CliRunner().invoke(app, ["traces", "show", trace_id[:10], "--db", str(db)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    wf = next(i for i, line in enumerate(lines) if "invoke_workflow support" in line)
    chat = next(i for i, line in enumerate(lines) if "chat echo" in line)
    indent = lambda line: len(line) - len(line.lstrip(" │├└─"))  # noqa: E731
    assert indent(lines[chat]) > indent(lines[wf])
    assert "tok " in lines[chat] and "conf 1.00" in lines[chat] and "$" in lines[chat]
    assert "handoff validated" in r.output
    r = CliRunner().invoke(app, ["traces", "show", "last", "--db", str(db)])
    assert "✗ execute_tool lookup" in r.output and "lookup backend down" in r.output
    r = CliRunner().invoke(app, ["traces", "stats", "--by", "agent", "--db", str(db), "--json"])
    stats = {x["agent"]: x for x in json.loads(r.output)}
    assert stats["triage"]["error_rate"] == 0.5 and stats["resolver"]["escalation_rate"] == 1.0
    r = CliRunner().invoke(app, ["traces", "stats", "--db", str(db)])
    assert r.exit_code == 0 and "triage" in r.output and "p95" in r.output
    r = CliRunner().invoke(app, ["traces", "show", "ffffffff", "--db", str(db)])
    assert r.exit_code != 0


def test_decorators_sync_and_async(db):
    model = tracing.Traced(_echo_model())

    @tracing.trace.tool
    def lookup(order_id: str) -> str:
        return f"order {order_id}: shipped"

    @tracing.trace.tool(name="refund")
    async def refund(order_id: str) -> bool:
        await asyncio.sleep(0)
        return True

    @tracing.trace.agent(name="helper")
    async def helper(question: str) -> str:
        info = lookup("42")
        await refund("42")
        r = await model.generate(question + " " + info)
        return r.text

    @tracing.trace.chain
    def pipeline(q: str) -> str:
        return asyncio.run(helper(q))

    assert pipeline("where?") == "ok where? order 42: shipped"
    spans = SpanStore(db).trace("last")
    by = _by_name(spans)
    assert set(by) == {"chain pipeline", "invoke_agent helper", "execute_tool lookup",
                       "execute_tool refund", "chat echo"}
    ids = {s["span_id"]: s["name"] for s in spans}
    assert ids[by["invoke_agent helper"]["parent_id"]] == "chain pipeline"
    for child in ("execute_tool lookup", "execute_tool refund", "chat echo"):
        assert ids[by[child]["parent_id"]] == "invoke_agent helper"
    assert by["invoke_agent helper"]["agent"] == "helper"
    assert by["execute_tool refund"]["attributes"][A.TOOL_NAME] == "refund"
    assert A.TOOL_CALL_ARGUMENTS not in by["execute_tool lookup"]["attributes"]

    @tracing.trace.tool
    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError):
        boom()
    (b,) = SpanStore(db).trace("last")
    assert b["status"] == "ERROR" and b["attributes"][A.ERROR_TYPE] == "ValueError"


def test_decorator_captures_arguments_when_enabled(tmp_path):
    tracing.configure(db_path=tmp_path / "s.db", batch=False, capture_content=True)
    try:
        @tracing.trace.tool
        def lookup(order_id: str) -> dict:
            return {"status": "shipped"}

        lookup("42")
        (s,) = SpanStore(tmp_path / "s.db").trace("last")
        assert json.loads(s["attributes"][A.TOOL_CALL_ARGUMENTS]) == {"order_id": "42"}
        assert json.loads(s["attributes"][A.TOOL_CALL_RESULT]) == {"status": "shipped"}
    finally:
        tracing.reset()


def test_concurrent_tasks_keep_their_own_parents(db):
    model = tracing.Traced(_echo_model(delay_s=0.01))

    async def agent(name: str) -> None:
        with tracing.span("invoke_agent", name, attributes={A.AGENT_NAME: name}):
            for _ in range(3):
                await model.generate(name)

    async def main() -> None:
        with tracing.span("invoke_workflow", "par"):
            await asyncio.gather(agent("a"), agent("b"))

    asyncio.run(main())
    spans = SpanStore(db).trace("last")
    ids = {s["span_id"]: s for s in spans}
    chats = [s for s in spans if s["operation"] == "chat"]
    assert len(chats) == 6
    per_agent = {}
    for c in chats:
        per_agent.setdefault(ids[c["parent_id"]]["agent"], []).append(c)
    assert {k: len(v) for k, v in per_agent.items()} == {"a": 3, "b": 3}


def test_bad_attributes_are_coerced_not_raised(db):
    class Weird:
        def __str__(self):
            raise RuntimeError("no str")

    with tracing.span("chain", "x", attributes={"obj": object(), "d": {"k": 1},
                                                "mixed": [1, "a"], "none": None,
                                                "weird": Weird()}) as sp:
        tracing.set_attributes(sp, {"later": {1, 2}})
        tracing.add_event(sp, "e", {"v": object()})
    (s,) = SpanStore(db).trace("last")
    a = s["attributes"]
    assert a["obj"].startswith("<object object") and a["d"] == "{'k': 1}"
    assert a["mixed"] == ["1", "a"] and "none" not in a and a["weird"] == "<unprintable Weird>"
    assert a["later"] == "{1, 2}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends


def test_collector_down_never_breaks_the_run_and_drops_are_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="slmflow.tracing")
    tracing.configure(db_path=tmp_path / "s.db", otlp_endpoint=f"http://127.0.0.1:{_closed_port()}",
                      protocol="http", export_timeout_s=1.0, schedule_delay_ms=100)
    try:
        t0 = time.perf_counter()
        trace_id, r1, r2 = run_pipeline()
        assert time.perf_counter() - t0 < 1.0  # export runs off the caller's thread
        assert r2.text == "ok answer this ticket"
        tracing.force_flush(10)
        h = tracing.health()
        assert h["dropped"]["otlp-http"] == 7 and h["exported"]["sqlite"] == 7
        assert "sqlite" not in h["dropped"]
        assert len(SpanStore(tmp_path / "s.db").trace(trace_id)) == 7  # local store unaffected
        warnings = [r.getMessage() for r in caplog.records if r.name == "slmflow.tracing"]
        assert any("7 span(s) dropped" in w and "otlp-http" in w for w in warnings), warnings
    finally:
        tracing.reset()


def test_grpc_collector_down_is_counted_too(tmp_path):
    tracing.configure(store=False, otlp_endpoint=f"http://127.0.0.1:{_closed_port()}",
                      protocol="grpc", export_timeout_s=1.0)
    try:
        with tracing.span("chain", "one"):
            pass
        tracing.force_flush(10)
        assert tracing.health()["dropped"]["otlp-grpc"] == 1
    finally:
        tracing.reset()


def test_full_disk_is_counted_and_the_run_goes_on(db, caplog):
    caplog.set_level(logging.WARNING, logger="slmflow.tracing")
    run_pipeline()  # creates the tables
    conn = _state.store_exporter._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: SQLITE_FULL
    for _ in range(3):
        with tracing.span("chain", "big", attributes={"blob": "x" * 20000}):
            pass
    trace_id, r1, _ = run_pipeline()
    assert r1.text == "ok classify this ticket"
    h = tracing.health()
    assert h["dropped"]["sqlite"] >= 3 and "full" in h["last_error"]["sqlite"]
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_exporter_that_raises_and_queue_overflow_are_counted(tmp_path, caplog):
    from opentelemetry.sdk.trace.export import SpanExporter

    class Broken(SpanExporter):
        def export(self, spans):
            raise OSError("No space left on device")

    caplog.set_level(logging.WARNING, logger="slmflow.tracing")
    tracing.configure(store=False, exporters=[Broken()], batch=True, max_queue_size=4,
                      schedule_delay_ms=60_000)
    try:
        for i in range(10):
            with tracing.span("chain", f"s{i}"):
                pass
        tracing.force_flush(5)
        h = tracing.health()
        # 6 by the full queue, 4 by the failing exporter (the SDK's queue-full count can be one
        # high when its worker pops during the check); none delivered, none unaccounted
        assert 10 <= h["dropped_total"] <= 11 and not h["exported"]
        assert "No space left" in h["last_error"]["Broken#0"]
    finally:
        tracing.reset()


def test_tracing_off_means_no_spans(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFLOW_TRACING", "off")
    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path))
    tracing.reset()
    with tracing.span("invoke_agent", "x") as sp:
        assert not sp.is_recording()
        assert tracing.current_trace_id() is None
    assert not tracing.is_enabled()
    assert not (tmp_path / "spans.db").exists()


def test_lazy_default_store_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMFLOW_TRACING", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path))
    tracing.reset()
    try:
        with tracing.span("chain", "lazy"):
            pass
        tracing.force_flush()
        assert tracing.config().db_path == str(tmp_path / "spans.db")
        assert SpanStore(tmp_path / "spans.db").trace("last")[0]["name"] == "chain lazy"
        conn = sqlite3.connect(tmp_path / "spans.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        tracing.reset()


def aged_spans(exporter):
    """Four one-span traces, 30, 20, 3 and 0 days old, written through ``exporter``; returns
    (provider, tracer, now_ns) for more."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tr = provider.get_tracer("t")
    now = time.time_ns()
    for age_days in (30, 20, 3, 0):
        t = now - int(age_days * 86400e9)
        tr.start_span(f"age{age_days}", start_time=t).end(end_time=t + 1000)
    return provider, tr, now


def test_retention_prunes_old_spans(tmp_path):
    path = tmp_path / "r.db"
    provider, _, _ = aged_spans(SQLiteSpanExporter(path, retention_days=None))
    assert SpanStore(path).count() == 4
    assert SQLiteSpanExporter(path, retention_days=14).prune() == 2
    assert {r["root"] for r in SpanStore(path).list_traces()} == {"age3", "age0"}
    assert SQLiteSpanExporter(path, retention_days=None, max_spans=1).prune() == 1
    assert [r["root"] for r in SpanStore(path).list_traces()] == ["age0"]
    provider.shutdown()


@pytest.mark.slow
def test_real_model_call_is_traced(db, smollm):
    from slmflow import Settings

    model = tracing.Traced(smollm)
    with tracing.span("invoke_agent", "writer", attributes={A.AGENT_NAME: "writer"}):
        r = model.generate_sync("Say hello.", settings=Settings(max_tokens=8))
    spans = SpanStore(db).trace("last")
    agent, chat = spans
    assert chat["parent_id"] == agent["span_id"]
    a = chat["attributes"]
    assert chat["name"] == "chat smollm2-135m"
    assert a[A.PROVIDER_NAME] == "llama.cpp" and a[A.RESPONSE_MODEL] == r.model.identity
    assert a[A.USAGE_INPUT_TOKENS] == r.usage.input_tokens > 0
    assert 0 < a[A.USAGE_OUTPUT_TOKENS] <= 8
    assert 0 < a[A.CONFIDENCE] <= 1 and a[A.COST_USD] > 0
    assert chat["duration_ms"] >= r.latency_s * 1000 * 0.9


@pytest.fixture(scope="module")
def support_trace(tmp_path_factory, smollm):
    """The reference workflow (examples/support) on the real embedded model, traced once."""
    import sys
    from pathlib import Path

    from slmflow import run_sync
    from slmflow.workflow import load_workflow, run_workflow

    ex = Path(__file__).resolve().parents[1] / "examples" / "support"
    sys.path.insert(0, str(ex))
    try:
        from support_schemas import Ticket
        db = tmp_path_factory.mktemp("wf") / "spans.db"
        tracing.configure(db_path=db, batch=False)
        wf = load_workflow(ex / "workflow.yaml")
        run_sync(run_workflow(wf, Ticket(text="My order A-1042 arrived broken")))
        return SpanStore(db).trace("last")
    finally:
        tracing.reset()
        sys.path.remove(str(ex))


@pytest.mark.slow
def test_reference_workflow_trace_has_workflow_agent_and_handoff_spans(support_trace):
    spans = support_trace
    ids = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["invoke_workflow support"]
    agents = [s for s in spans if s["operation"] == "invoke_agent"]
    handoffs = [s for s in spans if s["operation"] == "handoff"]
    assert {a["agent"] for a in agents} >= {"router", "extractor", "reasoner", "verifier"}
    assert handoffs and all(h["attributes"].get(A.HANDOFF_STATUS) in
                            ("validated", "repaired", "escalated", "failed") for h in handoffs)
    for s in agents + handoffs:  # everything hangs under the one workflow span
        p = s
        while p["parent_id"]:
            p = ids[p["parent_id"]]
        assert p is roots[0]
    assert views.stats(spans, by="agent")


@pytest.mark.slow
def test_reference_workflow_trace_has_chat_spans_under_agents(support_trace):
    ids = {s["span_id"]: s for s in support_trace}
    chats = [s for s in support_trace if s["operation"] == "chat"]
    assert chats and all(ids[c["parent_id"]]["operation"] == "invoke_agent" for c in chats)


def test_trace_list_pages_equal_the_full_aggregation(tmp_path):
    """list_traces aggregates only the traces of the newest spans; on data where old traces have
    late spans (long-running) its pages equal the aggregation over every span."""
    import random

    from opentelemetry import trace as otel
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from slmflow.tracing.store import _LIST_PATTERNS, _LIST_SQL

    path = tmp_path / "list.db"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SQLiteSpanExporter(path,
                                                                       retention_days=None)))
    tr = provider.get_tracer("t")
    rng = random.Random(3)
    t0 = 1_700_000_000 * 10**9
    for i in range(60):
        start = t0 + rng.randrange(10**12)
        root = tr.start_span(f"root{i}", start_time=start)
        ctx = otel.set_span_in_context(root)
        late = rng.random() < 0.3  # a long-running trace: children long after it started
        for j in range(rng.randrange(1, 6)):
            at = start + (rng.randrange(10**12) if late else rng.randrange(10**6))
            tr.start_span(f"child{i}.{j}", context=ctx, start_time=at).end(end_time=at + 5)
        root.end(end_time=start + 10)
    # adversarial: 70 traces that started long ago hold the 70 newest spans (their late
    # children); the newest traces by start are elsewhere
    for i in range(70):
        start = t0 - 10**13 + i
        root = tr.start_span(f"old{i}", start_time=start)
        at = t0 + 2 * 10**12 + i
        tr.start_span(f"late{i}", context=otel.set_span_in_context(root),
                      start_time=at).end(end_time=at + 5)
        root.end(end_time=start + 10)
    store = SpanStore(path)
    assert store.count() > 64  # past the first window: the two-step path runs
    for limit, offset in ((1, 0), (3, 0), (5, 7), (20, 30), (50, 0), (10, 55), (5, 100)):
        full = store._rows(_LIST_SQL.format(where=""), (*_LIST_PATTERNS, limit, offset))
        got = store.list_traces(limit=limit, offset=offset)
        assert [r["trace_id"] for r in got] == [r["trace_id"] for r in full], (limit, offset)
        assert [r["spans"] for r in got] == [r["spans"] for r in full]
    provider.shutdown()
