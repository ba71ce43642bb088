"""Tracing overhead: slmflow's span vs the raw OpenTelemetry SDK span, and tracing's share of a
real pipeline's latency.

1. Per span (microseconds, caller's thread, span start to end): the raw SDK
   (``tracer.start_as_current_span(name, attributes=...)``) and ``slmflow.tracing.span`` with the
   same six attributes, both on a `BatchSpanProcessor`, both in this one process, interleaved in
   rounds (best round of each reported, as noise on a shared box only ever adds time). Twice:
   with an exporter that discards (instrumentation cost alone) and with slmflow's SQLite store
   as the exporter (what a default run pays, export thread included).
2. The reference pipeline on the embedded SmolLM2-135M (triage agent -> tool -> handoff ->
   resolver agent: 7 spans, 2 real model calls): tracing share = spans x per-span cost (with
   the store) / pipeline latency; plus a direct A/B (tracing on vs off, median of runs), which is
   noisier than the quantity it measures.

Goal (issue 5): at most 1.2x the raw SDK span, under 1% of pipeline time.

4. ``--viewer N [--template spans.db]``: the trace viewer's page loads (issue 20) at N traces
   cloned from a recorded run (tests/viewer_run.py writes one), over HTTP from `slmflow ui`:
   the list page and its filters, search, deep paging, a trace, the agents view (goal: the list
   page under 200 ms at 100k traces).

    .venv/bin/python bench/tracing.py --viewer 100000 --template /tmp/run/spans.db

    HF_HUB_OFFLINE=1 SLMFLOW_HOME=/tmp/slmhome-tracing .venv/bin/python bench/tracing.py

3. ``--stores N``: the span store on PostgreSQL vs SQLite (issue 10), instead of 1-2: N real spans
   (7-span traces as the reference pipeline makes) exported in the batch processor's batches of
   512 by each exporter (spans/s, the export thread's work), then the readers' queries (list of
   the newest traces, one trace, stats over all spans) on each. PostgreSQL is started on loopback
   by the script (bench/loop.py's ``start_pg``); its table is ANALYZEd after the load, as
   autovacuum does within a minute (before that the planner's guesses scan the table).

    .venv/bin/python bench/tracing.py --stores 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from slmflow import tracing
from slmflow.tracing import attrs as A
from slmflow.tracing.store import SQLiteSpanExporter

ATTRS = {A.AGENT_NAME: "triage", A.PROVIDER_NAME: "llama.cpp", A.REQUEST_MODEL: "smollm2-135m",
         A.USAGE_INPUT_TOKENS: 42, A.USAGE_OUTPUT_TOKENS: 17, A.CONFIDENCE: 0.83}


class Discard(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def _time_raw(tracer, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with tracer.start_as_current_span("invoke_agent triage",
                                          attributes={A.OPERATION_NAME: "invoke_agent", **ATTRS}):
            pass
    return (time.perf_counter() - t0) / n * 1e6


def _time_slm(n: int) -> float:
    span = tracing.span
    t0 = time.perf_counter()
    for _ in range(n):
        with span("invoke_agent", "triage", attributes=ATTRS):
            pass
    return (time.perf_counter() - t0) / n * 1e6


def per_span(n: int, rounds: int, store: bool) -> dict:
    tmp = Path(tempfile.mkdtemp())
    raw_exp = SQLiteSpanExporter(tmp / "raw.db") if store else Discard()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(raw_exp, max_queue_size=n * 2,
                                                   schedule_delay_millis=1000))
    raw_tracer = provider.get_tracer("bench")
    if store:
        tracing.configure(db_path=tmp / "slm.db", max_queue_size=n * 2)
    else:
        tracing.configure(store=False, exporters=[Discard()], max_queue_size=n * 2)
    raw, slm = [], []
    _time_raw(raw_tracer, 1000), _time_slm(1000)  # warm up
    for _ in range(rounds):
        raw.append(_time_raw(raw_tracer, n))
        provider.force_flush()
        slm.append(_time_slm(n))
        tracing.force_flush()
    dropped = tracing.health()["dropped_total"]
    tracing.reset()
    provider.shutdown()
    return {"exporter": "sqlite store" if store else "discard", "spans_per_round": n,
            "rounds": rounds, "raw_us": min(raw), "slmflow_us": min(slm),
            "ratio": min(slm) / min(raw), "raw_us_median": statistics.median(raw),
            "slmflow_us_median": statistics.median(slm), "dropped": dropped}


def pipeline(model, max_tokens: int) -> None:
    from slmflow import Settings

    s = Settings(max_tokens=max_tokens)
    with tracing.span("invoke_workflow", "support", attributes={A.WORKFLOW_NAME: "support"}):
        with tracing.span("invoke_agent", "triage", attributes={A.AGENT_NAME: "triage"}):
            model.generate_sync("Classify: my parcel never arrived. One word.", settings=s)
            with tracing.span("execute_tool", "lookup", attributes={A.TOOL_NAME: "lookup"}):
                pass
        with tracing.handoff("triage", "resolver", status="validated"):
            pass
        with tracing.span("invoke_agent", "resolver", attributes={A.AGENT_NAME: "resolver"}):
            model.generate_sync("Write one sentence apologising for a lost parcel.", settings=s)


def pipeline_share(runs: int, per_span_us: float, max_tokens: int) -> dict:
    from slmflow.models.catalog import resolve

    base = resolve("smollm2-135m").load()
    tmp = Path(tempfile.mkdtemp())
    model = tracing.Traced(base)
    on, off = [], []
    pipeline(model, max_tokens)  # warm up
    for i in range(runs):
        for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
            if mode == "on":
                tracing.configure(db_path=tmp / "spans.db")
            else:
                tracing.configure(enabled=False)
            t0 = time.perf_counter()
            pipeline(model, max_tokens)
            (on if mode == "on" else off).append(time.perf_counter() - t0)
            tracing.reset()
    spans = 7
    med_on, med_off = statistics.median(on), statistics.median(off)
    return {"runs": runs, "spans_per_run": spans, "pipeline_ms_median": med_on * 1e3,
            "tracing_ms_per_run": spans * per_span_us / 1e3,
            "share_pct": spans * per_span_us / 1e6 / med_on * 100,
            "ab_on_ms": med_on * 1e3, "ab_off_ms": med_off * 1e3,
            "ab_diff_pct": (med_on - med_off) / med_off * 100}


def _make_spans(n: int) -> list:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tr = provider.get_tracer("bench")
    for i in range(n // 7):
        with tr.start_as_current_span("invoke_workflow support",
                                      attributes={A.WORKFLOW_NAME: "support"}):
            for agent in ("triage", "resolver"):
                with tr.start_as_current_span(f"invoke_agent {agent}",
                                              attributes={**ATTRS, A.AGENT_NAME: agent}):
                    with tr.start_as_current_span("chat smollm2-135m", attributes=ATTRS):
                        pass
            with tr.start_as_current_span("execute_tool lookup", attributes={A.TOOL_NAME: "x"}):
                pass
            with tr.start_as_current_span("handoff triage -> resolver"):
                pass
    return list(mem.get_finished_spans())


def stores(n: int) -> dict:
    """Export throughput and reader latency, SQLite vs PostgreSQL, on the same spans."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loop import start_pg

    from slmflow.tracing.store import PostgresSpanExporter, open_span_store

    spans = _make_spans(n)
    out: dict = {"spans": len(spans)}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "pg").mkdir()
        started = start_pg(tmp / "pg")
        targets = {"sqlite": (SQLiteSpanExporter(tmp / "spans.db", retention_days=None),
                              f"sqlite:///{tmp / 'spans.db'}")}
        if started is not None:
            url, stop, _ = started
            targets["postgresql"] = (PostgresSpanExporter(url, retention_days=None), url)
        try:
            for name, (exp, url) in targets.items():
                t0 = time.perf_counter()
                for i in range(0, len(spans), 512):
                    exp.export(spans[i:i + 512])
                wall = time.perf_counter() - t0
                exp.shutdown()
                store = open_span_store(url)
                if name == "postgresql":  # what autovacuum does within a minute of a bulk load
                    store._pg.run("analyze", lambda c: c.execute("ANALYZE spans"))
                newest = store.list_traces(limit=1)[0]["trace_id"]
                q = {label: 1e3 * min(_once(fn) for _ in range(5)) for label, fn in (
                    ("list_ms", lambda: store.list_traces(limit=50)),
                    ("trace_ms", lambda: store.trace(newest)), ("count_ms", store.count))}
                assert store.count() == len(spans), (name, store.count())
                store.close()
                out[name] = {"export_spans_per_s": len(spans) / wall, **q}
        finally:
            if started is not None:
                subprocess.run(stop, capture_output=True)
    return out


def _template(path: Path | None) -> list[list[tuple]]:
    """Traces to clone: every trace of a recorded span store (a real run of the reference
    pipeline: tests/viewer_run.py), else one synthetic 7-span trace with the attributes the
    viewer reads. Rows in the store's column order."""
    import sqlite3

    from slmflow.tracing.store import _COLUMNS, _row

    if path is not None:
        with sqlite3.connect(path) as c:
            rows = c.execute(f"SELECT {', '.join(_COLUMNS)} FROM spans ORDER BY trace_id, "
                             "start_ns").fetchall()
        out: dict[str, list[tuple]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(tuple(r))
        return list(out.values())
    spans = _make_spans(7)
    rows = [_row(s) for s in spans]
    root = list(next(r for r in rows if r[2] is None))
    a = json.loads(root[16])
    a.update({A.WORKFLOW_STATUS: "ok", A.RUN_ID: "0" * 32, A.INPUT: "my order arrived broken"})
    root[16] = json.dumps(a, separators=(",", ":"))
    return [[tuple(root) if r[2] is None else r for r in rows]]


def viewer(n_traces: int, template: Path | None, rounds: int = 5, pg: bool = False) -> dict:
    """The trace viewer's page loads (issue 20) over HTTP from `slmflow ui`, at ``n_traces``
    traces cloned from the template (new ids, one trace a second back from now, 1% failed):
    the list page, its JSON with filters, search and deep paging, one trace, the agents view.
    Best and median of ``rounds`` warm requests each. pg: the same rows in PostgreSQL (started
    on loopback by the script, ANALYZEd after the load) instead of SQLite."""
    import random
    import sqlite3
    import threading

    import httpx

    from slmflow.tracing.store import _INSERT, connect
    from slmflow.ui.traces import serve

    tpl = _template(template)
    rnd = random.Random(7)
    now = time.time_ns()
    with tempfile.TemporaryDirectory() as t:
        db = Path(t) / "spans.db"
        conn = connect(db)  # the store's schema and indexes
        t0 = time.perf_counter()
        batch: list[tuple] = []
        n_spans = 0
        for i in range(n_traces):
            src = tpl[i % len(tpl)]
            tid = f"{rnd.getrandbits(128):032x}"
            ids = {r[1]: f"{rnd.getrandbits(64):016x}" for r in src}
            base = min(r[5] for r in src)
            shift = now - (n_traces - i) * 1_000_000_000 - base
            failed = i % 100 == 50
            for r in src:
                r = list(r)
                r[0], r[1] = tid, ids[r[1]]
                r[2] = ids.get(r[2]) if r[2] is not None else None
                r[5] += shift
                r[6] += shift
                if failed and r[2] is None:
                    r[16] = r[16].replace('"slmflow.workflow.status":"ok"',
                                          '"slmflow.workflow.status":"failed"')
                batch.append(tuple(r))
            if len(batch) >= 20_000:
                with conn:
                    conn.executemany(_INSERT, batch)
                n_spans += len(batch)
                batch = []
        with conn:
            conn.executemany(_INSERT, batch)
        n_spans += len(batch)
        conn.execute("ANALYZE")
        conn.close()
        load_s = time.perf_counter() - t0
        target: Any = db
        stop = None
        if pg:
            import subprocess
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from loop import start_pg

            from slmflow.tracing.store import _COLUMNS, _PG_INSERT, _Postgres

            (Path(t) / "pg").mkdir()
            started = start_pg(Path(t) / "pg")
            if started is None:
                raise SystemExit("no PostgreSQL server binaries here")
            target, stop, _ = started
            t0 = time.perf_counter()
            pgdb = _Postgres(target)
            src = sqlite3.connect(db)
            cur = src.execute(f"SELECT {', '.join(_COLUMNS)} FROM spans")
            while rows := cur.fetchmany(20_000):
                pgdb.run("load", lambda c: c.cursor().executemany(_PG_INSERT, rows))
            pgdb.run("analyze", lambda c: c.execute("ANALYZE spans"))
            pgdb.close()
            src.close()
            load_s = time.perf_counter() - t0
        server = serve("127.0.0.1", 0, db_path=target)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out: dict = {"traces": n_traces, "spans": n_spans, "load_s": load_s,
                     "store": "postgresql" if pg else "sqlite"}
        try:
            with httpx.Client(base_url=url, timeout=120) as c:
                newest = c.get("/api/traces?limit=1").json()[0]["trace_id"]
                shown = c.get(f"/api/traces/{newest}").json()["spans"]
                chat = next((x for x in shown if x["operation"] == "chat"), shown[0])["span_id"]
                agent = next(iter(c.get("/api/traces?limit=1&full=1").json()["filters"]
                                  ["agents"]), "triage")
                cases = {
                    "list_page": "/",
                    "list_json": "/api/traces?full=1",
                    "status_failed": "/api/traces?status=failed",
                    "agent_filter": f"/api/traces?agent={agent}",
                    "min_duration": "/api/traces?min_ms=1",
                    "page_100": "/api/traces?offset=5000",
                    "trace_id_search": f"/api/traces?q={newest[:12]}",
                    "text_search_rare": "/api/traces?q=no-such-text-anywhere",
                    "trace_page": f"/trace/{newest}",
                    "span_panel": f"/api/traces/{newest}/spans/{chat}",
                    "agents_1h": "/api/agents?window=1h",
                }
                for label, path in cases.items():
                    c.get(path)  # warm: caches, the page cache, the PII model
                    times = []
                    for _ in range(rounds if label != "text_search_rare" else 2):
                        t1 = time.perf_counter()
                        r = c.get(path)
                        times.append(1e3 * (time.perf_counter() - t1))
                        assert r.status_code == 200, (path, r.status_code, r.text[:300])
                    out[label] = {"best_ms": min(times), "median_ms": statistics.median(times)}
        finally:
            server.shutdown()
            server.server_close()
            server.RequestHandlerClass.store.close()
            if stop is not None:
                subprocess.run(stop, capture_output=True)
    return out


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=int, default=0,
                    help="instead: span store benchmark, SQLite vs PostgreSQL, on N spans")
    ap.add_argument("--spans", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--viewer", type=int, default=0,
                    help="instead: the trace viewer's page loads at N traces (issue 20)")
    ap.add_argument("--template", type=Path, default=None,
                    help="with --viewer: a span store whose traces are cloned (a real run)")
    ap.add_argument("--pg", action="store_true", help="with --viewer: on PostgreSQL")
    args = ap.parse_args()
    if args.viewer:
        r = viewer(args.viewer, args.template, pg=args.pg)
        print(f"trace viewer on {r['store']}: {r['traces']} traces, {r['spans']} spans (loaded in "
              f"{r['load_s']:.1f} s); warm HTTP requests to slmflow ui, best / median:")
        for k, v in r.items():
            if isinstance(v, dict):
                print(f"  {k:<18} {v['best_ms']:8.1f} ms / {v['median_ms']:8.1f} ms")
        if args.json:
            args.json.write_text(json.dumps(r, indent=2))
        return
    if args.stores:
        r = stores(args.stores)
        print(f"{r['spans']} spans (7-span traces), exported in batches of 512:")
        for name in ("sqlite", "postgresql"):
            if name in r:
                x = r[name]
                print(f"  {name:<11} export {x['export_spans_per_s']:9.0f} spans/s   list 50 "
                      f"traces {x['list_ms']:7.2f} ms   one trace {x['trace_ms']:6.2f} ms   "
                      f"count {x['count_ms']:6.2f} ms")
        if "postgresql" in r:
            a, b = r["sqlite"], r["postgresql"]
            print(f"  postgresql / sqlite: export {b['export_spans_per_s'] / a['export_spans_per_s']:.2f}x"
                  f" the throughput; list {b['list_ms'] / a['list_ms']:.2f}x, trace "
                  f"{b['trace_ms'] / a['trace_ms']:.2f}x, count {b['count_ms'] / a['count_ms']:.2f}x"
                  f" the time")
        if args.json:
            args.json.write_text(json.dumps(r, indent=2))
        return
    results = {"per_span": [per_span(args.spans, args.rounds, store=False),
                            per_span(args.spans, args.rounds, store=True)]}
    for r in results["per_span"]:
        print(f"per span, {r['exporter']:>12}: raw SDK {r['raw_us']:6.2f} us   slmflow "
              f"{r['slmflow_us']:6.2f} us   ratio {r['ratio']:.2f}x  (goal <= 1.2x; medians "
              f"{r['raw_us_median']:.2f} / {r['slmflow_us_median']:.2f} us; dropped "
              f"{r['dropped']})")
    share = pipeline_share(args.runs, results["per_span"][1]["slmflow_us"], args.max_tokens)
    results["pipeline"] = share
    print(f"pipeline (smollm2-135m, 2 calls x {args.max_tokens} tokens, 7 spans): "
          f"{share['pipeline_ms_median']:.0f} ms median; tracing {share['tracing_ms_per_run']:.3f}"
          f" ms = {share['share_pct']:.3f}% (goal < 1%); A/B on {share['ab_on_ms']:.0f} ms vs "
          f"off {share['ab_off_ms']:.0f} ms ({share['ab_diff_pct']:+.1f}%, noise-dominated)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
