"""Model-layer benchmark: slmflow's backends side by side with the plain libraries, one run.

    .venv/bin/python bench/models.py            # full run (~4 min on 2 cores)
    .venv/bin/python bench/models.py --quick    # fewer repetitions

For each local backend on the embedded SmolLM2-135M: load time, time to first token, decode
tokens/s, throughput of 8 concurrent requests, resident memory; the same prompt through plain
``llama_cpp.Llama`` / ``transformers.generate`` for the overhead ratio (goal: within 5%); the
physical decode ceiling (model bytes read per token / measured memory bandwidth); constrained vs
unconstrained decoding cost per token; and the validity rate of unconstrained JSON.

Each scenario runs in a fresh subprocess so load time and resident memory are its own.
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

PROMPT = "Write a short story about a robot who learns to paint. Use at least 200 words."
MAX_TOKENS = 128
TICKETS = [
    "My order A-1042 arrived broken, I want my money back.",
    "I was charged twice this month on account 88231.",
    "Where is order B-77? It has not shipped after 10 days.",
    "How do I change the email on my account?",
    "The app crashes when I open settings.",
    "Please cancel order Z-9 before it ships, thanks.",
    "My discount code SAVE10 does not work at checkout.",
    "I never received the refund for order C-300.",
    "Can I upgrade my plan to premium?",
    "The package for order D-12 was delivered to the wrong address.",
]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _fields_model():
    from typing import Literal

    from pydantic import BaseModel

    class Fields(BaseModel):
        category: Literal["refund", "billing", "shipping", "account", "technical", "other"]
        order_id: str | None = None
        urgent: bool

    return Fields


# ---------------------------------------------------------------- workers (one per subprocess)
def w_slmflow_llamacpp(reps: int) -> dict:
    import asyncio

    from slmflow import Message, Settings
    from slmflow.models.catalog import resolve

    t = time.perf_counter()
    m = resolve("smollm2-135m", n_threads=os.cpu_count()).load()  # as the plain run
    load = time.perf_counter() - t
    s = Settings(max_tokens=MAX_TOKENS)
    m.generate_sync(PROMPT, settings=s)  # warm
    runs = [m.generate_sync(PROMPT, settings=s) for _ in range(reps)]
    out = _decode_stats(runs)
    out["load_s"] = load
    out["prompt_text"] = m.prompt_text([Message("user", PROMPT)])

    async def batch(model, n=8):
        t0 = time.perf_counter()
        rs = await asyncio.gather(*[model.generate(f"{PROMPT} Robot number {i}.", settings=s)
                                    for i in range(n)])
        return sum(r.usage.output_tokens for r in rs) / (time.perf_counter() - t0)

    out["batch8_tok_s"] = asyncio.run(batch(m))
    m2 = resolve("smollm2-135m", pool_size=2,
                 n_threads=max(1, (os.cpu_count() or 1) // 2)).load()
    asyncio.run(batch(m2, 2))
    out["batch8_pool2_tok_s"] = asyncio.run(batch(m2))
    out.update(_constrained(m, reps))
    out["rss_mb"] = rss_mb()
    return out


def _decode_stats(runs) -> dict:
    ttft = statistics.median(r.time_to_first_token_s or 0.0 for r in runs)
    dec = statistics.median((r.usage.output_tokens - 1) / (r.latency_s - r.time_to_first_token_s)
                            for r in runs)
    return {"ttft_s": ttft, "decode_tok_s": dec, "output_tokens": runs[0].usage.output_tokens,
            "latency_s": statistics.median(r.latency_s for r in runs)}


def _constrained(m, reps: int) -> dict:
    """Per-token cost with and without the schema constraint; unconstrained JSON validity."""
    from slmflow import Message, Settings
    from slmflow.structured import OutputSpec

    Fields = _fields_model()
    spec = OutputSpec.build(Fields)
    s = Settings(max_tokens=96)
    sys_msg = Message("system", "Extract fields from the support ticket.")
    con_ms, free_ms, valid_free, valid_con = [], [], 0, 0
    for t in TICKETS[: max(4, reps * 2)] if reps < 3 else TICKETS:
        msgs = [sys_msg, Message("user", t)]
        r = m.generate_sync(msgs, schema=Fields, settings=s)
        valid_con += isinstance(r.parsed, Fields)
        con_ms.append(1000 * r.latency_s / max(1, r.usage.output_tokens))
        # the same prompt (schema instruction included) with no constraint
        free = m.generate_sync(spec.with_instruction(msgs), settings=s)
        free_ms.append(1000 * free.latency_s / max(1, free.usage.output_tokens))
        valid_free += not spec.parse(free.text)[3]
    n = len(con_ms)
    return {"constrained_ms_per_tok": statistics.median(con_ms),
            "unconstrained_ms_per_tok": statistics.median(free_ms),
            "valid_constrained": f"{valid_con}/{n}", "valid_unconstrained": f"{valid_free}/{n}"}


def w_plain_llamacpp(reps: int, prompt_text: str) -> dict:
    import llama_cpp

    from slmflow.models.catalog import embedded_gguf_path

    t = time.perf_counter()
    llm = llama_cpp.Llama(str(embedded_gguf_path()), n_ctx=2048, n_threads=os.cpu_count(),
                          n_threads_batch=os.cpu_count(), verbose=False)
    load = time.perf_counter() - t

    def once():
        t0 = time.perf_counter()
        first, n = None, 0
        for chunk in llm.create_completion(prompt_text, max_tokens=MAX_TOKENS, temperature=0.0,
                                           top_k=0, min_p=0.0, repeat_penalty=1.0, stream=True):
            if first is None:
                first = time.perf_counter() - t0
            n += 1
        total = time.perf_counter() - t0
        return first, n, total

    once()
    runs = [once() for _ in range(reps)]
    ttft = statistics.median(r[0] for r in runs)
    dec = statistics.median((r[1] - 1) / (r[2] - r[0]) for r in runs)
    t0 = time.perf_counter()
    n = 0
    for i in range(8):  # the plain library has no concurrency: 8 requests one after another
        out = llm.create_completion(prompt_text.replace("paint.", f"paint. Robot number {i}."),
                                    max_tokens=MAX_TOKENS, temperature=0.0, top_k=0, min_p=0.0,
                                    repeat_penalty=1.0)
        n += out["usage"]["completion_tokens"]
    return {"load_s": load, "ttft_s": ttft, "decode_tok_s": dec, "output_tokens": runs[0][1],
            "batch8_tok_s": n / (time.perf_counter() - t0), "rss_mb": rss_mb()}


def w_slmflow_transformers(reps: int) -> dict:
    from slmflow import Settings
    from slmflow.models.catalog import resolve

    resolve("smollm2-135m-hf").load()  # make sure the dequantized cache exists (not timed)
    t = time.perf_counter()
    m = resolve("smollm2-135m-hf").load()
    load = time.perf_counter() - t
    s = Settings(max_tokens=64)
    m.generate_sync(PROMPT, settings=s)
    runs = []
    for _ in range(reps):
        one = m.generate_sync(PROMPT, settings=Settings(max_tokens=1))
        full = m.generate_sync(PROMPT, settings=s)
        runs.append((one.latency_s, full.usage.output_tokens, full.latency_s))
    out = {"load_s": load, "ttft_s": statistics.median(r[0] for r in runs),
           "decode_tok_s": statistics.median((r[1] - 1) / (r[2] - r[0]) for r in runs),
           "output_tokens": runs[0][1]}
    import asyncio

    async def batch():
        t0 = time.perf_counter()
        rs = await asyncio.gather(*[m.generate(f"{PROMPT} Robot number {i}.", settings=s)
                                    for i in range(8)])
        return sum(r.usage.output_tokens for r in rs) / (time.perf_counter() - t0)

    out["batch8_tok_s"] = asyncio.run(batch())
    out.update(_constrained(m, 1))
    out["rss_mb"] = rss_mb()
    return out


def w_plain_transformers(reps: int) -> dict:
    import torch
    import transformers

    from slmflow.home import subdir
    from slmflow.models.catalog import embedded_gguf_path

    folder = subdir("models") / f"{embedded_gguf_path().stem}-fp32"
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    load = time.perf_counter() - t
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}],
                                   add_generation_prompt=True, tokenize=False)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)

    def gen(n):
        t0 = time.perf_counter()
        with torch.inference_mode():
            o = model.generate(**enc, max_new_tokens=n, do_sample=False,
                               pad_token_id=tok.eos_token_id)
        return o.shape[1] - enc["input_ids"].shape[1], time.perf_counter() - t0

    gen(64)
    runs = []
    for _ in range(reps):
        _, t1 = gen(1)
        n, tn = gen(64)
        runs.append((t1, n, tn))
    return {"load_s": load, "ttft_s": statistics.median(r[0] for r in runs),
            "decode_tok_s": statistics.median((r[1] - 1) / (r[2] - r[0]) for r in runs),
            "output_tokens": runs[0][1], "rss_mb": rss_mb()}


def w_bandwidth(_: int) -> dict:
    """Memory bandwidth: a 512 MiB copy (read + write), one thread and two threads."""
    import threading

    import numpy as np

    a = np.ones(2**26)  # 512 MiB
    b = np.empty_like(a)
    best1 = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    halves = [(a[: 2**25], b[: 2**25]), (a[2**25:], b[2**25:])]

    def two():
        ts = [threading.Thread(target=np.copyto, args=(d, s)) for s, d in halves]
        [t.start() for t in ts]
        [t.join() for t in ts]

    best2 = min(_timed(two) for _ in range(5))
    return {"gb_s_1thread": 2 * a.nbytes / best1 / 1e9, "gb_s_2threads": 2 * a.nbytes / best2 / 1e9}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


WORKERS = {f.__name__[2:]: f for f in [w_slmflow_llamacpp, w_plain_llamacpp, w_slmflow_transformers,
                                       w_plain_transformers, w_bandwidth]}


def run_worker(name: str, reps: int, extra: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--reps", str(reps)]
    if extra:
        cmd += ["--extra", extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--extra")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.worker:
        fn = WORKERS[a.worker]
        res = fn(a.reps, a.extra) if a.extra is not None else fn(a.reps)
        print(json.dumps(res))
        return
    reps = 2 if a.quick else a.reps
    os.environ.setdefault("SLMFLOW_HOME", str(Path(".bench/home").resolve()))
    os.environ.setdefault("SLMFLOW_TRACING", "off")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from slmflow.models.catalog import embedded_gguf_path

    bw = run_worker("bandwidth", 1)
    sl = run_worker("slmflow_llamacpp", reps)
    pl = run_worker("plain_llamacpp", reps, sl.pop("prompt_text"))
    st = run_worker("slmflow_transformers", max(2, reps // 2))
    pt = run_worker("plain_transformers", max(2, reps // 2))
    size = embedded_gguf_path().stat().st_size
    ceiling = bw["gb_s_2threads"] * 1e9 / size

    print(f"machine: {os.cpu_count()} cores; memory bandwidth {bw['gb_s_1thread']:.1f} GB/s "
          f"(1 thread), {bw['gb_s_2threads']:.1f} GB/s (2 threads)")
    print(f"embedded model file: {size / 2**20:.1f} MiB -> decode ceiling "
          f"{ceiling:.0f} tok/s (bandwidth / bytes read per token)\n")
    rows = [("llama.cpp", sl, pl), ("transformers", st, pt)]
    hdr = f"{'backend':<13}{'metric':<22}{'slmflow':>10}{'plain':>10}{'ratio':>8}"
    print(hdr)
    print("-" * len(hdr))
    for name, s, p in rows:
        for key, label, better_high in [("load_s", "load s", False), ("ttft_s", "TTFT s", False),
                                        ("decode_tok_s", "decode tok/s", True),
                                        ("batch8_tok_s", "8 concurrent tok/s", True),
                                        ("rss_mb", "resident MiB", False)]:
            pv = p.get(key)
            ratio = (s[key] / pv) if pv else float("nan")
            print(f"{name:<13}{label:<22}{s[key]:>10.3f}{(pv or float('nan')):>10.3f}{ratio:>8.3f}")
    print(f"\nllama.cpp 8 concurrent with pool_size=2: {sl['batch8_pool2_tok_s']:.1f} tok/s")
    print(f"llama.cpp decode / ceiling: {sl['decode_tok_s'] / ceiling:.2f}")
    print(f"llama.cpp vs transformers decode: {sl['decode_tok_s'] / st['decode_tok_s']:.1f}x")
    for name, s in (("llama.cpp", sl), ("transformers", st)):
        print(f"{name}: constrained {s['constrained_ms_per_tok']:.1f} ms/tok vs unconstrained "
              f"{s['unconstrained_ms_per_tok']:.1f} ms/tok (ratio "
              f"{s['constrained_ms_per_tok'] / s['unconstrained_ms_per_tok']:.2f}); valid JSON: "
              f"constrained {s['valid_constrained']}, unconstrained {s['valid_unconstrained']}")
    Path(".bench").mkdir(exist_ok=True)
    Path(".bench/models.json").write_text(json.dumps(
        {"bandwidth": bw, "slmflow_llamacpp": sl, "plain_llamacpp": pl,
         "slmflow_transformers": st, "plain_transformers": pt, "ceiling_tok_s": ceiling}, indent=2))


if __name__ == "__main__":
    main()
