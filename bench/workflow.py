"""Workflow benchmark: orchestration overhead vs LangGraph, and the support pipeline end to end.

    .venv/bin/python bench/workflow.py                # both parts
    .venv/bin/python bench/workflow.py --skip-e2e     # overhead only (seconds)

Part 1, orchestration overhead per step. The same five-step graph (each step one schema-
constrained call to a `FunctionModel`, no inference, typed output) runs on slmflow's `Workflow`
and on LangGraph's `StateGraph` (in its own venv, .bench/venv-langgraph, run as a subprocess of
this script). The bare cost of the five model calls, made in a plain loop, is measured in each
process and subtracted: overhead per step = (graph run - bare calls) / 5. slmflow's overhead
includes what LangGraph does not do: the handoff contract (validating each step's input type),
the AgentResult/StepRecord bookkeeping and the spans. Measured with tracing off
(SLMFLOW_TRACING=off, LangGraph has none by default) and, for slmflow, also with the default
tracing (spans to the local SQLite store).

Part 2, end to end: examples/support/workflow.yaml on the embedded SmolLM2-135M, the sample
tickets several rounds: p50/p95 latency, and the share of it spent inside the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
LG_PY = ROOT / ".bench" / "venv-langgraph" / "bin" / "python"
STEPS = 5


class In0(BaseModel):
    text: str


class O1(BaseModel):
    f1: str


class O2(BaseModel):
    f2: str


class O3(BaseModel):
    f3: str


class O4(BaseModel):
    f4: str


class O5(BaseModel):
    f5: str


OUTS = [O1, O2, O3, O4, O5]
INS = [In0, O1, O2, O3, O4]


def _models():
    from slmflow import FunctionModel

    return [FunctionModel(lambda m, s, i=i: {f"f{i + 1}": f"value {i + 1}"}, name=f"m{i}")
            for i in range(STEPS)]


async def _bare(models, n: int) -> float:
    from slmflow.types import Message

    t0 = time.perf_counter()
    for _ in range(n):
        prev = "a short ticket"
        for i, m in enumerate(models):
            r = await m.generate([Message("user", prev)], schema=OUTS[i])
            prev = getattr(r.parsed, f"f{i + 1}")
    return (time.perf_counter() - t0) / n


def _timed(fn, n: int, reps: int) -> float:
    """Best of `reps` repetitions of the mean time per run over `n` runs (seconds)."""
    return min(asyncio.run(fn(n)) for _ in range(reps))


def measure_slmflow(n: int, reps: int) -> dict[str, float]:
    from slmflow.agents import Agent
    from slmflow.workflow import Step, Workflow

    models = _models()
    wf = Workflow("bench", [Step(f"s{i}", agent=Agent(f"a{i}", models[i], input_type=INS[i],
                                                      output_type=OUTS[i]))
                            for i in range(STEPS)], input_type=In0, output="f5")

    async def graph(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            r = await wf.run("a short ticket")
            assert r.status == "ok" and r.answer == "value 5", r.detail
        return (time.perf_counter() - t0) / k

    async def bare(k: int) -> float:
        return await _bare(models, k)

    _timed(graph, max(1, n // 10), 1)  # warm-up
    return {"run_s": _timed(graph, n, reps), "bare_s": _timed(bare, n, reps)}


def measure_langgraph(n: int, reps: int) -> dict[str, float]:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from slmflow.types import Message

    models = _models()

    class State(TypedDict, total=False):
        text: str
        f1: str
        f2: str
        f3: str
        f4: str
        f5: str

    def node(i: int):
        prev = "text" if i == 0 else f"f{i}"

        async def run(state: State) -> dict:
            r = await models[i].generate([Message("user", state[prev])], schema=OUTS[i])
            return {f"f{i + 1}": getattr(r.parsed, f"f{i + 1}")}

        return run

    g = StateGraph(State)
    for i in range(STEPS):
        g.add_node(f"s{i}", node(i))
    g.add_edge(START, "s0")
    for i in range(STEPS - 1):
        g.add_edge(f"s{i}", f"s{i + 1}")
    g.add_edge(f"s{STEPS - 1}", END)
    app = g.compile()

    async def graph(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            out = await app.ainvoke({"text": "a short ticket"})
            assert out["f5"] == "value 5"
        return (time.perf_counter() - t0) / k

    async def bare(k: int) -> float:
        return await _bare(models, k)

    _timed(graph, max(1, n // 10), 1)
    from importlib.metadata import version

    return {"run_s": _timed(graph, n, reps), "bare_s": _timed(bare, n, reps),
            "version": version("langgraph")}


def overhead(m: dict[str, float]) -> float:
    return max(0.0, (m["run_s"] - m["bare_s"]) / STEPS)


def part1(n: int, reps: int) -> dict:
    out: dict = {}
    os.environ["SLMFLOW_TRACING"] = "off"
    from slmflow import tracing

    if hasattr(tracing, "reset"):
        tracing.reset()
    out["slmflow"] = measure_slmflow(n, reps)
    os.environ.pop("SLMFLOW_TRACING")
    if hasattr(tracing, "reset"):
        tracing.reset()
    out["slmflow_traced"] = measure_slmflow(n, reps)
    if hasattr(tracing, "force_flush"):
        tracing.force_flush()
    if LG_PY.exists():
        env = {**os.environ, "SLMFLOW_TRACING": "off"}
        p = subprocess.run([str(LG_PY), __file__, "--langgraph-worker", "--runs", str(n),
                            "--reps", str(reps)], capture_output=True, text=True, env=env)
        if p.returncode == 0:
            out["langgraph"] = json.loads(p.stdout.strip().splitlines()[-1])
        else:
            out["langgraph_error"] = p.stderr[-2000:]
    else:
        out["langgraph_error"] = (f"{LG_PY} not found: python3.11 -m venv .bench/venv-langgraph "
                                  "&& .bench/venv-langgraph/bin/pip install langgraph ... "
                                  "(see docs/benchmarks.md)")
    return out


def part2(rounds: int) -> dict:
    from slmflow.workflow import load_workflow

    sys.path.insert(0, str(ROOT / "examples" / "support"))
    wf = load_workflow(ROOT / "examples" / "support" / "workflow.yaml")
    tickets = [t.strip() for t in (ROOT / "examples" / "support" / "tickets.txt")
               .read_text().splitlines() if t.strip()]
    wf.run_sync(tickets[0])  # load the weights, warm the grammar cache
    lat, model, statuses, calls, per_step = [], [], [], [], {}
    for _ in range(rounds):
        for t in tickets:
            r = wf.run_sync(t)
            lat.append(r.latency_s)
            model.append(r.model_latency_s)
            statuses.append(r.status)
            calls.append(sum(1 for s in r.steps if s.kind == "agent"))
            for s in r.steps:
                if s.kind == "agent":
                    per_step.setdefault(s.step, []).append(s.latency_s)
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [lat[0]] * 19
    return {
        "runs": len(lat), "p50_s": statistics.median(lat), "p95_s": q[18],
        "model_share": sum(model) / sum(lat),
        "statuses": {k: statuses.count(k) for k in sorted(set(statuses))},
        "model_calls_mean": statistics.mean(calls),
        "step_p50_s": {k: statistics.median(v) for k, v in per_step.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2000, help="graph runs per repetition (part 1)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the sample tickets (part 2)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--langgraph-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.langgraph_worker:
        print(json.dumps(measure_langgraph(a.runs, a.reps)))
        return
    res: dict = {}
    if not a.skip_e2e:  # first, in a fresh process: part 1's traced run floods the span exporter
        res["part2"] = part2(a.rounds)
    res["part1"] = p1 = part1(a.runs, a.reps)
    print(f"Part 1: five-step graph on FunctionModel, {a.runs} runs x {a.reps} reps (best rep)")
    rows = [("slmflow (tracing off)", p1["slmflow"]), ("slmflow (tracing on, SQLite store)",
                                                       p1["slmflow_traced"])]
    if "langgraph" in p1:
        rows.append((f"LangGraph {p1['langgraph']['version']}", p1["langgraph"]))
    print(f"  {'':38s} {'run/graph':>10s} {'bare calls':>10s} {'overhead/step':>14s}")
    for name, m in rows:
        print(f"  {name:38s} {m['run_s'] * 1e6:8.0f}us {m['bare_s'] * 1e6:8.0f}us "
              f"{overhead(m) * 1e6:12.1f}us")
    if "langgraph" in p1:
        lg = overhead(p1["langgraph"])
        for key, label in (("slmflow", "tracing off"), ("slmflow_traced", "tracing on")):
            ratio = overhead(p1[key]) / lg if lg else float("inf")
            p1[f"ratio_{key}"] = ratio
            print(f"  overhead ratio slmflow/LangGraph ({label}): {ratio:.2f}x "
                  f"(goal <= 1.00x)")
    else:
        print("  LangGraph not measured:", p1.get("langgraph_error", "")[-500:])
    if not a.skip_e2e:
        p2 = res["part2"]
        print(f"Part 2: support pipeline on smollm2-135m (embedded, CPU, {os.cpu_count()} cores), "
              f"{p2['runs']} runs")
        print(f"  p50 {p2['p50_s'] * 1000:.0f} ms  p95 {p2['p95_s'] * 1000:.0f} ms  "
              f"model share {p2['model_share']:.1%}  model calls/run "
              f"{p2['model_calls_mean']:.1f}  statuses {p2['statuses']}")
        print("  per agent step p50: " + ", ".join(
            f"{k} {v * 1000:.0f} ms" for k, v in p2["step_p50_s"].items()))
        print("  goal: five-agent chain under 1 s p50 on CPU")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
