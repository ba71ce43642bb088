"""Issue 15, the gateway's own faults: user code that exits, request schemas that ask for too
much, answers that are not JSON, tool messages that leak, workflow specs that import anything.

The exits and the leak are tested against a real ``slmflow serve`` subprocess on loopback (an exit
that escapes ends that process, which no in-process server would show); the schema limits against
the real embedded SmolLM2 on llama.cpp behind an in-process gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from slmflow.errors import ConfigError, SchemaError
from slmflow.gateway.app import Gateway
from slmflow.gateway.auth import hash_key
from slmflow.gateway.config import GatewayConfig, load_config
from slmflow.gateway.server import GatewayServer
from slmflow.store import open_call_log

from .conftest import free_port, wait_http

EXE = Path(sys.executable).parent / "slmflow"
KEY = "sk-hardening"
AUTH = {"authorization": f"Bearer {KEY}"}

STEPS = '''
import asyncio, math, sys
from pydantic import BaseModel


class Req(BaseModel):
    code: int = 0


def quit(inp):
    sys.exit(3)


async def aquit(inp):
    await asyncio.sleep(0)
    raise SystemExit(5)


def fine(inp):
    return "fine"


def bye(code: int) -> int:
    """Exit the process."""
    sys.exit(code)


async def interrupt(code: int) -> int:
    """Raise KeyboardInterrupt."""
    raise KeyboardInterrupt


def lookup(code: int) -> str:
    """Fail with a secret in the message."""
    raise ValueError("could not connect to postgresql://admin:hunter2@db.internal/orders")


def nan(inp):
    return {"score": math.nan, "values": [1.5, math.inf, -math.inf], "label": "x"}
'''

WORKFLOWS = {
    "exit_fn": "steps: [{name: quit, function: hard_steps:quit}]\noutput: quit",
    "exit_parallel": ("steps:\n  - name: both\n    parallel:\n"
                      "      - {name: ok, function: hard_steps:fine}\n"
                      "      - {name: quit, function: hard_steps:aquit, timeout_s: 5}\n"
                      "output: ok"),
    "exit_tool": ("input: hard_steps:Req\ntools: {bye: {function: hard_steps:bye}}\n"
                  "steps: [{name: leave, tool: bye, args: {code: code}}]\noutput: leave"),
    "exit_async_tool": ("input: hard_steps:Req\n"
                        "tools: {interrupt: {function: hard_steps:interrupt}}\n"
                        "steps: [{name: stop, tool: interrupt, args: {code: code}}]\n"
                        "output: stop"),
    "leaky": ("input: hard_steps:Req\ntools: {lookup: {function: hard_steps:lookup}}\n"
              "steps: [{name: find_order, tool: lookup, args: {code: code}}]\n"
              "output: find_order"),
    "nan": "steps: [{name: score, function: hard_steps:nan}]\noutput: score",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``slmflow serve`` (a subprocess) over the workflows above; yields (base url, process,
    its log file, call-log URL)."""
    tmp = tmp_path_factory.mktemp("hardening")
    (tmp / "hard_steps.py").write_text(STEPS)
    wfs = {}
    for name, body in WORKFLOWS.items():
        (tmp / f"{name}.yaml").write_text(f"name: {name}\n{body}\n")
        wfs[name] = {"path": str(tmp / f"{name}.yaml"), "expose_agents": False}
    calls = f"sqlite:///{tmp / 'calls.db'}"
    cfg = {"call_log": calls, "workflows": wfs, "allowed_imports": ["hard_"],
           "auth": {"keys": [{"name": "hard", "sha256": hash_key(KEY)}]},
           "cache": {"enabled": False}}
    (tmp / "gateway.yaml").write_text(json.dumps(cfg))
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "SLMFLOW_HOME": str(tmp), "SLMFLOW_TRACING": "off"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(EXE), "serve", "--config", str(tmp / "gateway.yaml"),
                                 "--port", str(port), "--log-level", "warning"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", proc, log)
        yield base, proc, log, calls
    finally:
        proc.terminate()
        proc.wait(30)


def _alive(base: str, proc) -> None:
    assert proc.poll() is None, f"slmflow serve exited with {proc.returncode}"
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


def _records(calls: str, timeout: float = 20, **kw) -> list:
    """The call log's records matching ``kw``, once the server's writer has written them."""
    deadline = time.time() + timeout
    with open_call_log(calls) as log:
        while True:
            rows = log.query(limit=None, **kw)
            if rows or time.time() > deadline:
                return rows
            time.sleep(0.2)


# ---- 1. sys.exit / SystemExit / KeyboardInterrupt in user code ---------------------------------

@pytest.mark.parametrize("name, payload", [
    ("exit_fn", "hi"), ("exit_parallel", "hi"), ("exit_tool", {"code": 3}),
    ("exit_async_tool", {"code": 1})])
def test_exit_in_step_or_tool_is_that_steps_error_and_the_server_stays_up(served, name, payload):
    base, proc, _, calls = served
    r = httpx.post(f"{base}/v1/workflows/{name}/runs", headers=AUTH, json={"input": payload},
                   timeout=60)
    assert r.status_code in (500, 503), r.text
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    _alive(base, proc)
    (rec,) = _records(calls, workflow=name, kind="workflow")
    assert rec.status == "error" and "tried to end the process" in rec.error


def test_exit_through_chat_completions(served):
    base, proc, _, _ = served
    r = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "exit_tool", "messages": [{"role": "user", "content": '{"code": 9}'}]})
    assert r.status_code == 503, r.text
    _alive(base, proc)


def test_library_exit_becomes_a_tool_result_and_a_failed_run():
    import asyncio

    from pydantic import BaseModel

    from slmflow import FunctionModel
    from slmflow.agents import Agent
    from slmflow.tools import tool
    from slmflow.workflow import Parallel, Step, Workflow
    from slmflow.workflow.runner import StepError, run_workflow

    @tool
    def bye(x: int) -> int:
        """Exit."""
        sys.exit(x)

    @tool
    async def abort(x: int) -> int:
        """Interrupt."""
        raise KeyboardInterrupt

    async def aquit(inp):
        raise SystemExit(2)

    class Verdict(BaseModel):
        approved: bool

    def check(state):
        raise KeyboardInterrupt

    async def main():
        r1, r2 = await bye.invoke({"x": 3}), await abort.invoke({"x": 1})
        wf = Workflow("w", [Parallel("p", (Step("a", fn=lambda inp: sys.exit(4)),
                                           Step("b", fn=aquit, timeout_s=5)))])
        checked = Workflow("v", [
            Step("write", agent=Agent("writer", FunctionModel(lambda m, s: "draft"))),
            Step("verify", agent=Agent("judge", FunctionModel(lambda m, s: '{"approved": true}'),
                                       output_type=Verdict), verifies="write", check=check)])
        return r1, r2, await run_workflow(wf, "hi"), await run_workflow(checked, "hi")

    r1, r2, run, checked = asyncio.run(main())
    assert r1.error_kind == "exception" and r1.error.details["exception_type"] == "SystemExit"
    assert r2.error.details["exception_type"] == "KeyboardInterrupt"
    assert run.status == "failed" and isinstance(run.error, StepError)
    assert {s.step: s.status for s in run.steps} == {"a": "failed", "b": "failed"}
    assert checked.status == "failed" and isinstance(checked.error, StepError)
    assert [(s.step, s.status) for s in checked.steps] == [("write", "ok"), ("verify", "failed")]


# ---- the tool's message stays server-side --------------------------------------------------------

def test_tool_error_message_goes_to_the_log_not_the_client(served):
    base, proc, log, calls = served
    r = httpx.post(f"{base}/v1/workflows/leaky/runs", headers=AUTH, json={"input": {"code": 1}},
                   timeout=60)
    assert r.status_code == 503, r.text
    msg = r.json()["error"]["message"]
    assert "hunter2" not in r.text and "ValueError" not in r.text
    assert "'find_order'" in msg and "'lookup'" in msg and "raised an error" in msg
    call_id = re.search(r"call id ([0-9a-f]+)", msg).group(1)
    with open_call_log(calls) as cl:
        deadline = time.time() + 20
        while (rec := cl.get(call_id)) is None and time.time() < deadline:
            time.sleep(0.2)
    assert rec is not None and rec.status == "error" and "hunter2" in rec.error
    mine = httpx.get(f"{base}/v1/calls/{call_id}", headers=AUTH, timeout=10)
    assert mine.status_code == 200 and "hunter2" not in mine.text
    assert mine.json()["error"] == msg
    deadline = time.time() + 10
    while "hunter2" not in log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    assert call_id in log.read_text() and "hunter2" in log.read_text()
    _alive(base, proc)


# ---- 4. NaN and Infinity in an answer ------------------------------------------------------------

def test_non_finite_answer_is_null_in_the_response_and_the_log(served):
    base, proc, _, calls = served
    r = httpx.post(f"{base}/v1/workflows/nan/runs", headers=AUTH, json={"input": "x"},
                   timeout=60)
    assert r.status_code == 200, r.text
    run = r.json()
    expected = {"score": None, "values": [1.5, None, None], "label": "x"}
    assert run["status"] == "ok" and run["answer"] == expected
    (rec,) = _records(calls, run_id=run["id"], kind="workflow")
    assert rec.status == "ok" and rec.output == run["answer"]
    assert rec.meta["nonfinite"] == 3
    c = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=60, json={
        "model": "nan", "messages": [{"role": "user", "content": "x"}]})
    assert c.status_code == 200, c.text
    assert json.loads(c.json()["choices"][0]["message"]["content"]) == expected
    rec = httpx.get(f"{base}/v1/calls/{c.json()['slmflow']['call_id']}", headers=AUTH,
                    timeout=10).json()
    assert rec["output"] == expected and rec["status"] == "ok"
    _alive(base, proc)


def test_deeply_nested_run_input_is_a_400_not_a_500(served):
    base, proc, _, _ = served
    deep = "[" * 700 + "]" * 700  # parses (under json's recursion limit), then recursed into
    r = httpx.post(f"{base}/v1/workflows/nan/runs", headers={**AUTH, "content-type":
                   "application/json"}, content='{"input": ' + deep + "}", timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_input" and "max_input_depth" in r.text
    _alive(base, proc)


# ---- allowed_imports -----------------------------------------------------------------------------

def _import_case(tmp_path, ref: str, allowed) -> tuple[Path, Path]:
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n\ndef f(inp):\n    return inp\n")
    # a module name no other test imports (the example's own `support_steps` may already be in
    # sys.modules when the whole suite runs, and then this file would never be read)
    (tmp_path / "support_hardening_steps.py").write_text(
        "import os\n\ndef f(inp):\n    return inp\n")
    (tmp_path / "wf.yaml").write_text(textwrap.dedent(f"""\
        name: wf
        steps:
          - name: first
            function: support_hardening_steps:f
          - name: run
            function: {ref}
        """))
    cfg = {"call_log": f"sqlite:///{tmp_path / 'calls.db'}",
           "workflows": {"wf": {"path": "wf.yaml"}}}
    if allowed is not None:
        cfg["allowed_imports"] = allowed
    (tmp_path / "gateway.yaml").write_text(json.dumps(cfg))
    return tmp_path / "gateway.yaml", marker


@pytest.mark.parametrize("ref, module", [("os:system", "os"), ("evil_mod:f", "evil_mod"),
                                         ("support_hardening_steps:os.system", "os")])
def test_allowed_imports_refuses_before_importing(tmp_path, ref, module):
    cfgp, marker = _import_case(tmp_path, ref, ["support_", "myco."])
    with pytest.raises(ConfigError) as e:
        Gateway(load_config(cfgp))
    msg = e.value.message
    assert "wf.yaml:6: steps.1.function" in msg, msg
    assert f"import {ref!r} is not allowed" in msg and f"module {module!r}" in msg
    assert "allowed_imports (support_, myco.)" in msg
    assert not marker.exists()  # refused before anything ran


def test_allowed_imports_lets_allowed_modules_in_and_is_off_by_default(tmp_path):
    cfgp, marker = _import_case(tmp_path, "evil_mod:f", None)
    gw = Gateway(load_config(cfgp))
    assert "wf" in gw.targets and marker.exists()  # no list: a spec imports what it names
    gw.writer.close(10)
    cfgp, marker = _import_case(tmp_path, "evil_mod:f", ["support_", "evil_"])
    gw = Gateway(load_config(cfgp))
    assert "wf" in gw.targets
    gw.writer.close(10)


def test_slmflow_serve_refuses_a_spec_outside_allowed_imports(tmp_path):
    cfgp, marker = _import_case(tmp_path, "os:system", ["support_"])
    env = {**os.environ, "SLMFLOW_HOME": str(tmp_path), "SLMFLOW_TRACING": "off"}
    r = subprocess.run([str(EXE), "serve", "--config", str(cfgp), "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    err = " ".join(r.stderr.split())
    assert "wf.yaml:6: steps.1.function" in err and "'os:system'" in err
    assert "allowed_imports" in err


# ---- 3. request schemas: bounded, compiled off the event loop, under the timeout -----------------

def test_check_limits_names_each_limit():
    from slmflow.structured import SchemaLimitError, SchemaLimits, check_limits, check_schema

    def limit(schema, **kw):
        with pytest.raises(SchemaLimitError) as e:
            check_limits(schema, SchemaLimits(), **kw)
        return e.value.details["limit"], e.value.details["path"]

    deep: dict = {"type": "string"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"a": deep}}
    assert limit(deep) == ("max_depth", "(root)")
    with pytest.raises(SchemaError):  # not a RecursionError, for library users too
        check_schema(deep)
    arr = {"type": "object", "properties": {"xs": {"type": "array", "minItems": 100000000}}}
    assert limit(arr) == ("max_count", "/properties/xs/minItems")
    assert limit({"type": "array", "minItems": 300}, max_tokens=256) == ("max_tokens",
                                                                          "/minItems")
    assert limit({"type": "string", "minLength": 200}, max_tokens=16)[0] == "max_tokens"
    assert limit({"type": "string", "maxLength": 2000})[0] == "max_count"
    assert limit({"type": "string", "pattern": "^a{0,5000}$"}) == ("max_count", "/pattern")
    assert limit({"type": "string", "pattern": "a" * 600})[0] == "max_pattern"
    assert limit({"enum": list(range(600))})[0] == "max_enum"
    assert limit({"type": "object", "properties": {f"p{i}": {} for i in range(300)}})[0] \
        == "max_properties"
    assert limit({"enum": ["x" * 70000]})[0] == "max_bytes"
    assert limit({"$ref": "https://example.com/s.json"})[0] == "$ref"
    check_limits({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 512,
                  "enum": [[1, 2]]}, max_tokens=16)  # within every limit
    check_limits({"enum": [{"minItems": 10 ** 9}]})  # enum values are data, not schema


@pytest.fixture
def llama_gateway(smollm, tmp_path):
    """A gateway over the real SmolLM2 (llama.cpp); make(limits) -> running server."""
    servers = []

    def make(**limits):
        cfg = GatewayConfig.model_validate({
            "call_log": f"sqlite:///{tmp_path / 'calls.db'}", "auth": {"enabled": False},
            "cache": {"enabled": False}, "models": {"slm": {}}, "limits": limits})
        s = GatewayServer(Gateway(cfg, models={"slm": smollm})).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _chat(s, schema, max_tokens=16, timeout=60):
    return httpx.post(f"{s.url}/chat/completions", timeout=timeout, json={
        "model": "slm", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "List some numbers."}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "out", "schema": schema}}})


def test_request_schema_limits_answer_400_with_the_real_model(llama_gateway):
    s = llama_gateway()
    r = _chat(s, {"type": "array", "items": {"type": "integer"}, "minItems": 100000000})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "schema_too_complex"
    assert err["param"] == "response_format.json_schema.schema"
    assert "minItems" in err["message"] and "max_count" in err["message"]
    deep: dict = {"type": "integer"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    r = _chat(s, deep)
    assert r.status_code == 400 and "max_depth" in r.json()["error"]["message"], r.text
    r = _chat(s, {"type": "array", "items": {"type": "integer"}, "minItems": 40}, max_tokens=16)
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"], r.text
    assert httpx.get(f"{s.base_url}/healthz", timeout=10).status_code == 200
    r = _chat(s, {"type": "array", "items": {"type": "integer"}, "maxItems": 3}, max_tokens=24)
    assert r.status_code == 200, r.text  # an allowed schema still works
    assert len(json.loads(r.json()["choices"][0]["message"]["content"])) <= 3


class _Gate:
    """Wraps the grammar compile (llguidance's `grammar_for` on the default engine, llama.cpp's
    `_gbnf` on the legacy one): the real compile, held at its start until released, so a test
    can look at the server while a schema is being compiled."""

    def __init__(self, real):
        self.real, self.entered, self.release = real, threading.Event(), threading.Event()

    def __call__(self, text):
        self.entered.set()
        self.release.wait(120)
        return self.real(text)


@pytest.fixture
def gate(monkeypatch):
    import slmflow.models.llamacpp as lc
    import slmflow.models.llamacpp_engine as le

    g = _Gate(lc._gbnf)
    monkeypatch.setattr(lc, "_gbnf", g)
    g2 = _Gate(le.grammar_for)
    g2.entered, g2.release = g.entered, g.release
    monkeypatch.setattr(le, "grammar_for", g2)
    yield g
    g.release.set()


# a real compile held open by the gate; one short value for the model to pick (the schema also
# goes into the prompt, so it has to fit the 2048-token context)
# (neutral words: Presidio's NER tagged "lorem" as a PERSON and the output guardrail redacted it)
HEAVY = {"enum": [f"answer {i}: option text" for i in range(120)]}


def test_healthz_answers_while_a_schema_compiles(llama_gateway, gate):
    s = llama_gateway()
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", _chat(s, HEAVY, max_tokens=48,
                                                                  timeout=180)))
    t.start()
    try:
        assert gate.entered.wait(60), "the compile never started"
        h = httpx.get(f"{s.base_url}/healthz", timeout=15)  # the event loop is free
        assert h.status_code == 200
    finally:
        gate.release.set()
        t.join(180)
    assert out["r"].status_code == 200, out["r"].text
    assert json.loads(out["r"].json()["choices"][0]["message"]["content"]) in HEAVY["enum"]


def test_request_timeout_covers_the_schema_compile(llama_gateway, gate):
    s = llama_gateway(request_timeout_s=2)
    try:
        r = _chat(s, {**HEAVY, "title": "timeout"}, max_tokens=48, timeout=60)
    finally:
        gate.release.set()
    assert gate.entered.is_set()
    assert r.status_code == 504 and r.json()["error"]["code"] == "backend_timeout", r.text


def test_a_grammar_llamacpp_refuses_is_a_schema_error_not_a_crash(tmp_path):
    """A trusted schema (a library user's) that llama.cpp's parser refuses: llama-cpp-python
    used to add the NULL sampler to its chain and segfault. Run in a subprocess so that the old
    behaviour fails this test instead of ending the test session."""
    script = textwrap.dedent("""
        import asyncio
        from slmflow.errors import SchemaError
        from slmflow.models.catalog import resolve
        from slmflow.types import Settings
        m = resolve("smollm2-135m", engine="legacy").load()  # the GBNF path
        try:
            asyncio.run(m.generate("Say hi", settings=Settings(max_tokens=4),
                                   schema={"type": "string", "maxLength": 2000}))
        except SchemaError as e:
            print("SchemaError:", e.message)
    """)
    env = {**os.environ, "SLMFLOW_TRACING": "off"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SchemaError: llama.cpp refused the grammar" in r.stdout
