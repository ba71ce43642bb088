"""The improvement loop end to end, on real parts: the embedded SmolLM2-135M with LoRA adapters on
llama.cpp, the real gateway on loopback, the review UI in headless Chromium (Playwright), PEFT
training on CPU, the registry's gate, the hot swap and the rollback.

The story (docs/loop.md walks through the same steps by hand):
1. a router ("triage") is fine-tuned on data with no billing examples: it has a systematic error,
   billing tickets go elsewhere;
2. traffic goes through the gateway; a scripted user thumbs-down the wrong answers;
3. `slmflow loop flag` queues them; a scripted reviewer corrects them in the real UI;
4. `slmflow loop retrain` trains v2 on the original data + the corrections, the gate compares v2
   with v1 on the same cases (the eval set + held-out reviews) and promotes it;
5. the gateway serves v2 without a restart (billing routed right), and a rollback restores v1.

It runs twice: on one machine's stores (SQLite call log and spans, the file registry), then with
one ``deploy.yaml`` (``database: postgresql://...``) moving the call log, review queue, adapter
registry and traces to a real PostgreSQL server: the CLI processes get only ``SLMFLOW_CONFIG``;
nothing else in the story changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "loop"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A copy of examples/loop (schemas, workflow, generated data) in a temporary folder."""
    tmp = tmp_path_factory.mktemp("loop")
    for f in ("loop_schemas.py", "triage.yaml"):
        shutil.copy(EXAMPLE / f, tmp / f)
    sys.path.insert(0, str(EXAMPLE))
    try:
        import make_data
    finally:
        sys.path.remove(str(EXAMPLE))
    make_data.write(tmp)
    return tmp, make_data.datasets()["traffic"]


_STORE_VARS = ("SLMFLOW_CALLS_URL", "SLMFLOW_ADAPTERS_URL", "SLMFLOW_TRACES_URL", "SLMFLOW_CONFIG")
_ENV: dict[str, str] = {}  # how the CLI processes find the stores (set per run below)


def _cli(*args: str, home: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "slmflow")
    env = {k: v for k, v in os.environ.items() if k not in _STORE_VARS}
    env.update({"SLMFLOW_HOME": home, "SLMFLOW_TRACING": "off", **_ENV})
    p = subprocess.run([exe, *args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=1500)
    if check:
        assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    return p


def _warm(args: list[str]) -> list[str]:
    out = list(args)
    out[out.index("--epochs") + 1] = "2"
    return out + ["--warm-start"]


TRAIN = ["--r", "8", "--lr", "2e-3", "--epochs", "6", "--batch-size", "4", "--max-len", "64",
         "--targets", "q_proj,k_proj,v_proj,o_proj", "--threads", "1"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (run .ci/install-system-deps.sh)")
@pytest.mark.parametrize("stores", ["one-machine", "deploy.yaml"])
def test_flag_review_retrain_promote_rollback(setup, slmflow_home, stores, request, monkeypatch,
                                              tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    import yaml

    from slmflow import tracing
    from slmflow.agents import set_adapter_resolver
    from slmflow.scale.config import load_config

    tmp, traffic = setup
    for f in ("calls.db", "spans.db", "calls.db-wal", "calls.db-shm"):
        (tmp / f).unlink(missing_ok=True)
    home = str(slmflow_home)  # the gateway in this process reads the same registry
    runs = Path(home) / "runs"
    for d in [runs / "triage", *runs.glob("loop-triage-*")]:
        shutil.rmtree(d, ignore_errors=True)  # each run trains for itself (no resume)
    for k in _STORE_VARS:
        monkeypatch.delenv(k, raising=False)
    _ENV.clear()
    if stores == "one-machine":
        monkeypatch.setenv("SLMFLOW_ADAPTERS_URL", str(tmp_path / "adapters"))
        _ENV.update(SLMFLOW_CALLS_URL=f"sqlite:///{tmp / 'calls.db'}",
                    SLMFLOW_ADAPTERS_URL=str(tmp_path / "adapters"))
        calls, spans = f"sqlite:///{tmp / 'calls.db'}", tmp / "spans.db"
    else:
        from .conftest import reset_pg

        pg = request.getfixturevalue("pg_url")
        reset_pg(pg)
        deploy = tmp_path / "deploy.yaml"
        deploy.write_text(yaml.safe_dump({"database": pg}))
        for k, v in load_config(deploy).env().items():  # this process: the gateway, the UI
            monkeypatch.setenv(k, v)
        _ENV.update(SLMFLOW_CONFIG=str(deploy))  # the CLI processes: the file alone
        calls, spans = pg, pg
    set_adapter_resolver(None)  # agents resolved under the other run's registry are dropped
    tracing.configure(db_path=spans if stores == "one-machine" else None,
                      store_url=None if stores == "one-machine" else spans,
                      batch=False)  # lineage reaches the traces
    try:
        # the second run also retrains with a warm start from v1 (2 epochs instead of 6)
        _loop_turn(tmp, traffic, home, pw, calls, spans, warm=stores == "deploy.yaml")
        tracing.force_flush()
        if stores == "deploy.yaml":
            _everything_was_on_the_server(pg, tmp, Path(home))
    finally:
        tracing.reset()
        set_adapter_resolver(None)
        _ENV.clear()


def _everything_was_on_the_server(pg: str, tmp: Path, home: Path) -> None:
    import psycopg

    with psycopg.connect(pg) as c:
        one = lambda sql: c.execute(sql).fetchall()  # noqa: E731
        assert one("SELECT COUNT(*) FROM calls WHERE agent = 'triage'")[0][0] >= 2 * 16
        assert one("SELECT COUNT(*) FROM review_items WHERE status = 'reviewed'")[0][0] >= 12
        assert one("SELECT version FROM adapter_versions WHERE agent = 'triage' "
                   "ORDER BY version") == [(1,), (2,)]
        assert one("SELECT COUNT(*) FROM adapter_files WHERE agent = 'triage'")[0][0] >= 4
        assert '"v1"' in one("SELECT state FROM adapter_promoted WHERE agent = 'triage'")[0][0]
        card = json.loads(one("SELECT card FROM adapter_versions WHERE agent = 'triage' AND "
                              "version = 2")[0][0])
        traced = {r[0] for r in one("SELECT DISTINCT trace_id FROM spans")}
        assert card["lineage"]["trace_ids"] and set(card["lineage"]["trace_ids"]) <= traced
    # and nothing was written to this machine's stores
    assert not (tmp / "calls.db").exists() and not (tmp / "spans.db").exists()
    assert not (home / "adapters" / "triage").exists()


def _loop_turn(tmp, traffic, home, pw, calls, spans, warm=False):
    import time

    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.gateway.app import Gateway
    from slmflow.gateway.config import GatewayConfig
    from slmflow.gateway.server import GatewayServer
    from slmflow.store import open_call_log
    from slmflow.store.review import ReviewQueue
    from slmflow.ui.traces import serve

    # 1. v1: trained without billing examples, promoted by hand (it is the starting point)
    t_v1 = time.perf_counter()
    _cli("train", "agent", "triage", "--workflow", "triage.yaml", "--data", "train.jsonl",
         "--no-promote", *TRAIN, home=home, cwd=tmp)
    reg = AdapterRegistry()
    reg.promote("triage", "v1", {"accuracy": 0.0}, force=True)
    t_v1 = time.perf_counter() - t_v1

    # 2. traffic through the real gateway; the scripted user thumbs-down wrong answers
    cfg = GatewayConfig.model_validate({
        "call_log": calls, "workflows": {"triage": {
            "path": str(tmp / "triage.yaml")}}, "auth": {"enabled": False},
        "cache": {"enabled": False}})
    with GatewayServer(Gateway(cfg)) as gw:
        def route(text: str) -> dict:
            r = httpx.post(f"{gw.url}/workflows/triage/runs", json={"input": {"text": text}},
                           timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        wrong_before = wrong_all = 0
        t_traffic = time.perf_counter()
        for text, truth in traffic:
            run = route(text)
            (step,) = [s for s in run["steps"] if s["call_id"]]
            if run["answer"] != truth:
                wrong_before += int(truth == "billing")
                wrong_all += 1
                f = httpx.post(f"{gw.url}/feedback", json={"call_id": step["call_id"],
                                                           "thumbs": "down", "by": "user-7"})
                assert f.status_code == 201, f.text
        t_traffic = time.perf_counter() - t_traffic
        assert wrong_before >= 10, f"v1 routed {12 - wrong_before}/12 billing tickets right"

        # 3. flag, then review through the real UI
        t_flag = time.perf_counter()
        out = _cli("loop", "flag", "--since", "1h", "--json", home=home, cwd=tmp)
        rep = json.loads(out.stdout)
        t_flag = time.perf_counter() - t_flag
        assert rep["flagged"].get("triage", 0) >= wrong_before
        assert rep["by_reason"].get("negative_feedback", 0) == wrong_all
        log = open_call_log(calls)
        q = ReviewQueue(log)
        pending = q.items("triage")
        truth_of = dict(traffic)
        ui = serve("127.0.0.1", 0, db_path=spans, calls=log)
        threading.Thread(target=ui.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{ui.server_address[1]}"
        t_review = time.perf_counter()
        try:
            with pw.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM,
                                            args=["--no-sandbox", "--disable-dev-shm-usage"])
                page = browser.new_page()
                page.goto(f"{base}/review/{pending[0].id}?reviewer=rita")
                for _ in pending:
                    try:
                        page.wait_for_selector("#input:not(:empty)", timeout=60_000)
                    except Exception:
                        raise AssertionError(f"review page {page.url} did not render: "
                                             f"{page.content()[:3000]}") from None
                    text = json.loads(page.text_content("#input"))["text"]
                    shown = json.loads(page.text_content("#output"))["category"]
                    here = page.url
                    if shown == truth_of[text]:
                        page.keyboard.press("a")
                    else:
                        page.select_option("select[name=category]",
                                           json.dumps(truth_of[text]))
                        page.keyboard.press("Control+Enter")
                    page.wait_for_function(f"location.href !== {json.dumps(here)}")
                assert "/review?done=1" in page.url
                browser.close()
        finally:
            ui.shutdown()
            ui.server_close()
        t_review = time.perf_counter() - t_review
        done = q.items("triage", status="reviewed", limit=None)
        assert len(done) == len(pending) and all(i.reviewer == "rita" for i in done)
        assert sum(i.verdict == "correct" for i in done) >= wrong_before

        # 4. retrain through the gate
        t_retrain = time.perf_counter()
        out = _cli("loop", "retrain", "--agent", "triage", "--workflow", "triage.yaml",
                   "--data", "train.jsonl", "--eval-data", "eval.jsonl", "--min-new", "5",
                   *(TRAIN if not warm else _warm(TRAIN)), home=home, cwd=tmp, check=False)
        assert out.returncode == 0, (out.stdout[-4000:], out.stderr[-3000:])
        res = json.loads(out.stdout[out.stdout.rindex("\n{\n") + 1:])
        t_retrain = time.perf_counter() - t_retrain
        print(f"\nv1 train {t_v1:.1f} s; {len(traffic)} requests {t_traffic:.1f} s; "
              f"review in the UI {t_review:.1f} s")
        print(f"loop turn: flag {t_flag:.1f} s (CLI), {len(pending)} reviewed, retrain+gate+"
              f"promote {t_retrain:.1f} s (CLI); v1 billing right {12 - wrong_before}/12; "
              f"gate: {res['current_scores']} -> {res['scores']} on {res['eval_cases']} cases; "
              f"held-out reviews {res['holdout_scores']}")
        assert res["version"] == "v2" and res["promoted"]
        assert res["scores"]["accuracy"] > res["current_scores"]["accuracy"]
        hold = res["holdout_scores"]
        assert hold["candidate"]["accuracy"] > hold["current"]["accuracy"]
        decision = reg.history("triage")[-1]
        assert decision["action"] == "promoted" and decision["same_cases"]
        assert decision["current"] == "v1" and decision["candidate"] == "v2"
        lineage = reg.card("triage", "v2")["lineage"]
        assert lineage["parent"] == "v1" and lineage["loop"]["reviewers"] == ["rita"]
        assert lineage["loop"]["warm_start_from"] == ("v1" if warm else None)
        reviewed_calls = {i.call_id for i in done}
        assert set(lineage["loop"]["call_ids"]) <= reviewed_calls and lineage["trace_ids"]
        assert all(any(u.startswith(("adapter:triage@v2", "evals:triage@v2"))
                       for u in i.used_in) for i in q.items("triage", status=None, limit=None)
                   if i.verdict in ("accept", "correct"))

        # 5. the running gateway serves v2 (no restart): billing is routed right now
        fixed = sum(route(t)["answer"] == "billing" for t, c in traffic if c == "billing")
        assert fixed >= 12 - wrong_before + 3, f"v2 routes {fixed}/12 billing tickets right"
        assert reg.rollback("triage") == "v1"
        after = sum(route(t)["answer"] == "billing" for t, c in traffic if c == "billing")
        assert after == 12 - wrong_before  # v1 is back, with its old error
        print(f"v2 billing right {fixed}/12; after rollback {after}/12")
        log.close()
