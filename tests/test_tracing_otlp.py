"""OTLP export proven against a real receiver no one here wrote: Arize Phoenix, started on
loopback by the test (installed by `make setup` into .venv/phoenix). Spans must arrive over OTLP
HTTP and gRPC with the right tree and GenAI attributes, read back through Phoenix's REST API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from slmflow import tracing
from slmflow.tracing import attrs as A

from .conftest import free_port
from .test_tracing import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _phoenix_python() -> str | None:
    explicit = os.environ.get("SLMFLOW_PHOENIX_PYTHON")
    for cand in (explicit, str(ROOT / ".venv" / "phoenix" / "bin" / "python")):
        if cand and Path(cand).is_file():
            return cand
    try:
        import phoenix  # noqa: F401
        return sys.executable
    except ImportError:
        return None


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    py = _phoenix_python()
    if py is None:
        pytest.skip("Arize Phoenix is not installed (make setup installs it into .venv/phoenix)")
    work = tmp_path_factory.mktemp("phoenix")
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(work), "PHOENIX_HOST": "127.0.0.1",
           "PHOENIX_PORT": str(http_port), "PHOENIX_GRPC_PORT": str(grpc_port),
           "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([py, "-m", "phoenix.server.main", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("Phoenix did not start:\n" + (work / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield {"http": base, "grpc": f"http://127.0.0.1:{grpc_port}"}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _flat(d: dict, prefix: str = "") -> dict:
    """Phoenix nests dotted attribute names ({"gen_ai": {"usage": ...}}); flatten them back."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _spans_of(base: str, trace_id: str, n: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{base}/v1/projects/default/spans",
                      params={"trace_id": trace_id, "limit": 100}, timeout=5)
        spans = r.json().get("data", []) if r.status_code == 200 else []
        if len(spans) >= n or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_spans_arrive_in_phoenix_with_tree_and_attributes(phoenix, tmp_path, protocol):
    endpoint = phoenix["http"] if protocol == "http" else phoenix["grpc"]
    tracing.configure(db_path=tmp_path / "s.db", otlp_endpoint=endpoint, protocol=protocol)
    try:
        trace_id, r1, _ = run_pipeline()
        assert tracing.force_flush(30)
        h = tracing.health()
        assert h["dropped_total"] == 0, h
        assert h["exported"][f"otlp-{protocol}"] == 7
    finally:
        tracing.reset()
    spans = _spans_of(phoenix["http"], trace_id, 7)
    assert sorted(s["name"] for s in spans) == sorted([
        "invoke_workflow support", "invoke_agent triage", "chat echo", "execute_tool lookup",
        "handoff triage -> resolver", "invoke_agent resolver", "chat echo"])
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}

    def parent(s):
        p = s.get("parent_id")
        return by_id[p]["name"] if p else None

    tree = sorted((s["name"], parent(s)) for s in spans)
    assert tree == sorted([
        ("invoke_workflow support", None),
        ("invoke_agent triage", "invoke_workflow support"),
        ("chat echo", "invoke_agent triage"),
        ("execute_tool lookup", "invoke_agent triage"),
        ("handoff triage -> resolver", "invoke_workflow support"),
        ("invoke_agent resolver", "invoke_workflow support"),
        ("chat echo", "invoke_agent resolver")])
    chat = _flat(next(s for s in spans if s["name"] == "chat echo"
                      and parent(s) == "invoke_agent triage")["attributes"])
    assert chat[A.OPERATION_NAME] == "chat" and chat[A.PROVIDER_NAME] == "function"
    assert chat[A.REQUEST_MODEL] == "echo" and chat[A.RESPONSE_MODEL] == "echo"
    assert chat[A.USAGE_INPUT_TOKENS] == r1.usage.input_tokens
    assert chat[A.USAGE_OUTPUT_TOKENS] == r1.usage.output_tokens
    assert list(chat[A.RESPONSE_FINISH_REASONS]) == ["stop"]
    assert chat[A.CONFIDENCE] == 1.0 and chat[A.COST_USD] > 0
    handoff = _flat(next(s for s in spans if s["name"].startswith("handoff"))["attributes"])
    assert handoff[A.HANDOFF_STATUS] == "validated"
    agent = _flat(next(s for s in spans if s["name"] == "invoke_agent triage")["attributes"])
    assert agent[A.AGENT_NAME] == "triage"
    wf = next(s for s in spans if s["name"] == "invoke_workflow support")
    assert any(e["name"] == A.EVALUATION_EVENT for e in wf.get("events", []))
