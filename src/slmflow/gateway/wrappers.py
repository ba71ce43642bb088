"""The gateway's cross-cutting features as `Model` wrappers (each is itself a `Model`):

* `Cached`      exact-match response cache with a TTL, optionally a semantic cache on top
                (embedding similarity of the last user message, same context, over a threshold);
* `Escalating`  confidence-gated escalation: a low-confidence (or failed) answer of the small
                model goes to the stronger one, and the pair is handed to ``on_escalation`` as a
                training example for the small model;
* `Resilient`   a per-call timeout and a circuit breaker in front of a backend.

They stack: ``Cached(Guarded(Resilient(Escalating(slm, strong))))``. Each streams
(`Model.stream`) as it generates, except `Escalating`: whether to escalate depends on the
confidence of the whole answer, so it answers whole (one delta) through `generate`.
What each did on a call (cache hit, escalation) is written on the `RequestInfo` of the current
request, if any, and on the current span.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable, Sequence

from .. import tracing
from ..errors import (ContextLengthError, ModelError, ServerError, ServerUnreachableError,
                      StructuredOutputError)
from ..models.base import Model, WrapperModel, pass_through
from ..types import MessageLike, Response, Settings, ToolSpec, as_messages

__all__ = ["RequestInfo", "current_info", "Cached", "Escalating", "Resilient", "CircuitBreaker",
           "BackendTimeoutError", "CircuitOpenError"]


class BackendTimeoutError(ServerUnreachableError):
    """The backend did not answer within the timeout (HTTP 504)."""


class CircuitOpenError(ServerUnreachableError):
    """The backend failed repeatedly; calls are refused until the breaker's reset time (503)."""


@dataclass
class RequestInfo:
    """What the wrappers did during one request."""

    cache: str | None = None          # None | "miss" | "hit" | "semantic"
    escalated: bool = False
    escalation_reason: str | None = None
    primary_model: str | None = None
    primary_confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_INFO: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "slmflow_gateway_request", default=None)


def current_info() -> RequestInfo | None:
    return _INFO.get()


def set_info(info: RequestInfo | None) -> contextvars.Token:
    return _INFO.set(info)


# ---- cache -------------------------------------------------------------------------------------

def _schema_json(schema: Any) -> Any:
    if schema is None:
        return None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    return schema


def _settings_json(s: Settings | None) -> Any:
    s = s or Settings()
    return [s.max_tokens, s.temperature, s.top_p, s.seed, list(s.stop), s.tool_choice]


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
    """

    def __init__(self, wrapped: Model, *, ttl_s: float = 300.0, max_entries: int = 10_000,
                 embed: Callable[[list[str]], Any] | None = None, threshold: float = 0.95,
                 max_semantic: int = 2_000) -> None:
        super().__init__(wrapped)
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
        info = current_info()
        if info is not None:
            info.cache = status
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


# ---- escalation -----------------------------------------------------------------------------------

class Escalating(WrapperModel):
    """Calls the small model; when its confidence is under ``threshold`` (or it fails with a model
    or server error, or its structured output stays invalid) calls ``strong`` instead, and passes
    ``on_escalation(messages, weak_response_or_None, strong_response, reason)`` the pair so it can
    be kept as a training example for the small model."""

    def __init__(self, primary: Model, strong: Model, *, threshold: float,
                 on_escalation: Callable[..., None] | None = None) -> None:
        super().__init__(primary)
        self.strong = strong
        self.threshold = threshold
        self.on_escalation = on_escalation

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        weak: Response | None = None
        try:
            weak = await self.wrapped.generate(messages, schema=schema, tools=tools,
                                               settings=settings)
        except ContextLengthError:
            raise
        except (StructuredOutputError, ModelError, ServerError) as e:
            reason = ("invalid_output" if isinstance(e, StructuredOutputError)
                      else "model_error") + f": {e.message}"[:300]
        else:
            if weak.confidence is None or weak.confidence >= self.threshold:
                return weak
            reason = f"low_confidence: {weak.confidence:.3f} < {self.threshold:.3f}"
        info = current_info()
        if info is not None:
            info.escalated, info.escalation_reason = True, reason
            info.primary_model = self.wrapped.info.identity
            info.primary_confidence = weak.confidence if weak else None
        tracing.record_escalation(reason, source=self.wrapped.info.identity,
                                  target=self.strong.info.identity,
                                  confidence=weak.confidence if weak else None)
        strong = await self.strong.generate(messages, schema=schema, tools=tools,
                                            settings=settings)
        if self.on_escalation is not None:
            try:
                self.on_escalation(messages, weak, strong, reason)
            except Exception:  # logging an example must never fail the request
                pass
        return strong

    async def aclose(self) -> None:
        await self.wrapped.aclose()
        await self.strong.aclose()


# ---- resilience --------------------------------------------------------------------------------------

class CircuitBreaker:
    """closed → (``failures`` consecutive failures) → open for ``reset_s`` → half-open: one trial
    call; success closes it, failure opens it again."""

    def __init__(self, failures: int = 5, reset_s: float = 30.0) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.count = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        with self._lock:
            st = self.state
            if st == "closed":
                return True
            if st == "half_open" and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.count, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.count += 1
            self._trial = False
            if self.count >= self.failures or self.opened_at is not None:
                self.opened_at = time.monotonic()

    def release(self) -> None:
        """A call that ended without a verdict (its consumer left) gives its half-open trial
        back, so that the next call can be the trial."""
        with self._lock:
            self._trial = False

    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (time.monotonic() - self.opened_at))


class Resilient(WrapperModel):
    """A timeout per call and a circuit breaker: backend failures (server errors, generation
    errors, timeouts) count; client errors (context length, invalid structured output) do not."""

    def __init__(self, wrapped: Model, *, timeout_s: float | None = 120.0,
                 breaker: CircuitBreaker | None = None, name: str | None = None) -> None:
        super().__init__(wrapped)
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self.name = name or wrapped.info.identity

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        if not self.breaker.allow():
            raise CircuitOpenError(
                f"backend {self.name!r} is failing; retry in {self.breaker.retry_after():.0f} s",
                where=f"model {self.name}", retry_after=self.breaker.retry_after())
        try:
            coro = self.wrapped.generate(messages, schema=schema, tools=tools, settings=settings)
            r = await (asyncio.wait_for(coro, self.timeout_s) if self.timeout_s else coro)
        except asyncio.TimeoutError:
            self.breaker.failure()
            raise BackendTimeoutError(f"backend {self.name!r} did not answer within "
                                      f"{self.timeout_s:g} s", where=f"model {self.name}") from None
        except (ContextLengthError, StructuredOutputError):
            self.breaker.success()
            raise
        except (ModelError, ServerError):
            self.breaker.failure()
            raise
        self.breaker.success()
        return r

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """The timeout bounds the whole stream (each wait for the next delta gets what is left
        of it); the breaker counts the stream's outcome as it counts a call's."""
        if not self.breaker.allow():
            raise CircuitOpenError(
                f"backend {self.name!r} is failing; retry in {self.breaker.retry_after():.0f} s",
                where=f"model {self.name}", retry_after=self.breaker.retry_after())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s if self.timeout_s else None
        try:
            async with self.wrapped.stream(messages, schema=schema, tools=tools,
                                           settings=settings) as inner:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):  # no task: same context
                            delta = await inner.__anext__()
                    except StopAsyncIteration:
                        break
                    yield delta
        except TimeoutError:
            self.breaker.failure()
            raise BackendTimeoutError(f"backend {self.name!r} did not answer within "
                                      f"{self.timeout_s:g} s", where=f"model {self.name}") from None
        except (ContextLengthError, StructuredOutputError):
            self.breaker.success()
            raise
        except (ModelError, ServerError):
            self.breaker.failure()
            raise
        except (GeneratorExit, asyncio.CancelledError):
            self.breaker.release()
            raise
        self.breaker.success()
        yield inner.response
