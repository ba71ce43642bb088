"""Getting records into the call log without making a request wait: the background writer, and
the listener on the core's events.

Why a background writer (`CallLogWriter`): a request must not wait for a disk or network write,
and under load many small transactions are slower than one batch. Records go into an unbounded
in-memory queue and a single thread writes them in batches; a failed batch is retried (never
dropped), `flush()` waits until everything submitted is written, and `close()` drains the queue
(whatever still cannot be written after its timeout goes to ``calls.unsent.jsonl`` beside the
home, so no record is silently lost).

Why `committed()` (group commit): a process killed with SIGKILL loses whatever is still queued,
so a client that got an answer might not find its call. The gateway awaits ``committed()`` before
it sends an answer: it resolves once everything submitted so far is written. Requests arriving
while a batch is being written form the next batch, so the wait costs one transaction shared by
every concurrent request, not one each (bench/gateway.py measures it; the writer then runs with
``max_wait_s=0``: it writes what is queued at once instead of lingering for a fuller batch).

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

import asyncio
import atexit
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from .. import hooks
from ..errors import SlmflowError
from ..hooks import LogContext, current_context, logging_context
from ..models.base import WrapperModel
from ..types import MessageLike, Response, Settings, ToolSpec, as_messages
from .calllog import CallLog, default_url, open_call_log
from .records import AgentInfo, CallRecord, Example, Feedback, _json_default

__all__ = ["CallLogWriter", "get_writer", "set_writer", "record_agent_result", "CallLogging",
           "logging_context", "LogContext", "log_agent_call", "calllog_enabled",
           "current_context", "submit_feedback", "agent_meta", "note_agent", "enable_logging",
           "disable_logging", "logging_enabled"]

log = logging.getLogger("slmflow.store")


# ---- the background writer ----------------------------------------------------------------------------

_STOP = object()


class CallLogWriter:
    """Queue + one background thread writing batches; never drops a record (see module doc)."""

    def __init__(self, log: CallLog | str | None = None, *, batch_size: int = 256,
                 max_wait_s: float = 0.05, unsent_path: str | Path | None = None) -> None:
        self.log = log if isinstance(log, CallLog) else open_call_log(log)
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self.submitted = 0
        self.written = 0
        self.failed_batches = 0
        self.last_error: str | None = None
        self._closed = False
        self._unsent = Path(unsent_path) if unsent_path else None
        self._waiters: list[tuple[int, Any, Any]] = []  # (count, loop, future) of committed()
        self._thread = threading.Thread(target=self._run, name="slmflow-calllog", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self.submitted - self.written

    def submit(self, record: CallRecord | Example) -> str:
        if self._closed:
            # After close, write synchronously rather than lose it.
            self.log.append([record])
            with self._cv:
                self.submitted += 1
                self.written += 1
                self._wake()
            return record.id
        with self._cv:
            self.submitted += 1
        self._q.put(record)
        return record.id

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch, final=stop)
        # drain anything left after the stop marker
        rest = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        if rest:
            self._write(rest, final=True)

    def _write(self, batch: list[Any], final: bool) -> None:
        delay = 0.05
        tries = 0
        while True:
            try:
                self.log.append(batch)
                with self._cv:
                    self.written += len(batch)
                    self._cv.notify_all()
                    self._wake()
                return
            except Exception as e:  # retried: a record is never dropped on a transient error
                tries += 1
                self.failed_batches += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("call log write failed (try %d): %s", tries, self.last_error)
                if final and tries >= 5:
                    self._spill(batch)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _spill(self, batch: list[Any]) -> None:
        from ..home import home

        path = self._unsent or (home() / "calls.unsent.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            for r in batch:
                f.write(json.dumps({"type": type(r).__name__, **asdict(r)},
                                   default=_json_default, ensure_ascii=True) + "\n")
        with self._cv:
            self.written += len(batch)
            self._cv.notify_all()
            self._wake()
        log.error("call log unreachable at shutdown: %d records saved to %s", len(batch), path)

    def _wake(self) -> None:
        """Resolve the `committed` waiters whose records are written (called under ``_cv``)."""
        if not self._waiters:
            return
        keep = []
        for upto, loop, fut in self._waiters:
            if upto <= self.written:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # that event loop is closed
                    pass
            else:
                keep.append((upto, loop, fut))
        self._waiters = keep

    async def committed(self, timeout: float = 30.0) -> bool:
        """Wait (without blocking the event loop) until every record submitted before this call
        is written; False on timeout. Records are written in submission order, so the count of
        written records reaching the count submitted now means this caller's are in."""
        with self._cv:
            upto = self.submitted
            if self.written >= upto:
                return True
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((upto, fut.get_loop(), fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._cv:
                self._waiters = [w for w in self._waiters if w[2] is not fut]

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted record is written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.written < self.submitted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 30.0, *, close_log: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)
        if close_log:
            self.log.close()

    def stats(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "written": self.written, "pending": self.pending,
                "failed_batches": self.failed_batches, "last_error": self.last_error}


def _resolve(fut: Any) -> None:
    if not fut.done():
        fut.set_result(True)


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
        t0 = time.perf_counter()
        inp: Any = _messages_json(messages)
        if self.redact is not None:
            inp = self.redact(inp)
        w = self.writer or get_writer()
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
        t0 = time.perf_counter()
        inp: Any = _messages_json(messages)
        if self.redact is not None:
            inp = self.redact(inp)
        w = self.writer or get_writer()
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
