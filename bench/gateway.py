"""Gateway benchmark: added latency over a direct backend call, requests/s at 1/16/64 concurrent
clients, side by side with the LiteLLM proxy in front of the same backend, cache-hit latency, and
a count of call-log records (none may be lost).

Backend: llama.cpp's OpenAI server (``python -m llama_cpp.server``) on the embedded SmolLM2-135M.
In front of it, in the same run: the slmflow gateway (guardrails on, auth on, call log on) and the
LiteLLM proxy (installed in its own venv, ``.bench/venv-litellm``; skipped with a note if absent).

    .venv/bin/python bench/gateway.py [--requests 64] [--max-tokens 4] [--json out.json]

The cost of the durable call log (``call_log_durable``: a request's record is committed before
its answer is sent) is measured on its own, side by side in one run: two gateways, one durable and
one queued (the background writer only), in front of an instant `FunctionModel`, so the figure is
the gateway's own overhead and the log write is as large a share of it as it can be. Rounds
alternate between the two so that a change in the machine's load hits both:

    .venv/bin/python bench/gateway.py --only-durability [--durability-call-log postgresql://...]

Time to first token, side by side in one run: the embedded SmolLM2-135M in-process, called
directly (`Model.stream`, time to the first delta) and through a gateway in front of the same
model object (``stream: true`` over loopback, time to the first content chunk), with the output
guardrails off and on (they hold text back until a window is checked). Rounds alternate, each
request has its own prompt (no cache, no shared KV prefix past the chat template):

    .venv/bin/python bench/gateway.py --only-ttft [--requests 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SLMFLOW_TRACING", "off")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen | None, timeout: float = 120,
            headers: dict | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def load(url: str, model: str, n: int, conc: int, max_tokens: int, key: str,
               same_prompt: bool = False, logprobs: bool = False) -> dict:
    lat: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=conc + 4)) as c:
        async def one(i: int) -> None:
            nonlocal errors
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say hello." if same_prompt
                                  else f"Say hello to customer number {i}."}]}
            if logprobs:  # what the gateway's backend call asks for (confidence)
                body.update(logprobs=True, top_logprobs=1)
            async with sem:
                t0 = time.perf_counter()
                r = await c.post(f"{url}/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"})
                dt = time.perf_counter() - t0
            if r.status_code == 200:
                lat.append(dt)
            else:
                errors += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"n": n, "concurrency": conc, "ok": len(lat), "errors": errors,
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "rps": len(lat) / wall}


def durability(levels: list[int], requests: int, call_log: str | None, tmp: Path,
               rounds: int = 3) -> dict:
    """requests/s with and without the durable call-log write, per concurrency level."""
    from slmflow import FunctionModel
    from slmflow.gateway.app import Gateway
    from slmflow.gateway.auth import hash_key
    from slmflow.gateway.config import GatewayConfig
    from slmflow.gateway.server import GatewayServer
    from slmflow.store import open_call_log

    servers, urls = {}, {}
    for mode in ("queued", "durable"):
        url = call_log or f"sqlite:///{tmp / f'calls-{mode}.db'}"
        if call_log:  # one PostgreSQL database: both gateways write to it
            url = call_log
        cfg = GatewayConfig.model_validate({
            "call_log": url, "call_log_durable": mode == "durable",
            "cache": {"enabled": False},
            "auth": {"keys": [{"name": "bench", "sha256": hash_key("sk-bench")}]}})
        gw = Gateway(cfg, models={"fn": FunctionModel(lambda m, s: "hello there", name="fn")})
        servers[mode] = GatewayServer(gw).start()
        urls[mode] = servers[mode].url
    sent = {"queued": 0, "durable": 0}
    out: dict = {}
    try:
        for mode in urls:  # warm-up
            asyncio.run(load(urls[mode], "fn", 16, 4, 4, "sk-bench"))
            sent[mode] += 16
        for conc in levels:
            n = max(requests, conc * 4)
            runs: dict[str, list[dict]] = {"queued": [], "durable": []}
            for _ in range(rounds):
                for mode in ("queued", "durable"):
                    r = asyncio.run(load(urls[mode], "fn", n, conc, 4, "sk-bench"))
                    runs[mode].append(r)
                    sent[mode] += n
            row = {}
            for mode, rs in runs.items():
                row[mode] = {"rps": sum(r["rps"] for r in rs) / len(rs),
                             "p50_ms": sorted(r["p50_ms"] for r in rs)[len(rs) // 2],
                             "p99_ms": max(r["p99_ms"] for r in rs),
                             "errors": sum(r["errors"] for r in rs)}
            row["ratio"] = row["durable"]["rps"] / row["queued"]["rps"]
            out[conc] = row
            print(f"durability c={conc:<3} queued {row['queued']['rps']:7.1f} req/s "
                  f"(p50 {row['queued']['p50_ms']:6.1f} ms)  durable "
                  f"{row['durable']['rps']:7.1f} req/s (p50 {row['durable']['p50_ms']:6.1f} ms)"
                  f"  durable/queued {row['ratio']:.2f}", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()  # drains the queued one
    if not call_log:
        for mode in servers:
            with open_call_log(f"sqlite:///{tmp / f'calls-{mode}.db'}") as log:
                n = log.count(kind="model")
            print(f"durability {mode}: {sent[mode]} requests, {n} records", flush=True)
            out[f"{mode}_records"] = {"sent": sent[mode], "logged": n}
    return out


def ttft(requests: int, max_tokens: int, tmp: Path) -> dict:
    """Time to first token: direct `Model.stream` vs the gateway's SSE (guardrails off / on)."""
    from slmflow.gateway.app import Gateway
    from slmflow.gateway.config import GatewayConfig
    from slmflow.gateway.server import GatewayServer
    from slmflow.models.catalog import resolve
    from slmflow.types import Settings

    model = resolve("smollm2-135m").load()
    servers = {}
    for mode, guard in (("gateway", False), ("gateway+guardrails", True)):
        cfg = GatewayConfig.model_validate({
            "call_log": f"sqlite:///{tmp / f'calls-ttft-{guard}.db'}", "auth": {"enabled": False},
            "cache": {"enabled": False}, "guardrails": {"enabled": guard}})
        servers[mode] = GatewayServer(Gateway(cfg, models={"slm": model})).start()
    settings = Settings(max_tokens=max_tokens)

    async def direct(prompt: str) -> float:
        t0 = time.perf_counter()
        async with model.stream(prompt, settings=settings) as s:
            async for _ in s:
                first = time.perf_counter() - t0
                async for _ in s:  # read the rest, as the gateway's client does
                    pass
                return first
        return float("nan")

    def gateway(url: str, prompt: str) -> float:
        t0 = time.perf_counter()
        first = float("nan")
        with httpx.stream("POST", f"{url}/chat/completions", timeout=300, json={
                "model": "slm", "stream": True, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": prompt}]}) as r:
            for line in r.iter_lines():
                if first != first and line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t0
        return first

    times: dict[str, list[float]] = {"direct": [], **{m: [] for m in servers}}
    try:
        for i in range(requests + 1):  # the first round warms up
            round_ = {"direct": asyncio.run(direct(f"Request {i}a: name three colours."))}
            for j, (mode, srv) in enumerate(servers.items()):
                round_[mode] = gateway(srv.url, f"Request {i}{'bc'[j]}: name three colours.")
            if i:
                for k, v in round_.items():
                    times[k].append(v)
    finally:
        for srv in servers.values():
            srv.stop()
    out: dict = {}
    for k, v in times.items():
        out[k] = {"p50_ms": pct(v, 50) * 1000, "p90_ms": pct(v, 90) * 1000, "n": len(v)}
    for k in servers:
        out[k]["ratio_p50"] = out[k]["p50_ms"] / out["direct"]["p50_ms"]
    for k, row in out.items():
        ratio = f"  x{row['ratio_p50']:.2f} direct" if "ratio_p50" in row else ""
        print(f"ttft {k:<20} p50 {row['p50_ms']:8.1f} ms  p90 {row['p90_ms']:8.1f} ms"
              f"{ratio}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only-durability", action="store_true",
                    help="only the durable vs queued call-log comparison (no backend)")
    ap.add_argument("--durability-call-log", default=None,
                    help="call log of that comparison (default: a SQLite file each)")
    ap.add_argument("--only-ttft", action="store_true",
                    help="only time to first token: in-process Model.stream vs the gateway")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.only_ttft:
        tmp = Path(tempfile.mkdtemp(prefix="slmflow-bench-ttft-"))
        os.environ.setdefault("SLMFLOW_HOME", str(tmp / "home"))
        res = {"ttft": ttft(args.requests, max(args.max_tokens, 16), tmp)}
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        return
    if args.only_durability:
        tmp = Path(tempfile.mkdtemp(prefix="slmflow-bench-durable-"))
        os.environ.setdefault("SLMFLOW_HOME", str(tmp / "home"))
        res = {"durability": durability(levels, args.requests, args.durability_call_log, tmp)}
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        return

    from slmflow.gateway.app import Gateway
    from slmflow.gateway.auth import hash_key
    from slmflow.gateway.config import GatewayConfig
    from slmflow.gateway.server import GatewayServer
    from slmflow.models.catalog import embedded_gguf_path
    from slmflow.store import open_call_log

    tmp = Path(tempfile.mkdtemp(prefix="slmflow-bench-gw-"))
    os.environ.setdefault("SLMFLOW_HOME", str(tmp / "home"))
    procs: list[subprocess.Popen] = []
    results: dict = {"levels": {}, "notes": []}
    try:
        bport = free_port()
        backend = f"http://127.0.0.1:{bport}/v1"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(bport),
             "--n_ctx", "2048", "--n_threads", "2"],
            stdout=open(tmp / "llama.log", "w"), stderr=subprocess.STDOUT))
        wait_up(f"{backend}/models", procs[-1])

        litellm = ROOT / ".bench" / "venv-litellm" / "bin" / "litellm"
        lurl = None
        if litellm.exists():
            lport = free_port()
            (tmp / "litellm.yaml").write_text(
                "model_list:\n  - model_name: smollm2\n    litellm_params:\n"
                f"      model: openai/smollm2\n      api_base: {backend}\n"
                "      api_key: none\n")
            env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                   "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_MASTER_KEY": "sk-bench"}
            procs.append(subprocess.Popen(
                [str(litellm), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1",
                 "--port", str(lport), "--num_workers", "1"], env=env,
                stdout=open(tmp / "litellm.log", "w"), stderr=subprocess.STDOUT))
            try:
                wait_up(f"http://127.0.0.1:{lport}/health/liveliness", procs[-1], timeout=180)
                lurl = f"http://127.0.0.1:{lport}/v1"
            except RuntimeError as e:
                results["notes"].append(f"LiteLLM proxy did not start: {e}; see litellm.log")
        else:
            results["notes"].append("LiteLLM proxy not installed in .bench/venv-litellm: "
                                    "compared with the direct call only")

        call_log = f"sqlite:///{tmp / 'calls.db'}"
        cfg = GatewayConfig.model_validate({
            "call_log": call_log,
            "models": {"smollm2": {"model": f"openai:smollm2@{backend}", "cache_ttl_s": 0},
                       "smollm2-cached": {"model": f"openai:smollm2@{backend}"}},
            "auth": {"keys": [{"name": "bench", "sha256": hash_key("sk-bench")}]}})
        gw = Gateway(cfg)
        server = GatewayServer(gw).start()
        gurl = server.url

        # (url, model, logprobs): the gateway asks the backend for logprobs (its confidence),
        # so the direct call and LiteLLM are measured both ways, to compare equal backend work.
        targets = {"direct": (backend, "smollm2", False), "direct+lp": (backend, "smollm2", True),
                   "slmflow": (gurl, "smollm2", False)}
        if lurl:
            targets["litellm"] = (lurl, "smollm2", False)
            targets["litellm+lp"] = (lurl, "smollm2", True)
        # warm-up
        for name, (url, model, lp) in targets.items():
            asyncio.run(load(url, model, 4, 1, args.max_tokens, "sk-bench", logprobs=lp))
        gateway_requests = 4
        for conc in levels:
            row = {}
            for name, (url, model, lp) in targets.items():
                n = max(args.requests, conc) if conc > 1 else min(args.requests, 32)
                row[name] = asyncio.run(load(url, model, n, conc, args.max_tokens, "sk-bench",
                                             logprobs=lp))
                if name == "slmflow":
                    gateway_requests += n
                print(f"c={conc:<3} {name:<10} p50 {row[name]['p50_ms']:7.1f} ms  "
                      f"p99 {row[name]['p99_ms']:7.1f} ms  {row[name]['rps']:6.2f} req/s  "
                      f"errors {row[name]['errors']}", flush=True)
            results["levels"][conc] = row
        one = results["levels"].get(1)
        if one:
            for name, base in (("slmflow", "direct+lp"), ("litellm", "direct"),
                               ("litellm+lp", "direct+lp")):
                if name in one:
                    results[f"added_{name}_p50_ms"] = one[name]["p50_ms"] - one[base]["p50_ms"]
                    results[f"added_{name}_p99_ms"] = one[name]["p99_ms"] - one[base]["p99_ms"]
        # cache hits: one miss, then hits
        asyncio.run(load(gurl, "smollm2-cached", 1, 1, args.max_tokens, "sk-bench", True))
        hit = asyncio.run(load(gurl, "smollm2-cached", 50, 1, args.max_tokens, "sk-bench", True))
        gateway_requests += 51
        results["cache_hit"] = hit
        print(f"cache hit      p50 {hit['p50_ms']:7.2f} ms  p99 {hit['p99_ms']:7.2f} ms",
              flush=True)
        server.stop()  # drains the call log
        log = open_call_log(call_log)
        logged = log.count()
        results["call_log"] = {"requests_sent": gateway_requests, "records": logged,
                               "lost": gateway_requests - logged}
        print(f"call log: {gateway_requests} requests through the gateway, {logged} records, "
              f"{gateway_requests - logged} lost", flush=True)
        results["durability"] = durability(levels, args.requests, None, tmp)
        results["ttft"] = ttft(min(args.requests, 20), max(args.max_tokens, 16), tmp)
        for k in [k for k in results if k.startswith("added_")]:
            if k in results:
                print(f"{k}: {results[k]:.1f}")
        for n in results["notes"]:
            print("note:", n)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
