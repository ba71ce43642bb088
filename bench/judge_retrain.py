"""A rubric judge that learns from reviewers (issue 17, item 4), measured end to end.

    .venv/bin/python bench/judge_retrain.py                    # 300 decisions, 100 test pairs
    .venv/bin/python bench/judge_retrain.py --decisions 120 --test 60 --epochs 2   # quicker
    .venv/bin/python bench/judge_retrain.py --judge-model qwen2.5-coder-1.5b --no-lora
        # the same loop with a bigger judge: few-shot candidate only (a LoRA on 1.5B
        # parameters is hours on a 2-core CPU)

The job: the `judge` evaluator with a custom rubric ("does this intent label describe what the
customer asks?") on the embedded SmolLM2-135M, the agreement set of bench/evals.py where the
zero-shot judge is at chance (kappa -0.16). What a team would do, step by step, with the real
loop and the real model (no fakes anywhere):

1. log N intent-labelling calls (BANKING77 *train* messages; half carry the message's human
   intent label, half a random other intent) in a fresh SQLite call log;
2. judge them online (`evaluate_calls`: the zero-shot judge, its verdicts recorded);
3. flag them (`flag_calls`; the calls carry low confidence, so every call is a review item; the
   daily budget of 50 items per agent is lifted: the bench's reviewer does N/50 days at once);
4. a reviewer marks each judge verdict right or wrong (`JudgeReviews.decide`). **The reviewer's
   decisions are BANKING77's human labels** (CC BY 4.0): "right" exactly when the judge's yes/no
   matches whether the logged label is the human one;
5. `retrain_judge` (what `slmflow loop retrain --judge intent_label` runs): a few-shot rubric
   candidate and a LoRA candidate trained with the agent trainer, each scored by Cohen's kappa on
   the held-out decisions (30%, by call-id hash), promoted only if kappa rises;
6. then every candidate and the zero-shot judge on a **separate test set**: BANKING77 *test*
   messages, the pairs of bench/evals.py (seed 0, half true / half random other label), never
   seen by the loop. Throughput (cases/s) of each judge side by side.

The call log, the judges folder and the adapter registry live in a temporary folder; the
dequantized base for training is the usual one under $SLMFLOW_HOME/models. Run it alone on the
machine: it trains a LoRA (minutes) and judges ~500 cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "banking77"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SLMFLOW_TRACING", "off")

TASKS = {
    # BANKING77: human labels; the judge must know what 77 intents mean
    "banking77": dict(name="intent_label", labels=("yes", "no"), include=("input", "output"),
                      max_len=192,
                      rubric="Does the ANSWER (an intent label) correctly describe what the "
                             "customer message in INPUT asks about? 'yes' or 'no'."),
    # the support example's replies: constructed labels (good replies and planted faults)
    "support": dict(name="support_reply", labels=("pass", "fail"),
                    include=("input", "context", "output"), max_len=512,
                    rubric="Decide if the ANSWER is a correct reply to the customer in INPUT: it "
                           "answers what the customer asked, states only what the policy in "
                           "CONTEXT and the record say, and keeps the order or account id. "
                           "'pass' or 'fail'."),
}


def pairs(task: str, split: str, n: int, seed: int) -> list[tuple[Any, str, bool, Any]]:
    """(input, output shown, a person passes it, context)."""
    if task == "support":
        return support_rows(split, n, seed)
    import router

    return [(text, label.replace("_", " "), ok, None)
            for text, label, ok in router.label_pairs(split, n, seed)]


def support_rows(split: str, n: int, seed: int) -> list[tuple[Any, str, bool, Any]]:
    """The support example's verifier data (examples/support/data/verifier_{train,eval}.jsonl:
    good replies and replies with a planted fault, made by make_pipeline_data.py from other
    ticket templates in the eval file): the ticket and the record as the input, the passages as
    the context, the reply as the output; a person passes exactly the good replies."""
    rows = [json.loads(x) for x in (ROOT / "examples" / "support" / "data" /
                                    f"verifier_{'eval' if split == 'test' else 'train'}.jsonl")
            .read_text().splitlines() if x.strip()]
    random.Random(seed).shuffle(rows)
    out = []
    for r in rows[:n]:
        x = r["input"]
        rec = json.dumps(x["lookup"]) if x.get("lookup") else "no record found"
        ctx = "\n".join(p["text"] for p in x["passages"])
        out.append((f"{x['text']}\nRecord: {rec}", x["draft"], bool(r["target"]["approved"]),
                    ctx))
    return out


def judge(task: dict, model: str = "smollm2-135m", **kw):
    from slmflow.evals.builtin import Judge

    return Judge(task["rubric"], model=model, name=task["name"], labels=task["labels"],
                 pass_labels=task["labels"][:1], include=task["include"], max_tokens=48, **kw)


def timed_kappa(ev, rows) -> dict:
    from slmflow.loop.judges import judge_kappa

    t0 = time.perf_counter()
    s = judge_kappa(ev, rows)
    dt = time.perf_counter() - t0
    return {**s, "cases_per_s": round(len(rows) / dt, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="banking77")
    ap.add_argument("--decisions", type=int, default=300, help="reviewed calls (train split)")
    ap.add_argument("--test", type=int, default=100, help="test pairs (BANKING77 test split)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--judge-model", default="smollm2-135m",
                    help="the judge's model (a catalog name), zero-shot and for its candidates")
    ap.add_argument("--no-lora", action="store_true",
                    help="few-shot candidate only (a LoRA on a 1.5B model is hours on this CPU)")
    ap.add_argument("--shots", type=int, default=4, help="examples in the few-shot candidate")
    ap.add_argument("--work", help="keep the call log, judges and registry here")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()
    task = TASKS[a.task]
    NAME = task["name"]

    from slmflow.evals import learned
    from slmflow.evals.base import Case
    from slmflow.finetune.registry import AdapterRegistry
    from slmflow.finetune.trainer import TrainConfig
    from slmflow.loop import evaluate_calls, flag_calls
    from slmflow.loop.flag import FlagRules
    from slmflow.loop.judges import _adapter_model, _variant, retrain_judge
    from slmflow.store import CallRecord, open_call_log
    from slmflow.store.judges import JudgeReviews
    from slmflow.store.review import ReviewQueue

    work = Path(a.work or tempfile.mkdtemp(prefix="judge-retrain-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                "cores": os.cpu_count(), "load_avg": os.getloadavg()},
                    "args": vars(a), "work": str(work)}
    t_all = time.perf_counter()

    # 1. the logged calls
    log = open_call_log(work / "calls.db")
    truth, recs = {}, []
    for i, (text, label, ok, ctx) in enumerate(pairs(a.task, "train", a.decisions, seed=1)):
        r = CallRecord(agent="intent", input=text, output=label, confidence=0.2,
                       trace_id=f"{i + 1:032x}", model=f"{a.task}-agent",
                       meta={"context": ctx} if ctx else {},
                       id=hashlib.sha256(f"{a.task} train {i}".encode()).hexdigest()[:32])
        truth[r.id] = ok
        recs.append(r)
    log.append(recs)
    print(f"logged {len(recs)} calls ({sum(truth.values())} a person passes)", flush=True)

    # 2. online judging, 3. flagging
    t0 = time.perf_counter()
    rep = evaluate_calls(log, judge(task, a.judge_model, learned=False), agent="intent",
                         since="1h", limit=None)
    online_s = time.perf_counter() - t0
    flag_calls(log, since="1h", rules=FlagRules(budget_per_agent=None))  # N/50 days of review
    print(f"judged online: {rep.checked} calls in {online_s:.0f} s, errors {len(rep.errors)}",
          flush=True)

    # 4. the reviewer's decisions = the human labels
    jr = JudgeReviews(log)
    decided = agree = 0
    for it in ReviewQueue(log).items(limit=None):
        vs = [v for v in jr.verdicts(it.call_id) if v.judge == NAME]
        if not vs:
            continue
        right = vs[0].passed == truth[it.call_id]
        jr.decide(it.id, "right" if right else "wrong", reviewer="banking77-annotators")
        decided += 1
        agree += right
    print(f"reviewed {decided} verdicts: the zero-shot judge was right on {agree}", flush=True)
    result["online"] = {"calls": len(recs), "judged": rep.checked, "errors": len(rep.errors),
                        "seconds": round(online_s, 1), "decisions": decided,
                        "judge_right": agree}

    # 5. one turn of the loop for the judge
    registry = AdapterRegistry(work / "adapters")
    jroot = work / "judges"
    cfg = TrainConfig(r=a.r, alpha=2 * a.r, target_modules=("q_proj", "k_proj", "v_proj",
                                                              "o_proj"),
                      lr=a.lr, epochs=a.epochs, batch_size=8, max_len=task["max_len"], seed=0)
    t0 = time.perf_counter()
    res = retrain_judge(NAME, log, evaluator=judge(task, a.judge_model, learned=False),
                        config=cfg,
                        threads=a.threads, registry=registry, root=jroot,
                        run_dir=work / "run", progress=True, lora=not a.no_lora,
                        shots=a.shots)
    result["retrain"] = {**res.as_dict(), "seconds": round(time.perf_counter() - t0, 1)}

    # 6. the separate test set: every candidate and the zero-shot judge
    test_rows = [(Case(id=f"{a.task}-test-{i}", input=text, context=ctx), label, ok)
                 for i, (text, label, ok, ctx) in enumerate(pairs(a.task, "test", a.test, seed=0))]
    base_ev = judge(task, a.judge_model, learned=False)
    test = {"zero-shot": timed_kappa(base_ev, test_rows)}
    print("test zero-shot", json.dumps(test["zero-shot"]), flush=True)
    for v, cand in res.candidates.items():
        rubric = learned.load_rubric(NAME, v, jroot)
        ev = _variant(base_ev, rubric, _adapter_model(base_ev, rubric, registry))
        key = f"{v} ({cand['kind']})"
        test[key] = {**timed_kappa(ev, test_rows), "promoted": res.promoted == v,
                     "held_out_kappa": cand["scores"]["kappa"]}
        print("test", key, json.dumps(test[key]), flush=True)
    result["test"] = {"set": f"BANKING77 test, {a.test} pairs (seed 0, half true / half random "
                             "other label; human labels)" if a.task == "banking77" else
                      f"examples/support/data/verifier_eval.jsonl, {a.test} rows", **test}
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    log.close()

    print("\n| judge | held-out decisions kappa | test kappa | test accuracy | cases/s |")
    print("|---|---:|---:|---:|---:|")
    cur = res.current_scores
    z = test["zero-shot"]
    print(f"| zero-shot {a.judge_model} | {cur['kappa']:.3f} | {z['kappa']:.3f} | "
          f"{z['accuracy']:.3f} | "
          f"{z['cases_per_s']:.2f} |")
    for key, s in test.items():
        if key == "zero-shot":
            continue
        mark = " (promoted)" if s["promoted"] else ""
        print(f"| {key}{mark} | {s['held_out_kappa']:.3f} | {s['kappa']:.3f} | "
              f"{s['accuracy']:.3f} | {s['cases_per_s']:.2f} |")
    print(f"\ntotal {result['seconds']:.0f} s; work folder {work}")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
