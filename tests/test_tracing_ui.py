"""`slmflow ui`: the trace list and the per-trace waterfall, rendered by headless Chromium (the
waterfall is built by the page's JS, so the served HTML alone has no bars)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading

import httpx
import pytest

from slmflow import tracing
from slmflow.ui.traces import serve

from .test_tracing import run_pipeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def ui(tmp_path):
    db = tmp_path / "spans.db"
    tracing.configure(db_path=db, batch=False)
    try:
        ok_id, *_ = run_pipeline()
        with pytest.raises(RuntimeError):
            run_pipeline(fail_tool=True)
    finally:
        tracing.reset()
    server = serve("127.0.0.1", 0, db_path=db)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    # the first request loads the PII engine (Presidio + spaCy): seconds on a slow 2-core CPU,
    # more than httpx's 5 s default the tests' requests use
    httpx.get(base + "/api/traces", timeout=180)
    yield base, ok_id
    server.shutdown()
    server.server_close()


def _dom(url: str, tmp_path) -> str:
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_api_and_pages_served(ui):
    base, ok_id = ui
    traces = httpx.get(base + "/api/traces").json()
    assert len(traces) == 2 and ok_id in {t["trace_id"] for t in traces}
    data = httpx.get(f"{base}/api/traces/{ok_id}").json()
    assert [s["depth"] for s in data["spans"]] == [0, 1, 2, 2, 1, 1, 2]
    page = httpx.get(f"{base}/trace/{ok_id}").text
    assert 'class="wf-bar' not in page and "class='wf-bar" not in page  # JS builds the bars
    assert httpx.get(base + "/trace/abc123").status_code == 404
    assert httpx.get(base + "/nope").status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: run "
                    ".ci/install-system-deps.sh (apt-get install -y chromium) as root")
def test_waterfall_renders_in_headless_chromium(ui, tmp_path):
    base, ok_id = ui
    listing = _dom(base + "/", tmp_path)
    rows = re.findall(r'<tr class="trace-row"', listing)
    assert len(rows) == 2
    assert f'href="/trace/{ok_id}"' in listing and "invoke_workflow support" in listing

    dom = _dom(f"{base}/trace/{ok_id}", tmp_path)
    bars = re.findall(r'<div class="wf-bar ([a-z_ ]*)" style="left: ([0-9.e-]+)%; '
                      r'width: ([0-9.e-]+)%;', dom)
    assert len(bars) == 7, dom[-3000:]
    assert [b[0].strip() for b in bars] == ["invoke_workflow", "invoke_agent", "chat",
                                            "execute_tool", "handoff", "invoke_agent", "chat"]
    left0, width0 = float(bars[0][1]), float(bars[0][2])
    assert left0 == pytest.approx(0, abs=1e-6) and width0 == pytest.approx(100, rel=1e-3)
    for _, left, width in bars[1:]:  # every child inside the root's bar
        assert 0 <= float(left) and float(left) + float(width) <= 100.001
    assert "7 spans" in dom and "tok " in dom

    last = httpx.get(base + "/api/traces").json()[0]["trace_id"]
    dom = _dom(f"{base}/trace/{last}", tmp_path)
    assert len(re.findall(r'class="wf-row error( sel)?"', dom)) == 3  # tool, agent, workflow in red
    assert "wf-bar execute_tool error" in dom and "lookup backend down" in dom
