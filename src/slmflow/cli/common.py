"""What several commands share: the LoRA training options and the `TrainConfig` built from them
(`slmflow train agent`, `slmflow loop retrain`), and a correction read from the shell
(`slmflow loop review --correct`, `slmflow feedback --correction`).

Why a module of its own: each of these was written out in two command modules; one declaration
keeps the options, their defaults and their help the same wherever they appear.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

EPOCHS = typer.Option(1.0)
LR = typer.Option(5e-4)
BATCH_SIZE = typer.Option(8, "--batch-size")
MAX_LEN = typer.Option(256)
MAX_STEPS = typer.Option(None, "--max-steps")
TARGETS = typer.Option("q_proj,v_proj", help="LoRA target modules")
BF16 = typer.Option(None, "--bf16/--no-bf16", help="bfloat16 weights (default: on a GPU or a CPU "
                    "with AVX-512 BF16 / AMX, else float32)")
THREADS = typer.Option(0, help="torch threads (1 on a busy machine)")
SEED = typer.Option(0)


def train_config(*, r: int, lr: float, epochs: float, batch_size: int, max_len: int,
                 max_steps: Optional[int], seed: int, bf16: Optional[bool], targets: str) -> Any:
    """The `TrainConfig` of the training options (alpha = 2r; bf16 where it pays, unless
    given; targets comma-separated)."""
    from ..finetune.trainer import TrainConfig, bf16_fast

    return TrainConfig(r=r, alpha=2 * r, lr=lr, epochs=epochs, batch_size=batch_size,
                       max_len=max_len, max_steps=max_steps, seed=seed,
                       bf16=bf16 if bf16 is not None else bf16_fast(),
                       target_modules=tuple(t.strip() for t in targets.split(",") if t.strip()))


def json_or_text(value: Optional[str]) -> Any:
    """``value`` parsed as JSON, else the text itself (None stays None)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value
