"""LLM-as-judge: a rubric, any `Model` (local or remote), and a verdict that always parses.

The verdict is decoded under a JSON schema built from the judge's labels::

    {"verdict": Literal[*labels], "score": int 1..5, "reason": str (at most 160 chars)}

so a 135M judge cannot answer off-format: llama.cpp masks every token that would leave the
schema's language, and the structured-output layer's repair step bounds the reason if the first
attempt runs out of tokens. Verdict first, then score, then reason: the decision is made before
any explanation can talk the model out of the format, and a cut-off reason is the only thing a
too-small ``max_tokens`` can cost.

Errors are errors, not verdicts: a judge that times out raises `JudgeTimeoutError`, a judge
model that fails raises its `ModelError`; the suite runner reports the row as *errored* (with
the reason), never as failed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field, create_model

from ..errors import ConfigError, ModelError
from ..types import Message, Settings
from .base import Case, EvalResult

__all__ = ["LLMJudge", "JudgeTimeoutError", "verdict_model"]

REASON_MAX = 160


class JudgeTimeoutError(ModelError):
    """The judge model did not answer within its timeout."""


def verdict_model(labels: Sequence[str]) -> type[BaseModel]:
    """The pydantic schema of a verdict over ``labels``."""
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"a judge needs distinct labels, got {list(labels)}", where="judge")
    return create_model(
        "Verdict",
        verdict=(Literal[tuple(labels)], ...),  # type: ignore[valid-type]
        score=(int, Field(..., ge=1, le=5)),
        reason=(str, Field(..., max_length=REASON_MAX)))


def _show(v: Any, limit: int = 1500) -> str:
    if v is None:
        return "none"
    if hasattr(v, "output") and hasattr(v, "attempts"):
        v = v.output
    if hasattr(v, "model_dump"):
        v = v.model_dump(mode="json")
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) and "text" in x for x in v):
        v = "\n".join(f"- {x['text']}" for x in v)
    if isinstance(v, dict) and "passages" in v:
        return _show(v["passages"], limit)
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[:limit] + " ..."


class LLMJudge:
    """Judge one (case, output) under ``rubric`` with ``model`` (a `Model` or catalog name).

    labels / pass_labels: the verdict's vocabulary and which labels count as passing.
    include: which parts of the case the judge sees (input, context, expected, output).
    timeout_s: per verdict; a timeout raises `JudgeTimeoutError`.
    few_shot: worked examples (``{"user": text, "verdict": {...}}``) shown before the case; a
    learned rubric (`slmflow.evals.learned`) fills them from reviewers' decisions.
    adapter: a LoRA from the adapter registry applied to ``model`` (a learned judge's).
    """

    def __init__(self, rubric: str, *, model: Any = "smollm2-135m",
                 labels: Sequence[str] = ("pass", "fail"), pass_labels: Sequence[str] = ("pass",),
                 timeout_s: float | None = 120.0,
                 include: Sequence[str] = ("input", "context", "expected", "output"),
                 max_tokens: int = 96, few_shot: Sequence[dict[str, Any]] = (),
                 adapter: str | None = None) -> None:
        if not rubric.strip():
            raise ConfigError("a judge needs a rubric", where="judge")
        unknown = set(pass_labels) - set(labels)
        if unknown:
            raise ConfigError(f"pass_labels {sorted(unknown)} are not among labels {list(labels)}",
                              where="judge")
        bad = set(include) - {"input", "context", "expected", "output"}
        if bad:
            raise ConfigError(f"include: unknown parts {sorted(bad)}", where="judge")
        self.rubric = rubric.strip()
        self.model_spec = model
        self.labels = tuple(labels)
        self.pass_labels = tuple(pass_labels)
        self.timeout_s = timeout_s
        self.include = tuple(include)
        self.max_tokens = max_tokens
        self.few_shot = list(few_shot)
        self.adapter = adapter  # a registry adapter (``judge.<name>@v2``) on the judge model
        self.schema = verdict_model(self.labels)

    @property
    def model(self) -> Any:
        from ..agents import resolve_model

        return resolve_model(self.model_spec, self.adapter, where="judge")

    def system_prompt(self) -> str:
        """The system message (also the instructions of the judge agent a LoRA is trained as,
        so training and judging see the same prompt)."""
        return (f"You are a strict evaluator. {self.rubric}\n"
                f"Answer with JSON: verdict (one of {', '.join(self.labels)}), score (1 = worst, "
                "5 = best), reason (one short sentence).")

    def user_text(self, case: Case | None, output: Any) -> str:
        """The user message: the parts of the case the judge sees, and the answer."""
        parts = []
        for p in self.include:
            if p == "output":
                parts.append(f"ANSWER: {_show(output)}")
            elif case is not None:
                v = getattr(case, p)
                if v is not None:
                    parts.append(f"{p.upper()}: {_show(v)}")
        return "\n".join(parts)

    def messages(self, case: Case | None, output: Any) -> list[Message]:
        msgs = [Message("system", self.system_prompt())]
        for ex in self.few_shot:
            msgs += [Message("user", ex["user"]), Message("assistant", json.dumps(ex["verdict"]))]
        return msgs + [Message("user", self.user_text(case, output))]

    async def verdict(self, case: Case | None, output: Any) -> BaseModel:
        """The parsed verdict object (raises `JudgeTimeoutError` / `ModelError`)."""
        call = self.model.generate(self.messages(case, output), schema=self.schema,
                                   settings=Settings(max_tokens=self.max_tokens, temperature=0.0))
        try:
            r = await (asyncio.wait_for(call, self.timeout_s) if self.timeout_s else call)
        except asyncio.TimeoutError:
            raise JudgeTimeoutError(f"the judge did not answer within {self.timeout_s:g}s",
                                    where=f"judge {self.model.info.identity}") from None
        return r.parsed

    async def judge(self, case: Case | None, output: Any) -> EvalResult:
        v = await self.verdict(case, output)
        ok = v.verdict in self.pass_labels
        return EvalResult(1.0 if ok else 0.0, v.verdict, v.reason, passed=ok,
                          data={"judge_score": v.score})
