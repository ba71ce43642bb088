"""Retrieval as a tool (for an agent to call) and as a workflow step (a typed function).

Both return the passages with their stable ids and scores, so the handoff to the next step carries
what the verifier and the faithfulness evaluator need: which passages, how they ranked, how sure.

    from slmflow.tools import tool
    search_kb = tool(retrieval_tool(Index("kb")))        # an agent's tool
    Step("retrieve", fn=retrieval_step(Index("kb"), k=4))  # a workflow step: text -> passages
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from pydantic import BaseModel, Field

from .types import Passage, Passages

__all__ = ["retrieval_tool", "retrieval_step", "RetrievalQuery", "Retrieved"]


class RetrievalQuery(BaseModel):
    """The step's input: the text to search for (the state field ``text``)."""

    text: str


class Retrieved(BaseModel):
    """The step's output, written into the workflow state: passages plus their ids and scores."""

    passages: list[Passage] = Field(default_factory=list)
    passage_ids: list[str] = Field(default_factory=list)
    passage_scores: list[float] = Field(default_factory=list)


def _index(index: Any) -> Any:
    if isinstance(index, str):
        from .index import Index

        return Index(index)
    return index


def retrieval_tool(index: Any, *, k: int = 4, mode: str = "hybrid",
                   name: str = "search_knowledge_base") -> Callable[..., Any]:
    """An async, typed, documented function over ``index`` (an `Index` or an index name) that
    slmflow's ``@tool`` turns into a tool; it returns `Passages`."""
    ix = _index(index)
    default_k = k

    async def search_knowledge_base(query: str, k: int = default_k,
                                    source: str | None = None) -> Passages:
        """Search the knowledge base and return the most relevant passages with ids and scores.

        Args:
            query: what to look for, in plain words
            k: how many passages to return
            source: optional file-name glob to restrict the search to, e.g. '*refunds*'
        """
        filters = {"source": source} if source else None
        return await asyncio.to_thread(ix.search, query, max(1, min(int(k), 50)), mode=mode,
                                       filters=filters)

    search_knowledge_base.__name__ = search_knowledge_base.__qualname__ = name
    return search_knowledge_base


def retrieval_step(index: Any, *, k: int = 4, mode: str = "hybrid",
                   filters: dict[str, Any] | None = None) -> Callable[[RetrievalQuery], Retrieved]:
    """A workflow function step: state ``text`` → ``passages``, ``passage_ids``,
    ``passage_scores``."""
    ix = _index(index)

    def retrieve(inp: RetrievalQuery) -> Retrieved:
        r = ix.search(inp.text, k, mode=mode, filters=filters)
        return Retrieved(passages=r.passages, passage_ids=r.ids,
                         passage_scores=[p.score for p in r.passages])

    return retrieve
