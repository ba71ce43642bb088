"""Tracing: OpenTelemetry spans with the GenAI semantic conventions for every hop of a run.

This package is the one place that talks to OpenTelemetry. Code elsewhere in slmflow (agents,
workflows, tools, models) only calls `span(...)` and the helpers below, so the provider set-up,
the local span store and the exporters can change without touching instrumented code.

Span names follow the GenAI conventions: ``invoke_workflow {name}``, ``invoke_agent {name}``,
``chat {model}``, ``execute_tool {name}``, plus slmflow's own ``handoff {src} -> {dst}``.

Where spans go is decided by `configure` (module `setup`): by default, lazily on the first span,
the span store named by ``$SLMFLOW_TRACES_URL`` (PostgreSQL, when several machines or processes
share their traces), else the local SQLite file ``$SLMFLOW_HOME/spans.db``; nothing with
``SLMFLOW_TRACING=off``. `SpanStore` / `open_span_store` read either (module `store`).

Why `span` is a small class and not a generator context manager: it runs on every hop, and the
benchmark (bench/tracing.py) holds it to at most 1.2x the cost of a raw OpenTelemetry SDK span;
one ``__enter__``/``__exit__`` pair with the attributes passed at span start is cheaper than
``contextlib.contextmanager`` around ``start_as_current_span`` (itself two nested generators).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as _context
from opentelemetry import trace as _trace
from opentelemetry.trace import Status, StatusCode

from . import attrs, setup
from .setup import (capture_content, config, configure, force_flush, health, is_enabled, reset,
                    shutdown)

__all__ = ["span", "start_span", "use_span", "end_span", "attrs", "set_attributes", "set_content", "add_event", "current_trace_id", "configure",
           "force_flush", "shutdown", "reset", "health", "is_enabled", "capture_content",
           "config", "handoff", "record_evaluation", "record_escalation", "Traced", "traced",
           "record_model_response", "trace", "PriceTable", "Price", "SpanStore",
           "open_span_store"]

_SCALARS = (str, bool, int, float)
_INVALID = _trace.INVALID_SPAN
_set_span_in_context = _trace.set_span_in_context
_attach, _detach = _context.attach, _context.detach


def _clean(value: Any) -> Any:
    """OTel attributes take str/bool/int/float or sequences of one of those; coerce the rest."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, _SCALARS) for v in value):
        if len({type(v) for v in value}) == 1:
            return list(value)
        return [str(v) for v in value]
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _clean_all(attributes: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attributes.items():
        if v is None:
            continue
        out[k] = v if type(v) in _SCALARS else _clean(v)
    return out


def set_attributes(sp: Any, attributes: dict[str, Any] | None) -> None:
    """Set attributes on a span, skipping None and coercing values OTel cannot carry."""
    if not attributes:
        return
    for k, v in attributes.items():
        if v is None:
            continue
        try:
            sp.set_attribute(k, _clean(v))
        except Exception:  # tracing must never break a run
            pass


def set_content(sp: Any, attributes: dict[str, Any]) -> None:
    """Set content attributes (inputs, outputs, payloads) only when content capture is on
    (`configure(capture_content=True)`); values that are not strings are stored as JSON,
    at most 16,000 characters each."""
    if not capture_content() or not sp.is_recording():
        return
    import json

    out = {}
    for k, v in attributes.items():
        if v is None:
            continue
        if not isinstance(v, str):
            try:
                v = json.dumps(v.model_dump() if hasattr(v, "model_dump") else v, default=str)
            except Exception:
                v = repr(v)
        out[k] = v[:16_000]
    set_attributes(sp, out)


def add_event(sp: Any, name: str, attributes: dict[str, Any] | None = None) -> None:
    try:
        sp.add_event(name, {k: _clean(v) for k, v in (attributes or {}).items() if v is not None})
    except Exception:
        pass


class span:  # noqa: N801 - used as a function: ``with tracing.span(...) as sp``
    """Open a span for one hop: ``operation`` is the GenAI operation name (``invoke_agent``,
    ``invoke_workflow``, ``chat``, ``execute_tool``, ``handoff``, ``retrieval``), ``name`` the
    thing it runs. The span records an exception and an error status if the block raises.
    Yields the OpenTelemetry span (a no-op span when tracing is off)."""

    __slots__ = ("_title", "_attrs", "_sp", "_token")

    def __init__(self, operation: str, name: str | None = None, *,
                 attributes: dict[str, Any] | None = None) -> None:
        self._title = f"{operation} {name}" if name else operation
        a = {attrs.OPERATION_NAME: operation}
        if attributes:
            a.update(attributes)
        self._attrs = a
        self._sp = None

    def __enter__(self) -> Any:
        tracer = setup._state.tracer or setup.get_tracer()
        if not setup._state.enabled:
            self._sp = None
            return _INVALID
        try:
            sp = tracer.start_span(self._title, attributes=_clean_all(self._attrs),
                                   record_exception=False, set_status_on_exception=False)
            self._token = _attach(_set_span_in_context(sp))
        except Exception:  # tracing must never break a run
            self._sp = None
            return _INVALID
        self._sp = sp
        return sp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        sp = self._sp
        if sp is None:
            return False
        try:
            if exc is not None:
                sp.record_exception(exc)
                sp.set_status(Status(StatusCode.ERROR, f"{exc_type.__name__}: {exc}"))
                sp.set_attribute(attrs.ERROR_TYPE, exc_type.__name__)
            _detach(self._token)
            sp.end()
        except Exception:
            pass
        return False


def start_span(operation: str, name: str | None = None, *,
               attributes: dict[str, Any] | None = None) -> Any:
    """A started span that is *not* made current, for work that yields between its steps (a
    stream: between two deltas the consumer's code runs, and a span left attached would adopt
    its spans and be detached from another context). Make it current around each step with
    `use_span`; end it with `end_span`. A no-op span when tracing is off."""
    tracer = setup._state.tracer or setup.get_tracer()
    if not setup._state.enabled:
        return _INVALID
    a = {attrs.OPERATION_NAME: operation, **(attributes or {})}
    try:
        return tracer.start_span(f"{operation} {name}" if name else operation,
                                 attributes=_clean_all(a), record_exception=False,
                                 set_status_on_exception=False)
    except Exception:  # tracing must never break a run
        return _INVALID


class use_span:  # noqa: N801 - used as a function
    """Make ``sp`` (from `start_span`) the current span inside the block, without ending it."""

    __slots__ = ("_sp", "_token")

    def __init__(self, sp: Any) -> None:
        self._sp, self._token = sp, None

    def __enter__(self) -> Any:
        if self._sp is not _INVALID:
            try:
                self._token = _attach(_set_span_in_context(self._sp))
            except Exception:
                self._token = None
        return self._sp

    def __exit__(self, *exc: Any) -> bool:
        if self._token is not None:
            try:
                _detach(self._token)
            except Exception:
                pass
        return False


def end_span(sp: Any, exc: BaseException | None = None) -> None:
    """End a span from `start_span`, with an error status when ``exc`` is given."""
    if sp is _INVALID:
        return
    try:
        if exc is not None:
            sp.record_exception(exc)
            sp.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            sp.set_attribute(attrs.ERROR_TYPE, type(exc).__name__)
        sp.end()
    except Exception:
        pass


def current_trace_id() -> str | None:
    """The hex trace id of the current span, if any (for the call log)."""
    ctx = _trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def handoff(source: str, target: str, *, status: str | None = None,
            attributes: dict[str, Any] | None = None) -> span:
    """A ``handoff {source} -> {target}`` span, one per edge of a workflow. Set the outcome with
    ``status`` now or later: ``set_attributes(sp, {attrs.HANDOFF_STATUS: "repaired"})``
    (validated | repaired | escalated | failed)."""
    return span("handoff", f"{source} -> {target}", attributes={
        attrs.HANDOFF_SOURCE: source, attrs.HANDOFF_TARGET: target,
        attrs.HANDOFF_STATUS: status, **(attributes or {})})


def _target(sp: Any) -> Any:
    return sp if sp is not None else _trace.get_current_span()


def record_escalation(reason: str, *, source: str | None = None, target: str | None = None,
                      confidence: float | None = None, sp: Any = None) -> None:
    """Mark the current span (or ``sp``) escalated and add a ``slmflow.escalation`` event."""
    s = _target(sp)
    set_attributes(s, {attrs.ESCALATED: True})
    add_event(s, attrs.ESCALATION_EVENT, {attrs.ESCALATION_REASON: reason,
                                          attrs.HANDOFF_SOURCE: source,
                                          attrs.ESCALATION_TARGET: target,
                                          attrs.CONFIDENCE: confidence})


def record_evaluation(name: str, *, score: float | None = None, label: str | None = None,
                      explanation: str | None = None, sp: Any = None,
                      attributes: dict[str, Any] | None = None) -> None:
    """An eval result as a ``gen_ai.evaluation.result`` event on the current span (or ``sp``);
    with no span open, on a short ``evaluate {name}`` span of its own."""
    ev = {attrs.EVALUATION_NAME: name, attrs.EVALUATION_SCORE_VALUE: score,
          attrs.EVALUATION_SCORE_LABEL: label, attrs.EVALUATION_EXPLANATION: explanation,
          **(attributes or {})}
    s = _target(sp)
    if s.is_recording():
        add_event(s, attrs.EVALUATION_EVENT, ev)
        return
    with span("evaluate", name) as own:
        add_event(own, attrs.EVALUATION_EVENT, ev)


def __getattr__(name: str) -> Any:
    # Lazy: the model wrapper imports models/, the store imports sqlite3 (and psycopg for a
    # PostgreSQL URL); neither is needed to open a span.
    if name in ("Traced", "traced", "record_model_response"):
        from . import model

        return getattr(model, name)
    if name == "trace":
        from .decorators import trace

        return trace
    if name in ("PriceTable", "Price"):
        from . import cost

        return getattr(cost, name)
    if name in ("SpanStore", "open_span_store"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'slmflow.tracing' has no attribute {name!r}")
