"""The interactive chain: the five-agent support pipeline per ticket, three ways, one run.

    .venv/bin/python bench/chain.py                 # 20 tickets, all three modes
    .venv/bin/python bench/chain.py --tickets 8 --modes new
    .venv/bin/python bench/chain.py --ops           # also: constrained vs free ms/token, prefill

Modes, each in a fresh process, each after one warm-up ticket, the same tickets in the same order
(the four sample tickets of examples/support/tickets.txt, then generated ones, fixed seed):

(a) ``before``: today's path before issue 16, every new feature switched off by settings:
    ``engine=legacy`` (llama-cpp-python's ``Llama.generate`` with the GBNF sampler), no prefix
    cache, one thread for prefill and decode, the shipped Q4_1 weights, a rejected draft re-run
    on the same-model fallback, and the workflow's prompts as they were (workflow_v0.yaml).
(b) ``new``: the defaults: prefix cache, llguidance with fast-forward, threads per phase, the
    default weight format, forced tails unscored, the quoted reply and constrained ids
    (workflow.yaml).
(c) ``server``: llama.cpp's own server (``python -m llama_cpp.server``, prompt cache on,
    ``cache: true``) answering the same agent calls through slmflow's OpenAI backend: one server
    process per served model (base, and one per adapter the workflow ships), because one
    llama_cpp.server with several aliases reloads the model at every alias switch. Same prompts
    as (b), same thread counts.

Per mode: end-to-end p50/p95, model calls per ticket, prompt tokens evaluated vs reused, ms per
call by agent, every structured output valid (a run whose steps all validated), statuses.
Ratios are printed against (a). No timed assertion anywhere: these are figures for
docs/benchmarks.md; say how loaded the machine was (``uptime`` is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "examples" / "support"

BEFORE_ENV = {
    "SLMFLOW_LLAMA_ENGINE": "legacy", "SLMFLOW_PREFIX_CACHE": "off",
    "SLMFLOW_LLAMA_THREADS": "1", "SLMFLOW_LLAMA_THREADS_BATCH": "1",
    "SLMFLOW_LLAMA_WEIGHTS": "as-shipped", "SLMFLOW_ESCALATE_TO_SAME_MODEL": "1",
    "SUPPORT_REPLY": "free",
}


def tickets(n: int) -> list[str]:
    """The sample tickets, then generated ones with varied wording (fixed seed)."""
    base = [t.strip() for t in (SUPPORT / "tickets.txt").read_text().splitlines() if t.strip()]
    rng = random.Random(16)
    items = ["blender", "phone case", "desk lamp", "coffee grinder", "rain jacket", "headphones"]
    templates = [
        "My order {o} arrived damaged, the {i} is cracked. I want my money back.",
        "Hi, where is my package? Order {o} was supposed to arrive last week.",
        "I see two charges for the same month on account {a}, please fix it.",
        "How can I reset my password? My account number is {a}.",
        "The {i} from order {o} does not work. Can I return it?",
        "My parcel {o} shows delivered but I never got it.",
        "Why was my card charged again? Account {a}. This is urgent!",
        "I want to change the email on account {a}.",
        "Do you ship to Canada? I want to order a {i}.",
        "Order {o}: the {i} is the wrong colour, I'd like a refund please",
    ]
    out = list(base)
    while len(out) < n:
        t = rng.choice(templates)
        out.append(t.format(o=f"{rng.choice('ABCDEFGH')}-{rng.randint(10, 99999)}",
                            a=str(rng.randint(1000, 99999999)), i=rng.choice(items)))
    return out[:n]


# -- one mode, in its own process ------------------------------------------------------------
def worker(mode: str, n: int, workflow: str) -> dict:
    sys.path.insert(0, str(SUPPORT))
    from slmflow.workflow import load_workflow

    wf = load_workflow(workflow)
    ts = tickets(n)
    wf.run_sync(ts[0])  # warm-up: weights, grammars, the index
    rows = []
    for t in ts:
        r = wf.run_sync(t)
        agents = [s for s in r.steps if s.kind == "agent"]
        # every agent step answered with a validated output (a verifier's "rejected" is an
        # answer; a tool's error_continued is not an agent output)
        valid = r.status != "failed" and all(
            s.agent_result is not None and s.agent_result.output is not None for s in agents)
        rows.append({
            "latency_s": r.latency_s, "status": r.status, "calls": len(agents),
            "calls_attempts": sum(len(s.agent_result.attempts) if s.agent_result else 0
                                  for s in agents),
            "input_tokens": sum(s.usage.input_tokens for s in agents),
            "cached_tokens": sum(s.usage.cached_input_tokens for s in agents),
            "output_tokens": sum(s.usage.output_tokens for s in agents),
            "valid": valid,
            "per_agent": [(s.step, s.latency_s) for s in agents],
            "answer": str(r.answer)[:160], "error": str(r.error)[:400] if r.error else None,
        })
    return {"mode": mode, "rows": rows}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


ADAPTED = ("router", "extractor", "reasoner", "verifier")  # the agents with a shipped adapter


def start_servers(tmp: Path) -> tuple[list[subprocess.Popen], dict[str, str]]:
    """One llama_cpp.server per served model, prompt cache on; their URLs."""
    import httpx

    from slmflow.models.catalog import resolve
    from slmflow.models.llamacpp import default_threads, default_threads_batch

    base = resolve("smollm2-135m")
    gguf = str(base.path)
    served: dict[str, Path | None] = {"base": None}
    for agent in ADAPTED:  # every adapter the workflow serves, one server each
        served[agent] = SUPPORT / "adapters" / agent / "adapter.gguf"
    procs, urls = [], {}
    for name, lora in served.items():
        port = _free_port()
        cfg = {"host": "127.0.0.1", "port": port, "models": [{
            "model": gguf, "model_alias": name, "n_ctx": 2048, "cache": True,
            "n_threads": default_threads(1), "n_threads_batch": default_threads_batch(1),
            **({"lora_path": str(lora)} if lora else {})}]}
        f = tmp / f"{name}.json"
        f.write_text(json.dumps(cfg))
        log = open(tmp / f"{name}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file",
                                       str(f)], stdout=log, stderr=subprocess.STDOUT))
        urls[name] = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    for name, url in urls.items():
        while True:
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"llama_cpp.server for {name} did not start; see {tmp}")
            time.sleep(0.5)
    return procs, urls


def server_workflow(urls: dict[str, str], tmp: Path) -> Path:
    """workflow.yaml with its models at the servers (written beside it: its `module:attr`
    references and adapter paths resolve from its folder)."""
    import yaml

    spec = yaml.safe_load((SUPPORT / "workflow.yaml").read_text())
    for step in spec["steps"]:  # YAML 1.1 reads the key `on` as True
        if isinstance(step.get("branch"), dict) and True in step["branch"]:
            step["branch"]["on"] = step["branch"].pop(True)
    spec["models"] = {"default": f"openai:smollm2-135m@{urls['base']}",
                      "fallback": f"openai:smollm2-135m@{urls['base']}",
                      **{f"{a}_srv": f"openai:smollm2-135m@{urls[a]}" for a in ADAPTED}}
    for a in ADAPTED:
        spec["agents"][a]["model"] = f"{a}_srv"
    out = SUPPORT / f".bench-server-{os.getpid()}.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def run_mode(mode: str, n: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLMFLOW_TRACING": "off"}
    procs: list[subprocess.Popen] = []
    wf_path = SUPPORT / "workflow.yaml"
    tmpd = tempfile.TemporaryDirectory()
    try:
        if mode == "before":
            env.update(BEFORE_ENV)
            wf_path = SUPPORT / "workflow_v0.yaml"
        elif mode == "server":
            procs, urls = start_servers(Path(tmpd.name))
            wf_path = server_workflow(urls, Path(tmpd.name))
        p = subprocess.run([sys.executable, __file__, "--worker", mode, "--tickets", str(n),
                            "--workflow", str(wf_path)], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            try:
                pr.wait(10)
            except subprocess.TimeoutExpired:
                pr.kill()
        if mode == "server" and wf_path.name.startswith(".bench-server"):
            wf_path.unlink(missing_ok=True)
        tmpd.cleanup()


def summarize(res: dict) -> dict:
    rows = res["rows"]
    lat = sorted(r["latency_s"] for r in rows)
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [lat[0]] * 19
    per_agent: dict[str, list[float]] = {}
    for r in rows:
        for step, s in r["per_agent"]:
            per_agent.setdefault(step, []).append(s)
    inp = sum(r["input_tokens"] for r in rows)
    cached = sum(r["cached_tokens"] for r in rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "p50_s": statistics.median(lat), "p95_s": q[18], "n": len(rows),
        "calls": statistics.mean(r["calls"] for r in rows),
        "evaluated_tokens": (inp - cached) / len(rows), "reused_tokens": cached / len(rows),
        "output_tokens": statistics.mean(r["output_tokens"] for r in rows),
        "valid": sum(r["valid"] for r in rows), "statuses": statuses,
        "agent_ms": {k: 1000 * statistics.median(v) for k, v in per_agent.items()},
    }


# -- kernel-level figures --------------------------------------------------------------------
def ops() -> dict:
    """Constrained vs unconstrained ms per generated token (same prompt, greedy), prefill
    tok/s, and the prefill ceiling from FLOPs per token and a measured f32 matmul rate."""
    import asyncio

    import numpy as np

    from slmflow.models.catalog import resolve
    from slmflow.types import Message, Settings

    out: dict = {}
    prompt = [Message("system", "Extract fields."),
              Message("user", "Ticket: order A-1042 arrived broken, account 88231, urgent")]
    schema = {"type": "object", "properties": {"notes": {"type": "string", "maxLength": 200}},
              "required": ["notes"]}
    for engine in ("legacy", "fast"):
        m = resolve("smollm2-135m", engine=engine, prefix_cache=False).load()
        best: dict = {}
        for label, sch in (("free", None), ("constrained", schema)):
            times = []
            for _ in range(3):
                r = asyncio.run(m.generate(prompt, schema=sch, settings=Settings(max_tokens=48)))
                dec = r.latency_s - (r.time_to_first_token_s or 0)
                times.append(dec / max(1, r.usage.output_tokens - 1) * 1000)
            best[label] = min(times)
        best["ratio"] = best["constrained"] / best["free"]
        out[engine] = best
    for threads in (1, 2):  # decode threads (prefill threads unchanged)
        m = resolve("smollm2-135m", n_threads=threads, prefix_cache=False).load()
        times = []
        for _ in range(3):
            r = asyncio.run(m.generate(prompt, settings=Settings(max_tokens=48)))
            dec = r.latency_s - (r.time_to_first_token_s or 0)
            times.append(dec / max(1, r.usage.output_tokens - 1) * 1000)
        out[f"decode_ms_{threads}t"] = min(times)
    m = resolve("smollm2-135m", prefix_cache=False).load()
    llm = m._llamas[0]
    sess = m._session(llm)
    toks = np.asarray(llm.tokenize(("word " * 300).encode(), add_bos=True), dtype=np.int32)
    rates = []
    for _ in range(3):
        sess._truncate(0)
        t0 = time.perf_counter()
        sess.prefill(toks)
        rates.append(len(toks) / (time.perf_counter() - t0))
    out["prefill_tok_s"] = max(rates)
    n_params = 135e6
    a = np.random.rand(512, 576).astype(np.float32)
    b = np.random.rand(576, 1536).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    flops = 20 * 2 * 512 * 576 * 1536 / (time.perf_counter() - t0)
    out["matmul_gflops"] = flops / 1e9
    out["prefill_ceiling_tok_s"] = flops / (2 * n_params)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=20)
    ap.add_argument("--modes", default="before,new,server")
    ap.add_argument("--ops", action="store_true")
    ap.add_argument("--ops-only", action="store_true", help="only the kernel-level figures")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workflow", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.tickets, a.workflow)))
        return
    print("machine:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
          f"| {os.cpu_count()} cores")
    results = {}
    for mode in ([] if a.ops_only else a.modes.split(",")):
        t0 = time.time()
        raw = run_mode(mode, a.tickets)
        errors = [r["error"] for r in raw["rows"] if r["error"]]
        if errors:
            print(f"  {mode}: {len(errors)} failed runs, first: {errors[0]}")
        results[mode] = summarize(raw)
        print(f"  {mode}: done in {time.time() - t0:.0f} s", flush=True)
    names = {"before": "(a) before", "new": "(b) new", "server": "(c) llama.cpp server"}
    if results:
        print(f"\nSupport pipeline, {a.tickets} tickets after one warm-up, smollm2-135m on CPU")
        print(f"{'mode':24s} {'p50 ms':>8s} {'p95 ms':>8s} {'calls':>6s} {'eval tok':>9s} "
              f"{'reused':>7s} {'out tok':>8s} {'valid':>6s}  statuses")
        for mode, s in results.items():
            print(f"{names.get(mode, mode):24s} {s['p50_s'] * 1000:8.0f} {s['p95_s'] * 1000:8.0f} "
                  f"{s['calls']:6.1f} {s['evaluated_tokens']:9.0f} {s['reused_tokens']:7.0f} "
                  f"{s['output_tokens']:8.0f} {s['valid']:3d}/{s['n']:<2d}  {s['statuses']}")
        print("\nms per call by agent (p50):")
        for mode, s in results.items():
            print(f"  {names.get(mode, mode):24s} " + ", ".join(
                f"{k} {v:.0f}" for k, v in s["agent_ms"].items()))
        if "before" in results and len(results) > 1:
            b = results["before"]["p50_s"]
            for mode, s in results.items():
                if mode != "before":
                    print(f"  p50 speed-up of {names[mode]} over (a): {b / s['p50_s']:.2f}x")
        if "server" in results and "new" in results:
            print(f"  (b) vs (c) p50: {results['server']['p50_s'] / results['new']['p50_s']:.2f}x "
                  "faster than llama.cpp's server")
    if a.ops or a.ops_only:
        o = ops()
        results["ops"] = o
        print("\nms per generated token, constrained vs free (greedy, same prompt):")
        for eng in ("legacy", "fast"):
            print(f"  {eng:7s} free {o[eng]['free']:.2f}  constrained "
                  f"{o[eng]['constrained']:.2f}  ratio {o[eng]['ratio']:.2f}x (goal <= 1.10x)")
        print(f"decode ms/token: 1 thread {o['decode_ms_1t']:.2f}, 2 threads "
              f"{o['decode_ms_2t']:.2f}")
        import llama_cpp

        print("llama.cpp build:", llama_cpp.llama_print_system_info().decode().strip())
        print(f"prefill {o['prefill_tok_s']:.0f} tok/s; f32 matmul {o['matmul_gflops']:.0f} "
              f"GFLOP/s -> ceiling ~{o['prefill_ceiling_tok_s']:.0f} tok/s (2 x 135M FLOPs/token)")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
