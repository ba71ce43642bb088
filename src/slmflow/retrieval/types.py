"""The typed passages retrieval hands to the next step (answerer, verifier, faithfulness eval).

Why pydantic: a `Passages` value is a handoff payload. The workflow validates it against the next
step's input type, the verifier cites `Passage.id`, and evals read `score` and `rank`, so the shape
must be checked, serialisable and the same everywhere.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Passage", "Passages", "Document"]


class Passage(BaseModel):
    """One retrieved chunk: ``id`` is stable (``<doc id>#<chunk position>``) and citable."""

    id: str = Field(description="stable passage id: '<doc id>#<chunk position>'")
    text: str = Field(description="the chunk's text")
    source: str = Field(description="the file or document the chunk comes from")
    score: float = Field(description="fused relevance score (higher is better)")
    rank: int = Field(default=0, description="1-based rank in this result list")
    doc_id: str = ""
    position: int = Field(default=0, description="chunk number inside its document")
    vector_score: float | None = Field(default=None, description="cosine similarity, if dense hit")
    bm25_score: float | None = Field(default=None, description="BM25 score, if keyword hit")
    metadata: dict[str, Any] = Field(default_factory=dict)

    def snippet(self, width: int = 160) -> str:
        t = " ".join(self.text.split())
        return t if len(t) <= width else t[: width - 1] + "…"


class Passages(BaseModel):
    """The result of one retrieval: the query, the mode and the ranked passages."""

    query: str
    mode: str = "hybrid"
    passages: list[Passage] = Field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.passages]

    @property
    def scores(self) -> dict[str, float]:
        return {p.id: p.score for p in self.passages}

    def as_context(self) -> str:
        """The passages as a prompt block, each prefixed with its id for citation."""
        return "\n\n".join(f"[{p.id}] ({p.source})\n{p.text}" for p in self.passages)


class Document(BaseModel):
    """A document given as text (not a file): ``id`` must be unique in the index."""

    id: str
    text: str
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
