"""`make demo`: what the embedded default model does with no server and no download.

Until the workflow layer lands this is the structured-generation job: the embedded SmolLM2-135M
reads customer-support tickets and returns typed fields under schema-constrained decoding. Every
answer validates against the pydantic model; the table shows latency, tokens and confidence.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

TICKETS = [
    "My order #A-1042 arrived broken, I want my money back.",
    "I was charged twice for my subscription this month, account 88231.",
    "Where is my package? Order B-77 has not shipped yet and it's been 10 days.",
    "How do I change the email address on my account?",
]


class TicketFields(BaseModel):
    """Fields the extraction agent pulls out of a ticket."""

    category: Literal["refund", "billing", "shipping", "account", "other"]
    order_id: str | None = Field(None, description="order number if the ticket has one")
    urgent: bool


def run_demo(model_name: str = "smollm2-135m") -> None:
    from rich.console import Console
    from rich.table import Table

    from .models.catalog import resolve
    from .types import Message

    console = Console()
    m = resolve(model_name)
    table = Table(title=f"structured extraction on {model_name} (schema-constrained)")
    for col in ("ticket", "fields (validated)", "ms", "tokens in/out", "confidence"):
        table.add_column(col)
    system = Message("system", "You extract fields from customer-support tickets.")
    for t in TICKETS:
        r = m.generate_sync([system, Message("user", t)], schema=TicketFields)
        table.add_row(t, r.parsed.model_dump_json(), f"{r.latency_s * 1000:.0f}",
                      f"{r.usage.input_tokens}/{r.usage.output_tokens}",
                      f"{r.confidence:.2f}" if r.confidence is not None else "n/a")
    console.print(table)
