"""`Resilient`: a per-call timeout and a circuit breaker in front of a backend, as a `Model`.

Why a wrapper in `models/`: a backend that hangs or fails repeatedly must be cut off the same way
wherever it is called (the gateway stacks it under its cache and guardrails; a workflow can wrap a
server model in it). Backend failures (server errors, generation errors, timeouts) count toward
opening the breaker; client errors (a prompt too long, an output that stays invalid) do not: they
say nothing about the backend's health. A stream is bounded and counted as a call is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Sequence

from ..errors import (ContextLengthError, ModelError, ServerError, ServerUnreachableError,
                      StructuredOutputError)
from ..types import MessageLike, Response, Settings, ToolSpec
from .base import Model, WrapperModel

__all__ = ["Resilient", "CircuitBreaker", "BackendTimeoutError", "CircuitOpenError"]


class BackendTimeoutError(ServerUnreachableError):
    """The backend did not answer within the timeout (HTTP 504)."""


class CircuitOpenError(ServerUnreachableError):
    """The backend failed repeatedly; calls are refused until the breaker's reset time (503)."""


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

    def _refuse_if_open(self) -> None:
        if not self.breaker.allow():
            raise CircuitOpenError(
                f"backend {self.name!r} is failing; retry in {self.breaker.retry_after():.0f} s",
                where=f"model {self.name}", retry_after=self.breaker.retry_after())

    def _settle(self, exc: BaseException) -> BaseException:
        """Count a failed call on the breaker; the exception to raise (a timeout becomes a
        `BackendTimeoutError`). A client error counts as a success: the backend answered."""
        if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError (3.11+)
            self.breaker.failure()
            return BackendTimeoutError(f"backend {self.name!r} did not answer within "
                                       f"{self.timeout_s:g} s", where=f"model {self.name}")
        if isinstance(exc, (ContextLengthError, StructuredOutputError)):
            self.breaker.success()
        elif isinstance(exc, (ModelError, ServerError)):
            self.breaker.failure()
        return exc

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        self._refuse_if_open()
        try:
            coro = self.wrapped.generate(messages, schema=schema, tools=tools, settings=settings)
            r = await (asyncio.wait_for(coro, self.timeout_s) if self.timeout_s else coro)
        except (TimeoutError, ModelError, ServerError, StructuredOutputError) as e:
            out = self._settle(e)
            if out is e:
                raise
            raise out from None
        self.breaker.success()
        return r

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """The timeout bounds the whole stream (each wait for the next delta gets what is left
        of it); the breaker counts the stream's outcome as it counts a call's."""
        self._refuse_if_open()
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
        except (TimeoutError, ModelError, ServerError, StructuredOutputError) as e:
            out = self._settle(e)
            if out is e:
                raise
            raise out from None
        except (GeneratorExit, asyncio.CancelledError):
            self.breaker.release()
            raise
        self.breaker.success()
        yield inner.response
