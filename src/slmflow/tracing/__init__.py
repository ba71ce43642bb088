"""Tracing: OpenTelemetry spans with the GenAI semantic conventions for every hop of a run.

This package is the one place that talks to OpenTelemetry. Code elsewhere in slmflow (agents,
workflows, tools, models) only calls `span(...)` and the helpers below, so the provider set-up,
the local span store and the exporters can change without touching instrumented code.

Span names follow the GenAI conventions: ``invoke_workflow {name}``, ``invoke_agent {name}``,
``chat {model}``, ``execute_tool {name}``, plus slmflow's own ``handoff {src} -> {dst}``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from . import attrs

__all__ = ["span", "attrs", "set_attributes", "add_event", "current_trace_id"]


def _tracer():
    from opentelemetry import trace

    return trace.get_tracer("slmflow")


def _clean(value: Any) -> Any:
    """OTel attributes take str/bool/int/float or sequences of one of those; coerce the rest."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float))
                                                for v in value):
        return list(value)
    return str(value)


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


def add_event(sp: Any, name: str, attributes: dict[str, Any] | None = None) -> None:
    try:
        sp.add_event(name, {k: _clean(v) for k, v in (attributes or {}).items() if v is not None})
    except Exception:
        pass


@contextlib.contextmanager
def span(operation: str, name: str | None = None, *,
         attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open a span for one hop: ``operation`` is the GenAI operation name (``invoke_agent``,
    ``invoke_workflow``, ``chat``, ``execute_tool``, ``handoff``, ``retrieval``), ``name`` the
    thing it runs. The span records an exception and an error status if the block raises."""
    from opentelemetry.trace import Status, StatusCode

    title = f"{operation} {name}" if name else operation
    with _tracer().start_as_current_span(title, record_exception=False,
                                         set_status_on_exception=False) as sp:
        set_attributes(sp, {attrs.OPERATION_NAME: operation, **(attributes or {})})
        try:
            yield sp
        except BaseException as e:
            with contextlib.suppress(Exception):
                sp.record_exception(e)
                sp.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
                sp.set_attribute(attrs.ERROR_TYPE, type(e).__name__)
            raise


def current_trace_id() -> str | None:
    """The hex trace id of the current span, if any (for the call log)."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
