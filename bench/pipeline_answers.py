"""The seed's claim, measured: five small fine-tuned agents vs the same agents zero-shot vs a bigger
model, on the support pipeline's scenario suite, side by side in one run.

    .venv/bin/python bench/pipeline_answers.py                       # all variants, both parts
    .venv/bin/python bench/pipeline_answers.py --variants a,b --part heldout
    .venv/bin/python bench/pipeline_answers.py --json out.json

Variants (the same scenarios, in the same order, each after one warm-up ticket):

(a) ``tuned``: examples/support/workflow.yaml on SmolLM2-135M with every shipped adapter (router,
    extractor, reasoner, verifier).
(b) ``zero135``: the same pipeline zero-shot on SmolLM2-135M (no adapters; the schema text goes
    into each prompt, as ``slmflow run --no-adapters`` serves it).
(c) ``zero1.5b``: the same pipeline zero-shot on Qwen2.5-Coder-1.5B-Instruct, the biggest local
    model in the catalog (every agent on it).
(d) ``single1.5b``: one prompt to Qwen2.5-Coder-1.5B doing the whole job
    (examples/support/workflow_single.yaml: retrieval, then one constrained call that classifies,
    extracts and answers; no lookup tools, no verifier).

No variant has a fallback model (the workflow's default: escalating to the same model without an
adapter is a step down, and a re-run on the very same model at temperature 0 repeats itself).

Per variant: scenario pass rate (every check passed), the pass rate without the path check (the
only check a single prompt cannot pass by construction: it has no router/lookup steps), per-check
mean scores, p50 latency per ticket and prompt + output tokens per ticket. Ratios against (a).

The held-out part (scenarios_heldout.yaml) is what the goals are stated on: no training script
reads it. No timed assertion anywhere: figures for docs/benchmarks.md (``uptime`` is printed; run
it alone, two CPU-heavy jobs halve each other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "support"
PARTS = {"dev": EX / "scenarios.yaml", "heldout": EX / "scenarios_heldout.yaml",
         "heldout2": EX / "scenarios_heldout2.yaml"}
VARIANTS = {
    "a": ("tuned", "workflow.yaml", "smollm2-135m", True),
    "b": ("zero135", "workflow.yaml", "smollm2-135m", False),
    "c": ("zero1.5b", "workflow.yaml", "qwen2.5-coder-1.5b", False),
    "d": ("single1.5b", "workflow_single.yaml", "qwen2.5-coder-1.5b", False),
}
CHECKS = ("scenario.completed", "scenario.handoffs", "scenario.path", "scenario.outcome",
          "scenario.faithfulness")


def run_variant(key: str, part: str) -> dict[str, Any]:
    """One variant on one part of the suite, in this process."""
    from slmflow.agents import set_adapter_resolver
    from slmflow.evals.scenarios import run_scenarios
    from slmflow.finetune.registry import base_model_resolver
    from slmflow.workflow import load_workflow

    label, spec, model, adapters = VARIANTS[key]
    if not adapters:
        set_adapter_resolver(base_model_resolver)
    wf = load_workflow(EX / spec, model=model)
    warm = wf.run_sync("My order A-1042 arrived broken, I want a refund")  # loads, caches
    if warm.status == "failed":  # a missing model is an error, not a pass rate of 0
        raise SystemExit(f"variant ({key}) cannot run: {warm.error}")
    t0 = time.perf_counter()
    rep = run_scenarios(wf, PARTS[part], progress=False)
    wall = time.perf_counter() - t0
    rows = rep.rows
    lat = [r.latency_s for r in rows if r.latency_s is not None]
    checks: dict[str, list[float]] = {c: [] for c in CHECKS}
    no_path_pass = 0
    for r in rows:
        ok = r.status != "errored"
        for name, ev in r.evals.items():
            if ev.score is None:  # not applicable to this scenario
                continue
            if name in checks:
                checks[name].append(ev.score)
            if name != "scenario.path" and not ev.ok:
                ok = False
        no_path_pass += ok
    tokens = _tokens(rows)
    return {"variant": key, "label": label, "model": model, "part": part, "n": len(rows),
            "passed": rep.summary["passed"], "pass_rate": rep.summary["passed"] / len(rows),
            "pass_rate_no_path": no_path_pass / len(rows),
            "checks": {k: (sum(v) / len(v) if v else None) for k, v in checks.items()},
            "p50_s": statistics.median(lat) if lat else None, "wall_s": wall,
            "tokens_per_ticket": tokens,
            "failed": {r.id: "; ".join(f"{k}: {e.explanation}" for k, e in r.evals.items()
                                       if e.score is not None and not e.ok)[:300]
                       for r in rows if r.status != "passed"}}


def _tokens(rows: list[Any]) -> float | None:
    """Mean prompt + output tokens per ticket, from the traces' model spans."""
    from slmflow import tracing
    from slmflow.tracing.store import open_span_store

    tracing.force_flush()
    totals = []
    with open_span_store() as store:
        for r in rows:
            if not r.trace_id:
                continue
            n = 0
            for sp in store.trace(r.trace_id):
                if str(sp.get("name", "")).startswith("chat "):  # model calls only
                    n += int(sp.get("input_tokens") or 0) + int(sp.get("output_tokens") or 0)
            totals.append(n)
    return sum(totals) / len(totals) if totals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="a,b,c,d")
    ap.add_argument("--part", default="heldout,dev", help="heldout, heldout2, dev (comma-separated)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant:part, print JSON
    a = ap.parse_args()
    if a.one:
        key, part = a.one.split(":")
        print("RESULT " + json.dumps(run_variant(key, part)), flush=True)
        return 0
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    results = []
    for part in [p.strip() for p in a.part.split(",") if p.strip()]:
        for key in [v.strip() for v in a.variants.split(",") if v.strip()]:
            # each variant in a fresh process: no model or cache carried from the one before
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLMFLOW_TRACING": "on"}
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--one", f"{key}:{part}"],
                               capture_output=True, text=True, env=env)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{key}:{part} failed after {time.perf_counter() - t0:.0f}s:\n"
                      + p.stderr[-2000:], file=sys.stderr)
                continue
            res = json.loads(line[7:])
            results.append(res)
            print(f"{part:<8} ({key}) {res['label']:<11} pass {res['passed']}/{res['n']} "
                  f"({res['pass_rate']:.2f}), without path {res['pass_rate_no_path']:.2f}, "
                  f"p50 {res['p50_s']:.2f}s, tokens/ticket {res['tokens_per_ticket'] or 0:.0f}",
                  flush=True)
    print()
    hdr = ["part", "variant", "model", "pass", "pass rate", "w/o path", *[c.split(".")[1] for c in
           CHECKS], "p50 s", "x (a)", "tokens/ticket"]
    print("\t".join(hdr))
    for r in results:
        base = next((x for x in results if x["part"] == r["part"] and x["variant"] == "a"), None)
        ratio = (f"{r['p50_s'] / base['p50_s']:.2f}x" if base and base["p50_s"] else "-")
        print("\t".join([r["part"], f"({r['variant']}) {r['label']}", r["model"],
                         f"{r['passed']}/{r['n']}", f"{r['pass_rate']:.2f}",
                         f"{r['pass_rate_no_path']:.2f}",
                         *[("-" if r["checks"][c] is None else f"{r['checks'][c]:.2f}")
                           for c in CHECKS],
                         f"{r['p50_s']:.2f}", ratio, f"{r['tokens_per_ticket'] or 0:.0f}"]))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
