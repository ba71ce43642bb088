"""The `Model` interface: one abstract async method, `generate`.

Why one method: a new backend is one class (as httpx's `BaseTransport.handle_request` or
smolagents' `Model.generate`), and every cross-cutting feature (cache, guardrails, fallback,
tracing) is a `WrapperModel` that is itself a `Model`, so they stack:
`Cached(Guarded(Fallback([slm, strong])))`. Nothing else on this class is abstract.

Streaming (`Model.stream`): an async iterator of text deltas whose `ResponseStream.response` holds
the whole `Response` once the iterator is exhausted. A backend that can stream overrides
`_stream` (an async generator that yields the deltas, then the `Response`); every other backend,
and every wrapper that only overrides `generate`, gets the default: `generate`, then the whole
text as one delta. That default keeps a wrapper that has not been taught to stream *correct*
(a guardrail still sees the whole answer); it never passes the inner stream around it.

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
from typing import Any, AsyncIterator, Coroutine, Sequence, TypeVar

from ..structured import OutputSpec
from ..types import Message, MessageLike, ModelInfo, Response, Settings, ToolSpec, as_messages

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


def import_backend(name: str, extra: str, *modules: str) -> list[Any]:
    """A backend's optional packages `modules`, imported in order; when one is missing, a
    `BackendUnavailableError` (``where=extra``) that names them (`name`) and the pip extra that
    installs them."""
    import importlib

    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"{name} {'are' if len(modules) > 1 else 'is'} not installed ({e}); "
            f"pip install 'slmflow[{extra}]'", where=extra) from None


def call_parts(messages: Sequence[MessageLike] | str, schema: Any,
               tools: Sequence[ToolSpec] | None, settings: Settings | None
               ) -> tuple[Settings, OutputSpec | None, list[Message]]:
    """What a backend's `generate` (or `_stream`) starts from: the settings (the defaults for
    None), the `OutputSpec` of `schema` or `tools` (None for a plain text answer) and the
    message list, in that order (a bad schema is a `SchemaError` before the messages are read)."""
    settings = settings or Settings()
    spec = OutputSpec.build(schema, tools, settings.tool_choice)
    return settings, spec, as_messages(messages)


def sent_messages(msgs: list[Message], spec: OutputSpec | None,
                  settings: Settings) -> list[Message]:
    """The messages one attempt sends: with the schema instruction in the system message when
    there is a spec and ``settings.schema_hint`` is on, else `msgs` as they are."""
    return spec.with_instruction(msgs) if spec is not None and settings.schema_hint else msgs


class ResponseStream:
    """What `Model.stream` returns: ``async for delta in stream`` gives the answer's text in
    pieces as they are produced; once the loop ends, `response` is the whole `Response` (text,
    usage, finish reason, confidence, parsed value), the same object `generate` would return
    (`text` is exactly the concatenation of the deltas). Leaving the loop early, or
    ``async with model.stream(...) as s``, closes the stream, which stops the generation.
    ``await stream.collect()`` drains it and returns the response."""

    def __init__(self, source: AsyncIterator[Any], where: str = "model") -> None:
        self._source = source
        self._where = where
        self._parts: list[str] = []
        self.response: Response | None = None

    @property
    def text(self) -> str:
        """The text streamed so far."""
        return "".join(self._parts)

    def __aiter__(self) -> "ResponseStream":
        return self

    async def __anext__(self) -> str:
        if self.response is not None:
            raise StopAsyncIteration
        while True:
            try:
                item = await self._source.__anext__()
            except StopAsyncIteration:
                from ..errors import GenerationError

                raise GenerationError("the stream ended without its final response",
                                      where=self._where) from None
            if isinstance(item, Response):
                self.response = item
                await self.aclose()
                raise StopAsyncIteration
            if item:
                self._parts.append(item)
                return item

    async def collect(self) -> Response:
        """Read the rest of the stream; the whole `Response`."""
        async for _ in self:
            pass
        assert self.response is not None
        return self.response

    async def aclose(self) -> None:
        """Stop the stream (the backend stops generating). Safe to call twice."""
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> "ResponseStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


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

    def stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
               tools: Sequence[ToolSpec] | None = None,
               settings: Settings | None = None) -> ResponseStream:
        """The same call, streamed: a `ResponseStream` of text deltas, then its `response`.

        With a schema the deltas are the JSON text as it is decoded, validated at the end (the
        final `Response` carries the parsed object, or the stream raises `StructuredOutputError`).
        A stream cannot take back text it has sent, so where `generate` would make its one
        repair attempt a streaming backend raises instead. Backends that cannot stream (and
        tool calls) yield the whole text once, after `generate`."""
        info = getattr(self, "info", None)
        return ResponseStream(self._stream(messages, schema=schema, tools=tools,
                                           settings=settings),
                              where=info.identity if info else type(self).__name__)

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """Yield text deltas, then the final `Response`. Default: `generate`, one delta."""
        r = await self.generate(messages, schema=schema, tools=tools, settings=settings)
        if r.text:
            yield r.text
        yield r

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

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """The wrapped model's stream, when this wrapper does not change `generate`; a wrapper
        that does (and does not stream itself) answers through its own `generate`, one delta,
        so its checks are never bypassed."""
        if type(self).generate is not WrapperModel.generate:
            async for item in Model._stream(self, messages, schema=schema, tools=tools,
                                            settings=settings):
                yield item
            return
        async for item in pass_through(self.wrapped.stream(messages, schema=schema, tools=tools,
                                                           settings=settings)):
            yield item

    async def aclose(self) -> None:
        await self.wrapped.aclose()


async def pass_through(stream: ResponseStream) -> AsyncIterator[Any]:
    """A `_stream` body that hands on another stream: its deltas, then its response; closing
    this generator closes that stream."""
    async with stream:
        async for delta in stream:
            yield delta
        yield stream.response


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

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        settings = (settings or Settings()).replace(**self.overrides)
        async for item in pass_through(self.wrapped.stream(messages, schema=schema, tools=tools,
                                                           settings=settings)):
            yield item
