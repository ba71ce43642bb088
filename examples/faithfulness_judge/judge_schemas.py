"""Schemas of the faithfulness judge agent: (context, answer) -> verdict."""

from typing import Literal

from pydantic import BaseModel, Field


class JudgeInput(BaseModel):
    context: str = Field(description="the passage the answer must be faithful to")
    answer: str = Field(description="the claim or answer to judge")


class Verdict(BaseModel):
    verdict: Literal["faithful", "unfaithful"]
