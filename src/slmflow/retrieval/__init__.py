"""Retrieval: embedder, vector stores (embedded, server), ingestion, hybrid search, evaluation.

    from slmflow.retrieval import Index
    ix = Index("docs")                       # $SLMFLOW_HOME/indexes/docs/
    ix.add(["./docs"])                       # .md .txt .html .pdf; only changed files re-embed
    ix.search("how do refunds work", k=5)    # Passages: id, text, source, score (hybrid RRF)

Everything heavy (torch, transformers, usearch, chromadb, pypdf) loads on first use, not here.
See docs/retrieval.md.
"""

from __future__ import annotations

from typing import Any

from .errors import (DimensionMismatchError, DuplicateIdError, IngestError, RetrievalError,
                     StoreUnavailableError)
from .types import Document, Passage, Passages

__all__ = ["Index", "IndexReport", "list_indexes", "Embedder", "MiniLMEmbedder", "OpenAIEmbedder",
           "FunctionEmbedder", "CachedEmbedder", "VectorStore", "EmbeddedStore", "ChromaStore",
           "Passage", "Passages", "Document", "retrieval_tool", "retrieval_step", "Retrieved",
           "RetrievalQuery", "evaluate", "recall_at_k", "mrr", "ndcg_at_k", "RetrievalError",
           "IngestError", "DuplicateIdError", "DimensionMismatchError", "StoreUnavailableError",
           "read_text", "chunk_text"]

_LAZY = {
    "Index": "index", "IndexReport": "index", "list_indexes": "index",
    "Embedder": "embedder", "MiniLMEmbedder": "embedder", "OpenAIEmbedder": "embedder",
    "FunctionEmbedder": "embedder", "CachedEmbedder": "embedder",
    "VectorStore": "stores", "EmbeddedStore": "stores", "ChromaStore": "stores",
    "retrieval_tool": "tool", "retrieval_step": "tool", "Retrieved": "tool",
    "RetrievalQuery": "tool",
    "evaluate": "evaluation", "recall_at_k": "evaluation", "mrr": "evaluation",
    "ndcg_at_k": "evaluation",
    "read_text": "ingest", "chunk_text": "ingest",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'slmflow.retrieval' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)
