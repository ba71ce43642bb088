"""The core emits events, the store listens (slmflow.hooks, docs/architecture.md).

What must hold: the registry delivers each event to its subscribers and a failing subscriber never
breaks a run (one warning); agents and the workflow runner emit the events the call log needs
(with the run's context); a bare agent run writes nothing to disk and starts no writer thread,
while `enable_logging()` (or ``SLMFLOW_CALLLOG=on``) puts the same call in the call log; and the
core's source imports nothing of the store, the loop, the gateway or the CLI."""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from pydantic import BaseModel, Field

from slmflow import FunctionModel, ScriptedModel, hooks
from slmflow.agents import Agent
from slmflow.errors import ConfigError
from slmflow.workflow import Step, Workflow

SRC = Path(__file__).resolve().parents[1] / "src"


class Collect:
    """A subscriber to every event, keeping (event, payload)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict]] = []

    def __enter__(self) -> "Collect":
        self._fns = {e: (lambda e=e, **kw: self.got.append((e, kw))) for e in hooks.EVENTS}
        for e, fn in self._fns.items():
            hooks.subscribe(e, fn)
        return self

    def __exit__(self, *exc) -> None:
        for e, fn in self._fns.items():
            hooks.unsubscribe(e, fn)

    def of(self, event: str) -> list[dict]:
        return [kw for e, kw in self.got if e == event]


# ---- the registry -------------------------------------------------------------------------------

def test_subscribe_emit_unsubscribe_and_scoped():
    got = []

    def fn(**kw):
        got.append(kw["result"])

    hooks.subscribe("run_finished", fn)
    hooks.subscribe("run_finished", fn)  # once, however often subscribed
    try:
        hooks.emit("run_finished", result=1)
        assert got == [1]
        assert hooks.unsubscribe("run_finished", fn) is True
        hooks.emit("run_finished", result=2)
        assert got == [1]
        assert hooks.unsubscribe("run_finished", fn) is False
        with hooks.subscribed("run_finished", fn):
            hooks.emit("run_finished", result=3)
        hooks.emit("run_finished", result=4)
        assert got == [1, 3]
    finally:
        hooks.unsubscribe("run_finished", fn)


def test_every_event_carries_the_context():
    seen = []
    with hooks.subscribed("run_finished", lambda **kw: seen.append(kw["context"])):
        with hooks.logging_context(run_id="r1", step="s"):
            hooks.emit("run_finished", result=None)
    assert (seen[0].run_id, seen[0].step) == ("r1", "s")


def test_unknown_event_or_subscriber_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown event 'agent_call'.*agent_called"):
        hooks.subscribe("agent_call", lambda **kw: None)
    with pytest.raises(ConfigError, match="unknown event 'nope'"):
        hooks.emit("nope", x=1)
    with pytest.raises(ConfigError, match="must be callable, got str"):
        hooks.subscribe("agent_called", "log_it")  # type: ignore[arg-type]


def test_a_failing_subscriber_never_breaks_a_run_and_warns_once(caplog):
    def broken(**kw):
        raise RuntimeError("disk full")

    agent = Agent("echo", FunctionModel(lambda m, s: "pong"))
    # the broken one first: the subscribers after it still get the event
    with hooks.subscribed("agent_called", broken), Collect() as c, \
            caplog.at_level(logging.WARNING, logger="slmflow.hooks"):
        a = agent.run_sync("ping")
        b = agent.run_sync("ping")
    assert a.output == b.output == "pong"
    assert [kw["result"].call_id for kw in c.of("agent_called")] == [a.call_id, b.call_id]
    warned = [r for r in caplog.records if r.name == "slmflow.hooks"]
    assert len(warned) == 1 and "disk full" in warned[0].getMessage()
    assert "agent_called" in warned[0].getMessage()


# ---- what the core emits ------------------------------------------------------------------------

class Ticket(BaseModel):
    text: str = Field(min_length=1)


class Fields(BaseModel):
    order_id: Optional[str] = None


class DraftIn(BaseModel):
    text: str
    order_id: str = Field(pattern=r"^A-\d+$")


class Out(BaseModel):
    answer: str


class Verdict(BaseModel):
    approved: bool


def test_agent_and_handoff_repair_events():
    answers = iter([{"order_id": "1042"}, {"order_id": "A-1042"}])
    extractor = Agent("extractor", FunctionModel(lambda m, s: next(answers)), input_type=Ticket,
                      output_type=Fields)

    def draft(d: DraftIn) -> Out:
        return Out(answer=f"about {d.order_id}")

    wf = Workflow("w", [Step("extract", agent=extractor), Step("draft", fn=draft)],
                  input_type=Ticket, output="answer")
    with Collect() as c:
        r = wf.run_sync("order A-1042 broke")
    assert r.status == "ok"
    calls = c.of("agent_called")
    assert [kw["result"].output.order_id for kw in calls] == ["1042", "A-1042"]
    assert all(kw["agent"] is extractor and kw["context"].run_id == r.run_id
               and kw["context"].workflow == "w" and kw["context"].step == "extract"
               for kw in calls)
    (rep,) = c.of("handoff_repaired")
    assert (rep["source"], rep["target"], rep["status"]) == ("extract", "draft", "repaired")
    assert any("order_id" in e for e in rep["errors"])
    (flag,) = c.of("call_flagged")  # the call whose output broke the handoff
    assert flag["call_id"] == calls[0]["result"].call_id
    assert flag["by"] == "handoff:extract -> draft"
    assert flag["label"].startswith("malformed_handoff") and flag["signal"] == "down"
    (fin,) = c.of("run_finished")
    assert fin["result"] is r and fin["context"].run_id == r.run_id
    assert [e for e, _ in c.got][-1] == "run_finished"


def test_verifier_rejection_events():
    wf = Workflow("w", [
        Step("write", agent=Agent("writer", FunctionModel(lambda m, s: "draft"),
                                  input_type=Ticket, output_type=str), output_key="answer"),
        Step("verify", agent=Agent("verifier", ScriptedModel([{"approved": False}]),
                                   output_type=Verdict), verifies="write")],
        input_type=Ticket, output="answer")
    with Collect() as c:
        r = wf.run_sync("x")
    assert r.status == "rejected"
    (rej,) = c.of("verifier_rejected")
    draft = r.steps[0].agent_result
    assert (rej["step"], rej["target"], rej["call_id"]) == ("verify", "write", draft.call_id)
    assert "approved=false" in rej["reason"]
    (flag,) = c.of("call_flagged")
    assert flag["call_id"] == draft.call_id and flag["by"] == "verifier:verify"
    assert flag["label"].startswith("verifier_rejected")
    (fin,) = c.of("run_finished")
    assert fin["result"].status == "rejected"


def test_a_failed_run_is_finished_too():
    def boom(_):
        raise ValueError("bug in user code")

    with Collect() as c:
        r = Workflow("w", [Step("f", fn=boom)]).run_sync("x")
    assert r.status == "failed"
    assert [kw["result"] for kw in c.of("run_finished")] == [r]


# ---- nothing on disk unless asked ---------------------------------------------------------------

_SCRIPT = r"""
import json, sys, threading
import slmflow
from slmflow import Agent, FunctionModel
from slmflow.workflow import Step, Workflow
if {enable!r}:
    slmflow.enable_logging()
agent = Agent("echo", FunctionModel(lambda m, s: "pong"))
res = agent.run_sync("ping")
wf = Workflow("w", [Step("write", agent=Agent("writer", FunctionModel(lambda m, s: "draft"))),
                    Step("verify", agent=Agent("verifier", FunctionModel(lambda m, s: "ok")),
                         verifies="write", check=lambda s: "too short")])
rr = wf.run_sync("x")
threads = [t.name for t in threading.enumerate()]
writer = getattr(sys.modules.get("slmflow.store.writer"), "_WRITER", None)
if writer is not None:  # the process-wide writer, if anything opened it
    writer.flush()
print(json.dumps({{"call": res.call_id, "run": rr.run_id, "status": rr.status,
                  "draft": rr.steps[0].agent_result.call_id, "threads": threads,
                  "store": sorted(m for m in sys.modules if m.startswith("slmflow.store"))}}))
"""


def _run_child(tmp_path: Path, enable: bool, **env: str) -> dict:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    e = {k: v for k, v in os.environ.items()
         if k not in ("SLMFLOW_CALLLOG", "SLMFLOW_CONFIG", "SLMFLOW_CALLS_URL")}
    # tracing's own local span file is another subject: off here, so that the test sees only
    # what the call log does
    e.update(SLMFLOW_HOME=str(home), SLMFLOW_TRACING="off", PYTHONPATH=str(SRC), **env)
    p = subprocess.run([sys.executable, "-c", _SCRIPT.format(enable=enable)], cwd=cwd, env=e,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_bare_agent_run_writes_nothing(tmp_path):
    out = _run_child(tmp_path, enable=False)
    assert out["status"] == "rejected"  # the run flagged a call: nobody was listening
    assert not list(tmp_path.rglob("calls.db*")), list(tmp_path.rglob("*"))
    assert not (tmp_path / "cwd" / ".slmflow").exists()
    assert "slmflow-calllog" not in out["threads"]
    assert out["store"] == []  # the store was not even imported


def test_calllog_off_wins_over_enable_logging(tmp_path):
    out = _run_child(tmp_path, enable=True, SLMFLOW_CALLLOG="off")
    assert out["status"] == "rejected" and "slmflow.store.writer" in out["store"]
    assert not list(tmp_path.rglob("calls.db*"))
    assert "slmflow-calllog" not in out["threads"]


@pytest.mark.parametrize("how", ["enable_logging()", "SLMFLOW_CALLLOG=on"])
def test_asking_for_the_call_log_logs_the_call(tmp_path, how):
    from slmflow.store import open_call_log

    if how == "enable_logging()":
        out = _run_child(tmp_path, enable=True)
    else:
        out = _run_child(tmp_path, enable=False, SLMFLOW_CALLLOG="on")
    assert "slmflow-calllog" in out["threads"]
    db = tmp_path / "home" / "calls.db"
    assert db.exists() and not (tmp_path / "cwd" / ".slmflow").exists()
    log = open_call_log(f"sqlite:///{db}")
    try:
        call = log.get(out["call"])
        assert call is not None and call.agent == "echo" and call.output == "pong"
        draft = log.get(out["draft"])
        assert draft.run_id == out["run"] and draft.workflow == "w"
        assert draft.meta["step"] == "write"
        (fb,) = log.feedback(out["draft"])  # the verifier's rejection, stored as feedback
        assert fb.by == "verifier:verify" and fb.signal == "down"
    finally:
        log.close()


def test_slmflow_run_logs_its_agent_calls(smollm, slmflow_home, tmp_path):
    """The CLI turns the call log on (`slmflow.cli.main`): `slmflow run` on the embedded model,
    in a child process, lands its agent call in the call log as it did before the events."""
    from slmflow.store import open_call_log

    (tmp_path / "one.yaml").write_text(
        "name: one\nmodels: {default: smollm2-135m}\n"
        "agents:\n  echo: {model: default, instructions: Answer in one word., max_tokens: 8}\n"
        "steps:\n  - {name: echo, agent: echo}\n", encoding="utf-8")
    calls = tmp_path / "calls.db"
    e = {k: v for k, v in os.environ.items() if k not in ("SLMFLOW_CALLLOG", "SLMFLOW_CONFIG")}
    e.update(SLMFLOW_HOME=str(slmflow_home), SLMFLOW_CALLS_URL=f"sqlite:///{calls}",
             SLMFLOW_TRACING="off", PYTHONPATH=str(SRC))
    p = subprocess.run([sys.executable, "-m", "slmflow", "run", "one.yaml", "-i", "hello",
                        "--json"], cwd=tmp_path, env=e, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    log = open_call_log(f"sqlite:///{calls}")
    try:
        (call,) = log.query(kind="agent", limit=None)
        assert (call.agent, call.workflow, call.meta["step"]) == ("echo", "one", "echo")
        assert call.model.startswith("smollm2-135m") and call.run_id
    finally:
        log.close()


# ---- the core imports nothing above it ----------------------------------------------------------

FORBIDDEN = ("slmflow.store", "slmflow.loop", "slmflow.gateway", "slmflow.cli")
CORE = [SRC / "slmflow" / "agents.py", *sorted((SRC / "slmflow" / "workflow").rglob("*.py")),
        *sorted((SRC / "slmflow" / "models").rglob("*.py"))]


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]
    return ".".join(parts)


def upward_imports(source: str, module: str) -> list[str]:
    """Every import in ``source`` (module, function or class level; ``importlib.import_module``
    and ``__import__`` with a literal name too) that names a forbidden package."""
    pkg = module.split(".")[:-1]  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__"):
                names = [node.args[0].value]
        for n in names:
            if any(n == f or n.startswith(f + ".") for f in FORBIDDEN):
                found.append((node.lineno, n))
    return [f"line {line}: {n}" for line, n in sorted(found)]


def test_the_scanner_finds_upward_imports():
    src = ("import os\nfrom . import tracing\n"
           "def f():\n    from ..store.writer import log_agent_call\n"
           "    import slmflow.gateway.app\n"
           "    return importlib.import_module('slmflow.cli')\n"
           "from .. import loop\n")
    assert upward_imports(src, "slmflow.workflow.runner") == [
        "line 4: slmflow.store.writer", "line 4: slmflow.store.writer.log_agent_call",
        "line 5: slmflow.gateway.app", "line 6: slmflow.cli", "line 7: slmflow.loop"]
    assert upward_imports("from .store import x\n", "slmflow.agents") == [
        "line 1: slmflow.store", "line 1: slmflow.store.x"]
    assert upward_imports("from .store import x\n", "slmflow.tracing.model") == []


def test_the_core_imports_nothing_of_store_loop_gateway_cli():
    assert len(CORE) > 10
    bad = {str(p.relative_to(SRC)): hits for p in CORE
           if (hits := upward_imports(p.read_text(encoding="utf-8"), _module_of(p)))}
    assert bad == {}, f"the core imports above itself (emit a slmflow.hooks event): {bad}"


# The middle of the house: what the core and the listeners both use. It may read the call context
# (`slmflow.hooks.logging_context`) but not the call log: only the listeners (store itself, loop,
# gateway, ui, scale, cli) import `store/`.
MIDDLE = [*(SRC / "slmflow" / n for n in ("structured.py", "tools.py", "hooks.py", "types.py",
                                            "errors.py")),
          *(p for pkg in ("evals", "finetune", "retrieval", "guardrails", "tracing", "storage")
            for p in sorted((SRC / "slmflow" / pkg).rglob("*.py")))]


def test_the_middle_imports_nothing_of_store_loop_gateway_cli():
    assert len(MIDDLE) > 30
    bad = {str(p.relative_to(SRC)): hits for p in MIDDLE
           if (hits := upward_imports(p.read_text(encoding="utf-8"), _module_of(p)))}
    assert bad == {}, f"below the listeners, yet importing them: {bad}"
