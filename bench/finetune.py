"""Fine-tuning benchmark: `slmflow` LoRA training vs a plain transformers Trainer + PEFT script.

    .venv/bin/python bench/finetune.py --steps 20 --threads 1

Both train the same LoRA (same rank, targets, dtype, batch size, learning rate, seed) on the same
BANKING77 router examples formatted by the same chat template with the loss masked to the
completion; each runs in its own subprocess; the ratio is slmflow tokens/s over Trainer tokens/s
(goal: at least 1.0). Tokens counted are the real (unpadded) tokens of the batches trained on.
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


def main() -> None:
    ap = argparse.ArgumentParser()
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
