"""The BANKING77 router: one agent, 77 intents, the real router workload.

The same definition serves zero-shot evaluation, fine-tuning (`train.py`) and inference, so the
adapter is trained on exactly the prompt the agent sends.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, create_model

DATA = Path(__file__).resolve().parents[2] / "data" / "banking77"
INSTRUCTIONS = "Classify the online-banking customer message into one intent."
INTENTS: tuple[str, ...] = tuple(json.loads((DATA / "categories.json").read_text()))

Route: type[BaseModel] = create_model("Route", intent=(Literal[INTENTS], ...))  # type: ignore[valid-type]


def load(split: str) -> list[tuple[str, str]]:
    with open(DATA / f"{split}.csv", newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def label_pairs(split: str, n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """``n`` (message, intent label, the label is the human one) pairs from ``split``: even
    positions carry the message's own label, odd ones a random other intent (the judge
    agreement sets of bench/evals.py and bench/judge_retrain.py)."""
    rng = random.Random(seed)
    rows = load(split)
    rng.shuffle(rows)
    out = []
    for i, (text, intent) in enumerate(rows[:n]):
        ok = i % 2 == 0
        out.append((text, intent if ok else rng.choice([x for x in INTENTS if x != intent]), ok))
    return out


def messages(text: str):
    from slmflow.types import Message

    return [Message("system", INSTRUCTIONS), Message("user", text)]
