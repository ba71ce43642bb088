"""Rebuild docs.jsonl / queries.jsonl from BANKING77 (train.csv, test.csv, CC BY 4.0).

    python data/retrieval-eval/banking77/build.py /path/to/banking77

Per intent (77): three documents, each five consecutive training utterances of that intent (the
first 15 in file order); three queries, the first three test utterances of that intent; a query's
relevant documents are its intent's three documents. Deterministic.
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/banking77")
out = Path(__file__).parent
train, test = defaultdict(list), defaultdict(list)
for name, dst in (("train.csv", train), ("test.csv", test)):
    with open(src / name, newline="") as f:
        for row in csv.DictReader(f):
            dst[row["category"]].append(row["text"].strip())
with open(out / "docs.jsonl", "w") as d, open(out / "queries.jsonl", "w") as q:
    for intent in sorted(train):
        ids = []
        for j in range(3):
            doc_id = f"{intent}-{j}"
            ids.append(doc_id)
            text = "\n".join(train[intent][5 * j:5 * j + 5])
            d.write(json.dumps({"id": doc_id, "text": text, "intent": intent}) + "\n")
        for j, t in enumerate(test[intent][:3]):
            q.write(json.dumps({"id": f"{intent}-q{j}", "query": t, "relevant": ids}) + "\n")
