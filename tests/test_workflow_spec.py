"""YAML specs: the same graph from a file; errors name file, line and field; load-time checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from slmflow.errors import ConfigError
from slmflow.workflow import Parallel, Workflow, load_workflow
from slmflow.workflow.spec import load_yaml_with_lines

HELPERS = '''
from typing import Literal, Optional
from pydantic import BaseModel
from slmflow.tools import tool


class Ticket(BaseModel):
    text: str


class Route(BaseModel):
    category: Literal["refund", "other"]


class Out(BaseModel):
    answer: str


def shout(t: Ticket) -> Out:
    return Out(answer=t.text.upper())


def polite(t: Ticket) -> Out:
    return Out(answer="please: " + t.text)


@tool
def echo(text: str) -> str:
    """Echo the text."""
    return text
'''

GOOD = """\
name: demo
input: spec_helpers:Ticket
output: answer
models:
  default: smollm2-135m
tools:
  echo: spec_helpers:echo
agents:
  router:
    model: default
    input: spec_helpers:Ticket
    output: spec_helpers:Route
    max_tokens: 8
steps:
  - name: router
    agent: router
  - name: both
    parallel:
      - {name: said, tool: echo, args: {text: text}, output_key: said}
      - {name: loud, function: spec_helpers:shout}
  - name: pick
    branch:
      on: category
      cases: {refund: loud2}
      default: nice
  - name: loud2
    function: spec_helpers:shout
    next: end
  - name: nice
    function: spec_helpers:polite
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("spec")
    (p / "spec_helpers.py").write_text(HELPERS)
    return p


def write(d: Path, text: str, name: str = "wf.yaml") -> Path:
    f = d / name
    f.write_text(textwrap.dedent(text))
    return f


def test_good_spec_builds_the_same_graph(d):
    wf = load_workflow(write(d, GOOD))
    assert isinstance(wf, Workflow) and wf.name == "demo"
    assert [n.name for n in wf.nodes] == ["router", "both", "pick", "loud2", "nice"]
    assert isinstance(wf.by_name["both"], Parallel)
    assert wf.by_name["pick"].on == "category"  # `on:` is not read as a YAML 1.1 boolean
    assert wf.agents["router"].model == "smollm2-135m"


def test_spec_runs_with_swapped_model(d):
    from slmflow import FunctionModel

    wf = load_workflow(write(d, GOOD))
    wf = wf.with_agent("router", wf.agents["router"].with_model(
        FunctionModel(lambda m, s: {"category": "other"})))
    r = wf.run_sync("hello")
    assert r.status == "ok" and r.answer == "please: hello" and r.state["said"] == "hello"


def test_lines_are_recorded_per_key_path():
    data, lines = load_yaml_with_lines("a: 1\nb:\n  - x: 2\n    y: 3\n", "f.yaml")
    assert data == {"a": 1, "b": [{"x": 2, "y": 3}]}
    assert lines[("b", 0, "y")] == 4 and lines[("a",)] == 1


def _err(d, text) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_workflow(write(d, text))
    return e.value


def test_schema_error_names_file_line_and_field(d):
    bad = GOOD.replace("    max_tokens: 8", "    max_tokens: lots")
    e = _err(d, bad)
    assert "wf.yaml:13: agents.router.max_tokens:" in str(e)
    assert e.details["line"] == 13 and e.details["field"] == "agents.router.max_tokens"


def test_unknown_key_is_an_error(d):
    e = _err(d, GOOD.replace("    next: end", "    nxt: end"))
    assert "wf.yaml:28: steps.3.nxt: Extra inputs are not permitted" in str(e)


def test_step_with_two_kinds(d):
    e = _err(d, GOOD.replace("  - name: nice\n    function: spec_helpers:polite",
                             "  - name: nice\n    function: spec_helpers:polite\n    agent: router"))
    assert "wf.yaml:29: steps.4:" in str(e) and "exactly one of" in str(e)


def test_missing_agent_names_line(d):
    e = _err(d, GOOD.replace("    agent: router\n  - name: both", "    agent: rooter\n  - name: both"))
    assert "wf.yaml:16: steps.0.agent: unknown agent 'rooter'" in str(e)


def test_missing_tool_names_line(d):
    e = _err(d, GOOD.replace("tool: echo,", "tool: ekko,"))
    assert "wf.yaml:19: steps.1.parallel.0.tool: unknown tool 'ekko'" in str(e)


def test_bad_import_names_line(d):
    e = _err(d, GOOD.replace("function: spec_helpers:polite", "function: spec_helpers:rude"))
    assert "wf.yaml:30: steps.4.function: module 'spec_helpers' has no attribute 'rude'" in str(e)


def test_unknown_model_names_line(d):
    e = _err(d, GOOD.replace("default: smollm2-135m", "default: smollm3-135m"))
    assert "wf.yaml:5: models.default: unknown model 'smollm3-135m'" in str(e)
    assert "did you mean 'smollm2-135m'" in str(e)


def test_cycle_in_yaml_graph(d):
    e = _err(d, GOOD.replace("    next: end", "    next: pick"))
    assert "cycle: pick -> loud2 -> pick" in str(e) and "wf.yaml:" in str(e)


def test_unknown_branch_target(d):
    e = _err(d, GOOD.replace("default: nice", "default: nicer"))
    assert "wf.yaml:21" in str(e) and "unknown step 'nicer'" in str(e)


def test_invalid_yaml_syntax(d):
    e = _err(d, "name: x\nsteps: [\n")
    assert "wf.yaml:3: not valid YAML" in str(e)


def test_missing_and_empty_files(d):
    with pytest.raises(ConfigError, match="not found"):
        load_workflow(d / "nope.yaml")
    e = _err(d, "")
    assert "empty" in str(e)


def test_tool_arg_must_be_a_parameter(d):
    e = _err(d, GOOD.replace("args: {text: text}", "args: {txt: text}"))
    assert "steps.1.parallel.0.args.txt: tool 'echo' has no parameter 'txt'" in str(e)
