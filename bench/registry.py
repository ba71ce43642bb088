"""The adapter registry on PostgreSQL vs on files, side by side, in one run.

    .venv/bin/python bench/registry.py [--versions 10] [--json out.json]

What a cluster pays for keeping adapters in PostgreSQL instead of a folder: registering a version
(files + card in one transaction vs a copy and a rename), the first load of a version on a
machine that has never seen it (fetch + checksum + write vs reading the folder in place; a plain
`shutil.copytree` of the same files is printed as the floor for any copy), the pointer check a
serving agent makes before a generation (a one-row query vs a stat call; PostgreSQL's is made at
most once a second), and a gated promotion. The adapter is the size of the support example's:
its 3.7 MB GGUF LoRA plus a PEFT folder of the same size. PostgreSQL is started on loopback by this
script (as the tests do).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop import start_pg  # noqa: E402  (bench/loop.py: initdb + pg_ctl on loopback)

from slmflow.finetune.registry import AdapterRegistry  # noqa: E402


def make_adapter(d: Path) -> Path:
    peft = d / "peft"
    peft.mkdir(parents=True)
    (peft / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    gguf = ROOT / "examples/support/adapters/router/adapter.gguf"
    (peft / "adapter_model.safetensors").write_bytes(gguf.read_bytes())  # same size, real bytes
    return peft


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run(reg: AdapterRegistry, peft: Path, n: int, fresh_cache) -> dict[str, float]:
    gguf = ROOT / "examples/support/adapters/router/adapter.gguf"

    reg_times = timed(lambda: reg.register("router", peft, {"base_model": "smollm2-135m"}), n)
    # a version with the GGUF beside the PEFT files (copied in, so the exporter is not timed)
    both = peft.parent / "both"
    shutil.rmtree(both, ignore_errors=True)
    shutil.copytree(peft, both)
    shutil.copy(gguf, both / "adapter_model.gguf")
    reg.register("router", both, {"base_model": "smollm2-135m"})
    last = reg.versions("router")[-1]

    def first_load():
        fresh_cache()
        reg.path("router", last)

    load_times = timed(first_load, 5)
    reg.promote("router", "v1", {"accuracy": 0.5}, force=True)
    stamp_times = timed(lambda: reg.store.stamp("router"), 2000)
    k = iter(range(1, 10_000))
    promote_times = timed(lambda: reg.promote("router", f"v{next(k) % n + 1}",
                                              {"accuracy": 0.5}), 20)
    return {"register_ms": 1000 * statistics.median(reg_times),
            "first_load_ms": 1000 * statistics.median(load_times),
            "stamp_us": 1e6 * statistics.median(stamp_times),
            "promote_ms": 1000 * statistics.median(promote_times),
            "poll_s": reg.store.poll_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        peft = make_adapter(tmp / "src")
        size = sum(p.stat().st_size for p in peft.rglob("*") if p.is_file()) + \
            (ROOT / "examples/support/adapters/router/adapter.gguf").stat().st_size
        # the floor for putting a version's files on a machine: a plain copy
        both_src = tmp / "floor-src"
        shutil.copytree(peft, both_src)
        shutil.copy(ROOT / "examples/support/adapters/router/adapter.gguf", both_src)

        def plain_copy():
            dst = tmp / "floor-dst"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(both_src, dst)

        floor_ms = 1000 * statistics.median(timed(plain_copy, 5))
        results = {}
        files = AdapterRegistry(tmp / "adapters")
        results["files"] = run(files, peft, a.versions, lambda: None)
        (tmp / "pg").mkdir()
        started = start_pg(tmp / "pg")
        if started is None:
            print("postgresql: server binaries not installed; skipped")
        else:
            url, stop, _ = started
            import subprocess

            try:
                pg = AdapterRegistry(url)

                def fresh_cache():
                    shutil.rmtree(tmp / "cache", ignore_errors=True)
                    pg.store.cache = tmp / "cache"

                results["postgresql"] = run(pg, peft, a.versions, fresh_cache)
                pg.store.close()
            finally:
                subprocess.run(stop, capture_output=True)
    print(f"adapter version: {size / 1e6:.1f} MB in 3 files; plain shutil.copytree of them: "
          f"{floor_ms:.1f} ms")
    print(f"{'store':<12}{'register ms':>13}{'first load ms':>15}{'pointer check us':>18}"
          f"{'promote ms':>12}")
    for name, r in results.items():
        print(f"{name:<12}{r['register_ms']:>13.1f}{r['first_load_ms']:>15.1f}"
              f"{r['stamp_us']:>18.1f}{r['promote_ms']:>12.2f}")
    if "postgresql" in results:
        f, p = results["files"], results["postgresql"]
        print(f"postgresql / files: register {p['register_ms'] / f['register_ms']:.2f}x, "
              f"pointer check {p['stamp_us'] / f['stamp_us']:.1f}x "
              f"(made at most every {p['poll_s']:.0f} s), promote "
              f"{p['promote_ms'] / f['promote_ms']:.2f}x; first load "
              f"{p['first_load_ms']:.1f} ms = {p['first_load_ms'] / floor_ms:.2f}x a plain copy")
    if a.json:
        a.json.write_text(json.dumps({"floor_copy_ms": floor_ms, "bytes": size, **results},
                                     indent=2))


if __name__ == "__main__":
    main()
