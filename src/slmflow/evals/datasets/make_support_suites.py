"""Writes the per-agent suites of the support example (examples/support/workflow.yaml):

  support_router.jsonl     ticket -> category                    (evaluator: routing)
  support_extract.jsonl    ticket -> {order_id, account_id, urgent} (evaluator: fields)
  support_reason.jsonl     ticket + retrieved passages -> draft  (evaluators: groundedness)
  support_verifier.jsonl   policy + draft -> approved?           (evaluator: exact_match)

Tickets and labels written by hand by the slmflow evals engineer (an AI coding agent); the
verifier set reuses faithfulness.jsonl (faithful -> approved). Not public data: see docs/evals.md.
Run: .venv/bin/python src/slmflow/evals/datasets/make_support_suites.py
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
SUPPORT = HERE.parents[3] / "examples" / "support"
sys.path.insert(0, str(SUPPORT))
import support_steps  # noqa: E402

T = [  # text, category, order_id, account_id, urgent
    ("My order A-1042 arrived broken, I want a refund", "refund", "A-1042", None, False),
    ("I was charged twice for my subscription this month, account 88231.", "billing", None, "88231", False),
    ("Where is my package? Order B-77 has not shipped yet and it has been 10 days.", "shipping", "B-77", None, False),
    ("How do I change the email address on my account?", "account", None, None, False),
    ("URGENT: the headphones from order C-2210 stopped working after two days", "refund", "C-2210", None, True),
    ("I can't log in, my account 40112 says it is locked. Please help asap!", "account", None, "40112", True),
    ("Can I pay with PayPal?", "billing", None, None, False),
    ("Tracking for order D-501 has not moved in a week, is it lost?", "shipping", "D-501", None, False),
    ("I want to return the unused lamp from order B-77", "refund", "B-77", None, False),
    ("Please cancel my subscription on account 55120", "billing", None, "55120", False),
    ("How long does express shipping take?", "shipping", None, None, False),
    ("Delete my account 88231 immediately, this is urgent", "account", None, "88231", True),
    ("Do you sell gift cards for birthdays?", "other", None, None, False),
    ("The mug set I got in order A-1042 is chipped, can you send a new one?", "refund", "A-1042", None, False),
    ("My card payment failed for order E-90, what happens now?", "billing", "E-90", None, False),
]


def write(name, rows):
    (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(len(rows), "->", name)


write("support_router.jsonl", [{"id": f"t{i}", "input": {"text": t}, "expected": c}
                               for i, (t, c, *_ ) in enumerate(T)])
write("support_extract.jsonl", [{"id": f"t{i}", "input": {"text": t},
                                 "expected": {"order_id": o, "account_id": a, "urgent": u}}
                                for i, (t, c, o, a, u) in enumerate(T)])
reason = []
for i, (t, c, o, a, u) in enumerate(T):
    passages = [p.model_dump() for p in support_steps.retrieve(
        support_steps.RetrievalInput(text=t, category=c)).passages]
    reason.append({"id": f"t{i}", "input": {"text": t, "category": c, "passages": passages,
                                            "order_id": o, "account_id": a},
                   "context": passages + [{"text": t}]})
write("support_reason.jsonl", reason)
ver = []
for line in (HERE / "faithfulness.jsonl").read_text().splitlines():
    r = json.loads(line)
    ver.append({"id": r["id"], "input": {"text": "Please explain the policy.", "draft": r["input"],
                                         "passages": [{"id": r["id"].rsplit("-", 1)[0] + "#1",
                                                       "title": "policy", "text": r["context"],
                                                       "score": 1.0}]},
                "expected": {"approved": r["expected"] == "faithful"}})
write("support_verifier.jsonl", ver)
