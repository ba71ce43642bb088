"""The typed handoffs of the support pipeline: what each step takes and gives.

The *consumer's* types carry the strict rules (id patterns, non-empty drafts): that is where the
handoff contract is checked, and a producer that breaks it is re-generated under these rules.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

Category = Literal["refund", "shipping", "billing", "account", "other"]
ORDER_ID = r"^[A-Z]{1,2}-[0-9]{2,6}$"
ACCOUNT_ID = r"^[0-9]{4,8}$"


class Ticket(BaseModel):
    """The request: one customer message."""

    text: str = Field(min_length=3, max_length=2000)


class Route(BaseModel):
    """The router's decision: which handling path (and so which lookup tool) the ticket takes."""

    category: Category


class Fields(BaseModel):
    """What extraction pulls out of the ticket. The id patterns are part of the extractor's own
    output type, so constrained decoding can only write ids the reasoner's contract accepts:
    no handoff-repair call by design (it cost a second extractor call whenever an id was
    malformed)."""

    order_id: Optional[str] = Field(None, pattern=ORDER_ID, max_length=12)
    account_id: Optional[str] = Field(None, pattern=ACCOUNT_ID, max_length=12)
    urgent: bool


class Passage(BaseModel):
    id: str
    title: str
    text: str
    score: float


class RetrievalInput(BaseModel):
    text: str
    category: Category


class Retrieved(BaseModel):
    passages: list[Passage]


class DraftInput(BaseModel):
    """The reasoning step's contract: ids, if present, must look like ids."""

    text: str
    category: Category
    passages: list[Passage] = Field(min_length=1)
    order_id: Optional[str] = Field(None, pattern=ORDER_ID)
    account_id: Optional[str] = Field(None, pattern=ACCOUNT_ID)
    lookup: Optional[dict[str, Any]] = None


class VerifyInput(BaseModel):
    text: str
    draft: str = Field(min_length=1)
    passages: list[Passage]


class Verdict(BaseModel):
    approved: bool


class AnswerInput(BaseModel):
    draft: str
    passages: list[Passage]


class Answer(BaseModel):
    reply: str
    sources: list[str]
