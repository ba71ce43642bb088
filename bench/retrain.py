"""The improvement loop's retrain: from a fresh LoRA (the default) vs a warm start from the serving
version's weights, side by side on the loop example's data, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/retrain.py [--warm-epochs 1,2] [--json out.json]

The story of examples/loop: v1 of the "triage" router is trained on refund and shipping tickets
only (it has never seen billing); reviewers then correct 16 production tickets (12 billing). The
retrain data is the original 24 examples plus 10 of the reviewed ones; the other 6 are held out
and join the 12-case eval set (as `slmflow loop retrain` does). Every variant trains with the same
hyperparameters as tests/test_loop_e2e.py (r=8 on q,k,v,o, lr 2e-3, batch 4, one torch thread)
and is scored on the same 18 cases with the agent's own prompt on llama.cpp (GGUF LoRA).
Cold = 6 epochs from a fresh LoRA (what the e2e test runs); warm = N epochs starting from v1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "loop"))

import make_data  # noqa: E402

from slmflow.finetune.agent_train import exact_match_accuracy, find_agent, train_agent  # noqa
from slmflow.finetune.data import Example  # noqa: E402
from slmflow.finetune.registry import AdapterRegistry  # noqa: E402
from slmflow.finetune.trainer import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warm-epochs", default="1,2")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    data = make_data.datasets()
    ex = lambda rows: [Example({"text": t}, {"category": c}) for t, c in rows]  # noqa: E731
    original, evals, reviewed = ex(data["train"]), ex(data["eval"]), ex(data["traffic"])
    held = reviewed[::3]  # 6 of 16 held out for the gate, as the loop's hash split would
    rev_train = [r for i, r in enumerate(reviewed) if i % 3]
    cases = evals + held
    cfg = TrainConfig(r=8, alpha=16, lr=2e-3, epochs=6, batch_size=4, max_len=64,
                      target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        agent = find_agent(ROOT / "examples/loop/triage.yaml", "triage")
        agent = replace(agent, adapter=None)
        reg = AdapterRegistry(tmp / "adapters")
        quiet = dict(registry=reg, promote=False, threads=1, progress=False, log=lambda s: None)

        def score(version: str) -> dict[str, float]:
            from slmflow.agents import resolve_model

            m = reg.model_for(resolve_model(agent.model), "triage", version)
            cand = replace(agent, model=m)
            return {"accuracy": exact_match_accuracy(cand, cases)["accuracy"],
                    "held_out_reviews": exact_match_accuracy(cand, held)["accuracy"]}

        t0 = time.perf_counter()
        v1 = train_agent(agent, original, config=cfg, run_dir=tmp / "v1", **quiet).version
        reg.promote("triage", v1, force=True)
        rows = [{"mode": "v1 (no billing data)", "epochs": 6, "train_s": time.perf_counter() - t0,
                 **score(v1)}]
        variants = [("cold: fresh LoRA", cfg)] + [
            (f"warm: from {v1}", replace(cfg, epochs=float(e),
                                         init_adapter=str(reg.path("triage", v1) / "adapter")))
            for e in a.warm_epochs.split(",")]
        for name, c in variants:
            t0 = time.perf_counter()
            v = train_agent(agent, original + rev_train, config=c, run_dir=tmp / f"run-{len(rows)}",
                            **quiet).version
            rows.append({"mode": name, "epochs": c.epochs, "train_s": time.perf_counter() - t0,
                         **score(v)})
    cold = rows[1]["train_s"]
    print(f"{'mode':<22}{'epochs':>7}{'train s':>9}{'vs cold':>9}"
          f"{f'accuracy ({len(cases)})':>15}{f'held-out reviews ({len(held)})':>22}")
    for r in rows:
        ratio = f"{r['train_s'] / cold:.2f}x" if r is not rows[0] else ""
        print(f"{r['mode']:<22}{r['epochs']:>7g}{r['train_s']:>9.1f}{ratio:>9}"
              f"{r['accuracy']:>15.3f}{r['held_out_reviews']:>22.3f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
