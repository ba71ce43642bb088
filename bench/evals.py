"""Evals benchmark: router-suite throughput (batched vs one at a time) and judge agreement with
human labels.

    .venv/bin/python bench/evals.py                       # everything (tens of minutes on 2 cores)
    .venv/bin/python bench/evals.py --cases 1000          # throughput part on 1,000 cases
    .venv/bin/python bench/evals.py --skip-throughput     # agreement only
    .venv/bin/python bench/evals.py --out bench/results/evals.json

Part 1, throughput. The BANKING77 router suite (examples/banking77/eval_router.py: the 77-way
``Route`` schema, the routing evaluator) on the embedded SmolLM2-135M (llama.cpp), on a fixed-seed
stratified sample of the test split:
  * one at a time: concurrency 1, one llama.cpp context using all cores;
  * batched: concurrency 2, a ``pool_size=2`` model (two contexts, cores split between them).
Reported: cases/s (wall clock of the whole suite, grammar compile and warm-up included) and the
accuracy (identical in both modes: greedy decoding).

Part 2, agreement with human labels (accuracy and Cohen's kappa), for each judge-based
evaluator and the lexical baseline:
  * ``faithfulness`` (SLM judge) and ``groundedness`` (lexical) on
    src/slmflow/evals/datasets/faithfulness.jsonl: 52 (policy passage, answer) pairs over the
    support example's knowledge base, hand-labelled faithful/unfaithful (see that folder's
    make_faithfulness.py for who labelled them and how). No labelled NLI/faithfulness set that
    ships inside a PyPI wheel was found (datasets that download at run time do not count).
  * ``judge`` (custom rubric: "does this intent label describe the message?") on BANKING77 test
    pairs: the human intent label (-> "yes") and a random other intent (-> "no"), N pairs
    balanced. The labels are BANKING77's human annotations (CC BY 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "banking77"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SLMFLOW_TRACING", "off")


def kappa(pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """(accuracy, Cohen's kappa) of (human, evaluator) label pairs."""
    n = len(pairs)
    acc = sum(a == b for a, b in pairs) / n
    labels = {a for a, _ in pairs} | {b for _, b in pairs}
    pe = sum((sum(a == l for a, _ in pairs) / n) * (sum(b == l for _, b in pairs) / n)
             for l in labels)
    return acc, ((acc - pe) / (1 - pe) if pe < 1 else 0.0)


def throughput(n: int, modes: list[str]) -> dict:
    import eval_router

    from slmflow.evals import run_suite
    from slmflow.models.catalog import resolve

    cases = eval_router.cases(limit=n)
    out = {"cases": len(cases.cases), "data": "data/banking77/test.csv (stratified, seed 0)"}
    for mode in modes:
        conc = 2 if mode == "batched" else 1
        model = resolve("smollm2-135m", pool_size=conc)
        t0 = time.perf_counter()
        rep = run_suite(eval_router.make_agent(model), cases, eval_router.evaluators(),
                        concurrency=conc, name=f"router-{mode}", progress=True)
        wall = time.perf_counter() - t0
        out[mode] = {"concurrency": conc, "pool_size": conc, "wall_s": round(wall, 1),
                     "cases_per_s": round(len(rep.rows) / wall, 3),
                     "accuracy": round(rep.scores.get("accuracy", 0.0), 4),
                     "macro_f1": round(rep.scores.get("macro_f1", 0.0), 4),
                     "summary": rep.summary, "latency_s": rep.latency()}
        print(mode, json.dumps(out[mode]), flush=True)
        import asyncio

        asyncio.run(model.aclose())
    return out


def agreement(n_pairs: int, judge_model: str) -> dict:
    import router

    from slmflow.evals import Case, create, load_cases, run_suite

    res: dict = {}
    faith = load_cases(ROOT / "src" / "slmflow" / "evals" / "datasets" / "faithfulness.jsonl")
    # the answer is the case input; the evaluators grade it against the case context
    for name, ev in (("groundedness", create("groundedness")),
                     ("faithfulness", create("faithfulness", model=judge_model))):
        t0 = time.perf_counter()
        rep = run_suite(lambda x: x, faith, [ev], name=name, concurrency=1)
        pairs = []
        for r in rep.rows:
            if name in r.evals:
                pairs.append((r.expected, "faithful" if r.evals[name].ok else "unfaithful"))
        acc, k = kappa(pairs)
        pred_pos = sum(p == "faithful" for _, p in pairs)
        res[name] = {"set": "evals/datasets/faithfulness.jsonl (52 hand-labelled pairs)",
                     "n": len(pairs), "errored": rep.summary["errored"],
                     "accuracy": round(acc, 4), "kappa": round(k, 4),
                     "predicted_faithful": pred_pos, "seconds": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(res[name]), flush=True)
    cases = [Case(id=f"b77-{i}", input={"message": text, "intent": label},
                  expected="yes" if ok else "no")
             for i, (text, label, ok) in enumerate(router.label_pairs("test", n_pairs, seed=0))]
    judge = create("judge", model=judge_model, labels=("yes", "no"), pass_labels=("yes",),
                   include=("output",),
                   rubric="Does the intent label correctly describe what the customer message "
                          "asks about? yes or no.")
    t0 = time.perf_counter()
    rep = run_suite(lambda x: f"message: {x['message']}\nintent label: "
                              f"{x['intent'].replace('_', ' ')}", cases, [judge], name="judge")
    pairs = [(r.expected, "yes" if r.evals["judge"].ok else "no") for r in rep.rows
             if "judge" in r.evals]
    acc, k = kappa(pairs)
    res["judge"] = {"set": f"BANKING77 test label-correctness pairs (human labels), n={n_pairs}, "
                           "half true label / half random other label",
                    "n": len(pairs), "errored": rep.summary["errored"], "accuracy": round(acc, 4),
                    "kappa": round(k, 4),
                    "predicted_yes": sum(p == "yes" for _, p in pairs),
                    "seconds": round(time.perf_counter() - t0, 1)}
    print("judge", json.dumps(res["judge"]), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--modes", default="sequential,batched")
    ap.add_argument("--pairs", type=int, default=100, help="BANKING77 judge pairs")
    ap.add_argument("--judge", default="smollm2-135m")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg": os.getloadavg()}, "judge_model": a.judge}
    if not a.skip_agreement:
        result["agreement"] = agreement(a.pairs, a.judge)
    if not a.skip_throughput:
        result["throughput"] = throughput(a.cases, a.modes.split(","))
    result["machine"]["load_avg_end"] = os.getloadavg()
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
