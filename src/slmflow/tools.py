"""Tools: plain Python functions a model can call, with a schema it cannot get wrong.

Why the schema comes from the type hints and the docstring: the function *is* the contract. One
source means the JSON schema the model is constrained to (see `structured.tool_call_schema`), the
pydantic model the arguments are validated with, and the code that runs can never drift apart.

Why every call returns a `ToolResult` instead of raising: in a workflow a failing tool is an
expected event to route on (look the order up another way, ask the customer, escalate), not a
crash. So `Tool.invoke` never raises for the tool's own failures: invalid arguments, an exception
inside the tool and a timeout all come back as a `ToolResult` whose ``error`` is a typed
`ToolError` (``kind`` = ``invalid_arguments`` | ``exception`` | ``timeout``), with the tool name,
the arguments and the original exception's type and message. Nothing is swallowed: the error is on
the result, on the span, and `ToolResult.unwrap()` re-raises it where a caller wants an exception.

Exits: a tool that calls ``sys.exit()`` or raises `SystemExit` / `KeyboardInterrupt` gets the same
treatment as any other failure, a ``kind="exception"`` error naming what it raised. Left alone, such
an exception passes every ``except Exception`` and, raised inside an asyncio task, ends the event
loop itself: one tool would end a whole ``slmflow serve`` process. It is caught where it is raised
(in the tool's worker thread, or around the tool's coroutine before asyncio wraps it in a task),
so it can never reach the loop. (Ctrl-C under ``asyncio.run`` still stops a script: asyncio turns
it into cancellation of the main task, which `Tool.invoke` propagates.)

Timeouts: async tools are cancelled at the deadline. A *synchronous* tool runs in a worker thread,
and Python cannot kill a thread: at the deadline the call returns its timeout result at once, and
the thread is left to finish in the background (its result is discarded). Write tools that may
hang as ``async def`` when that matters.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_type_hints

from . import tracing
from .errors import ConfigError, ToolError
from .tracing import attrs
from .types import ToolSpec

ErrorKind = Literal["invalid_arguments", "exception", "timeout"]

__all__ = ["Tool", "ToolResult", "tool", "ExitRaised"]

_EXITS = (SystemExit, KeyboardInterrupt)


class ExitRaised(Exception):
    """User code (a tool, a workflow step) raised `SystemExit` or `KeyboardInterrupt`; carried as
    an ordinary exception so that it cannot end the event loop (``original`` is what it raised)."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        code = getattr(original, "code", None)
        super().__init__(f"{type(original).__name__}" + (f"({code!r})" if code is not None
                                                           else ""))


async def contain_exits(awaitable: Any) -> Any:
    """Await user code; a `SystemExit` / `KeyboardInterrupt` it raises comes out as `ExitRaised`.
    Wrap a coroutine in this *before* asyncio makes a task of it (``wait_for``, ``gather``): a
    task re-raises those two out of the event loop, past every ``await``."""
    try:
        return await awaitable
    except _EXITS as e:
        raise ExitRaised(e) from None


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google- or Sphinx-style docstring."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    params: dict[str, str] = {}
    desc_lines: list[str] = []
    section = None
    current = None
    for line in doc.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters|Params):", stripped):
            section, current = "args", None
            continue
        if re.fullmatch(r"(Returns|Return|Raises|Yields|Examples?|Notes?):", stripped):
            section, current = "other", None
            continue
        m = re.match(r":param\s+(\w+):\s*(.*)", stripped)
        if m:
            params[m.group(1)] = m.group(2).strip()
            section = "other"
            continue
        if section == "args":
            m = re.match(r"(\w+)\s*(\([^)]*\))?\s*:\s*(.*)", stripped)
            if m and not line.startswith(" " * 8):
                current = m.group(1)
                params[current] = m.group(3).strip()
            elif current and stripped:
                params[current] = (params[current] + " " + stripped).strip()
        elif section is None:
            desc_lines.append(line)
    description = " ".join(" ".join(desc_lines).split())
    return description, params


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call: a value, or a typed `ToolError` (never both)."""

    tool: str
    arguments: dict[str, Any]
    value: Any = None
    error: ToolError | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_kind(self) -> str | None:
        return self.error.details.get("kind") if self.error else None

    def unwrap(self) -> Any:
        """The value, or raise the `ToolError`."""
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(frozen=True)
class Tool:
    """A callable with a name, a description, an argument schema and a timeout."""

    fn: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    args_model: Any = field(repr=False)
    timeout_s: float | None = 30.0

    @property
    def spec(self) -> ToolSpec:
        """What the model sees (`Model.generate(tools=[...])`)."""
        return ToolSpec(self.name, self.description, self.parameters)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (no validation, no timeout)."""
        return self.fn(*args, **kwargs)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validated (and coerced) arguments, or raise `ToolError(kind="invalid_arguments")`."""
        from pydantic import ValidationError

        if not isinstance(arguments, dict):
            raise ToolError(f"tool {self.name!r} takes a JSON object of arguments, got "
                            f"{type(arguments).__name__}", where=f"tool {self.name}",
                            kind="invalid_arguments", tool=self.name, arguments=arguments)
        try:
            obj = self.args_model.model_validate(arguments)
        except ValidationError as e:
            errs = [f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                    for err in e.errors()]
            raise ToolError(f"invalid arguments for tool {self.name!r}: " + "; ".join(errs),
                            where=f"tool {self.name}", kind="invalid_arguments", tool=self.name,
                            arguments=arguments, errors=errs) from None
        return {k: getattr(obj, k) for k in type(obj).model_fields}

    async def invoke(self, arguments: dict[str, Any] | None = None, *,
                     timeout_s: float | None = None, call_id: str | None = None) -> ToolResult:
        """Validate, run under the timeout, and return a `ToolResult` (never raises for the tool).

        Cancellation of the caller (`asyncio.CancelledError`) is propagated, not turned into a
        result: that is the runner stopping, not the tool failing.
        """
        arguments = dict(arguments or {})
        timeout = self.timeout_s if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        with tracing.span("execute_tool", self.name, attributes={
                attrs.TOOL_NAME: self.name, attrs.TOOL_CALL_ID: call_id}) as sp:
            try:
                kwargs = self.validate(arguments)
                value = await self._run(kwargs, timeout)
            except ToolError as e:
                err = e
            except asyncio.CancelledError:
                raise
            except (Exception, *_EXITS) as e:  # the tool's own failure: typed, with its cause
                if isinstance(e, _EXITS):
                    e = ExitRaised(e)
                if isinstance(e, ExitRaised):
                    err = ToolError(f"tool {self.name!r} tried to end the process ({e})",
                                    where=f"tool {self.name}", kind="exception",
                                    tool=self.name, arguments=arguments,
                                    exception_type=type(e.original).__name__, exception=str(e))
                    e = e.original
                else:
                    err = ToolError(f"tool {self.name!r} raised {type(e).__name__}: {e}",
                                    where=f"tool {self.name}", kind="exception",
                                    tool=self.name, arguments=arguments,
                                    exception_type=type(e).__name__, exception=str(e))
                err.__cause__ = e
            else:
                tracing.set_content(sp, {attrs.TOOL_CALL_ARGUMENTS: arguments,
                                         attrs.TOOL_CALL_RESULT: value})
                return ToolResult(self.name, arguments, value=value,
                                  latency_s=time.perf_counter() - t0)
            tracing.set_content(sp, {attrs.TOOL_CALL_ARGUMENTS: arguments})
            tracing.set_attributes(sp, {attrs.ERROR_TYPE: f"ToolError.{err.details.get('kind')}"})
            tracing.add_event(sp, "tool.error", {"kind": err.details.get("kind"),
                                                 "message": err.message})
            return ToolResult(self.name, arguments, error=err, latency_s=time.perf_counter() - t0)

    async def _run(self, kwargs: dict[str, Any], timeout: float | None) -> Any:
        if inspect.iscoroutinefunction(self.fn):
            coro = contain_exits(self.fn(**kwargs))
        else:
            coro = _in_daemon_thread(self.fn, kwargs)
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise ToolError(f"tool {self.name!r} timed out after {timeout:g}s",
                            where=f"tool {self.name}", kind="timeout", tool=self.name,
                            arguments=kwargs, timeout_s=timeout) from None


def _in_daemon_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> "asyncio.Future[Any]":
    """Run a blocking tool in its own daemon thread (not the loop's default executor, which
    `asyncio.run` waits for at exit: a hung tool would then hang the caller past its timeout)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(value)

    def work() -> None:
        try:
            value, error = fn(**kwargs), None
        except _EXITS as e:  # never raised into the loop as what it is
            value, error = None, ExitRaised(e)
        except BaseException as e:  # handed to the awaiting coroutine
            value, error = None, e
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop is gone: the caller already has its timeout result
            pass

    threading.Thread(target=work, name=f"tool-{getattr(fn, '__name__', 'fn')}",
                     daemon=True).start()
    return fut


def _build(fn: Callable[..., Any], name: str | None, description: str | None,
           timeout_s: float | None) -> Tool:
    from pydantic import ConfigDict, Field, create_model

    if not callable(fn):
        raise ConfigError(f"@tool needs a function, got {type(fn).__name__}", where="tool")
    tool_name = name or fn.__name__
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", tool_name):
        raise ConfigError(f"tool name {tool_name!r} must be an identifier (letters, digits, _ -)",
                          where="tool")
    doc_desc, doc_params = _parse_docstring(fn.__doc__)
    try:
        hints = get_type_hints(fn)
    except Exception as e:
        raise ConfigError(f"cannot read the type hints of {tool_name!r}: {e}",
                          where=f"tool {tool_name}") from None
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigError(f"tool {tool_name!r}: *args/**kwargs cannot be described to a "
                              "model; name every parameter", where=f"tool {tool_name}")
        if pname not in hints:
            raise ConfigError(f"tool {tool_name!r}: parameter {pname!r} has no type hint",
                              where=f"tool {tool_name}")
        default = ... if p.default is p.empty else p.default
        fields[pname] = (hints[pname], Field(default, description=doc_params.get(pname)))
    args_model = create_model(f"{tool_name}_args", __config__=ConfigDict(extra="forbid"),
                              **fields)
    schema = args_model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return Tool(fn=fn, name=tool_name, description=description or doc_desc or tool_name,
                parameters=schema, args_model=args_model, timeout_s=timeout_s)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, timeout_s: float | None = 30.0) -> Any:
    """Make a `Tool` from a typed function: ``@tool`` or ``@tool(name=..., timeout_s=...)``.

    The description is the docstring's first paragraph; parameter descriptions come from its
    ``Args:`` section. Every parameter needs a type hint (that is what the schema is built from).
    """
    if fn is not None:
        return _build(fn, name, description, timeout_s)
    return lambda f: _build(f, name, description, timeout_s)
