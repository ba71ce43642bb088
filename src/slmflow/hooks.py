"""Events out of the core: what happened in an agent call or a workflow run, for whoever listens.

Why events and not calls: agents and the workflow runner sit low in the house
(docs/architecture.md: arrows point downward only). The call log, the improvement loop and the
gateway sit above them and want to know about every call; if the core imported them, running one
agent in a notebook would open ``./.slmflow/calls.db``, start a writer thread and register exit
hooks. So the core only *emits* named events; the store subscribes (`slmflow.store.enable_logging`),
and so can a test, a metrics exporter or a user's own code. Nobody listening costs one dict lookup.

Why a plain registry and not pluggy: a handful of events, in-process, synchronous, one payload
each; a dict of tuples is all of it, with no dependency.

The events (keyword arguments each subscriber gets; every one also gets ``context``, the
`LogContext` of the emitting code). Subscribers should take ``**_`` too, for fields added later.

============================ ==============================================================
``agent_called``             ``agent`` (the `Agent`), ``result`` (its `AgentResult`, with
                             ``call_id``), ``input``: one finished agent call
``run_finished``             ``result``: a workflow's `RunResult` (every status, failures too)
``verifier_rejected``        ``step`` (the verifier), ``target`` (the step it checked),
                             ``reason``, ``call_id`` (the rejected agent call, or None)
``handoff_repaired``         ``source``, ``target``, ``status`` (repaired | escalated),
                             ``errors``: a malformed handoff that a re-run fixed
``call_flagged``             ``call_id``, ``by``, ``label``, ``signal`` ("down"): a negative
                             signal on a call from inside a run (a verifier's rejection, an
                             output that broke a handoff): the loop's flagging job reads it
============================ ==============================================================

Why a subscriber can never break a run: a listener is an observer; a full disk or a bug in a
metrics exporter must not fail the request it describes. Its exception is caught and logged as a
warning, once per subscriber and event (a broken listener would otherwise flood the log on every
call), and the other subscribers still run.

The call context lives here too (`logging_context`, `current_context`): who is calling an agent
(a workflow run and step, a gateway request with its API key, writer and redaction, or logging
turned off for eval traffic) is known only higher up, so the caller opens a context and every
event carries it. It is core state, not storage: a contextvar, so concurrent runs on one event
loop each see their own. ``slmflow.store`` re-exports both names.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from .errors import ConfigError

__all__ = ["EVENTS", "LogContext", "current_context", "emit", "logging_context", "subscribe",
           "subscribed", "subscribers", "unsubscribe"]

log = logging.getLogger("slmflow.hooks")

EVENTS = frozenset({"agent_called", "run_finished", "verifier_rejected", "handoff_repaired",
                    "call_flagged"})

Subscriber = Callable[..., Any]

_SUBS: dict[str, tuple[Subscriber, ...]] = {e: () for e in EVENTS}
_LOCK = threading.Lock()
_WARNED: set[tuple[str, Any]] = set()


def _check(event: str, where: str) -> None:
    if event not in EVENTS:
        raise ConfigError(f"unknown event {event!r}; the events are: "
                          + ", ".join(sorted(EVENTS)), where=where)


def subscribe(event: str, fn: Subscriber) -> Subscriber:
    """Call ``fn(**payload)`` on every ``event`` from now on (once, however often subscribed).
    Returns ``fn``."""
    _check(event, "hooks.subscribe")
    if not callable(fn):
        raise ConfigError(f"a subscriber to {event!r} must be callable, got "
                          f"{type(fn).__name__}", where="hooks.subscribe")
    with _LOCK:
        if fn not in _SUBS[event]:
            _SUBS[event] = _SUBS[event] + (fn,)
    return fn


def unsubscribe(event: str, fn: Subscriber) -> bool:
    """Stop calling ``fn`` on ``event``; False if it was not subscribed."""
    _check(event, "hooks.unsubscribe")
    with _LOCK:
        if fn not in _SUBS[event]:
            return False
        _SUBS[event] = tuple(f for f in _SUBS[event] if f != fn)
        _WARNED.discard((event, fn))
        return True


@contextlib.contextmanager
def subscribed(event: str, fn: Subscriber) -> Iterator[Subscriber]:
    """``fn`` listens to ``event`` inside the body only (tests, a scoped collector)."""
    was = fn in subscribers(event)
    subscribe(event, fn)
    try:
        yield fn
    finally:
        if not was:
            unsubscribe(event, fn)


def subscribers(event: str) -> tuple[Subscriber, ...]:
    _check(event, "hooks.subscribers")
    return _SUBS[event]


def emit(event: str, **payload: Any) -> None:
    """Tell every subscriber of ``event``; never raises for a subscriber's error (module doc)."""
    subs = _SUBS.get(event)
    if subs is None:
        _check(event, "hooks.emit")
    if not subs:
        return
    payload.setdefault("context", _CTX.get())
    for fn in subs:
        try:
            fn(**payload)
        except Exception as e:  # noqa: BLE001 - an observer never breaks the run it observes
            key = (event, fn)
            if key not in _WARNED:
                _WARNED.add(key)
                log.warning("subscriber %s to %r failed (further failures of it are not "
                            "logged): %s: %s", getattr(fn, "__qualname__", repr(fn)), event,
                            type(e).__name__, e)


# ---- who is calling: the context every event carries -------------------------------------------

@dataclass(frozen=True)
class LogContext:
    """What an agent call is part of; set by the workflow runner and the gateway.

    writer: where the call log should put records (the gateway has its own `CallLogWriter`;
    None = the process-wide one, if logging is enabled). redact: applied to stored inputs and
    outputs. enabled: False keeps the calls in the body out of the call log (eval traffic, a
    nested call logged by its caller); True asks for logging even where it is not enabled
    process-wide. The core never reads writer/redact: they are for the listeners."""

    run_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    key: str | None = None
    trace_id: str | None = None  # when tracing is off, the caller's request id stands in
    writer: Any = None
    redact: Callable[[Any], Any] | None = None
    enabled: bool | None = None


_CTX: contextvars.ContextVar[LogContext] = contextvars.ContextVar("slmflow_calllog",
                                                                  default=LogContext())


def current_context() -> LogContext:
    return _CTX.get()


@contextlib.contextmanager
def logging_context(**changes: Any) -> Iterator[LogContext]:
    """Run the body with these context fields changed (the others inherited)."""
    ctx = replace(_CTX.get(), **changes)
    token = _CTX.set(ctx)
    try:
        yield ctx
    finally:
        _CTX.reset(token)
