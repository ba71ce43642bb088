"""Escalation to a stronger model: one policy, used by agents and by the gateway.

Why one place: the project's premise is a small model that hands its weak cases to a stronger one.
Which cases are weak (an error, an output that stays invalid after repair, a confidence under the
threshold, or a caller that forces it: a verifier's rejection, a handoff no re-run could repair),
how the reason reads in the call log (``low_confidence: 0.412 < 0.600``), and how the escalation
shows in a trace (an ``slmflow.escalation`` event) must be the same whether the small model was
called by an `Agent` inside a workflow or by a client through the gateway. Both used to carry
their own copy; they now share `FallbackPolicy`.

Two ways in:

* `Fallback(primary, fallback, threshold=...)` is itself a `Model` (pydantic-ai's
  ``FallbackModel`` is the reference, ``fallback_on`` included): the gateway stacks it under its
  cache and guardrails. ``on_escalation(messages, escalation, answer)`` receives each escalation
  with the stronger model's answer (the gateway keeps the pair as a training example for the
  small model).
* `FallbackPolicy.run(attempt, ...)` drives any unit of work that yields a `Response`: an agent's
  attempt is a tool call plus a constrained follow-up, not one ``generate``, so the agent passes
  its own ``attempt(role)`` and resolves the fallback model only when it is needed (weights load
  lazily).

``fallback_on`` names what escalates: ``model_error``, ``invalid_output``, ``low_confidence``, and
``context_length`` (a prompt over the window is a client error at the gateway, answered 400; an
agent's fallback usually has a larger window, so agents include it). A failure of the fallback
itself is raised as it is: escalation happens once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

from ..errors import (ConfigError, ContextLengthError, ModelError, ServerError,
                      StructuredOutputError)
from ..types import MessageLike, Response, Settings, ToolSpec
from .base import Model, WrapperModel

__all__ = ["Escalation", "Fallback", "FallbackPolicy", "FALLBACK_ON"]

FALLBACK_ON = frozenset({"model_error", "invalid_output", "low_confidence", "context_length"})
# The gateway's default: a prompt too long for the window is the client's error (HTTP 400).
GATEWAY_FALLBACK_ON = FALLBACK_ON - {"context_length"}

R = TypeVar("R")


@dataclass(frozen=True)
class Escalation:
    """Why and where one call escalated.

    kind: ``model_error`` | ``invalid_output`` | ``low_confidence`` | ``context_length`` |
    ``requested`` (forced by the caller); reason: the line the call log and the trace show;
    weak: the primary model's answer when it gave one (a low-confidence answer), else None."""

    kind: str
    reason: str
    source: str | None = None
    target: str | None = None
    weak: Response | None = None

    @property
    def confidence(self) -> float | None:
        return self.weak.confidence if self.weak is not None else None


def _error_kind(exc: BaseException) -> str | None:
    if isinstance(exc, StructuredOutputError):
        return "invalid_output"
    if isinstance(exc, ContextLengthError):
        return "context_length"
    if isinstance(exc, (ModelError, ServerError)):
        return "model_error"
    return None


@dataclass(frozen=True)
class FallbackPolicy:
    """When to escalate (see the module doc), and what to say about it.

    threshold: a confidence under it escalates (None: confidence never does). source / target:
    names for the trace and the reason (an agent's name, a model's identity)."""

    threshold: float | None = None
    fallback_on: frozenset[str] = FALLBACK_ON
    source: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.fallback_on) - FALLBACK_ON
        if unknown:
            raise ConfigError(f"fallback_on: unknown {sorted(unknown)}; choose from "
                              f"{sorted(FALLBACK_ON)}", where="fallback")
        object.__setattr__(self, "fallback_on", frozenset(self.fallback_on))

    def low(self, confidence: float | None) -> bool:
        """True when ``confidence`` is under the threshold (an unknown confidence never is)."""
        return (self.threshold is not None and confidence is not None
                and confidence < self.threshold)

    def on_error(self, exc: BaseException) -> Escalation | None:
        """The escalation an error of the primary calls for, or None (raise it)."""
        kind = _error_kind(exc)
        if kind is None or kind not in self.fallback_on:
            return None
        msg = getattr(exc, "message", str(exc))
        label = "model_error" if kind == "context_length" else kind
        return Escalation(kind, label + f": {msg}"[:300], self.source, self.target)

    def on_answer(self, r: Response) -> Escalation | None:
        """The escalation an answer calls for (a low confidence), or None (keep it)."""
        if "low_confidence" not in self.fallback_on or not self.low(r.confidence):
            return None
        return Escalation("low_confidence",
                          f"low_confidence: {r.confidence:.3f} < {self.threshold:.3f}",
                          self.source, self.target, weak=r)

    def requested(self, reason: str | None) -> Escalation:
        return Escalation("requested", reason or "requested", self.source, self.target)

    def announce(self, esc: Escalation, sp: Any = None) -> None:
        """Mark the span escalated with an ``slmflow.escalation`` event (reason, source, target,
        the primary's confidence)."""
        from .. import tracing

        tracing.record_escalation(esc.reason, source=esc.source, target=esc.target,
                                  confidence=esc.confidence, sp=sp)

    async def run(self, attempt: Callable[[str], Awaitable[R]], *,
                  response: Callable[[R], Response] | None = None,
                  force: str | None = None, sp: Any = None,
                  ) -> tuple[R, Escalation | None]:
        """``attempt("primary")``, and ``attempt("fallback")`` when the policy says so.

        response: the `Response` inside an attempt's result (its confidence is read). force: skip
        the primary and escalate with this reason. Returns the result kept and the escalation
        (None when the primary's answer stood). An error the policy does not escalate, and any
        error of the fallback, propagates."""
        if force is not None:
            esc: Escalation | None = self.requested(force)
        else:
            try:
                first = await attempt("primary")
            except Exception as e:  # noqa: BLE001 - classified, re-raised when not escalated
                esc = self.on_error(e)
                if esc is None:
                    raise
            else:
                esc = self.on_answer(response(first) if response else first)  # type: ignore[arg-type]
                if esc is None:
                    return first, None
        assert esc is not None
        self.announce(esc, sp)
        return await attempt("fallback"), esc


class Fallback(WrapperModel):
    """``primary``, and ``fallback`` for the calls `FallbackPolicy` escalates (see module doc).

    on_escalation(messages, escalation, answer): called after each escalated call with the
    call's messages and the fallback's answer; an exception in it is swallowed (keeping an
    example must never fail the request).
    Answers whole (no token streaming): whether to escalate depends on the confidence of the
    whole answer."""

    def __init__(self, primary: Model, fallback: Model, *, threshold: float | None = None,
                 fallback_on: Iterable[str] = GATEWAY_FALLBACK_ON,
                 on_escalation: Callable[[Any, Escalation, Response], None] | None = None
                 ) -> None:
        super().__init__(primary)
        self.fallback = fallback
        self.policy = FallbackPolicy(threshold, frozenset(fallback_on),
                                     source=primary.info.identity,
                                     target=fallback.info.identity)
        self.on_escalation = on_escalation

    @property
    def strong(self) -> Model:  # the name the gateway's code and docs used
        return self.fallback

    @property
    def threshold(self) -> float | None:
        return self.policy.threshold

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        def attempt(role: str) -> Awaitable[Response]:
            model = self.wrapped if role == "primary" else self.fallback
            return model.generate(messages, schema=schema, tools=tools, settings=settings)

        answer, esc = await self.policy.run(attempt)
        if esc is not None and self.on_escalation is not None:
            try:
                self.on_escalation(messages, esc, answer)
            except Exception:  # noqa: BLE001 - an observer never fails the request
                pass
        return answer

    async def aclose(self) -> None:
        await self.wrapped.aclose()
        await self.fallback.aclose()
