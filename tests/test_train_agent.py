"""`slmflow train agent` on the reference pipeline's router: data → adapter → registry → gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    ("My order A-1042 arrived broken, refund please", "refund"),
    ("I want my money back for the damaged lamp", "refund"),
    ("Where is my package? It is late", "shipping"),
    ("My parcel B-77 was lost in delivery", "shipping"),
    ("I was charged twice this month", "billing"),
    ("Why did my subscription payment fail?", "billing"),
    ("I cannot log in to my account", "account"),
    ("How do I change my email address?", "account"),
    ("Do you sell gift cards?", "other"),
    ("What are your opening hours?", "other"),
]
HELD_OUT = [("Refund my broken headphones", "refund"), ("My delivery has not arrived", "shipping"),
            ("Double charge on my card", "billing"), ("Reset my password please", "account")]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"input": {"text": t}, "target": {"category": c}}) + "\n"
                            for t, c in rows))
    return path


@pytest.mark.slow
def test_train_agent_cli_registers_and_gates(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "SLMFLOW_HOME": str(home), "SLMFLOW_TRACING": "off"}
    exe = str(Path(sys.executable).parent / "slmflow")
    cmd = [exe, "train", "agent", "router", "--workflow",
           str(ROOT / "examples/support/workflow.yaml"), "--data", str(_write(tmp_path / "t.jsonl",
                                                                             TRAIN)),
           "--eval-data", str(_write(tmp_path / "e.jsonl", HELD_OUT)), "--max-steps", "3",
           "--batch-size", "4", "--r", "4", "--threads", "1", "--lr", "1e-3"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert out["version"] == "v1" and out["metrics"]["steps"] == 3
    assert set(out["scores"]) == {"accuracy", "ok_rate"} and out["baseline"] is not None
    d = home / "adapters" / "router" / "v1"
    card = json.loads((d / "card.json").read_text())
    assert (d / "adapter.gguf").is_file() and (d / "adapter" / "adapter_config.json").is_file()
    assert card["schema_hint"] is False and card["eval_scores"]["accuracy"] == out["scores"][
        "accuracy"]
    assert card["lineage"]["agent"] == "router" and card["base_model"] == "smollm2-135m"
    # the gate decided one way or the other, and the registry agrees with the CLI
    promoted = (home / "adapters" / "router" / "promoted.json").exists()
    assert promoted == out["promoted"]
    if out["promoted"]:
        assert all(out["scores"][k] >= v for k, v in out["baseline"].items())
    else:
        assert any(out["scores"][k] < v for k, v in out["baseline"].items())

    listing = subprocess.run([exe, "adapters", "list", "router"], capture_output=True, text=True,
                             env=env)
    assert listing.returncode == 0 and "v1" in listing.stdout

    # --init-adapter: one more step from v1's weights (recorded on the card); a folder that is
    # not a PEFT adapter is refused by name, before any step
    more = [exe, "train", "agent", "router", "--workflow",
            str(ROOT / "examples/support/workflow.yaml"), "--data", str(tmp_path / "t.jsonl"),
            "--max-steps", "1", "--batch-size", "4", "--r", "4", "--threads", "1",
            "--no-promote", "--out", str(tmp_path / "more")]
    p = subprocess.run(more + ["--init-adapter", str(d / "adapter")], capture_output=True,
                       text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "starting from the adapter in" in p.stdout + p.stderr
    card2 = json.loads((home / "adapters" / "router" / "v2" / "card.json").read_text())
    assert card2["config"]["init_adapter"] == str(d / "adapter")
    p = subprocess.run(more + ["--init-adapter", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert p.returncode == 1 and "not a PEFT adapter folder" in p.stderr, p.stderr[-2000:]
    assert str(tmp_path) in p.stderr and "Traceback" not in p.stderr

    bad = _write(tmp_path / "bad.jsonl", [("hello", "not-a-category")])
    p = subprocess.run([exe, "train", "agent", "router", "--workflow",
                        str(ROOT / "examples/support/workflow.yaml"), "--data", str(bad)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "do not fit Route" in p.stderr and "Traceback" not in p.stderr


def _fields_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"input": {"text": t}, "target": {
        "urgent": False, "order_id": o, "account_id": None}}) + "\n" for t, o in rows))
    return path


def test_multitask_rows_render_each_row_with_its_own_agents_prompt():
    from slmflow.errors import ConfigError
    from slmflow.finetune.agent_train import AlsoAgent, find_agent, multitask_rows
    from slmflow.finetune.data import Example, dedupe

    wf = ROOT / "examples/support/workflow.yaml"
    router, extractor = find_agent(wf, "router"), find_agent(wf, "extractor")
    text = "My order A-1042 arrived broken, refund please"
    rows, fmt = multitask_rows(
        router, [Example({"text": text}, {"category": "refund"})],
        [AlsoAgent(extractor, [Example({"text": text},
                                       {"order_id": "A-1042", "account_id": None,
                                        "urgent": False})])])
    # the same ticket for two agents is two rows, each rendered with its own agent's prompt
    assert len(dedupe(rows)) == 2
    sys_r, sys_e = (fmt(r.input)[0].content for r in rows)
    assert sys_r.startswith("Classify the customer-support ticket") and "Extract" not in sys_r
    assert sys_e.startswith("Extract fields from the ticket")
    assert fmt(rows[1].input)[1].content == f"Ticket: {text}"
    # the extractor's target is put in the order its constrained decoder writes it
    assert list(rows[1].target) == ["urgent", "order_id", "account_id"]
    with pytest.raises(ConfigError, match="named twice"):
        multitask_rows(router, [], [AlsoAgent(extractor, []), AlsoAgent(extractor, [])])
    with pytest.raises(ConfigError, match="do not fit"):
        multitask_rows(router, [], [AlsoAgent(extractor, [Example({"text": "x"},
                                                                  {"category": "refund"})])])


def test_train_agent_also_refuses_a_malformed_spec_by_name(tmp_path):
    env = {**os.environ, "SLMFLOW_HOME": str(tmp_path / "home"), "SLMFLOW_TRACING": "off"}
    exe = str(Path(sys.executable).parent / "slmflow")
    base = [exe, "train", "agent", "router", "--workflow",
            str(ROOT / "examples/support/workflow.yaml"), "--data",
            str(_write(tmp_path / "t.jsonl", TRAIN))]
    p = subprocess.run(base + ["--also", "extractor"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "--also 'extractor'" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    p = subprocess.run(base + ["--also", f"nobody={tmp_path / 't.jsonl'}"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 1 and "nobody" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_train_agent_also_trains_one_adapter_for_two_agents(tmp_path):
    """`--also`: the router's and the extractor's rows in one LoRA, both agents gated."""
    home = tmp_path / "home"
    env = {**os.environ, "SLMFLOW_HOME": str(home), "SLMFLOW_TRACING": "off"}
    exe = str(Path(sys.executable).parent / "slmflow")
    ext = _fields_rows(tmp_path / "x.jsonl", [(t, None) for t, _ in TRAIN])
    ext_eval = _fields_rows(tmp_path / "xe.jsonl", [("Order B-17 is late", "B-17"),
                                                    ("Refund my lamp", None)])
    cmd = [exe, "train", "agent", "router", "--workflow",
           str(ROOT / "examples/support/workflow.yaml"), "--data", str(_write(tmp_path / "t.jsonl",
                                                                             TRAIN)),
           "--eval-data", str(_write(tmp_path / "e.jsonl", HELD_OUT)),
           "--also", f"extractor={ext},{ext_eval}", "--max-steps", "2", "--batch-size", "4",
           "--r", "4", "--threads", "1", "--no-promote"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout[p.stdout.index("{\n"):])
    assert set(out["scores"]) == {"accuracy", "ok_rate", "extractor.accuracy",
                                  "extractor.ok_rate"}
    assert set(out["baseline"]) == set(out["scores"])
    card = json.loads((home / "adapters" / "router" / "v1" / "card.json").read_text())
    assert card["agents"] == ["router", "extractor"]
    # 10 router rows + 10 extractor rows (the same tickets: one row per agent), 5% to validation
    assert card["n_train"] + card["n_val"] == 20
