"""Fine-tune the BANKING77 router (SmolLM2-135M + LoRA) on train.csv.

    .venv/bin/python examples/banking77/train.py --out .slmflow/runs/banking77-router

Resumable: run the same command again after a kill and it continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import router  # noqa: E402

from slmflow.finetune.data import Example, dedupe, split  # noqa: E402
from slmflow.finetune.trainer import TrainConfig, train_lora  # noqa: E402
from slmflow.models.catalog import embedded_gguf_path  # noqa: E402
from slmflow.models.transformers import dequantized_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".slmflow/runs/banking77-router")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training rows")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (1 on a busy machine)")
    args = ap.parse_args()
    rows = router.load("train")
    examples = dedupe(Example(t, {"intent": c}, source=f"train.csv:{i + 2}")
                      for i, (t, c) in enumerate(rows))
    train, val = split(examples, 0.03, seed=0)
    if args.limit:
        train = train[: args.limit]
    cfg = TrainConfig(r=16, alpha=32, lr=args.lr, batch_size=16, epochs=args.epochs, bf16=True,
                      target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"),
                      max_len=128, checkpoint_every=25, max_steps=args.max_steps or None)
    base = dequantized_base(embedded_gguf_path(), "smollm2-135m")
    res = train_lora(base, train, val, router.messages, args.out, cfg, base_name="smollm2-135m",
                     log=print, threads=args.threads or None)
    print(f"steps={res.steps} train_loss={res.train_loss:.4f} val_loss={res.val_loss} "
          f"tokens/s={res.tokens_per_s:.0f} wall={res.wall_s:.0f}s resumed_from={res.resumed_from}")


if __name__ == "__main__":
    main()
