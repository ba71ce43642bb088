"""Decorators for user code: ``@trace.agent``, ``@trace.tool``, ``@trace.chain``.

Why: a user's own function (a hand-written agent, a helper tool, a pipeline step) should appear
in the same trace tree as slmflow's built-in hops without writing span code. Each works on sync
and async functions, bare (``@trace.tool``) or with options (``@trace.agent(name="triage")``).
Arguments and return values are recorded only when content capture is on (`configure`).
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable, TypeVar

from . import attrs as A
from . import set_attributes, span
from .setup import capture_content

F = TypeVar("F", bound=Callable[..., Any])
_MAX = 4000


def _dump(value: Any) -> str:
    try:
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        return json.dumps(value, default=str)[:_MAX]
    except Exception:
        return repr(value)[:_MAX]


def _make(operation: str, name_attr: str | None, in_attr: str, out_attr: str) -> Callable:
    def decorator(fn: F | None = None, *, name: str | None = None,
                  attributes: dict[str, Any] | None = None) -> Any:
        def wrap(f: F) -> F:
            title = name or f.__name__
            base = dict(attributes or {})
            if name_attr:
                base[name_attr] = title

            def inputs(args: tuple, kwargs: dict) -> str:
                try:
                    bound = inspect.signature(f).bind_partial(*args, **kwargs)
                    return _dump(dict(bound.arguments))
                except Exception:
                    return _dump({"args": args, "kwargs": kwargs})

            if inspect.iscoroutinefunction(f):
                @functools.wraps(f)
                async def awrapper(*args: Any, **kwargs: Any) -> Any:
                    with span(operation, title, attributes=base) as sp:
                        if capture_content():
                            set_attributes(sp, {in_attr: inputs(args, kwargs)})
                        out = await f(*args, **kwargs)
                        if capture_content():
                            set_attributes(sp, {out_attr: _dump(out)})
                        return out
                return awrapper  # type: ignore[return-value]

            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with span(operation, title, attributes=base) as sp:
                    if capture_content():
                        set_attributes(sp, {in_attr: inputs(args, kwargs)})
                    out = f(*args, **kwargs)
                    if capture_content():
                        set_attributes(sp, {out_attr: _dump(out)})
                    return out
            return wrapper  # type: ignore[return-value]

        return wrap(fn) if fn is not None else wrap

    return decorator


class _Trace:
    """``trace.agent`` -> ``invoke_agent {name}``, ``trace.tool`` -> ``execute_tool {name}``,
    ``trace.chain`` -> ``chain {name}`` (any other step of user code), ``trace.retrieval`` ->
    ``retrieval {name}``."""

    agent = staticmethod(_make("invoke_agent", A.AGENT_NAME, A.INPUT, A.OUTPUT))
    tool = staticmethod(_make("execute_tool", A.TOOL_NAME, A.TOOL_CALL_ARGUMENTS,
                              A.TOOL_CALL_RESULT))
    chain = staticmethod(_make("chain", A.STEP_NAME, A.INPUT, A.OUTPUT))
    retrieval = staticmethod(_make("retrieval", None, A.INPUT, A.OUTPUT))


trace = _Trace()
