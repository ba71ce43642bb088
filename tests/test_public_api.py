"""The typed public API (issue #19, item 4): ``import slmflow`` stays light, one export table that
type checkers see (``__all__``, the ``TYPE_CHECKING`` imports and the run-time table agree),
``Agent(..., output_type=Route)`` gives ``AgentResult[Route]`` to mypy, ``RunResult.trace_id`` is
the trace the span store has for that run, and `slmflow.testing` blocks real model calls and
overrides a workflow step's model."""

from __future__ import annotations

import ast
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

import slmflow
from slmflow import Agent, FunctionModel, ModelInfo, RunResult, Step, Workflow, tracing
from slmflow.errors import ConfigError, ServerUnreachableError
from slmflow.testing import (ModelRequestBlockedError, allow_model_requests, block_model_requests,
                             model_requests_blocked, override)
from slmflow.tracing.store import SpanStore

SRC = Path(slmflow.__file__).parent


class Ticket(BaseModel):
    text: str


class Route(BaseModel):
    category: Literal["refund", "other"]


def route_model(category: str = "refund", name: str = "fake") -> FunctionModel:
    return FunctionModel(lambda m, s: {"category": category}, name=name)


def router_workflow(model, **agent_kw) -> Workflow:
    agent = Agent("router", model, input_type=Ticket, output_type=Route, **agent_kw)
    return Workflow("routing", [Step("route", agent=agent)], input_type=Ticket, output="category")


# ---- import cost and the export table -------------------------------------------------------

HEAVY = ("torch", "llama_cpp", "transformers", "fastapi", "slmflow.store")


def _modules_after_import(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("SLMFLOW_CONFIG", "SLMFLOW_CALLLOG")}
    clean["PYTHONPATH"] = os.pathsep.join([str(SRC.parent), clean.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", "import json, sys, slmflow; "
                          "print(json.dumps(sorted(sys.modules)))"],
                         env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _heavy(mods: list[str]) -> list[str]:
    return [m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_import_slmflow_loads_no_backend_and_no_store():
    mods = _modules_after_import()
    assert _heavy(mods) == []
    assert "slmflow" in mods
    # the check sees an eager import: SLMFLOW_CALLLOG=on turns the call log on at import
    assert "slmflow.store" in _heavy(_modules_after_import(SLMFLOW_CALLLOG="on"))


def test_all_and_the_lazy_table_agree_and_every_name_resolves():
    names = slmflow.__all__
    assert len(names) == len(set(names)), "a name is listed twice in __all__"
    assert set(slmflow._LAZY) <= set(names)
    for name in names:
        value = getattr(slmflow, name)  # raises if a name does not resolve
        assert value is not None, name
        if name in slmflow._LAZY:
            defining = importlib.import_module(slmflow._LAZY[name], "slmflow")
            assert value is getattr(defining, name), name
    eager = set(names) - set(slmflow._LAZY)
    source = (SRC / "__init__.py").read_text()
    tree = ast.parse(source)
    imported_or_defined = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                           for a in n.names} | {n.name for n in tree.body
                                                 if isinstance(n, ast.FunctionDef)}
    assert eager <= imported_or_defined, eager - imported_or_defined


def test_type_checking_imports_are_the_lazy_table():
    tree = ast.parse((SRC / "__init__.py").read_text())
    blocks = [n for n in tree.body if isinstance(n, ast.If)
              and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    seen = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.dump(node)
        for alias in node.names:
            assert alias.asname is None
            seen[alias.name] = "." + node.module
    assert seen == slmflow._LAZY


def test_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no attribute 'Agnet'"):
        slmflow.Agnet  # noqa: B018
    assert "Agent" in dir(slmflow) and "enable_logging" in dir(slmflow)


# ---- generics at run time: unchanged behaviour ----------------------------------------------

def test_generic_agent_runs_as_before():
    agent = Agent("router", route_model(), input_type=Ticket, output_type=Route)
    r = agent.run_sync("refund please")
    assert isinstance(r.output, Route) and r.output.category == "refund"
    assert Agent[Route] is not Agent and slmflow.AgentResult[Route] is not slmflow.AgentResult
    typed = Agent[Route]("router", route_model(), input_type=Ticket, output_type=Route)
    assert typed == agent.with_model(typed.model)
    assert typed.run_sync("x").output == Route(category="refund")
    free = Agent("echo", FunctionModel(lambda m, s: " hi "))
    assert free.output_type is str and free.run_sync("x").output == "hi"


# ---- RunResult.trace_id -----------------------------------------------------------------------

@pytest.fixture
def spans(tmp_path, monkeypatch):
    """Tracing on, into a span store under a private SLMFLOW_HOME."""
    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("SLMFLOW_TRACES_URL", raising=False)
    tracing.reset()
    tracing.configure(enabled=True, store=True, batch=False)
    try:
        yield SpanStore(tmp_path / "spans.db")
    finally:
        tracing.reset()


def test_trace_id_is_the_trace_the_span_store_has_for_the_run(spans):
    wf = router_workflow(route_model())
    first, second = wf.run_sync("refund please"), wf.run_sync("again")
    assert first.ok and second.ok
    assert first.trace_id and second.trace_id and first.trace_id != second.trace_id
    tracing.force_flush()
    for r in (first, second):
        got = spans.trace(r.trace_id)
        assert [s["name"] for s in got][:1] == ["invoke_workflow routing"]
        assert {s["trace_id"] for s in got} == {r.trace_id}
        assert "invoke_agent router" in [s["name"] for s in got]
        assert got[0]["attributes"]["slmflow.run.id"] == r.run_id


def test_trace_id_is_none_with_tracing_off(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMFLOW_TRACING", "off")
    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path))
    tracing.reset()
    try:
        r = router_workflow(route_model()).run_sync("refund please")
    finally:
        tracing.reset()
    assert r.ok and r.trace_id is None


def test_print_result_shows_the_trace_id(spans):
    from rich.console import Console

    from slmflow.workflow import print_result

    r = router_workflow(route_model()).run_sync("refund please")
    buf = io.StringIO()
    print_result(r, Console(file=buf, width=100), show_table=False)
    assert f"trace: {r.trace_id}" in buf.getvalue()
    buf = io.StringIO()
    untraced = RunResult(r.workflow, r.status, r.answer, r.state, r.steps, r.handoffs)
    print_result(untraced, Console(file=buf, width=100), show_table=False)
    assert "trace:" not in buf.getvalue()


FUNCS = '''
def classify(state):
    return {"category": "refund"}
'''

SPEC = """\
name: traced-json-check
steps:
  - name: classify
    function: typedapi_trace_funcs:classify
"""


def test_slmflow_run_json_has_the_trace_id(spans, tmp_path):
    from slmflow.cli import app

    (tmp_path / "typedapi_trace_funcs.py").write_text(FUNCS)
    spec = tmp_path / "wf.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    r = CliRunner().invoke(app, ["run", str(spec), "--input", "hi", "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    got = json.loads(r.stdout)
    tracing.force_flush()
    assert got["trace_id"] and spans.trace(got["trace_id"])[0]["name"] == \
        "invoke_workflow traced-json-check"


# ---- slmflow.testing ------------------------------------------------------------------------

def _bare(cls, name: str):
    """A backend model object without its weights (the guard needs only ``info``)."""
    m = object.__new__(cls)
    m.info = ModelInfo("test", name)
    return m


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("module,cls", [("slmflow.models.llamacpp", "LlamaCppModel"),
                                        ("slmflow.models.transformers", "TransformersModel"),
                                        ("slmflow.models.openai", "OpenAIModel")])
def test_block_model_requests_names_the_model(module, cls):
    klass = getattr(importlib.import_module(module), cls)
    original = klass.generate
    m = _bare(klass, f"real-{cls.lower()}")
    with block_model_requests():
        assert model_requests_blocked()
        with pytest.raises(ModelRequestBlockedError, match=f"real-{cls.lower()}.*{cls}") as e:
            m.generate_sync("hi")
        assert e.value.where == f"model real-{cls.lower()}"
    assert klass.generate is original and not model_requests_blocked()


def test_block_is_what_stops_the_call_and_allow_lifts_it():
    from slmflow.models.openai import OpenAIModel

    m = OpenAIModel("m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0,
                    timeout_s=2)
    with pytest.raises(ServerUnreachableError):
        m.generate_sync("hi")  # not blocked: it reaches for the server
    with block_model_requests():
        with pytest.raises(ModelRequestBlockedError):
            m.generate_sync("hi")
        with block_model_requests():  # nested: still blocked after the inner one closes
            pass
        with pytest.raises(ModelRequestBlockedError):
            m.generate_sync("hi")
        with allow_model_requests():
            with pytest.raises(ServerUnreachableError):
                m.generate_sync("hi")
        assert route_model().generate_sync("hi").text  # a FunctionModel is never blocked


def test_a_blocked_call_fails_the_run_without_escalating():
    wf = router_workflow("smollm2-135m", fallback=route_model(name="fallback"))
    with block_model_requests():
        r = wf.run_sync("refund please")
    assert r.status == "failed" and isinstance(r.error, ModelRequestBlockedError)
    assert "smollm2-135m" in str(r.error) and not r.escalations
    with pytest.raises(ModelRequestBlockedError):
        r.raise_for_status()


def test_override_swaps_a_step_model_in_place_and_restores_it():
    wf = router_workflow("smollm2-135m", adapter="router@v9")
    original = wf.steps["route"].agent
    held = wf  # what the application holds
    with block_model_requests():
        with override(wf, step="route", model=route_model("other", name="scripted")) as same:
            assert same is wf
            r = held.run_sync("where is my parcel")
            assert r.ok and r.answer == "other"
            assert r.steps[0].model == "scripted"  # the adapter is dropped with the model
            with override(wf, step="router", model=route_model("refund")):  # by agent name
                assert held.run_sync("x").answer == "refund"
            assert held.run_sync("x").answer == "other"
        assert wf.steps["route"].agent is original
        assert held.run_sync("x").status == "failed"  # back on the real (blocked) model


def test_override_every_agent_and_the_fallback():
    class Draft(BaseModel):
        category: str
        reply: str

    drafter = Agent("drafter", "smollm2-135m", input_type=Route, output_type=Draft,
                    confidence_threshold=0.9)
    wf = Workflow("two", [Step("route", agent=Agent("router", "smollm2-135m", input_type=Ticket,
                                                    output_type=Route)),
                          Step("draft", agent=drafter)], input_type=Ticket, output="reply")
    both = FunctionModel(lambda m, s: {"category": "refund", "reply": "done"}, name="both",
                         confidence=0.5)
    strong = FunctionModel(lambda m, s: {"category": "refund", "reply": "checked"},
                           name="strong")
    with block_model_requests(), override(wf, model=both, fallback=strong):
        r = wf.run_sync("refund please")
    assert r.status == "escalated" and r.answer == "checked"
    # the router is sure enough (no threshold); the drafter under 0.9 escalates to "strong"
    assert [s.model for s in r.steps] == ["both", "strong"]
    assert wf.steps["draft"].agent is drafter and drafter.fallback is None


def test_override_errors_name_the_step_and_the_choices():
    def shout(t: Ticket) -> Route:
        return Route(category="other")

    wf = Workflow("w", [Step("route", agent=Agent("router", route_model(), input_type=Ticket,
                                                  output_type=Route)),
                        Step("shout", fn=shout, next="end")], input_type=Ticket)
    with pytest.raises(ConfigError, match=r"'nope'.*not a step.*agent steps: route"):
        with override(wf, step="nope", model=route_model()):
            pass
    with pytest.raises(ConfigError, match=r"'shout'.*function or tool step"):
        with override(wf, step="shout", model=route_model()):
            pass
    with pytest.raises(ConfigError, match="takes a Workflow, got Agent"):
        with override(wf.steps["route"].agent, model=route_model()):  # type: ignore[arg-type]
            pass
    with pytest.raises(ConfigError, match="must be a Model or a catalog name, got int"):
        with override(wf, step="route", model=3):  # type: ignore[arg-type]
            pass


# ---- what a type checker sees -----------------------------------------------------------------

GOOD = '''
from typing import Literal

from pydantic import BaseModel

from slmflow import Agent, AgentResult, FunctionModel, RunResult, Step, Workflow


class Route(BaseModel):
    category: Literal["refund", "other"]


agent = Agent("router", FunctionModel(lambda m, s: {"category": "refund"}), output_type=Route)
result: AgentResult[Route] = agent.run_sync("hi")
category: str = agent.run_sync("hi").output.category
free = Agent("echo", "smollm2-135m")
text: str = free.run_sync("hi").output
wf = Workflow("w", [Step("route", agent=agent)], output="category")
run: RunResult = wf.run_sync("hi")
trace_id: str | None = run.trace_id


async def main() -> str:
    r = await agent.run("hi")
    return r.output.category
'''

BAD = '''
from typing import Literal

from pydantic import BaseModel

from slmflow import Agent, FunctionModel, Step, Workflow


class Route(BaseModel):
    category: Literal["refund", "other"]


agent = Agent("router", FunctionModel(lambda m, s: {"category": "refund"}), output_type=Route)
agent.run_sync("hi").output.categroy
wf = Workflow("w", [Step("route", agent=agent)], output="category")
n: int = wf.run_sync("hi").trace_id
'''

# slmflow and pydantic are analysed; every other third-party package is skipped (numpy,
# OpenTelemetry, FastAPI...: ~8 s instead of ~90 s on a cold cache)
MYPY_INI = """\
[mypy]
follow_imports = skip
ignore_missing_imports = True
[mypy-slmflow,slmflow.*,pydantic,pydantic.*,pydantic_core,pydantic_core.*,annotated_types.*]
follow_imports = silent
"""


def test_type_checker_sees_the_output_type_and_trace_id(tmp_path):
    import importlib.util

    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the dev extra: pip install -e '.[dev]')")
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes",
         "good.py", "bad.py"],
        cwd=tmp_path, env={**os.environ, "MYPYPATH": str(SRC.parent)},
        capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not [line for line in lines if line.startswith("good.py")], out.stdout + out.stderr
    src = BAD.splitlines()
    typo = next(i for i, line in enumerate(src, 1) if ".categroy" in line)
    wrong = next(i for i, line in enumerate(src, 1) if line.startswith("n: int"))
    assert len(lines) == 2, out.stdout + out.stderr
    assert f'bad.py:{typo}: error: "Route" has no attribute "categroy"' in lines[0]
    assert f"bad.py:{wrong}: error: Incompatible types in assignment (expression has type " \
           '"str | None", variable has type "int")' in lines[1]
