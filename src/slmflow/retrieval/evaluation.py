"""Retrieval evaluation: recall@k, MRR and nDCG@k over a labelled (query, relevant ids) set.

Binary relevance. ``recall@k`` = |relevant ∩ top k| / |relevant|; ``MRR`` = mean of 1/rank of the
first relevant hit (0 if none in the list); ``nDCG@k`` = DCG of the top k (gain 1, log2 discount)
over the ideal DCG. Results are per query and averaged; ``doc_level=True`` maps passage ids
(``<doc>#<n>``) to their document ids first (deduplicated, keeping the best rank).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["recall_at_k", "mrr", "ndcg_at_k", "evaluate", "load_labelled", "banking77_path",
           "run_banking77"]


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    rel = set(relevant)
    return len(rel & set(ranked[:k])) / len(rel) if rel else 0.0


def mrr(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    rel = set(relevant)
    for i, r in enumerate(ranked, 1):
        if r in rel:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    rel = set(relevant)
    dcg = sum(1.0 / math.log2(i + 1) for i, r in enumerate(ranked[:k], 1) if r in rel)
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(rel)) + 1))
    return dcg / idcg if idcg else 0.0


def _docs_of(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(i.rsplit("#", 1)[0] for i in ids))


def evaluate(index: Any, labelled: Sequence[dict[str, Any]], *, k: int = 10,
             mode: str = "hybrid", doc_level: bool = True) -> dict[str, Any]:
    """Run each ``{"query", "relevant"}`` against ``index.search`` and average the metrics."""
    rows = []
    t0 = time.perf_counter()
    emb = getattr(index, "embedder", None)
    if mode != "bm25" and emb is not None and hasattr(emb, "hits"):
        emb.embed([item["query"] for item in labelled])  # batched once; searches hit the cache
    for item in labelled:
        res = index.search(item["query"], k=k * 3 if doc_level else k, mode=mode)
        ranked = _docs_of(res.ids) if doc_level else res.ids
        rows.append({"id": item.get("id"), f"recall@{k}": recall_at_k(ranked, item["relevant"], k),
                     "mrr": mrr(ranked[:k], item["relevant"]),
                     f"ndcg@{k}": ndcg_at_k(ranked, item["relevant"], k)})
    n = max(1, len(rows))
    return {"mode": mode, "k": k, "queries": len(rows),
            f"recall@{k}": sum(r[f"recall@{k}"] for r in rows) / n,
            "mrr": sum(r["mrr"] for r in rows) / n,
            f"ndcg@{k}": sum(r[f"ndcg@{k}"] for r in rows) / n,
            "seconds": time.perf_counter() - t0, "per_query": rows}


def load_labelled(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(docs, queries) from a folder with ``docs.jsonl`` and ``queries.jsonl``."""
    p = Path(path)
    docs = [json.loads(line) for line in (p / "docs.jsonl").read_text().splitlines() if line]
    queries = [json.loads(line) for line in (p / "queries.jsonl").read_text().splitlines() if line]
    return docs, queries


def banking77_path() -> Path:
    """The BANKING77-derived set shipped in the repository (data/retrieval-eval/banking77)."""
    return Path(__file__).resolve().parents[3] / "data" / "retrieval-eval" / "banking77"


def run_banking77(index: Any, *, k: int = 10, modes: Sequence[str] = ("vector", "bm25", "hybrid"),
                  path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Index the BANKING77 docs into ``index`` (if absent) and evaluate each mode."""
    from .types import Document

    docs, queries = load_labelled(path or banking77_path())
    have = {d["doc_id"] for d in index.documents()}
    todo = [Document(id=d["id"], text=d["text"], metadata={"intent": d["intent"]})
            for d in docs if d["id"] not in have]
    if todo:
        index.add_documents(todo)
    return {m: evaluate(index, queries, k=k, mode=m) for m in modes}
