"""The span store on PostgreSQL: spans from real traced agents land in a real server (started by
the ``pg_url`` fixture), and every reader (SpanStore, `slmflow traces`, `slmflow ui`, scenario
evals) answers exactly as it does from SQLite given the same spans; retention; clear errors."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from typing import Literal

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from slmflow import Agent, FunctionModel
from slmflow import tracing
from slmflow.cli import app
from slmflow.errors import ConfigError, SlmflowError
from slmflow.tracing import attrs as A
from slmflow.tracing import views
from slmflow.tracing.store import (PostgresSpanExporter, SpanStore, SQLiteSpanExporter,
                                   TraceStoreError, open_span_store)

from .conftest import free_port, reset_pg

pytest.importorskip("psycopg")


class Route(BaseModel):
    category: Literal["refund", "other"]


@pytest.fixture
def pg(pg_url):
    reset_pg(pg_url)
    yield pg_url
    tracing.reset()


def traced_work(*, fail: bool = False) -> str:
    """A hand-made two-agent workflow of real `Agent`s (FunctionModel-backed) with a handoff, an
    escalation, an evaluation and, with ``fail``, a tool that raises."""
    triage = Agent("triage", FunctionModel(lambda m, s: {"category": "refund"}, name="fake-a",
                                           confidence=0.9), output_type=Route)
    resolver = Agent("resolver", FunctionModel(lambda m, s: "refund issued for " +
                                               m[-1].content, name="fake-b", confidence=0.4))
    with tracing.span("invoke_workflow", "support",
                      attributes={A.WORKFLOW_NAME: "support"}) as wf:
        assert triage.run_sync("my mug arrived broken").output == Route(category="refund")
        with tracing.handoff("triage", "resolver", status="escalated"):
            pass
        resolver.run_sync("order A-1042")
        tracing.record_escalation("low confidence", source="resolver", target="human")
        tracing.record_evaluation("exact_match", score=1.0, label="pass", sp=wf)
        if fail:
            with tracing.span("execute_tool", "lookup", attributes={A.TOOL_NAME: "lookup"}):
                raise RuntimeError("lookup backend down")
        return tracing.current_trace_id()


def _norm(v):
    """Floats to 10 significant digits (a sum's last bit may depend on the order rows come in)."""
    if isinstance(v, float):
        return float(f"{v:.10g}")
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    return v


def _answers(store: SpanStore, trace_ids: list[str]) -> dict:
    """Everything the CLI and UI read from a store, in one comparable value."""
    spans = store.spans()
    out = {"list": store.list_traces(limit=50), "list_page2": store.list_traces(limit=2, offset=1),
           "count": store.count(), "last": store.resolve("last"),
           "prefix": [store.resolve(t[:8]) for t in trace_ids],
           "prefix_upper": store.resolve(trace_ids[0][:8].upper()),
           "since": store.spans(since_ns=spans[len(spans) // 2]["start_ns"]),
           "spans": spans, "missing": store.trace("ffffffffffff")}
    for t in trace_ids:
        tr = store.trace(t)
        out[f"trace {t}"] = tr
        out[f"tree {t}"] = views.to_json(views.build_tree(tr))
        out[f"summary {t}"] = views.trace_summary(tr)
    for by in ("agent", "model", "tool", "workflow", "operation"):
        out[f"stats {by}"] = views.stats(spans, by=by)
    return _norm(out)


def test_pg_and_sqlite_stores_give_the_same_answers_for_the_same_spans(pg, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    cfg = tracing.configure(store_url=pg, exporters=[mem], batch=False)
    assert cfg.store_url == pg and cfg.exporters[0] == "postgresql" and cfg.db_path is None
    ids = [traced_work() for _ in range(3)]
    with pytest.raises(RuntimeError):
        traced_work(fail=True)
    ids.append(SpanStore(pg).resolve("last"))
    tracing.force_flush()
    finished = mem.get_finished_spans()
    assert tracing.health()["exported"]["postgresql"] == len(finished) > 20
    # the same ReadableSpans into SQLite, and once more into PG (an upsert: no duplicates)
    SQLiteSpanExporter(tmp_path / "s.db").export(finished)
    PostgresSpanExporter(pg).export(finished)

    with open_span_store(pg) as pgs:
        sq = open_span_store(f"sqlite:///{tmp_path / 's.db'}")
        assert pgs.dialect == "postgresql" and sq.dialect == "sqlite"
        got, want = _answers(pgs, ids), _answers(sq, ids)
    assert got == want
    # ...and the answers say something: a tree, errors, escalations, tokens, cost
    assert got["count"] == len(finished)
    rows = {r["trace_id"]: r for r in got["list"]}
    assert [r["trace_id"] for r in got["list"]] == ids[::-1]
    assert all(r["root"] == "invoke_workflow support" for r in got["list"])
    assert rows[ids[-1]]["errors"] >= 2 and rows[ids[0]]["errors"] == 0
    assert all(r["escalations"] >= 2 and r["input_tokens"] > 0 for r in got["list"])
    tree = got[f"tree {ids[0]}"]
    assert len(tree) == 1 and tree[0]["name"] == "invoke_workflow support"
    kids = [c["name"] for c in tree[0]["children"]]
    assert kids == ["invoke_agent triage", "handoff triage -> resolver", "invoke_agent resolver"]
    assert tree[0]["children"][0]["children"][0]["operation"] == "chat"
    agents = {r["agent"]: r for r in got["stats agent"]}
    assert agents["triage"]["calls"] == 4 and agents["resolver"]["calls"] == 4
    assert got["prefix"] == ids and got["prefix_upper"] == ids[0] and got["missing"] == []
    assert got["since"] and len(got["since"]) < len(got["spans"])


def test_env_url_sends_a_real_run_to_postgres_and_readers_follow(pg, monkeypatch):
    monkeypatch.delenv("SLMFLOW_TRACING", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("SLMFLOW_TRACES_URL", pg)
    tracing.reset()
    tid = traced_work()  # tracing configures itself lazily from the environment (batched)
    assert tracing.force_flush()
    assert tracing.config().store_url == pg and tracing.config().exporters == ["postgresql"]
    assert not tracing.health()["dropped"]
    spans = SpanStore().trace(tid)  # no argument: the store this process writes to
    assert {s["name"] for s in spans} >= {"invoke_workflow support", "invoke_agent triage",
                                          "chat fake-a", "handoff triage -> resolver"}
    # scenario evals read the trace back from the store it was written to
    from slmflow.evals.scenarios import ScenarioOutput

    out = ScenarioOutput(result=None, trace_id=tid)
    assert [s["span_id"] for s in out.load_trace()] == [s["span_id"] for s in spans]
    # another process (tracing not configured there) finds the store through the same env var
    tracing.reset()
    assert open_span_store().trace(tid)[0]["name"] == "invoke_workflow support"


def test_cli_traces_list_show_stats_read_postgres(pg, monkeypatch):
    tracing.configure(store_url=pg, batch=False)
    tid = traced_work()
    with pytest.raises(RuntimeError):
        traced_work(fail=True)
    tracing.reset()
    monkeypatch.setenv("SLMFLOW_TRACES_URL", pg)
    r = CliRunner().invoke(app, ["traces", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 2 and rows[1]["trace_id"] == tid and rows[0]["errors"] >= 2
    monkeypatch.delenv("SLMFLOW_TRACES_URL")
    r = CliRunner().invoke(app, ["traces", "list", "--url", pg, "--json"])
    assert json.loads(r.output) == rows
    r = CliRunner().invoke(app, ["traces", "show", tid[:10], "--db", pg])
    assert r.exit_code == 0, r.output
    assert "invoke_workflow support" in r.output and "chat fake-a" in r.output
    r = CliRunner().invoke(app, ["traces", "stats", "--by", "agent", "--db", pg, "--json"])
    stats = {x["agent"]: x for x in json.loads(r.output)}
    assert stats["triage"]["calls"] == 2 and stats["resolver"]["calls"] == 2
    r = CliRunner().invoke(app, ["traces", "stats", "--by", "workflow", "--db", pg, "--json"])
    assert json.loads(r.output)[0]["error_rate"] == 0.5


def test_ui_serves_traces_from_postgres(pg):
    from slmflow.ui.traces import serve

    tracing.configure(store_url=pg, batch=False)
    tid = traced_work()
    tracing.reset()
    server = serve("127.0.0.1", 0, db_path=pg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{base}/api/traces", timeout=10) as resp:
            assert [r["trace_id"] for r in json.loads(resp.read())] == [tid]
        with urllib.request.urlopen(f"{base}/api/traces/{tid[:12]}", timeout=10) as resp:
            assert "invoke_agent resolver" in resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_retention_prunes_old_spans_on_postgres(pg):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from .test_tracing import aged_spans

    provider, tr, now = aged_spans(PostgresSpanExporter(pg, retention_days=None))
    store = SpanStore(pg)
    assert store.count() == 4
    assert PostgresSpanExporter(pg, retention_days=14).prune() == 2
    assert {r["root"] for r in store.list_traces()} == {"age3", "age0"}
    assert PostgresSpanExporter(pg, retention_days=None, max_spans=1).prune() == 1
    assert [r["root"] for r in store.list_traces()] == ["age0"]
    # a new exporter prunes on its first export, as SQLite's does when it opens
    t = now - int(40 * 86400e9)
    tr.start_span("old", start_time=t).end(end_time=t + 1000)  # written by the no-prune one
    assert store.count() == 2
    ex2 = PostgresSpanExporter(pg, retention_days=14)
    provider2 = TracerProvider()
    provider2.add_span_processor(SimpleSpanProcessor(ex2))
    provider2.get_tracer("t").start_span("fresh").end()
    assert sorted(r["root"] for r in store.list_traces()) == ["age0", "fresh"]
    provider.shutdown()
    provider2.shutdown()
    store.close()


def test_text_postgres_rejects_is_cleaned_not_dropped(pg):
    tracing.configure(store_url=pg, batch=False)
    with tracing.span("chain", "nul\x00name", attributes={"x": "a\x00b", A.AGENT_NAME: "a\x00"}):
        pass
    assert not tracing.health()["dropped"]
    s = SpanStore(pg).trace("last")[0]
    assert s["name"] == "chain nul\ufffdname" and s["attributes"]["x"] == "a\x00b"


def test_unreachable_server_is_a_clear_error_with_the_password_masked(monkeypatch, caplog):
    bad = f"postgresql://slm:s3cret@127.0.0.1:{free_port()}/slmflow"
    store = SpanStore(bad)
    with pytest.raises(TraceStoreError) as e:
        store.list_traces()
    assert isinstance(e.value, SlmflowError)
    assert "cannot connect to the PostgreSQL span store" in str(e.value)
    assert "slm:***@127.0.0.1" in e.value.where and "s3cret" not in str(e.value)
    r = CliRunner().invoke(app, ["traces", "list", "--db", bad])  # main() prints it in one line
    assert r.exit_code == 1 and isinstance(r.exception, TraceStoreError)
    assert "slm:***@" in str(r.exception) and "s3cret" not in str(r.exception) + r.output
    with pytest.raises(ConfigError, match="unknown span store URL"):
        open_span_store("mysql://slm:s3cret@127.0.0.1/x")
    # tracing into it: the run goes on, the spans are counted as dropped, the warning is masked
    caplog.set_level(logging.WARNING, logger="slmflow.tracing")
    monkeypatch.delenv("SLMFLOW_TRACING", raising=False)
    monkeypatch.setenv("SLMFLOW_TRACES_URL", bad)
    tracing.reset()
    try:
        assert traced_work()
        tracing.force_flush(10)
        h = tracing.health()
        assert h["dropped"]["postgresql"] >= 5 and not h["exported"]
        assert "cannot connect" in h["last_error"]["postgresql"]
        logs = " ".join(r.getMessage() for r in caplog.records)
        assert "dropped" in logs and "s3cret" not in logs + json.dumps(h)
    finally:
        tracing.reset()


def test_tracing_store_does_not_import_psycopg_for_sqlite(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from slmflow import tracing; from slmflow.tracing.store import "
            f"SpanStore; tracing.configure(db_path={str(tmp_path / 'x.db')!r}, batch=False)\n"
            "with tracing.span('chain', 'x'): pass\n"
            "assert SpanStore().count() == 1\n"
            "assert 'psycopg' not in sys.modules and 'slmflow.store' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "SLMFLOW_TRACES_URL": ""})
    assert r.returncode == 0, r.stderr


def test_exporter_reconnects_after_a_lost_connection(pg):
    import psycopg
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mem))
    for i in range(3):
        provider.get_tracer("t").start_span(f"s{i}").end()
    s0, s1, s2 = mem.get_finished_spans()
    ex = PostgresSpanExporter(pg)
    assert ex.export([s0]).name == "SUCCESS"
    with psycopg.connect(pg, autocommit=True) as c:  # the server drops the exporter's session
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = 'slmflow' AND pid <> pg_backend_pid()")
    with pytest.raises(TraceStoreError, match="cannot write spans"):
        ex.export([s1])  # the guard in setup counts these as dropped
    assert ex.export([s2]).name == "SUCCESS"  # a new connection
    assert sorted(r["root"] for r in SpanStore(pg).list_traces()) == ["s0", "s2"]
    ex.shutdown()
    provider.shutdown()
