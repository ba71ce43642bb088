"""Prefill and decode speed of the embedded model in each weight format, for the llama.cpp build
that is importable (plain llama-cpp-python, no slmflow code in the timed loop).

    .venv/bin/python bench/formats.py                       # the build the Makefile installed
    PYTHONPATH=/path/to/other/site .venv/bin/python bench/formats.py   # another build, same run

Per format: 300-token prefill (best of 3) and 40 single-token decodes after a 20-token prompt
(best of 2), on 1 and 2 threads. The Q8_0/F16/BF16 files are made from the shipped Q4_1 once
under $SLMFLOW_HOME/models (`slmflow.models.llamacpp.gguf_in_format`). Run it alone: two CPU-heavy
jobs at once halve each other's figures. Figures: docs/benchmarks.md, "Kernels and weight format".
"""

from __future__ import annotations

import time

import llama_cpp

from slmflow.models.catalog import resolve
from slmflow.models.llamacpp import gguf_in_format

TEXT = "Policy: refunds are issued within 5 business days to the original card. " * 60


def probe(path: str, threads: int) -> tuple[float, float]:
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, verbose=False)
    toks = llm.tokenize(TEXT.encode())[:300]
    best = float("inf")
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks)
        best = min(best, time.perf_counter() - t)
    dbest = float("inf")
    for _ in range(2):
        llm.reset()
        llm.eval(toks[:20])
        t = time.perf_counter()
        for tk in toks[20:60]:
            llm.eval([tk])
        dbest = min(dbest, (time.perf_counter() - t) / 40)
    llm.close()
    return 300 / best, 1 / dbest


def main() -> None:
    info = llama_cpp.llama_print_system_info().decode().strip()
    print("llama.cpp build:", info)
    src = resolve("smollm2-135m", weights="as-shipped").path
    print(f"{'weights':8s} {'prefill 1t':>11s} {'prefill 2t':>11s} {'decode 1t':>10s} "
          f"{'decode 2t':>10s}  (tok/s)")
    for fmt in ("q4_1", "q8_0", "f16", "bf16"):
        path = str(gguf_in_format(src, fmt))
        (p1, d1), (p2, d2) = probe(path, 1), probe(path, 2)
        print(f"{fmt:8s} {p1:11.0f} {p2:11.0f} {d1:10.0f} {d2:10.0f}", flush=True)


if __name__ == "__main__":
    main()
