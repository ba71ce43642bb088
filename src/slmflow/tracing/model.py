"""`Traced(model)`: a `chat {model}` span around every model call, with GenAI attributes.

Why a wrapper and not code in each backend: tracing a model call is cross-cutting, like cache
and fallback, so it is a `WrapperModel` that stacks with them (``Traced(Cached(slm))``) and every
backend, present or future, gets the same span. The span carries the request (provider, model,
max tokens, temperature), the response (model identity including the adapter, finish reason,
token usage), slmflow's own ``slmflow.confidence`` and ``slmflow.cost.usd`` (from the price
table, see `cost`), and, only with ``capture_content`` on, the messages in and out. A streamed
call (`Model.stream`) keeps its span open until the stream ends.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Sequence

from ..models.base import Model, WrapperModel
from ..types import MessageLike, Response, Settings, ToolSpec, as_messages
from . import attrs as A
from . import set_attributes, span
from .setup import capture_content

_MAX_CONTENT = 16_000


def _messages_json(messages: Sequence[MessageLike] | str) -> str:
    try:
        out = [{"role": m.role, "parts": [{"type": "text", "content": m.content}]}
               for m in as_messages(messages)]
        return json.dumps(out)[:_MAX_CONTENT]
    except Exception:
        return str(messages)[:_MAX_CONTENT]


def record_model_response(sp: Any, r: Response, *, prices: Any = None) -> None:
    """Set the response attributes of a ``chat`` span from a `Response` (also for code that opens
    its own chat spans)."""
    from .cost import prices as default_prices

    try:
        cost = (prices or default_prices()).cost(r.model, r.usage, r.latency_s)
    except Exception:
        cost = None
    set_attributes(sp, {
        A.RESPONSE_MODEL: r.model.identity,
        A.MODEL_IDENTITY: r.model.identity,
        A.ADAPTER: r.model.adapter,
        A.USAGE_INPUT_TOKENS: r.usage.input_tokens,
        A.USAGE_OUTPUT_TOKENS: r.usage.output_tokens,
        A.RESPONSE_FINISH_REASONS: [r.finish_reason or "stop"],
        A.CONFIDENCE: r.confidence,
        A.REPAIRED: r.repaired or None,
        A.COST_USD: cost,
    })
    if capture_content():
        parts: list[dict[str, Any]] = [{"type": "text", "content": r.text}]
        parts += [{"type": "tool_call", "name": c.name, "arguments": c.arguments, "id": c.id}
                  for c in r.tool_calls]
        set_attributes(sp, {A.OUTPUT_MESSAGES: json.dumps(
            [{"role": "assistant", "parts": parts, "finish_reason": r.finish_reason}],
            default=str)[:_MAX_CONTENT]})


class Traced(WrapperModel):
    """Wrap any `Model` so each call opens a ``chat {model}`` span (a child of the current span).

    ``prices``: a `PriceTable` for this model's cost (default: the process-wide table)."""

    def __init__(self, wrapped: Model, *, prices: Any = None) -> None:
        super().__init__(wrapped)
        self.prices = prices

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        info = self.wrapped.info
        s = settings or Settings()
        with span("chat", info.identity, attributes={
                A.PROVIDER_NAME: info.provider, A.REQUEST_MODEL: info.name,
                A.ADAPTER: info.adapter, A.MODEL_IDENTITY: info.identity,
                A.REQUEST_MAX_TOKENS: s.max_tokens, A.REQUEST_TEMPERATURE: s.temperature,
                A.OUTPUT_TYPE: "json" if (schema is not None or tools) else "text"}) as sp:
            if capture_content():
                set_attributes(sp, {A.INPUT_MESSAGES: _messages_json(messages)})
            t0 = time.perf_counter()
            r = await self.wrapped.generate(messages, schema=schema, tools=tools,
                                            settings=settings)
            if not r.latency_s:
                from dataclasses import replace

                r = replace(r, latency_s=time.perf_counter() - t0)
            record_model_response(sp, r, prices=self.prices)
        return r

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """The span stays open until the stream ends (or is closed: ``slmflow.stream.closed``);
        it is the current span only while the wrapped stream works on the next delta."""
        from . import end_span, start_span, use_span

        info = self.wrapped.info
        s = settings or Settings()
        sp = start_span("chat", info.identity, attributes={
            A.PROVIDER_NAME: info.provider, A.REQUEST_MODEL: info.name,
            A.ADAPTER: info.adapter, A.MODEL_IDENTITY: info.identity,
            A.REQUEST_MAX_TOKENS: s.max_tokens, A.REQUEST_TEMPERATURE: s.temperature,
            A.OUTPUT_TYPE: "json" if (schema is not None or tools) else "text",
            "slmflow.stream": True})
        if capture_content():
            set_attributes(sp, {A.INPUT_MESSAGES: _messages_json(messages)})
        t0 = time.perf_counter()
        error: BaseException | None = None
        with use_span(sp):
            inner = self.wrapped.stream(messages, schema=schema, tools=tools, settings=settings)
        try:
            while True:
                with use_span(sp):
                    try:
                        delta = await inner.__anext__()
                    except StopAsyncIteration:
                        break
                yield delta
            r = inner.response
            if not r.latency_s:
                from dataclasses import replace

                r = replace(r, latency_s=time.perf_counter() - t0)
            record_model_response(sp, r, prices=self.prices)
        except GeneratorExit:
            set_attributes(sp, {"slmflow.stream.closed": True})
            raise
        except BaseException as e:
            error = e
            raise
        finally:
            with use_span(sp):
                await inner.aclose()
            end_span(sp, error)
        yield r

    def __repr__(self) -> str:
        return f"Traced({self.wrapped!r})"


def traced(model: Model, **kwargs: Any) -> Model:
    """`Traced(model)`, unless it already is (so wrapping twice never doubles the spans)."""
    m = model
    while isinstance(m, WrapperModel):
        if isinstance(m, Traced):
            return model
        m = m.wrapped
    return Traced(model, **kwargs)
