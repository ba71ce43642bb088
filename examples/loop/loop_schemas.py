"""Types of the improvement-loop example: a three-way support router ("triage")."""

from typing import Literal

from pydantic import BaseModel


class Ticket(BaseModel):
    text: str


class Route(BaseModel):
    category: Literal["refund", "shipping", "billing"]
