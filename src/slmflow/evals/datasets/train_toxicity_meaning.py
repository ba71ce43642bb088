"""Trains the toxicity scorer's meaning model: a logistic regression over MiniLM sentence
embeddings, fitted on toxicity.jsonl (the tuning set) plus 200 benign BANKING77 messages, written to
slmflow/guardrails/toxicity_meaning.json (384 weights and a bias, ~10 KB; no scikit-learn needed
to score).

    .venv/bin/python src/slmflow/evals/datasets/train_toxicity_meaning.py

Why: alt-profanity-check and the lexicon read words, so they miss toxicity in neutral words
("I'd explain it to you, but I don't have any crayons", "Women belong in the kitchen"): held-out
F1 0.79, recall 0.66 (docs/evals.md). A sentence embedding carries what a text means; a linear
model on it, trained on the 180 hand-labelled texts, adds that signal. The regularisation C is
chosen by 5-fold cross-validation on the tuning set alone (F1 of max(classifier, meaning) at the
evaluator's fixed 0.5 threshold); the two held-out sets are only measured.

The training texts are this project's own (hand-written, see make_toxicity.py): no data with a
licence or canary is involved. Deterministic: liblinear-free lbfgs, fixed data order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from slmflow.guardrails.toxicity_model import MIN_WORDS

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "guardrails" / "toxicity_meaning.json"
GRID = (0.3, 1.0, 3.0, 10.0)
N_BANKING77 = 200


def _load(name: str) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return [r["output"] for r in rows], np.array([r["label"] == "toxic" for r in rows])


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float((pred & y).sum())
    p, r = tp / max(1, pred.sum()), tp / max(1, y.sum())
    return 2 * p * r / (p + r) if p + r else 0.0


def _banking77(n: int) -> list[str]:
    """`n` real customer messages from BANKING77's training split (CC BY 4.0, in the repo's
    data/banking77/), every one benign: the tuning set's 85 ok texts are support tickets and
    complaints, and a model trained on them alone called short everyday messages toxic ("Say hi",
    "hello": 0.6-0.85), because its toxic texts are the short ones."""
    import csv
    import random

    path = HERE.parents[3] / "data" / "banking77" / "train.csv"
    with path.open(newline="") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    return random.Random(0).sample(rows, n)


def main() -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from slmflow.guardrails.toxicity_model import _Classifier
    from slmflow.retrieval.embedder import default_embedder

    texts, y = _load("toxicity.jsonl")
    extra = _banking77(N_BANKING77)
    texts, y = texts + extra, np.r_[y, np.zeros(len(extra), dtype=bool)]
    emb = default_embedder()
    emb = getattr(emb, "inner", emb)
    x = np.asarray(emb.embed(texts), dtype=np.float64)
    clf = _Classifier()
    words = np.array([clf.word_score(t) for t in texts])  # the word-level scorer
    short = np.array([len(t.split()) < MIN_WORDS for t in texts])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    cv = {}
    for c in GRID:
        p = cross_val_predict(LogisticRegression(C=c, max_iter=5000), x, y, cv=folds,
                              method="predict_proba")[:, 1]
        cv[c] = _f1(np.maximum(np.where(short, 0.0, p), words) >= 0.5, y)
        print(f"C={c:<5} cross-validated F1 (max with the word scorer, 0.5): {cv[c]:.3f}")
    best = max(GRID, key=lambda c: (cv[c], -c))
    lr = LogisticRegression(C=best, max_iter=5000).fit(x, y)
    data = (HERE / "toxicity.jsonl").read_bytes()
    OUT.write_text(json.dumps({
        "what": "logistic regression over all-MiniLM-L6-v2 embeddings: P(toxic | meaning)",
        "embedder": emb.name, "dim": int(x.shape[1]), "C": best,
        "cv_f1_combined": round(cv[best], 4), "trained_on": "evals/datasets/toxicity.jsonl",
        "trained_on_sha256": hashlib.sha256(data).hexdigest(), "n": int(len(y)),
        "benign_banking77": N_BANKING77, "min_words": MIN_WORDS,
        "made_by": "evals/datasets/train_toxicity_meaning.py",
        "intercept": float(lr.intercept_[0]),
        "coef": [round(float(v), 6) for v in lr.coef_[0]]}, indent=1) + "\n")
    print(f"C={best}: wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
