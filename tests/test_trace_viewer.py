"""The trace viewer of `slmflow ui` (issue 20) in a real headless Chromium, on the spans of a real
run of the reference support pipeline on the embedded SmolLM2 (three tickets, plus one that
fails before any model runs), with content capture on, the call log, review items flagged from
it, and an adapter version whose card names one of those reviews (the lineage the improvement
loop writes). Every assertion holds whatever the small model answers: expected values come from
the run's results and the stores, not from fixed text.

Screenshots for docs/tracing.md: ``SLMFLOW_UI_SCREENSHOTS=docs/img pytest
tests/test_trace_viewer.py -k screenshots``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from slmflow.tracing.store import SpanStore
from slmflow.ui.traces import serve

from .viewer_run import TICKETS, record_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (run "
                                ".ci/install-system-deps.sh)")
FAILING = "refund " * 400  # over the workflow's max_input_chars: fails before any model runs
EMAIL = "ann.lee@example.com"  # in the first ticket: the viewer must never show it


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, slmflow_home):
    pytest.importorskip("llama_cpp")
    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.models.catalog import resolve
    from slmflow.store import open_call_log
    from slmflow.store.review import ReviewQueue

    resolve("smollm2-135m")  # the embedded model must be there
    out = tmp_path_factory.mktemp("viewer")
    rep = record_run(out, TICKETS + [FAILING])
    log = open_call_log(rep["calls"])
    items = ReviewQueue(log).items(limit=None)
    assert items, "the flagging job queued nothing from the run"
    item = items[0]
    call = log.get(item.call_id)
    # an adapter version trained from that review (the card's lineage, as loop.retrain writes)
    reg = AdapterRegistry(out / "adapters")
    src = out / "peft"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    version = reg.register(item.agent, src, {"base_model": "smollm2-135m"},
                           trace_ids=[call.trace_id])
    card = reg.card(item.agent, version)
    card["lineage"]["loop"] = {"review_ids": [item.id], "call_ids": [item.call_id]}
    reg.update_card(item.agent, version, card)
    reg.promote(item.agent, version, {"accuracy": 0.75}, force=True)
    server = serve("127.0.0.1", 0, db_path=rep["spans"], calls=log, registry=reg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    # the first request loads the PII engine (Presidio + spaCy): seconds on a slow 2-core CPU,
    # more than the 5 s the tests' requests allow
    httpx.get(base + "/api/traces", timeout=180)
    yield {**rep, "base": base, "log": log, "item": item, "call": call, "version": version,
           "registry": reg, "out": out}
    server.shutdown()
    server.server_close()
    log.close()


@pytest.fixture(scope="module")
def browser(recorded):
    pw = pytest.importorskip("playwright.sync_api")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors  # no script error on any page


def _runs(rec) -> dict[str, dict]:
    """run_id -> the RunResult summary of the fixture's run."""
    return {r["run_id"]: r for r in rec["results"]}


def _span(base: str, trace_id: str, k: int) -> dict:
    """The k-th span of a trace (waterfall order) whole: content and call record."""
    sp = httpx.get(f"{base}/api/traces/{trace_id}").json()["spans"][k]
    return httpx.get(f"{base}/api/traces/{trace_id}/spans/{sp['span_id']}").json()


def _trace_of(rec, run_id: str) -> str:
    rows = httpx.get(rec["base"] + "/api/traces").json()
    return next(r["trace_id"] for r in rows if r["run_id"] == run_id)


def test_trace_list_shows_each_runs_status_request_and_escalations(recorded, page):
    base, runs = recorded["base"], _runs(recorded)
    rows = httpx.get(base + "/api/traces").json()
    assert {r["run_id"] for r in rows} == set(runs)
    store = SpanStore(recorded["spans"])
    for r in rows:
        run = runs[r["run_id"]]
        assert r["status"] == run["status"]  # the run's own verdict, on its root span
        spans = store.trace(r["trace_id"])
        esc = sorted({s["agent"] for s in spans if s["operation"] == "invoke_agent"
                      and s["attributes"].get("slmflow.escalated")})
        assert sorted(r["escalated_agents"]) == esc
        assert r["spans"] == len(spans)
        chat_in = sum(s["input_tokens"] or 0 for s in spans if s["operation"] == "chat")
        assert r["input_tokens"] == chat_in
        # the waterfall's roll-up agrees: an agent span repeats its model calls' usage, which
        # views.build_tree counted twice (the trace summary said 2x the model's tokens)
        summary = httpx.get(f"{base}/api/traces/{r['trace_id']}").json()["summary"]
        assert summary["input_tokens"] == chat_in
        if run["status"] in ("rejected", "failed"):
            assert r["detail"] and r["detail"][:20] in run["detail"]
    failed = next(r for r in rows if runs[r["run_id"]]["status"] == "failed")
    assert failed["request"].startswith("refund refund") and failed["agents"] == []

    page.goto(base + "/")
    assert page.locator("tr.trace-row").count() == len(runs)
    for r in rows:
        tr = page.locator(f"tr.trace-row[data-trace='{r['trace_id']}']")
        assert tr.locator(f".st-{r['status']}").count() == 1  # coloured status badge
        assert r["request"][:30] in tr.text_content()
    assert EMAIL not in page.content() and "[EMAIL]" in page.content()  # redacted, as logged
    colours = {st: page.eval_on_selector(f".st-{st}", "e => getComputedStyle(e).backgroundColor")
               for st in {r["status"] for r in rows}}
    assert len(set(colours.values())) == len(colours) >= 2  # one colour per status


def test_trace_list_filters_search_paging_and_keys(recorded, page):
    base, runs = recorded["base"], _runs(recorded)
    page.goto(base + "/")
    n = len(runs)

    def shown() -> set[str]:
        return {e.get_attribute("data-trace") for e in page.locator("tr.trace-row").all()}

    def apply(fill: dict[str, str]) -> set[str]:
        page.click("#reset")
        page.wait_for_function(f"document.body.dataset.loaded >= {apply.k}")
        apply.k += 1
        for k, v in fill.items():
            if k in ("status", "escalated"):
                page.select_option(f"#f-{k}", v)  # applies at once
            else:
                page.fill(f"#f-{k}", v)
        if not any(k in ("status", "escalated") for k in fill):
            page.press("#f-q", "Enter")
        page.wait_for_function(f"document.body.dataset.loaded >= {apply.k}")
        apply.k += 1
        return shown()

    apply.k = 1
    every = {_trace_of(recorded, rid): rid for rid in runs}
    by_status = {}
    for tid, rid in every.items():
        by_status.setdefault(runs[rid]["status"], set()).add(tid)
    for status, tids in by_status.items():
        assert apply({"status": status}) == tids
        assert f"status={status}" in page.url  # the filter is in the address (shareable)
    assert apply({"agent": "router"}) == {t for t, r in every.items()
                                         if runs[r]["status"] != "failed"}
    assert apply({"workflow": "support"}) == set(every)
    assert apply({"workflow": "nope"}) == set() and "no traces match" in page.content()
    assert apply({"min_ms": "86400000"}) == set()
    assert apply({"since": "1h"}) == set(every)
    # search: a text, a call id (through the call log), a trace id prefix
    order = next(t for t in TICKETS if "B-77" in t)
    want = {t for t in every if order[:20] in (_span(base, t, 0)["attributes"]
                                               .get("slmflow.input") or "")}
    assert len(want) == 1 and apply({"q": "B-77"}) == want
    call = recorded["call"]
    assert apply({"q": call.id}) == {call.trace_id}
    assert apply({"q": call.trace_id[:10]}) == {call.trace_id}
    esc = {t for t in every if httpx.get(f"{base}/api/traces/{t}").json()
           ["spans"][0]["attributes"].get("slmflow.escalated")}
    assert apply({"escalated": "1"}) == esc
    assert apply({"escalated": "0"}) == set(every) - esc

    # paging: pages of 2 cover every trace once, newest first
    seen: list[str] = []
    off = 0
    while True:
        d = httpx.get(f"{base}/api/traces", params={"limit": 2, "offset": off,
                                                     "full": 1}).json()
        seen += [r["trace_id"] for r in d["rows"]]
        if not d["more"]:
            break
        off += 2
    assert len(seen) == n and set(seen) == set(every)
    assert httpx.get(f"{base}/api/traces", params={"status": "nope"}).status_code == 400

    # keyboard: j selects the first row, Enter opens it; u goes back
    page.goto(base + "/?limit=2")
    assert page.locator("tr.trace-row").count() == 2
    page.keyboard.press("n")
    page.wait_for_function("document.body.dataset.loaded >= 1")
    assert page.locator("tr.trace-row").count() == min(2, n - 2)
    page.keyboard.press("p")
    page.wait_for_function("document.body.dataset.loaded >= 2")
    page.keyboard.press("j")
    first = page.locator("tr.trace-row.sel").get_attribute("data-trace")
    assert first == seen[0]
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/trace/{first}*")
    page.wait_for_selector("#panel h2")
    page.keyboard.press("u")
    page.wait_for_url(base + "/?limit=2")  # back to the list as it was filtered


def test_span_panel_shows_messages_output_tools_handoffs_and_links(recorded, page):
    base, item, call = recorded["base"], recorded["item"], recorded["call"]
    page.goto(f"{base}/trace/{call.trace_id}")
    page.wait_for_selector("#panel h2")
    data = httpx.get(f"{base}/api/traces/{call.trace_id}").json()
    spans = data["spans"]

    def open_span(pred) -> dict:
        k, sp = next((k, s) for k, s in enumerate(spans) if pred(s))
        page.locator(".wf-row").nth(k).click()
        page.wait_for_function(f"document.getElementById('panel').dataset.span === "
                               f"{json.dumps(sp['span_id'])}")
        return sp

    # a model call: the messages sent (system and user) and the output, tokens, cost, model
    sp = open_span(lambda s: s["operation"] == "chat")
    panel = page.locator("#panel")
    assert panel.locator(".msg.system").count() == 1 and panel.locator(".msg.user").count() == 1
    assert "output" in panel.text_content() and sp["model"] in panel.text_content()
    assert str(sp["input_tokens"]) in panel.text_content()
    # the agent call of the review item: input/output, and the links to its call-log record,
    # its review item and the adapter version trained from that review
    sp = open_span(lambda s: s["attributes"].get("slmflow.call.id") == call.id)
    assert f"{sp['confidence']:.3f}" in panel.text_content()
    assert panel.locator("a.call-link").get_attribute("href") == f"/call/{call.id}"
    assert panel.locator("a.review-link").get_attribute("href") == f"/review/{item.id}"
    assert panel.locator("a.adapter-link").get_attribute("href") == \
        f"/adapter/{item.agent}/{recorded['version']}"
    # a tool: its arguments and result; a handoff: its payload and outcome
    if any(s["operation"] == "execute_tool" for s in spans):
        sp = open_span(lambda s: s["operation"] == "execute_tool")
        assert "gen_ai.tool.call.arguments" not in sp["attributes"]  # content: when opened
        args = json.loads(_span(base, call.trace_id, spans.index(sp))["attributes"]
                          ["gen_ai.tool.call.arguments"])
        assert "arguments" in panel.text_content()
        for k, v in args.items():
            assert k in panel.text_content() and str(v) in panel.text_content()
    sp = open_span(lambda s: s["operation"] == "handoff" and s["content"])
    assert "payload" in panel.text_content()
    assert sp["attributes"]["slmflow.handoff.status"] in panel.text_content()
    # keyboard: j/k walk the spans
    k = next(i for i, s in enumerate(spans) if s["span_id"] == sp["span_id"])
    page.keyboard.press("j")
    page.wait_for_function(f"document.getElementById('panel').dataset.span === "
                           f"{json.dumps(spans[min(k + 1, len(spans) - 1)]['span_id'])}")
    page.keyboard.press("k")
    page.wait_for_function(f"document.getElementById('panel').dataset.span === "
                           f"{json.dumps(sp['span_id'])}")
    assert EMAIL not in page.content()

    # walk the lineage: span -> review item -> adapter version -> back to the trace
    page.goto(f"{base}/review/{item.id}")
    page.wait_for_selector("#input:not(:empty)")
    assert page.get_attribute("#trace-link", "href") == f"/trace/{call.trace_id}"
    assert page.get_attribute("a.call-link", "href") == f"/call/{call.id}"
    page.click("a.adapter-link")
    page.wait_for_url(f"**/adapter/{item.agent}/{recorded['version']}")
    assert page.get_attribute("a.review-link", "href") == f"/review/{item.id}"
    assert "accuracy" in page.text_content("body")
    page.click(f"a.trace-link[href='/trace/{call.trace_id}']")
    page.wait_for_url(f"**/trace/{call.trace_id}*")
    # the call-log record links to its trace and review item
    page.goto(f"{base}/call/{call.id}")
    assert page.get_attribute("a.trace-link", "href") == f"/trace/{call.trace_id}"
    assert page.get_attribute("a.review-link", "href") == f"/review/{item.id}"


def test_failed_and_rejected_runs_show_why(recorded, page):
    base, runs = recorded["base"], _runs(recorded)
    for rid, run in runs.items():
        if run["status"] not in ("failed", "rejected"):
            continue
        page.goto(f"{base}/trace/{_trace_of(recorded, rid)}")
        page.wait_for_selector("#panel h2")
        assert page.locator(f"#summary .st-{run['status']}").count() == 1
        page.wait_for_selector("#panel[data-span]")
        page.locator(".wf-row").first.click()
        page.wait_for_function("document.getElementById('panel').dataset.span === "
                               "document.querySelector('.wf-row').dataset.spanId")
        assert run["detail"][:30] in page.text_content("#panel")


def test_agents_view(recorded, page):
    base = recorded["base"]
    store = SpanStore(recorded["spans"])
    calls: dict[str, int] = {}
    for s in store.spans():
        if s["operation"] == "invoke_agent":
            calls[s["agent"]] = calls.get(s["agent"], 0) + 1
    page.goto(base + "/agents")
    rows = page.locator("tr.agent-row")
    assert {r.get_attribute("data-agent") for r in rows.all()} == set(calls)
    data = httpx.get(base + "/api/agents").json()
    for r in data["agents"]:
        assert r["calls"] == calls[r["agent"]]
        assert r["p50_ms"] <= r["p95_ms"] and 0 <= r["escalation_rate"] <= 1
        assert 0 < r["confidence"] <= 1 and r["input_tokens"] > 0
        assert sum(b["calls"] for b in r["series"]) == r["calls"]
        tr = page.locator(f"tr.agent-row[data-agent='{r['agent']}']")
        assert tr.locator("svg.spark path").count() == 4  # four inline-SVG series
        assert tr.locator("a.review-link").get_attribute("href") == \
            f"/review?agent={r['agent']}"
    item = recorded["item"]
    link = page.locator(f"tr.agent-row[data-agent='{item.agent}'] a.adapter-link")
    assert link.get_attribute("href") == f"/adapter/{item.agent}/{recorded['version']}"
    assert "accuracy 0.750" in link.text_content()
    page.keyboard.press("j")
    first = page.locator("tr.agent-row.sel").get_attribute("data-agent")
    page.keyboard.press("Enter")  # the agent's traces
    page.wait_for_url(f"**/?agent={first}")
    assert page.input_value("#f-agent") == first
    page.goto(base + "/agents")
    page.select_option("#window", "1h")
    page.wait_for_url("**/agents?window=1h")
    assert page.locator("tr.agent-row").count() == len(calls)
    assert httpx.get(base + "/api/agents?window=2y").status_code == 400


def test_readable_on_a_phone(recorded, browser):
    base, call = recorded["base"], recorded["call"]
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = ctx.new_page()
    for url in ("/", f"/trace/{call.trace_id}", "/agents"):
        pg.goto(base + url)
        # nothing wider than the screen but the tables' own scroll boxes
        assert pg.evaluate("document.documentElement.scrollWidth") <= 391, url
    box_wf = pg.goto(f"{base}/trace/{call.trace_id}") and pg.locator("#waterfall").bounding_box()
    box_panel = pg.locator("#panel").bounding_box()
    assert box_panel["y"] > box_wf["y"] + box_wf["height"] - 1  # the panel under the waterfall
    ctx.close()


def test_sign_in_guards_the_viewer(recorded, browser):
    from slmflow.gateway.auth import create_key

    log = recorded["log"]
    key, _ = create_key(log, "vera", models=["review"])
    server = serve("127.0.0.1", 0, db_path=recorded["spans"], calls=log, auth=True,
                   registry=recorded["registry"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path in ("/api/traces", "/api/agents", f"/api/traces/{recorded['call'].trace_id}",
                     f"/api/calls/{recorded['call'].id}"):
            assert httpx.get(base + path).status_code == 401
            assert httpx.get(base + path, headers={"Authorization": f"Bearer {key}"}) \
                .status_code == 200
        for path in ("/", "/agents", f"/call/{recorded['call'].id}"):
            assert httpx.get(base + path).status_code == 303
        pg = browser.new_page()
        pg.goto(base + "/agents")
        pg.wait_for_url("**/login?next=*")
        pg.fill("#key", key)
        pg.keyboard.press("Enter")
        pg.wait_for_url("**/agents")
        assert pg.locator("tr.agent-row").count() >= 1
        pg.goto(base + "/")
        assert pg.locator("tr.trace-row").count() == len(recorded["results"])
        pg.close()
    finally:
        server.shutdown()
        server.server_close()


def test_same_views_from_postgresql(recorded, page, pg_url):
    """The same real spans copied into PostgreSQL: every endpoint answers the same."""
    pytest.importorskip("psycopg")
    from slmflow.tracing.store import _COLUMNS, _PG_INSERT, _Postgres

    from .conftest import reset_pg

    reset_pg(pg_url)
    with sqlite3.connect(recorded["spans"]) as c:
        rows = c.execute(f"SELECT {', '.join(_COLUMNS)} FROM spans").fetchall()
    db = _Postgres(pg_url)
    db.run("copy", lambda conn: conn.cursor().executemany(_PG_INSERT, rows))
    db.close()
    server = serve("127.0.0.1", 0, db_path=pg_url, calls=recorded["log"],
                   registry=recorded["registry"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pbase = f"http://127.0.0.1:{server.server_address[1]}"
    base = recorded["base"]
    try:
        tids = [r["trace_id"] for r in httpx.get(base + "/api/traces").json()]
        for q in ("", "?status=ok", "?agent=router", "?q=B-77", "?escalated=1", "?limit=2",
                  "?limit=2&offset=2", f"?q={recorded['call'].id}", "?since=1h"):
            a = httpx.get(base + "/api/traces" + q).json()
            b = httpx.get(pbase + "/api/traces" + q).json()
            assert b == a, q
        for t in tids:
            got = httpx.get(f"{base}/api/traces/{t}").json()
            assert httpx.get(f"{pbase}/api/traces/{t}").json() == got
            for k in {0, min(2, len(got["spans"]) - 1)}:
                assert _span(pbase, t, k) == _span(base, t, k)
        a, b = (_approx(httpx.get(u + "/api/agents").json()["agents"]) for u in (base, pbase))
        assert b == a  # (sums of floats in another order: equal to 9 digits)
        page.goto(pbase + "/")
        assert page.locator("tr.trace-row").count() == len(tids)
        page.goto(f"{pbase}/trace/{tids[0]}")
        page.wait_for_selector("#panel h2")
    finally:
        server.shutdown()
        server.server_close()


def test_without_content_capture_the_call_log_fills_in(recorded, page, tmp_path):
    """Content capture is off by default: the same real spans without their content attributes
    still show each run's request (the call log's first agent input of the run) and each
    agent's input and output (its call-log record, through ``slmflow.call.id``)."""
    db = tmp_path / "spans.db"
    shutil.copy(recorded["spans"], db)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE spans SET attributes = json_remove(attributes, '$.\"slmflow.input\"', "
                  "'$.\"slmflow.output\"', '$.\"gen_ai.input.messages\"', "
                  "'$.\"gen_ai.output.messages\"', '$.\"slmflow.handoff.payload\"')")
        assert not c.execute("SELECT COUNT(*) FROM spans WHERE attributes LIKE "
                             "'%slmflow.input%'").fetchone()[0]
    server = serve("127.0.0.1", 0, db_path=db, calls=recorded["log"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    call = recorded["call"]
    try:
        rows = httpx.get(base + "/api/traces").json()
        mine = next(r for r in rows if r["trace_id"] == call.trace_id)
        first = recorded["log"].query(run_id=mine["run_id"], kind="agent", limit=50)
        text = min(first, key=lambda c: c.ts).input["text"]
        assert mine["request"].split()[:5] == text.split()[:5]
        page.goto(f"{base}/trace/{call.trace_id}")
        page.wait_for_selector("#panel h2")
        k = next(i for i, s in enumerate(httpx.get(f"{base}/api/traces/{call.trace_id}")
                                          .json()["spans"])
                 if s["attributes"].get("slmflow.call.id") == call.id)
        page.locator(".wf-row").nth(k).click()
        page.wait_for_function("document.getElementById('panel').dataset.span === "
                               f"document.querySelectorAll('.wf-row')[{k}].dataset.spanId")
        assert "input (call log)" in page.text_content("#panel")
        assert "output (call log)" in page.text_content("#panel")
    finally:
        server.shutdown()
        server.server_close()


def test_evaluation_events_in_the_span_panel(recorded, page):
    """A real eval case on the pipeline's router: its grade (score, label, explanation) shows
    on the eval_case span, above the agent and model spans it graded."""
    from .viewer_run import record_eval

    db = record_eval(recorded["out"])
    store = SpanStore(db)
    (row,) = store.find_traces()
    spans = store.trace(row["trace_id"])
    ev = next(e for s in spans for e in s["events"] if e["name"] == "gen_ai.evaluation.result")
    a = ev["attributes"]
    server = serve("127.0.0.1", 0, db_path=db)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/trace/{row['trace_id']}")
        page.wait_for_selector("#panel h2")
        assert page.text_content("#panel h2").startswith("eval_case routing/refund-1")
        text = page.text_content("#panel")
        assert "evaluation: exact_match" in text
        assert f"score{a['gen_ai.evaluation.score.value']:g}" in text.replace(" ", "")
        assert a["gen_ai.evaluation.score.label"] in text
        if a.get("gen_ai.evaluation.explanation"):
            assert a["gen_ai.evaluation.explanation"] in text
        assert any(s["operation"] == "invoke_agent" for s in spans)
    finally:
        server.shutdown()
        server.server_close()


def _approx(v):
    if isinstance(v, float):
        return float(f"{v:.9g}")
    if isinstance(v, list):
        return [_approx(x) for x in v]
    if isinstance(v, dict):
        return {k: _approx(x) for k, x in v.items()}
    return v


@pytest.mark.skipif(not os.environ.get("SLMFLOW_UI_SCREENSHOTS"),
                    reason="set SLMFLOW_UI_SCREENSHOTS=docs/img to write the docs' screenshots")
def test_screenshots(recorded, browser):
    out = Path(os.environ["SLMFLOW_UI_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    base, call = recorded["base"], recorded["call"]
    runs = _runs(recorded)
    bad = next((rid for rid, r in runs.items() if r["status"] in ("rejected", "escalated")),
               call.run_id)
    pg = browser.new_page(viewport={"width": 1280, "height": 640})
    pg.goto(base + "/")
    pg.screenshot(path=str(out / "ui-traces.png"))
    pg.goto(f"{base}/trace/{_trace_of(recorded, bad)}")
    pg.wait_for_selector("#panel h2")
    data = httpx.get(f"{base}/api/traces/{_trace_of(recorded, bad)}").json()
    k = max(i for i, s in enumerate(data["spans"]) if s["operation"] == "chat")
    pg.locator(".wf-row").nth(k).click()
    pg.wait_for_function("document.getElementById('panel').dataset.span === "
                         f"{json.dumps(data['spans'][k]['span_id'])}")
    pg.screenshot(path=str(out / "ui-trace.png"))
    pg.goto(base + "/agents?window=5m")
    pg.screenshot(path=str(out / "ui-agents.png"))
    m = browser.new_page(viewport={"width": 390, "height": 700}, is_mobile=True)
    m.goto(f"{base}/trace/{_trace_of(recorded, bad)}")
    m.wait_for_selector("#panel[data-span]")
    m.screenshot(path=str(out / "ui-phone.png"))
    for f in ("ui-traces.png", "ui-trace.png", "ui-agents.png", "ui-phone.png"):
        assert (out / f).stat().st_size < 150_000, f
