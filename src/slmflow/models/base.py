"""The `Model` interface: one abstract async method, `generate`.

Why one method: a new backend is one class (as httpx's `BaseTransport.handle_request` or
smolagents' `Model.generate`), and every cross-cutting feature (cache, guardrails, fallback,
tracing) is a `WrapperModel` that is itself a `Model`, so they stack:
`Cached(Guarded(Fallback([slm, strong])))`. Nothing else on this class is abstract.

Why async at the core: a workflow runs parallel branches and the gateway serves many requests on
one event loop. Blocking backends (llama.cpp, torch) run their work in a worker thread and hold a
per-model lock, since one llama.cpp context cannot serve two generations at once. Scripts that
do not want asyncio use `generate_sync`, a thin helper over the same coroutine (never a second
class tree).
"""

from __future__ import annotations

import abc
import asyncio
import threading
from typing import Any, Coroutine, Sequence, TypeVar

from ..types import MessageLike, ModelInfo, Response, Settings, ToolSpec

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside an event loop (a notebook, say): run it on a private loop in a thread.
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=runner)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Model(abc.ABC):
    """A language model. Subclasses implement `generate` and set `info`."""

    info: ModelInfo

    @abc.abstractmethod
    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        """Answer `messages`.

        schema: a pydantic model class or a JSON schema (dict or JSON text); the answer is decoded
            under that constraint and `Response.parsed` holds the validated object.
        tools: tool specs; the answer is one schema-constrained tool call (`Response.tool_calls`),
            or, with ``settings.tool_choice="auto"``, possibly a plain text answer.
        """

    def generate_sync(self, messages: Sequence[MessageLike] | str, **kwargs: Any) -> Response:
        """The same call, for scripts without an event loop."""
        return run_sync(self.generate(messages, **kwargs))

    async def aclose(self) -> None:
        """Release resources (weights, connections). Safe to call twice."""

    def __repr__(self) -> str:
        info = getattr(self, "info", None)
        return f"{type(self).__name__}({info.identity if info else '?'})"


class WrapperModel(Model):
    """A `Model` that delegates to another: the base of cache, guardrails, fallback, tracing."""

    def __init__(self, wrapped: Model) -> None:
        self.wrapped = wrapped

    @property
    def info(self) -> ModelInfo:  # type: ignore[override]
        return self.wrapped.info

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        return await self.wrapped.generate(messages, schema=schema, tools=tools,
                                           settings=settings)

    async def aclose(self) -> None:
        await self.wrapped.aclose()


class SettingsOverride(WrapperModel):
    """A model whose calls always use some settings, e.g. ``schema_hint=False`` for an adapter
    fine-tuned on the bare prompt."""

    def __init__(self, wrapped: Model, **overrides: Any) -> None:
        super().__init__(wrapped)
        self.overrides = overrides

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        settings = (settings or Settings()).replace(**self.overrides)
        return await self.wrapped.generate(messages, schema=schema, tools=tools,
                                           settings=settings)
