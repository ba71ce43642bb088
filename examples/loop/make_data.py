"""Data of the improvement-loop example, generated (seeded) so the story is reproducible:

* train.jsonl: refund and shipping tickets only. A router trained on it has a systematic error:
  it has never seen billing, so billing tickets go elsewhere.
* eval.jsonl: the router's eval set, all three categories (other products than the training set).
* traffic.jsonl: what users send through the gateway: 12 billing tickets and 4 others, with the
  true category (the scripted user and reviewer read it; the router does not).

    python examples/loop/make_data.py [out_dir]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ITEMS = ["lamp", "jacket", "blender", "phone case", "desk chair", "kettle", "headphones",
         "backpack", "monitor", "rug", "camera", "toaster", "sofa", "watch", "printer", "mug"]
TEMPLATES = {
    "refund": ["My {x} arrived broken, I want my money back", "Please refund the {x} I returned",
               "The {x} is damaged, refund me", "I would like a refund for my {x}"],
    "shipping": ["Where is my {x}? The delivery is late", "My {x} parcel has not arrived yet",
                 "Tracking for the {x} shows no movement", "When will my {x} be delivered?"],
    "billing": ["I was charged twice for the {x}", "Why is there an extra fee on my invoice "
                "for the {x}?", "My card was billed the wrong amount for the {x}",
                "The {x} payment was taken twice from my account"],
}


def tickets(cat: str, items: list[str]) -> list[str]:
    return [TEMPLATES[cat][i % 4].format(x=x) for i, x in enumerate(items)]


def datasets() -> dict[str, list[tuple[str, str]]]:
    train = [(t, c) for c in ("refund", "shipping") for t in tickets(c, ITEMS[:12])]
    random.Random(0).shuffle(train)
    evals = [(t, c) for c in ("refund", "shipping", "billing") for t in tickets(c, ITEMS[12:])]
    traffic = [(t, "billing") for t in tickets("billing", ITEMS[:12])] + \
        [(t.replace("My", "Our"), c) for c in ("refund", "shipping") for t in tickets(c, ITEMS[:2])]
    return {"train": train, "eval": evals, "traffic": traffic}


def write(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, pairs in datasets().items():
        p = paths[name] = out / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"input": {"text": t}, "target": {"category": c}}) + "\n"
                             for t, c in pairs))
    return paths


if __name__ == "__main__":
    for name, p in write(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)).items():
        print(f"{name}: {p}")
