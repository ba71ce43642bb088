"""Fakes shipped with the library: `FunctionModel` and `ScriptedModel`.

Why ship them: users' unit tests of their own agents and workflows need a model that answers
instantly and deterministically (as pydantic-ai's `FunctionModel` or httpx's `MockTransport`).
They go through the very same structured-output path as real backends (validation, one repair
step, tool-call parsing), so a test written against a fake exercises the real contract. They are
for unit tests only; a feature is proven against a real model.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any, Callable, Iterable, Sequence

from ..errors import GenerationError
from ..structured import OutputSpec, generate_validated
from ..types import Message, MessageLike, ModelInfo, Response, Settings, ToolSpec, Usage
from .base import Model, call_parts


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    return json.dumps(value)


class FunctionModel(Model):
    """A model whose answer is computed by a Python function.

    ``fn(messages, spec)`` gets the `Message` list and the `OutputSpec` (or None) and returns the
    answer: a string, a dict / pydantic object (serialised to JSON), or a full `Response`. It may be
    sync or async. ``repair=True`` in the second call tells it this is the repair attempt.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str = "function",
                 confidence: float | None = 1.0, delay_s: float = 0.0) -> None:
        self.fn = fn
        self.info = ModelInfo("function", name)
        self.confidence = confidence
        self.delay_s = delay_s
        self.calls: list[list[Message]] = []
        self._wants_repair = "repair" in inspect.signature(fn).parameters

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        settings, spec, msgs = call_parts(messages, schema, tools, settings)
        self.calls.append(msgs)

        async def attempt(s: OutputSpec | None, repair: bool) -> Response:
            t0 = time.perf_counter()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            kwargs = {"repair": repair} if self._wants_repair else {}
            out = self.fn(msgs, s, **kwargs)
            if inspect.isawaitable(out):
                out = await out
            if isinstance(out, Response):
                return out
            text = _to_text(out)
            n_in = sum(len(m.content.split()) for m in msgs)
            return Response(text=text, model=self.info, usage=Usage(n_in, len(text.split())),
                            latency_s=time.perf_counter() - t0, confidence=self.confidence)

        return await generate_validated(attempt, spec, where=self.info.identity)


class ScriptedModel(FunctionModel):
    """A model that returns the given answers in order, and fails loudly when they run out."""

    def __init__(self, answers: Iterable[Any], *, name: str = "scripted",
                 confidence: float | None = 1.0) -> None:
        self._answers = list(answers)
        self._next = 0
        super().__init__(self._answer, name=name, confidence=confidence)

    def _answer(self, messages: list[Message], spec: OutputSpec | None) -> Any:
        if self._next >= len(self._answers):
            raise GenerationError(
                f"ScriptedModel ran out of answers after {len(self._answers)} calls",
                where=self.info.identity)
        answer = self._answers[self._next]
        self._next += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def remaining(self) -> int:
        return len(self._answers) - self._next
