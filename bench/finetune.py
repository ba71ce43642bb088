"""Fine-tuning benchmarks: training throughput vs a plain Trainer, and accuracy vs data size.

    .venv/bin/python bench/finetune.py --steps 20 --threads 1
    .venv/bin/python bench/finetune.py --curve 100,1000 --eval-rows 500 --threads 1 \
        [--ref-run .slmflow/runs/banking77-router] [--zero-shot] [--epochs 3]

Throughput: both train the same LoRA (same rank, targets, dtype, batch size, learning rate,
seed) on the same BANKING77 router examples formatted by the same chat template with the loss
masked to the completion; each runs in its own subprocess; the ratio is slmflow tokens/s over
Trainer tokens/s (goal: at least 1.0). Tokens counted are the real (unpadded) tokens of the
batches trained on.

Accuracy vs number of training examples (``--curve``): how much data a router adapter needs. For
each size N, SmolLM2-135M + LoRA is trained with exactly examples/banking77/train.py's settings
(r=16 on all linear layers, bf16, batch 16, lr 8e-4, 1 epoch, the same 3% validation split) on a
stratified subset of train.csv (every intent represented, round-robin over the 77 intents in a
seeded order), registered (GGUF LoRA) and scored on the same fixed seeded sample of test.csv on
llama.cpp, the serving path. ``--ref-run`` scores an already trained run (the full 10k router) on
the same sample; ``--zero-shot`` adds the base model. Each run folder resumes after a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "banking77"))

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _examples(n: int):
    import router

    from slmflow.finetune.data import Example

    rows = router.load("train")[:n]
    return [Example(t, {"intent": c}) for t, c in rows]


def _base():
    from slmflow.models.catalog import embedded_gguf_path
    from slmflow.models.transformers import dequantized_base

    return dequantized_base(embedded_gguf_path(), "smollm2-135m")


def worker_slmflow(steps: int, batch: int, threads: int) -> dict:
    import tempfile

    import router

    from slmflow.finetune.trainer import TrainConfig, train_lora

    cfg = TrainConfig(r=16, alpha=32, lr=5e-4, batch_size=batch, max_steps=steps, bf16=True,
                      target_modules=TARGETS, max_len=128, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as d:
        res = train_lora(_base(), _examples(steps * batch), [], router.messages, d, cfg,
                         progress=False, threads=threads)
    return {"tokens_per_s": res.tokens_per_s, "wall_s": res.wall_s, "loss": res.train_loss}


def worker_trainer(steps: int, batch: int, threads: int) -> dict:
    import tempfile

    import router
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from slmflow.finetune.data import ChatEncoder

    torch.set_num_threads(threads)
    base = _base()
    tok = transformers.AutoTokenizer.from_pretrained(str(base))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    enc = ChatEncoder(tok, router.messages, 128)
    rows = [e for e in (enc.encode(x) for x in _examples(steps * batch)) if e is not None]
    ds = [{"input_ids": e.input_ids, "labels": e.labels} for e in rows]
    n_tokens = sum(len(e.input_ids) for e in rows[: steps * batch])
    collator = transformers.DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    with tempfile.TemporaryDirectory() as d:
        args = transformers.TrainingArguments(
            output_dir=d, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
            lr_scheduler_type="linear", warmup_steps=int(steps * 0.05), logging_steps=10,
            save_strategy="no",
            report_to=[], seed=0, dataloader_num_workers=0, use_cpu=True,
            remove_unused_columns=False)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                       data_collator=collator)
        t0 = time.perf_counter()
        out = trainer.train()
        wall = time.perf_counter() - t0
    return {"tokens_per_s": n_tokens / wall, "wall_s": wall, "loss": out.training_loss}


def stratified(examples: list, n: int, seed: int = 0) -> list:
    """`n` examples spread evenly over the labels: a seeded round robin over the intents."""
    import random

    by_label: dict[str, list] = {}
    for ex in examples:
        by_label.setdefault(ex.target["intent"], []).append(ex)
    rng = random.Random(seed)
    labels = sorted(by_label)
    rng.shuffle(labels)
    for lab in labels:
        rng.shuffle(by_label[lab])
    out: list = []
    depth = 0
    while len(out) < n and any(len(v) > depth for v in by_label.values()):
        for lab in labels:
            if len(out) < n and len(by_label[lab]) > depth:
                out.append(by_label[lab][depth])
        depth += 1
    rng.shuffle(out)
    return out


def curve(sizes: list[int], eval_rows: int, threads: int, ref_run: str | None,
          zero_shot: bool, out_json: Path, epochs: float = 1.0) -> dict:
    import random

    import router

    from slmflow.agents import Agent, set_adapter_resolver
    from slmflow.finetune.agent_train import exact_match_accuracy
    from slmflow.finetune.data import Example, dedupe, split
    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.finetune.trainer import TrainConfig, train_lora
    from slmflow.models.catalog import embedded_gguf_path, resolve

    examples = dedupe(Example(t, {"intent": c}, source=f"train.csv:{i + 2}")
                      for i, (t, c) in enumerate(router.load("train")))
    train, val = split(examples, 0.03, seed=0)  # as examples/banking77/train.py
    test = [Example(t, {"intent": c}) for t, c in router.load("test")]
    cases = random.Random(0).sample(test, eval_rows) if eval_rows < len(test) else test
    reg = AdapterRegistry()
    set_adapter_resolver(reg.resolver())
    base = resolve("smollm2-135m", n_threads=threads)
    agent = Agent(name="banking_router", model=base, instructions=router.INSTRUCTIONS,
                  output_type=router.Route, max_tokens=24)
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["eval"] = {"test_rows": len(cases), "sample": "random.Random(0).sample(test.csv)"}

    def score(label: str, ag, extra: dict) -> None:
        t0 = time.perf_counter()
        s = exact_match_accuracy(ag, cases, progress=True)
        results[label] = {**extra, **s, "n_test": len(cases),
                          "eval_s_per_case": (time.perf_counter() - t0) / len(cases)}
        print(f"{label}: accuracy {s['accuracy']:.4f} on {len(cases)} test rows", flush=True)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2))

    hf_base = _base()
    for n in sizes:
        label = f"n={n}" + (f",epochs={epochs:g}" if epochs != 1 else "")
        if label in results:
            print(f"{label}: already measured ({results[label]['accuracy']:.4f})")
            continue
        subset = stratified(train, n)
        cfg = TrainConfig(r=16, alpha=32, lr=8e-4, batch_size=16, epochs=epochs, bf16=True,
                          target_modules=TARGETS, max_len=128, checkpoint_every=25)
        run_dir = ROOT / ".bench" / "curve" / (f"n{n}" + (f"-e{epochs:g}" if epochs != 1 else ""))
        if (run_dir / "card.json").is_file():  # trained before, not yet scored
            card = json.loads((run_dir / "card.json").read_text())
        else:
            card = train_lora(hf_base, subset, val, router.messages, run_dir, cfg,
                              base_name="smollm2-135m", log=print, threads=threads).card
        m = card["metrics"]
        name = f"banking_router_n{n}" + (f"_e{epochs:g}" if epochs != 1 else "")
        version = reg.register(name, run_dir / "adapter", {**card, "agent": name,
                                                             "schema_hint": False},
                               base_gguf=embedded_gguf_path())
        print(f"{label}: {m['steps']} steps, train loss {m['train_loss']:.4f}, val loss "
              f"{m['val_loss']}, {m['wall_s']:.0f} s", flush=True)
        score(label, agent.with_adapter(f"{name}@{version}"),
              {"n_train": card["n_train"], "epochs": epochs,
               "labels": len({e.target["intent"] for e in subset}),
               "steps": m["steps"], "train_loss": m["train_loss"], "val_loss": m["val_loss"],
               "train_wall_s": m["wall_s"], "train_s_per_step": m["wall_s"] / m["steps"]})
    if ref_run and "reference" not in results:
        run = Path(ref_run)
        card = json.loads((run / "card.json").read_text())
        version = reg.register("banking_router_ref", run / "adapter",
                               {**card, "agent": "banking_router_ref", "schema_hint": False},
                               base_gguf=embedded_gguf_path())
        score("reference", agent.with_adapter(f"banking_router_ref@{version}"),
              {"n_train": card["n_train"], "steps": card["metrics"]["steps"],
               "train_loss": card["metrics"]["train_loss"], "run": str(run)})
    if zero_shot and "n=0" not in results:
        score("n=0", agent, {"n_train": 0})
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--curve", help="accuracy vs training-set size, e.g. 100,1000")
    ap.add_argument("--eval-rows", type=int, default=500)
    ap.add_argument("--ref-run", help="also score this finished train.py run on the same sample")
    ap.add_argument("--zero-shot", action="store_true", help="also score the base model")
    ap.add_argument("--epochs", type=float, default=1.0, help="--curve: epochs (train.py: 1)")
    ap.add_argument("--json", default=str(ROOT / "examples" / "banking77" / "results-curve.json"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker")
    a = ap.parse_args()
    if a.worker:
        fn = {"slmflow": worker_slmflow, "trainer": worker_trainer}[a.worker]
        print(json.dumps(fn(a.steps, a.batch, a.threads)))
        return
    os.environ.setdefault("SLMFLOW_HOME", str(ROOT / ".bench" / "home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.curve:
        res = curve([int(x) for x in a.curve.split(",")], a.eval_rows, a.threads, a.ref_run,
                    a.zero_shot, Path(a.json), a.epochs)
        print(f"BANKING77 router, SmolLM2-135M + LoRA, {a.eval_rows} test rows (seed 0)")
        print(f"{'run':<20}{'training rows':>14}{'steps':>7}{'accuracy':>10}")
        for k, r in res.items():
            if k != "eval":
                print(f"{k:<20}{r['n_train']:>14}{r.get('steps', 0):>7}{r['accuracy']:>10.3f}")
        return
    res = {}
    for w in ("slmflow", "trainer"):
        p = subprocess.run([sys.executable, __file__, "--worker", w, "--steps", str(a.steps),
                            "--batch", str(a.batch), "--threads", str(a.threads)],
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        res[w] = json.loads(p.stdout.strip().splitlines()[-1])
    s, t = res["slmflow"], res["trainer"]
    print(f"LoRA r=16 on all linear layers, bf16, batch {a.batch}, {a.steps} steps, "
          f"{a.threads} thread(s)")
    print(f"{'':<24}{'tokens/s':>10}{'wall s':>9}{'loss':>8}")
    for name, r in (("slmflow train_lora", s), ("transformers Trainer", t)):
        print(f"{name:<24}{r['tokens_per_s']:>10.1f}{r['wall_s']:>9.1f}{r['loss']:>8.3f}")
    print(f"ratio slmflow / Trainer: {s['tokens_per_s'] / t['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
