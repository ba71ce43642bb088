"""Getting records into the call log: the process-wide writer, the records of agent and model
calls, and the listener on the core's events.

The writer itself (`CallLogWriter`: a queue and one thread writing batches, ``committed()`` for
the gateway's group commit) is `slmflow.store.batch_writer`'s and is re-exported here; this
module holds the process-wide one (`get_writer`, `set_writer`).

Why a listener and not a call from the agent: the core (agents, workflows) sits below the store
and imports nothing of it (docs/architecture.md); it emits events (`slmflow.hooks`:
``agent_called``, ``call_flagged``) and this module subscribes to them when it is imported. The
listener writes only where asked, so ``import slmflow; agent.run_sync(...)`` touches no disk:

* in a `logging_context` that names a ``writer`` (the gateway's, a test's) or says
  ``enabled=True``;
* everywhere, once `enable_logging()` was called: the CLI (``slmflow run``, ``demo``, ``eval``,
  ``loop``), the gateway, a user's one line ``slmflow.enable_logging()``, and any process started
  with ``SLMFLOW_CALLLOG=on`` or ``SLMFLOW_CONFIG`` (``import slmflow`` turns it on then).

``enabled=False`` in the context (eval traffic, a nested call logged by its caller) and
``SLMFLOW_CALLLOG=off`` (a whole process, even the CLI) keep calls out. Who called (a workflow run
and step, a gateway request with its API key and redaction) travels in the core's context
(`slmflow.hooks.logging_context`, re-exported here), which every event carries.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from dataclasses import asdict
from typing import Any, AsyncIterator, Callable, Sequence

from .. import hooks
from ..errors import SlmflowError
from ..hooks import LogContext, current_context, logging_context
from ..models.base import WrapperModel
from ..types import MessageLike, Response, Settings, ToolSpec, as_messages
from .batch_writer import CallLogWriter
from .calllog import CallLog, default_url
from .records import AgentInfo, CallRecord, Example, Feedback

__all__ = ["CallLogWriter", "get_writer", "set_writer", "record_agent_result", "CallLogging",
           "logging_context", "LogContext", "log_agent_call", "calllog_enabled",
           "current_context", "submit_feedback", "agent_meta", "note_agent", "enable_logging",
           "disable_logging", "logging_enabled"]

log = logging.getLogger("slmflow.store")


# ---- the process-wide writer --------------------------------------------------------------------

_WRITER: CallLogWriter | None = None
_WRITER_LOCK = threading.Lock()


def get_writer() -> CallLogWriter:
    """The process-wide writer on the default call log (opened on first use, drained at exit)."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None or _WRITER._closed:
            _WRITER = CallLogWriter(default_url())
            atexit.register(_WRITER.close)
        return _WRITER


def set_writer(writer: CallLogWriter | None) -> CallLogWriter | None:
    """Make ``writer`` the process-wide one (the gateway installs its own); returns the old one."""
    global _WRITER
    with _WRITER_LOCK:
        old, _WRITER = _WRITER, writer
        return old


# ---- hooks for agents and models ----------------------------------------------------------------------

def _value(v: Any) -> Any:
    if hasattr(v, "model_dump"):
        return v.model_dump(mode="json")
    if hasattr(v, "__dataclass_fields__"):
        try:
            return asdict(v)
        except Exception:
            return str(v)
    return v


def _cost(info: Any, usage: Any, latency_s: float) -> float | None:
    try:
        from ..tracing.cost import prices

        return prices().cost(info, usage, latency_s)
    except Exception:
        return None


def record_agent_result(result: Any, input: Any, run_id: str | None = None,
                        trace_id: str | None = None, key: str | None = None, *,
                        workflow: str | None = None, writer: CallLogWriter | None = None,
                        redact: Callable[[Any], Any] | None = None,
                        meta: dict[str, Any] | None = None,
                        call_id: str | None = None) -> CallRecord:
    """Log one `AgentResult` (and, when it escalated to a fallback that answered, a training
    example for the agent's primary model). Non-blocking: the record is queued to the writer.

    trace_id defaults to the current span's trace. redact: applied to input and output before
    they are stored (the gateway passes the PII redactor). call_id: the record's id (the agent
    picks it so that the caller can attach feedback before the write lands)."""
    from .. import tracing

    w = writer or get_writer()
    inp, out = _value(input), _value(result.output)
    if redact is not None:
        inp, out = redact(inp), redact(out)
    attempts = list(getattr(result, "attempts", ()) or ())
    m = dict(meta or {})
    m.update(agent_meta(result, redact, out))
    rec = CallRecord(
        kind="agent", agent=result.agent, workflow=workflow, run_id=run_id,
        trace_id=trace_id or tracing.current_trace_id(), key_name=key,
        model=result.model.identity, adapter=result.model.adapter, input=inp, output=out,
        latency_s=result.latency_s, confidence=result.confidence,
        input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens,
        cost_usd=_cost(result.model, result.usage, result.latency_s),
        escalated=bool(result.escalated), escalation_reason=result.escalation_reason,
        meta=m or None)
    if call_id:
        rec.id = call_id
    w.submit(rec)
    if result.escalated:
        primary = next((a for a in attempts if a.role == "primary"), None)
        final_fallback = attempts and attempts[-1].role == "fallback" and attempts[-1].ok
        if final_fallback:
            w.submit(Example(agent=result.agent, input=inp, output=out,
                             source_model=primary.model if primary else None,
                             target_model=attempts[-1].model,
                             reason=result.escalation_reason,
                             confidence=primary.confidence if primary else None,
                             call_id=rec.id))
    return rec


def agent_meta(result: Any, redact: Callable[[Any], Any] | None = None,
               out: Any = None) -> dict[str, Any]:
    """The parts of an `AgentResult` the flagging rules read: every attempt, and for an escalated
    call the primary model's own answer and whether the fallback disagreed with it."""
    m: dict[str, Any] = {}
    attempts = list(getattr(result, "attempts", ()) or ())
    if attempts:
        m["attempts"] = [{"model": a.model, "ok": a.ok, "confidence": a.confidence,
                          "role": a.role, "latency_s": round(a.latency_s, 4),
                          "error": a.error} for a in attempts]
    if result.escalated:
        if out is None:
            out = _value(result.output)
            if redact is not None:
                out = redact(out)
        primary = next((a for a in attempts if a.role == "primary" and a.ok), None)
        if primary is not None and getattr(primary, "output", None) is not None:
            p_out = _value(primary.output)
            if redact is not None:
                p_out = redact(p_out)
            m["primary_output"] = p_out
            m["disagreed"] = _canon(p_out) != _canon(out)
    if getattr(result, "repaired", False):
        m["repaired"] = True
    if getattr(result, "low_confidence", False):
        m["low_confidence"] = True
    return m


def _canon(v: Any) -> str:
    try:
        return json.dumps(v, sort_keys=True, default=str)
    except Exception:
        return repr(v)


# ---- the listener: from the core's events to records ---------------------------------------

def calllog_enabled() -> bool:
    """Agent calls may be logged unless ``SLMFLOW_CALLLOG`` is off/0/false/no."""
    return os.environ.get("SLMFLOW_CALLLOG", "on").strip().lower() not in ("off", "0", "false",
                                                                           "no")


def calllog_requested() -> bool:
    """``SLMFLOW_CALLLOG`` says on/1/true/yes: log every call in this process."""
    return os.environ.get("SLMFLOW_CALLLOG", "").strip().lower() in ("on", "1", "true", "yes")


def log_agent_call(agent: Any, result: Any, input: Any) -> str | None:
    """Log one agent call under the current context; returns the call id (None when logging is
    off). Never raises: a broken call log must not break the request it describes (the writer
    retries, and spills to a file at exit)."""
    ctx = current_context()
    if ctx.enabled is False or (ctx.enabled is None and ctx.writer is None
                                and not calllog_enabled()):
        return None
    try:
        w = ctx.writer or get_writer()
        note_agent(w, agent)
        meta = {"step": ctx.step} if ctx.step else None
        from .. import tracing

        rec = record_agent_result(result, input, run_id=ctx.run_id, key=ctx.key,
                                  trace_id=tracing.current_trace_id() or ctx.trace_id,
                                  workflow=ctx.workflow, writer=w, redact=ctx.redact, meta=meta,
                                  call_id=getattr(result, "call_id", None))
        return rec.id
    except Exception as e:  # noqa: BLE001 - logged, never raised into the run
        log.warning("could not log the call of agent %s: %s: %s", getattr(agent, "name", "?"),
                    type(e).__name__, e)
        return None


def note_agent(writer: CallLogWriter, agent: Any) -> None:
    """Store the agent's output schema (once per writer and schema) for the review form."""
    schema = _agent_schema(agent)
    if schema is None:
        return
    sent = writer.__dict__.setdefault("_schemas_sent", set())  # per writer: ids get reused
    key = (agent.name, schema[0])
    if key not in sent:
        sent.add(key)
        writer.submit(AgentInfo(name=agent.name, output_schema=schema[1],
                                instructions=getattr(agent, "instructions", None)))


def submit_feedback(fb: Feedback, writer: CallLogWriter | None = None) -> None:
    """Queue a feedback record behind the call it is about (same writer, so same order)."""
    ctx = current_context()
    if ctx.enabled is False or (ctx.enabled is None and ctx.writer is None and writer is None
                                and not calllog_enabled()):
        return
    try:
        (writer or ctx.writer or get_writer()).submit(fb)
    except Exception as e:  # noqa: BLE001
        log.warning("could not log feedback: %s", e)


_ENABLED = False  # enable_logging() was called: every call goes to the process-wide writer


def enable_logging(call_log: CallLog | str | None = None) -> None:
    """Log every agent call (and the runner's flags) of this process to the call log from now
    on. Idempotent. ``call_log``: where (a URL, a path or a `CallLog`); by default
    ``$SLMFLOW_CALLS_URL`` or ``$SLMFLOW_HOME/calls.db``, opened at the first call, not now.
    ``SLMFLOW_CALLLOG=off`` still wins (a process that must not log)."""
    global _ENABLED
    _listen()
    if call_log is not None:
        old = set_writer(CallLogWriter(call_log))
        atexit.register(_close_current)
        if old is not None:
            old.close()
    _ENABLED = True


def disable_logging() -> None:
    """Undo `enable_logging` (contexts that name a writer are still logged)."""
    global _ENABLED
    _ENABLED = False


def logging_enabled() -> bool:
    """Whether a call outside any logging context is logged now."""
    return (_ENABLED or calllog_requested()) and calllog_enabled()


def _close_current() -> None:
    w = _WRITER
    if w is not None:
        w.close()


def _wanted(ctx: LogContext) -> bool:
    if ctx.enabled is False:
        return False
    return ctx.enabled is True or ctx.writer is not None or logging_enabled()


def _on_agent_called(agent: Any, result: Any, input: Any, context: LogContext,
                     **_: Any) -> None:
    if _wanted(context):
        log_agent_call(agent, result, input)


def _on_call_flagged(call_id: str, by: str, label: str, context: LogContext,
                     signal: str = "down", **_: Any) -> None:
    if _wanted(context):
        submit_feedback(Feedback(call_id=call_id, signal=signal, label=label, by=by))


def _listen() -> None:
    hooks.subscribe("agent_called", _on_agent_called)
    hooks.subscribe("call_flagged", _on_call_flagged)


_listen()  # importing the store plugs it in; it writes only where asked (module doc)


def _agent_schema(agent: Any) -> tuple[str, dict[str, Any]] | None:
    """(hash, JSON schema) of the agent's output type, cached on the agent object."""
    cached = getattr(agent, "_slmflow_schema", False)
    if cached is not False:
        return cached
    out: tuple[str, dict[str, Any]] | None = None
    t = getattr(agent, "output_type", None)
    if t is not None and t is not str:
        try:
            from pydantic import TypeAdapter

            sch = TypeAdapter(t).json_schema()
            import hashlib

            out = (hashlib.sha256(_canon(sch).encode()).hexdigest()[:16], sch)
        except Exception:
            out = None
    try:
        object.__setattr__(agent, "_slmflow_schema", out)
    except Exception:
        pass
    return out


def _messages_json(messages: Sequence[MessageLike] | str) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": m.content} for m in as_messages(messages)]


class CallLogging(WrapperModel):
    """A `Model` wrapper that logs every call (messages, answer, latency, confidence, usage,
    cost, trace id) to the call log. ``agent`` names the job in the records."""

    def __init__(self, wrapped: Any, *, agent: str | None = None, key: str | None = None,
                 writer: CallLogWriter | None = None,
                 redact: Callable[[Any], Any] | None = None) -> None:
        super().__init__(wrapped)
        self.agent = agent
        self.key = key
        self.writer = writer
        self.redact = redact

    def _start(self, messages: Sequence[MessageLike] | str) -> tuple[float, Any, CallLogWriter]:
        """What a call needs before it runs: its start time, its messages as logged (redacted if
        asked) and the writer its record goes to."""
        t0 = time.perf_counter()
        inp: Any = _messages_json(messages)
        if self.redact is not None:
            inp = self.redact(inp)
        return t0, inp, self.writer or get_writer()

    def _error_record(self, inp: Any, e: SlmflowError, t0: float) -> CallRecord:
        """The call-log row of a model call that raised."""
        from .. import tracing

        return CallRecord(kind="model", agent=self.agent, key_name=self.key,
                          trace_id=tracing.current_trace_id(), model=self.wrapped.info.identity,
                          input=inp, status="error",
                          error=f"{type(e).__name__}: {e.message}"[:1000],
                          latency_s=time.perf_counter() - t0)

    def _record(self, inp: Any, r: Response, t0: float, meta: dict[str, Any] | None = None
                ) -> CallRecord:
        """The call-log row of an answered model call (the whole answer, redacted if asked)."""
        from .. import tracing

        out: Any = r.text if r.parsed is None else _value(r.parsed)
        if self.redact is not None:
            out = self.redact(out)
        extra = {"meta": meta} if meta else {}
        return CallRecord(
            kind="model", agent=self.agent, key_name=self.key,
            trace_id=tracing.current_trace_id(), model=r.model.identity, adapter=r.model.adapter,
            input=inp, output=out, latency_s=r.latency_s or (time.perf_counter() - t0),
            confidence=r.confidence, input_tokens=r.usage.input_tokens,
            output_tokens=r.usage.output_tokens, cost_usd=_cost(r.model, r.usage, r.latency_s),
            **extra)

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        t0, inp, w = self._start(messages)
        try:
            r = await self.wrapped.generate(messages, schema=schema, tools=tools,
                                            settings=settings)
        except SlmflowError as e:
            w.submit(self._error_record(inp, e, t0))
            raise
        w.submit(self._record(inp, r, t0))
        return r

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """The wrapped stream, logged as one call once it has ended (the whole answer)."""
        t0, inp, w = self._start(messages)
        try:
            async with self.wrapped.stream(messages, schema=schema, tools=tools,
                                           settings=settings) as inner:
                async for delta in inner:
                    yield delta
        except SlmflowError as e:
            w.submit(self._error_record(inp, e, t0))
            raise
        r = inner.response
        w.submit(self._record(inp, r, t0, meta={"stream": True}))
        yield r
