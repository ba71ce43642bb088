"""`Cached`: a `Model` that answers repeated deterministic calls from memory.

Why a wrapper in `models/`: caching is a property of calls to a model, not of the gateway; the
gateway stacks it (``Cached(Guarded(Fallback(Resilient(slm), Resilient(strong))))``) and a
library user can wrap any model the same way. What happened on a call (``miss`` / ``hit`` /
``semantic``) goes to the current span and to ``on_status``: the gateway passes a function that notes it on the
request it is answering (`slmflow.gateway.wrappers.RequestInfo`), so this module knows nothing of
requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Sequence

from .. import tracing
from ..types import MessageLike, Response, Settings, ToolSpec, as_messages
from .base import Model, WrapperModel, pass_through

__all__ = ["Cached"]


def _schema_json(schema: Any) -> Any:
    if schema is None:
        return None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    return schema


def _settings_json(s: Settings | None) -> Any:
    s = s or Settings()
    return [s.max_tokens, s.temperature, s.top_p, s.seed, list(s.stop), s.tool_choice,
            s.constraint]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str,
                                     ensure_ascii=True).encode()).hexdigest()


class _TTLStore:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._d.get(key)
            if item is None:
                return None
            if item[0] < time.monotonic():
                del self._d[key]
                return None
            self._d.move_to_end(key)
            return item[1]

    def put(self, key: str, value: Any, ttl_s: float) -> None:
        with self._lock:
            self._d[key] = (time.monotonic() + ttl_s, value)
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


class Cached(WrapperModel):
    """Answers repeated calls from memory for ``ttl_s`` seconds.

    Key: the model identity, every message, the schema, the tools and the settings. Only
    deterministic calls are cached (temperature 0, or a fixed seed). ``embed`` (a
    ``list[str] -> array`` of unit vectors) turns on the semantic cache: a call whose context
    (everything but the last user message) matches exactly and whose last user message embeds
    within cosine ``threshold`` of a cached one gets that answer (marked ``semantic``).
    ``on_status(status)`` hears ``miss`` / ``hit`` / ``semantic`` for each cacheable call.
    """

    def __init__(self, wrapped: Model, *, ttl_s: float = 300.0, max_entries: int = 10_000,
                 embed: Callable[[list[str]], Any] | None = None, threshold: float = 0.95,
                 max_semantic: int = 2_000,
                 on_status: Callable[[str], None] | None = None) -> None:
        super().__init__(wrapped)
        self.on_status = on_status
        self.ttl_s = ttl_s
        self._exact = _TTLStore(max_entries)
        self.embed = embed
        self.threshold = threshold
        self.max_semantic = max_semantic
        self._sem: dict[str, list[tuple[float, Any, Response]]] = {}
        self._sem_lock = threading.Lock()
        self.hits = 0
        self.semantic_hits = 0
        self.misses = 0

    def _keys(self, messages: Any, schema: Any, tools: Any,
              settings: Settings | None) -> tuple[str, str, str | None]:
        msgs = [[m.role, m.content, m.name, m.tool_call_id] for m in as_messages(messages)]
        tl = [t.to_openai() for t in tools] if tools else None
        base = [self.wrapped.info.identity, _schema_json(schema), tl, _settings_json(settings)]
        exact = _digest(base + [msgs])
        last = None
        if msgs and msgs[-1][0] == "user":
            last = msgs[-1][1]
            ctx = _digest(base + [msgs[:-1]])
        else:
            ctx = exact
        return exact, ctx, last

    @staticmethod
    def _cacheable(settings: Settings | None) -> bool:
        s = settings or Settings()
        return s.temperature == 0 or s.seed is not None

    def _mark(self, status: str) -> None:
        if self.on_status is not None:
            self.on_status(status)
        sp = tracing._trace.get_current_span() if hasattr(tracing, "_trace") else None
        if sp is not None:
            tracing.set_attributes(sp, {"slmflow.cache": status})

    async def _semantic_lookup(self, ctx: str, last: str) -> tuple[Response | None, Any]:
        import numpy as np

        with self._sem_lock:
            entries = [e for e in self._sem.get(ctx, ()) if e[0] >= time.monotonic()]
        vec = np.asarray((await asyncio.to_thread(self.embed, [last]))[0], dtype=np.float32)
        if not entries:
            return None, vec
        mat = np.stack([e[1] for e in entries])
        sims = mat @ vec
        i = int(np.argmax(sims))
        if float(sims[i]) >= self.threshold:
            return entries[i][2], vec
        return None, vec

    async def _lookup(self, messages: Any, schema: Any, tools: Any,
                      settings: Settings | None) -> tuple[Response | None, tuple]:
        """A cached answer (marked hit / semantic) or None (marked miss), and the keys to
        store the new answer under."""
        t0 = time.perf_counter()
        exact, ctx, last = self._keys(messages, schema, tools, settings)
        hit = self._exact.get(exact)
        if hit is not None:
            self.hits += 1
            self._mark("hit")
            return replace(hit, latency_s=time.perf_counter() - t0,
                           time_to_first_token_s=None), ()
        vec = None
        if self.embed is not None and last is not None and schema is None and not tools:
            r, vec = await self._semantic_lookup(ctx, last)
            if r is not None:
                self.semantic_hits += 1
                self._mark("semantic")
                return replace(r, latency_s=time.perf_counter() - t0,
                               time_to_first_token_s=None), ()
        self.misses += 1
        self._mark("miss")
        return None, (exact, ctx, vec)

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        if not self._cacheable(settings) or self.ttl_s <= 0:
            return await self.wrapped.generate(messages, schema=schema, tools=tools,
                                               settings=settings)
        hit, keys = await self._lookup(messages, schema, tools, settings)
        if hit is not None:
            return hit
        r = await self.wrapped.generate(messages, schema=schema, tools=tools, settings=settings)
        self._store(keys, r)
        return r

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """A hit is sent whole; a miss streams from the wrapped model and is cached once the
        stream has ended (a stream stopped early, or cut off by the consumer, is not)."""
        inner = self.wrapped.stream(messages, schema=schema, tools=tools, settings=settings)
        if not self._cacheable(settings) or self.ttl_s <= 0:
            async for item in pass_through(inner):
                yield item
            return
        hit, keys = await self._lookup(messages, schema, tools, settings)
        if hit is not None:
            await inner.aclose()
            if hit.text:
                yield hit.text
            yield hit
            return
        async with inner:
            async for delta in inner:
                yield delta
        r = inner.response
        if r is not None and r.finish_reason != "cancelled":
            self._store(keys, r)
        yield r

    def _store(self, keys: tuple, r: Response) -> None:
        exact, ctx, vec = keys
        self._exact.put(exact, r, self.ttl_s)
        if vec is not None:
            with self._sem_lock:
                lst = self._sem.setdefault(ctx, [])
                lst.append((time.monotonic() + self.ttl_s, vec, r))
                if len(lst) > self.max_semantic:
                    del lst[0]

    def clear(self) -> None:
        self._exact.clear()
        with self._sem_lock:
            self._sem.clear()
