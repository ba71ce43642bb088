"""Streamed chat completions: the server-sent events of one answer, and the task that feeds them.

Why a module of its own: a streamed answer is two halves that run apart, a producer task that
runs the model's stream, logs the call and feeds a queue (`produce`), and the response body that
turns the queue into OpenAI ``chat.completion.chunk`` events (`ChatStream`); the one-shot answers
(service.py) need neither.

Streaming (``stream: true``): a model target streams as it decodes (`Model.stream` through the
whole stack); the call log and the cache still get the complete answer, the output guardrails
check it in windows before they are sent, and a client that disconnects stops the generation. An
agent or a workflow answers whole; its answer is replayed as SSE chunks (`ChatStream.replay`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import tracing
from ..guardrails import GuardrailViolation, collect_decisions
from ..store.calllog import CallRecord
from ..types import Message, Settings
from .auth import Reservation
from .schemas import ApiError, map_error
from .wrappers import RequestInfo, set_info

if TYPE_CHECKING:
    from .app import Gateway, Target
    from .service import Service

__all__ = ["ChatStream", "produce"]


async def produce(svc: Service, t: Target, msgs: list[Message], schema: Any,
                  settings: Settings, rec: CallRecord, held: Reservation | None,
                  info: RequestInfo, q: asyncio.Queue) -> None:
    """Run a model target's stream (in its own task: its spans and context variables stay
    in one context) and put ``("delta", text)``, then ``("end", summary)`` or
    ``("error", exception)`` on ``q``. The call is logged here, whole answer included,
    whatever the client does; a cancelled task (the client went away) stops the model and
    logs what was generated up to then."""
    gw = svc.gw
    token = set_info(info)
    t0 = time.perf_counter()
    decisions: list = []
    parts: list[str] = []
    try:
        with tracing.span("gateway", "chat.completions", attributes={
                "slmflow.gateway.target": t.name, "slmflow.gateway.key": rec.key_name,
                "slmflow.stream": True}) as sp, collect_decisions() as decisions:
            rec.trace_id = tracing.current_trace_id() or uuid.uuid4().hex
            async with t.model.stream(msgs, schema=schema, settings=settings) as s:
                async for delta in s:
                    parts.append(delta)
                    q.put_nowait(("delta", delta))
            r = s.response
            tracing.set_attributes(sp, {"slmflow.cache": info.cache,
                                        "slmflow.escalated": info.escalated or None})
    except BaseException as e:
        gw.release(held)
        gone = isinstance(e, (asyncio.CancelledError, GeneratorExit))
        rec.status = "blocked" if isinstance(e, GuardrailViolation) else "error"
        rec.error = ("ClientDisconnected: the client went away mid-stream" if gone else
                     f"{type(e).__name__}: {getattr(e, 'message', str(e))}"[:1000])
        rec.latency_s = time.perf_counter() - t0
        rec.meta["guardrails"] = [d.as_dict() for d in decisions if d.action != "pass"]
        if parts:  # what the client was sent
            rec.output = svc.log_redact("".join(parts))
            rec.meta["streamed_chars"] = sum(len(p) for p in parts)
        pub = e if gone else svc.public(e, rec)
        svc.finish(rec, t.name)
        q.put_nowait(("error", pub))
        if gone:
            raise
        return
    finally:
        from .wrappers import _INFO

        _INFO.reset(token)
    rec.latency_s = time.perf_counter() - t0
    rec.cache = info.cache
    svc.model_record(rec, r, info)
    shown = [d.as_dict() for d in decisions if d.action != "pass"]
    if shown:
        rec.meta["guardrails"] = shown
    svc.finish(rec, t.name, usage=r.usage)
    await gw.settle(held, r.usage.total_tokens)
    q.put_nowait(("end", {
        "finish_reason": "length" if r.finish_reason == "length" else "stop",
        "usage": {"prompt_tokens": r.usage.input_tokens,
                  "completion_tokens": r.usage.output_tokens,
                  "total_tokens": r.usage.total_tokens},
        "slmflow": {"call_id": rec.id, "trace_id": rec.trace_id, "cache": info.cache,
                    "confidence": r.confidence, "escalated": bool(rec.escalated),
                    "model": rec.model, "run_id": None, "guardrails": shown}}))


class ChatStream:
    """A streamed chat completion: the server-sent events of one answer.

    For a model target a producer task (`produce`) runs the model's stream and feeds
    a queue; `events` turns the queue into OpenAI ``chat.completion.chunk`` events as the
    pieces arrive: a first chunk with the role (and the ``slmflow`` object as far as it is known:
    call id, trace id, cache), content deltas, a chunk with the finish reason (and the whole
    ``slmflow`` object: confidence, model, guardrails), the usage chunk when asked for, then
    ``data: [DONE]``. The finish is sent only after the call is committed to the call log
    (``call_log_durable``). A guardrail that blocks mid-stream ends it with finish reason
    ``content_filter``; any other failure mid-stream is an ``{"error": {...}}`` event. When the
    client goes away, the producer is cancelled, which stops the model."""

    def __init__(self, gw: Gateway, model: str, rec: CallRecord, info: RequestInfo) -> None:
        self.gw, self.model, self.rec, self.info = gw, model, rec, info
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self._first: Any = None
        self._replay: dict | None = None

    @classmethod
    def replay(cls, gw: Gateway, body: dict, rec: CallRecord) -> "ChatStream":
        """An answer that is already whole (an agent, a workflow), sent in word-sized pieces."""
        st = cls(gw, body["model"], rec, RequestInfo(cache=rec.cache))
        st._replay = body
        return st

    @property
    def cache(self) -> str | None:
        return self.info.cache

    async def prefetch(self) -> None:
        """Wait for the first item; a failure before any text raises here (an HTTP status)."""
        item = await self.queue.get()
        if item[0] == "error":
            raise item[1]
        self._first = item

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _chunk(self, delta: dict, finish: str | None = None, **extra: Any) -> bytes:
        obj = {"id": f"chatcmpl-{self.rec.id}", "object": "chat.completion.chunk",
               "created": int(self.rec.ts), "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(obj, ensure_ascii=True).encode() + b"\n\n"

    def _usage(self, usage: dict) -> bytes:
        obj = {"id": f"chatcmpl-{self.rec.id}", "object": "chat.completion.chunk",
               "created": int(self.rec.ts), "model": self.model, "choices": [],
               "usage": usage}
        return b"data: " + json.dumps(obj, ensure_ascii=True).encode() + b"\n\n"

    @staticmethod
    def _error(e: BaseException) -> bytes:
        api = map_error(e)
        return b"data: " + json.dumps({"error": {
            "message": api.message, "type": api.type, "param": api.param, "code": api.code}},
            ensure_ascii=True).encode() + b"\n\n"

    async def events(self, include_usage: bool, request: Any = None) -> Any:
        """The SSE body (bytes)."""
        if self._replay is not None:
            async for b in self._replayed(include_usage, request):
                yield b
            return
        rec = self.rec
        try:
            yield self._chunk({"role": "assistant", "content": ""}, slmflow={
                "call_id": rec.id, "trace_id": rec.trace_id, "cache": self.info.cache})
            item = self._first
            while True:
                kind, value = item
                if kind == "delta":
                    yield self._chunk({"content": value})
                elif kind == "end":
                    if not await self._committed():
                        yield self._error(ApiError(
                            503, "the call log could not be written in time; the answer is "
                            "logged once the database is back", "server_error",
                            "call_log_unavailable"))
                        return
                    yield self._chunk({}, value["finish_reason"], slmflow=value["slmflow"])
                    if include_usage:
                        yield self._usage(value["usage"])
                    yield b"data: [DONE]\n\n"
                    return
                else:  # an error after the first piece
                    if isinstance(value, GuardrailViolation):
                        yield self._chunk({}, "content_filter", slmflow={
                            "call_id": rec.id, "trace_id": rec.trace_id,
                            "guardrails": rec.meta.get("guardrails", []),
                            "error": map_error(value).message})
                        yield b"data: [DONE]\n\n"
                    else:
                        yield self._error(value)
                    return
                item = await self.queue.get()
        finally:
            self.stop()  # the client went away (or the answer is complete: a no-op)

    async def _committed(self) -> bool:
        gw = self.gw
        return not gw.config.call_log_durable or await gw.writer.committed(
            gw.config.limits.request_timeout_s)

    async def _replayed(self, include_usage: bool, request: Any) -> Any:
        body = self._replay
        text = body["choices"][0]["message"]["content"] or ""
        yield self._chunk({"role": "assistant", "content": ""}, slmflow=body["slmflow"])
        pieces, cur = [], ""
        for ch in text:
            cur += ch
            if ch in " \n" and len(cur) >= 4:
                pieces.append(cur)
                cur = ""
        if cur:
            pieces.append(cur)
        for i, p in enumerate(pieces):
            if request is not None and i % 16 == 15 and await request.is_disconnected():
                return  # the call is already logged; stop sending
            yield self._chunk({"content": p})
        yield self._chunk({}, body["choices"][0]["finish_reason"])
        if include_usage:
            yield self._usage(body["usage"])
        yield b"data: [DONE]\n\n"

