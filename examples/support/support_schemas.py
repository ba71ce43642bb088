"""The typed handoffs of the support pipeline: what each step takes and gives.

The *consumer's* types carry the strict rules (id patterns, non-empty drafts): that is where the
handoff contract is checked, and a producer that breaks it is re-generated under these rules.
"""

from __future__ import annotations

import re
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

    @classmethod
    def constraint_for(cls, inp: "Ticket") -> dict[str, Any] | None:
        """How the extractor may answer this ticket: each id is one of the id-shaped strings the
        ticket itself contains (an order id like A-1042, a run of 4-8 digits), or null. Which
        string is which id, or none, stays the model's decision; writing an id the ticket does
        not contain becomes impossible (the 135M extractor completed "order #1042" into
        "MR-1042", which `support_steps.check_ids` then had to drop). Every id in the training
        rows is a verbatim substring of its ticket (checked by tests/test_support_data.py).

        It is also the extractor's speed lever: an id was decoded a token per character (the
        135M tokenizer splits digits), now the first token picks a candidate and the rest is
        forced, evaluated in one batch. ``SUPPORT_EXTRACT=free`` turns it off."""
        import os

        if os.environ.get("SUPPORT_EXTRACT", "").lower() == "free":
            return None
        orders, accounts = id_candidates(inp.text)
        # the key order the adapter learned (llama.cpp's GBNF order: required keys first)
        return {"type": "object", "properties": {
            "urgent": {"type": "boolean"},
            "order_id": {"enum": [*orders, None]},
            "account_id": {"enum": [*accounts, None]}},
            "required": ["urgent", "order_id", "account_id"], "additionalProperties": False}


# the contract's own id patterns, unanchored: an order id in any case, digits not part of a date
_ORDER_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])" + ORDER_ID.strip("^$") + r"(?![0-9])", re.I)
_ACCOUNT_CANDIDATE = re.compile(r"(?<![A-Za-z0-9-])" + ACCOUNT_ID.strip("^$")
                                + r"(?![0-9]|-[0-9])")


def id_candidates(text: str) -> tuple[list[str], list[str]]:
    """The id-shaped strings of a ticket, in order of appearance: order ids (upper-cased, the
    form `ORDER_ID` accepts) and runs of 4-8 digits."""
    orders = list(dict.fromkeys(m.upper() for m in _ORDER_CANDIDATE.findall(text)))
    accounts = list(dict.fromkeys(_ACCOUNT_CANDIDATE.findall(text)))
    return orders, accounts


class IdsInput(BaseModel):
    """The ticket and what the extractor read from it (`support_steps.check_ids`)."""

    text: str
    order_id: Optional[str] = None
    account_id: Optional[str] = None
    urgent: bool = False


class IdsFound(BaseModel):
    """What `support_steps.check_ids` filled in: only the ids it set (the rest keep their value
    and owner in the workflow's state)."""

    order_id: Optional[str] = None
    account_id: Optional[str] = None


class Passage(BaseModel):
    id: str
    title: str
    text: str
    score: float

    def __prompt__(self) -> str:
        """How a passage reads in a prompt: its id (the reasoner names it) and its text; the
        title repeats the text's subject and the score means nothing to a model."""
        return f"[{self.id}] {self.text}"


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


class Draft(BaseModel):
    """The reasoner's output: a short chain of thought, then the reply. Only ``draft`` reaches the
    customer (the workflow merges these fields into its state; `compose` answers with ``draft``).
    Fine-tuned chain of thought: the adapter learned this decomposition from generated rows
    (data/make_pipeline_data.py), the schema makes the order binding."""

    policy: str = Field(max_length=40)    # the id of the passage that applies, or "none"
    record: str = Field(max_length=80)    # what the looked-up record says that matters
    draft: str = Field(min_length=1, max_length=600)

    @classmethod
    def constraint_for(cls, inp: "DraftInput") -> dict[str, Any] | None:
        """How the reasoner may answer this ticket (slmflow's per-input decoding constraint,
        `Settings.constraint`): ``policy`` is one of the retrieved passages' ids, and ``draft``
        the record sentence code writes (`support_steps.record_sentence`, the one the adapter was
        trained to write) followed by one or two sentences quoted word for word from *that*
        passage. The fine-tuned chain of thought becomes binding: the reply quotes the passage
        the model named.

        Why: free text from a 135M model restated policy wrongly where no rule sees it ("click
        the reset link" for the e-mail change's confirmation link, "The return label from the
        order page is printed on the return return label"), and the verifier model approved
        it. Quoted sentences state only policy; which passage applies stays the model's choice,
        the job it was fine-tuned for, and which of its sentences answer the ticket is ranked
        by similarity to the ticket (`support_steps.rank_sentences`; ``SUPPORT_SENTENCES=model``
        leaves that to the model too, which then quotes a passage's first sentences whatever
        the question). Measured on the scenario suites (docs/benchmarks.md): free text 19/26
        held-out and 14/20 development; any two passage sentences 20/26 and 15/20; sentences of
        the named passage, the model's pick 22/26 and 17/20, ranked 24/26 and 18/20. It is also
        faster: once the passage is named, the rest of the reply is forced and evaluated in one
        batch (fast-forward) instead of decoded token by token.
        ``SUPPORT_REPLY=free`` turns the constraint off (the reply is then any text the type
        allows: how the figures before it were made)."""
        import os

        from support_steps import reply_pattern

        if os.environ.get("SUPPORT_REPLY", "").lower() == "free":
            return None
        record = record_note_constraint(inp)

        return {"type": "object", "anyOf": [{"type": "object", "properties": {
            "policy": {"const": p.id},
            "record": record,
            "draft": {"type": "string", "pattern": reply_pattern(inp, [p])}},
            "required": ["policy", "record", "draft"], "additionalProperties": False}
            for p in inp.passages]}


def record_note_constraint(inp: "DraftInput") -> dict[str, Any]:
    """The schema of the reasoner's ``record`` note on this input. Where the ticket gave the id
    its category looks up, the note is the one `support_steps.record_sentence` writes for that
    record (every training row's note is: tests/test_support_data.py), so it is forced and
    evaluated in one batch instead of decoded a token per character of a date; without an id,
    one of the two notes the adapter learned ("no order id" where the policy needs the id,
    "none needed" where it does not). The note cannot change the reply: the passage is named
    before it and the reply is quoted from that passage (`constraint_for`)."""
    from support_steps import LOOKUP_KIND, record_sentence

    kind = LOOKUP_KIND.get(inp.category)
    if kind is None:
        return {"type": "string", "maxLength": 80}
    rid = inp.order_id if kind == "order" else inp.account_id
    if rid is None:
        return {"enum": [f"no {kind} id", "none needed"]}
    lookup = inp.lookup if isinstance(inp.lookup, dict) else None
    return {"const": record_sentence(kind, rid, lookup, True)[1]}


class Reply(BaseModel):
    """The draft between the reasoner and the verifier (`support_steps.tidy`)."""

    draft: str


class TidyInput(BaseModel):
    """What `support_steps.tidy` reads: the reasoner's draft and the record it was drafted from."""

    draft: str
    category: Category
    order_id: Optional[str] = None
    account_id: Optional[str] = None
    lookup: Optional[dict[str, Any]] = None


class VerifyInput(BaseModel):
    text: str
    draft: str = Field(min_length=1)
    passages: list[Passage]
    lookup: Optional[dict[str, Any]] = None


VerdictReason = Literal["ok", "wrong_id", "wrong_fact", "unsupported_promise", "off_topic",
                        "incomplete"]


class Verdict(BaseModel):
    """The verifier's decision: the kind of fault first (what it checked), then the verdict. A
    rejection's reason reaches the run's detail and the review queue."""

    reason: VerdictReason
    approved: bool


class AnswerInput(BaseModel):
    draft: str
    passages: list[Passage]


class Answer(BaseModel):
    reply: str
    sources: list[str]


class SingleInput(BaseModel):
    """The single-prompt baseline's input (workflow_single.yaml): the ticket and its passages."""

    text: str
    passages: list[Passage]


class SingleAnswer(BaseModel):
    """The single-prompt baseline's output: the whole job in one constrained call."""

    category: Category
    order_id: Optional[str] = Field(None, max_length=12)
    account_id: Optional[str] = Field(None, max_length=12)
    draft: str = Field(min_length=1, max_length=600)
