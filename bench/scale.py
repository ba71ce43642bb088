"""Scale-out benchmark: router-suite eval throughput in one process vs as Ray tasks on 1 and 2
workers (a real local Ray cluster on loopback, 2 CPUs), plus per-call figures for the cost model
in docs/deploy.md.

    .venv/bin/python bench/scale.py --cases 100 --out /tmp/bench-scale.json
    .venv/bin/python bench/scale.py --address head:6379 --modes ray4,ray8   # an existing cluster

The workload is examples/banking77/eval_router.py (77-way ``Route`` schema, the routing
evaluator, embedded SmolLM2-135M on llama.cpp, greedy), a fixed-seed stratified sample. Modes:

  * ``single c=1``: `run_suite` in this process, one llama.cpp context (1 thread on 2 cores);
  * ``single c=2``: the same with ``pool_size=2`` (two contexts, the in-process way to use both
    cores);
  * ``ray w=1`` / ``ray w=2``: `run_suite_ray` with at most 1 / 2 Ray tasks in flight, each task a
    batch of cases run with concurrency 1 in a worker process that loads the model once.
    "cold" includes connecting, starting worker processes and loading the model in each; "warm"
    is a second run in the same Ray job (workers and their loaded agents reused).

Each mode checks its rows against the single-process run (same outputs, same scores).
Ratios are wall-clock throughput relative to ``single c=1``. On one 2-core machine Ray can at
best match the in-process pool; its point is adding machines (see docs/deploy.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "banking77"))


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--modes", default="single1,single2,ray1,ray2")
    ap.add_argument("--out")
    ap.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SLMFLOW_TRACING", "off")

    import eval_router

    from slmflow.evals import run_suite
    from slmflow.models.catalog import resolve
    from slmflow.scale import AgentRef, LocalCluster, run_suite_ray
    from slmflow.scale.distributed import RayStats, connect

    cases = eval_router.cases(limit=a.cases)
    evs = eval_router.evaluators()
    modes = a.modes.split(",")
    results: list[dict] = []
    reference = None

    def record(mode: str, rep, extra: dict | None = None) -> None:
        nonlocal reference
        rows = [(r.id, r.status, r.output) for r in rep.rows]
        if reference is None:
            reference = (rows, rep.scores)
        same = rows == reference[0] and rep.scores == reference[1]
        lat = rep.latency()
        res = {"mode": mode, "cases": len(rep.rows), "wall_s": round(rep.duration_s, 2),
               "cases_per_s": round(len(rep.rows) / rep.duration_s, 3),
               "accuracy": rep.scores.get("accuracy"), "errored": rep.summary["errored"],
               "p50_latency_s": lat["p50"], "mean_latency_s": lat["mean"],
               "same_as_single": same, "load_avg": round(_load(), 2), **(extra or {})}
        results.append(res)
        print(json.dumps(res), flush=True)

    for c in (1, 2):
        if f"single{c}" in modes:
            model = resolve("smollm2-135m", pool_size=c) if c > 1 else "smollm2-135m"
            agent = eval_router.make_agent(model)
            agent.run_sync(cases.cases[0].input)  # load and compile the grammar once
            rep = run_suite(agent, cases, evs, concurrency=c)
            record(f"single c={c}", rep)

    ray_modes = [m for m in modes if m.startswith("ray")]
    if ray_modes:
        ref = AgentRef("eval_router:agent", base=str(ROOT / "examples" / "banking77"))
        t0 = time.perf_counter()
        with (contextlib.nullcontext(argparse.Namespace(address=a.address)) if a.address
              else LocalCluster(num_cpus=2)) as cluster:
            start_s = time.perf_counter() - t0
            for m in ray_modes:
                w = int(m[3:])
                t1 = time.perf_counter()
                connect(cluster.address)  # one Ray job per mode: cold, then warm
                import ray

                try:
                    connect_s = time.perf_counter() - t1
                    for phase in ("cold", "warm"):
                        st = RayStats(cluster.address)
                        rep = run_suite_ray(ref, cases, evs, address=cluster.address,
                                            batch_size=a.batch_size, workers=w, stats=st)
                        record(f"ray w={w} {phase}", rep, {
                            "cluster_start_s": round(start_s, 2),
                            "connect_s": round(connect_s, 2),
                            "worker_processes": st.to_dict()["worker_processes"],
                            "batches": st.batches})
                finally:
                    ray.shutdown()
    base = next((r for r in results if r["mode"] == "single c=1"), None)
    if base:
        for r in results:
            r["ratio_vs_single_c1"] = round(r["cases_per_s"] / base["cases_per_s"], 2)
    print("\n| mode | wall s | cases/s | ratio vs single c=1 | same rows/scores | load |")
    print("|---|---:|---:|---:|---|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['wall_s']} | {r['cases_per_s']} | "
              f"{r.get('ratio_vs_single_c1', '')} | {r['same_as_single']} | {r['load_avg']} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"cases": a.cases, "batch_size": a.batch_size,
                                           "results": results}, indent=2))
    return 0 if all(r["same_as_single"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
