"""What the gateway's model stack did on one request, and where its wrappers live.

The wrappers themselves are `Model`s in `slmflow.models` (one place per behaviour, usable outside
the gateway too): `Cached` (models/cached.py), `Resilient` and `CircuitBreaker`
(models/resilient.py), `Fallback` (models/fallback.py: the one escalation policy, shared with
agents). The gateway stacks them as
``Cached(Guarded(Fallback(Resilient(slm), Resilient(strong))))``.

What stays here is per request: `RequestInfo` (cache status, escalation, the primary model's
answer) lives in a contextvar the gateway sets for each request; the wrappers report to it through
the callbacks the gateway hands them (``Cached(on_status=...)``, ``Fallback(on_escalation=...)``),
so no model wrapper knows about requests.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

from ..models.cached import Cached
from ..models.fallback import Escalation, Fallback
from ..models.resilient import (BackendTimeoutError, CircuitBreaker, CircuitOpenError,
                                Resilient)

__all__ = ["RequestInfo", "current_info", "set_info", "note_cache", "note_escalation", "Cached",
           "Fallback", "Resilient", "CircuitBreaker", "BackendTimeoutError", "CircuitOpenError"]


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


def note_cache(status: str) -> None:
    """`Cached`'s ``on_status``: the cache status of the current request."""
    info = current_info()
    if info is not None:
        info.cache = status


def note_escalation(esc: Escalation) -> None:
    """What `Fallback` escalated, on the current request (the call log's record reads it)."""
    info = current_info()
    if info is not None:
        info.escalated, info.escalation_reason = True, esc.reason
        info.primary_model = esc.source
        info.primary_confidence = esc.confidence
