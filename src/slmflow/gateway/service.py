"""Answering a request: a chat completion or a workflow run, for each kind of target.

Why a module of its own: the `Gateway` (app.py) owns what lives as long as the process (the
config, the model stacks, keys and limits, the call-log writer, the metrics); what happens to one
request is here, in `Service`, which the gateway holds as ``gateway.service``:

* a model target: ``Cached(Guarded(Resilient(Fallback(slm, strong))))`` answers the messages;
* an agent (``<workflow>.<agent>``) or a workflow: input guardrails, ``agent.run`` /
  ``workflow.run`` under the request timeout, output guardrails.

Every request, failed ones included, is queued to the call log (the background writer batches
and never drops; PII redacted unless ``guardrails.log_pii``): `Service.finish` submits the record
and counts it in the metrics. Every agent call of a workflow run is logged too, by the agent
itself, with the run id and trace id (the logging context of `Service._run_workflow`).

A streamed model answer is stream.py's (`ChatStream`, `produce`); `stream_chat` here starts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import tracing
from ..errors import HandoffError, StructuredOutputError
from ..guardrails import GuardrailViolation, check_text, collect_decisions, redact_pii
from ..store.calllog import CallRecord
from ..store.writer import _cost, _value, agent_meta, logging_context, note_agent
from ..types import Message, Settings, Usage
from .auth import KeyInfo
from .schemas import ApiError, ChatRequest, _answer_text, _json_value, _text, public_error
from .stream import ChatStream, produce
from .wrappers import RequestInfo, set_info

if TYPE_CHECKING:
    from .app import Gateway, Target

log = logging.getLogger("slmflow.gateway")

__all__ = ["Service"]


class Service:
    """Answers the requests of one `Gateway` (``gateway.service``); holds no state of its own."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def check_input_depth(self, value: Any, param: str) -> None:
        """A run's JSON input is walked recursively (redaction, logging, validation): a 400 past
        ``limits.max_input_depth`` levels, before a RecursionError would make it a 500."""
        from ..structured import schema_depth

        n = self.gw.config.limits.max_input_depth
        if schema_depth(value, stop_at=n) > n:
            raise ApiError(400, f"{param}: the input nests more than {n} levels deep (limit "
                           f"max_input_depth: {n})", "invalid_request_error", "invalid_input",
                           param)

    def check_schema_limits(self, schema: Any, max_tokens: int) -> None:
        """A request's schema is bounded before anything is built from it (400 naming the limit):
        the constraint compilers' work and memory grow with the counts in a schema."""
        from ..structured import SchemaLimitError, check_limits

        param = "response_format.json_schema.schema"
        try:
            check_limits(schema, self.gw.schema_limits, max_tokens=max_tokens, where=param)
        except SchemaLimitError as e:  # "/minItems: minItems is ... (limit max_count: 512)"
            path = str(e.details.get("path", "(root)"))
            rest = e.message.removeprefix(f"{path}: ")
            raise ApiError(400, f"{param}{'' if path == '(root)' else path}: {rest}",
                           "invalid_request_error", "schema_too_complex", param) from None

    def log_redact(self, v: Any) -> Any:
        """What the call log keeps of ``v``: PII-redacted unless ``guardrails.log_pii``."""
        return v if self.gw.config.guardrails.log_pii else _redact(v)

    def guard_text(self, text: str, stage: str, decisions: list) -> str:
        """``text`` through the input or output guardrails (redacted); a block raises."""
        pol = self.gw.in_policy if stage == "input" else self.gw.out_policy
        if pol is None:
            return text
        out, ds = check_text(text, pol, stage, check_injection=stage == "input")
        decisions.extend(ds)
        for d in ds:
            if d.action == "block":
                raise GuardrailViolation(f"the {stage} was blocked by the {d.check} check"
                                         + (f" ({d.detail})" if d.detail else ""),
                                         stage=stage, check=d.check, score=d.score)
        return out

    # -- the three kinds of target ---------------------------------------------------------------
    def chat_inputs(self, req: ChatRequest, key: KeyInfo | None) -> tuple:
        """The target, messages, settings, schema and max_tokens of a chat request (4xx here)."""
        gw = self.gw
        t = gw.target(req.model, key)
        gw.admit(key, req.model)
        msgs = [Message("system" if m.role == "developer" else m.role, _text(m.content),
                        name=m.name, tool_call_id=m.tool_call_id) for m in req.messages]
        lim = gw.config.limits
        max_tokens = min(req.max_completion_tokens or req.max_tokens or 256, lim.max_tokens)
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())[:4]
        settings = Settings(max_tokens=max_tokens, temperature=req.temperature or 0.0,
                            top_p=req.top_p if req.top_p is not None else 1.0,
                            seed=req.seed if req.seed is not None else 0, stop=stop)
        schema = None
        rf = req.response_format
        if rf is not None and rf.type == "json_object":
            schema = {"type": "object"}
        elif rf is not None and rf.type == "json_schema":
            js = rf.json_schema or {}
            schema = js.get("schema") if isinstance(js.get("schema"), dict) else None
            if schema is None:
                raise ApiError(400, "response_format.json_schema.schema must be an object",
                               param="response_format.json_schema.schema")
        if schema is not None:
            self.check_schema_limits(schema, max_tokens)
        return t, msgs, settings, schema, max_tokens

    def model_record(self, rec: CallRecord, r: Any, info: RequestInfo) -> None:
        """A model target's answer on its call record."""
        rec.model, rec.adapter = r.model.identity, r.model.adapter
        rec.confidence = r.confidence
        rec.cost_usd = (None if info.cache in ("hit", "semantic")
                        else _cost(r.model, r.usage, r.latency_s))
        rec.output = self.log_redact(r.text if r.parsed is None else _value(r.parsed))
        rec.input_tokens, rec.output_tokens = r.usage.input_tokens, r.usage.output_tokens
        rec.escalated = info.escalated
        rec.escalation_reason = info.escalation_reason
        if info.escalated:
            rec.meta["primary"] = {"model": info.primary_model,
                                   "confidence": info.primary_confidence}

    async def run_chat(self, req: ChatRequest, key: KeyInfo | None) -> tuple[dict, CallRecord]:
        """Run a chat completion; returns (the response body, its call record)."""
        gw = self.gw
        t, msgs, settings, schema, max_tokens = self.chat_inputs(req, key)
        held = await gw.limit(key, gw.need(t, [m.content for m in msgs], max_tokens))
        info = RequestInfo()
        token = set_info(info)
        t0 = time.perf_counter()
        rec = CallRecord(kind=t.kind, key_name=key.name if key else None,
                         input=self.log_redact([{"role": m.role, "content": m.content}
                                                for m in msgs]),
                         meta={"target": t.name, "stream": bool(req.stream)})
        decisions: list = []
        try:
            with tracing.span("gateway", "chat.completions", attributes={
                    "slmflow.gateway.target": t.name, "slmflow.gateway.key":
                    key.name if key else None}) as sp, collect_decisions() as decisions:
                rec.trace_id = tracing.current_trace_id() or uuid.uuid4().hex
                if t.kind == "model":
                    r = await t.model.generate(msgs, schema=schema, settings=settings)
                    text, usage, conf = r.text, r.usage, r.confidence
                    finish = r.finish_reason or "stop"
                else:
                    user = next((m.content for m in reversed(msgs) if m.role == "user"), "")
                    user = self.guard_text(user, "input", decisions)
                    value: Any = user
                    if user.strip().startswith("{"):
                        try:
                            value = json.loads(user)
                        except (ValueError, RecursionError):
                            pass
                        self.check_input_depth(value, "messages")
                    if t.kind == "agent":
                        with logging_context(enabled=False):  # this request's record is the log
                            res = await asyncio.wait_for(t.agent.run(value), t.timeout_s)
                        rec.id = res.call_id or rec.id
                        rec.meta.update(agent_meta(res, self.log_redact))
                        note_agent(gw.writer, t.agent)
                        text = _answer_text(res.output)
                        text = self.guard_text(text, "output", decisions)
                        usage, conf, finish = res.usage, res.confidence, "stop"
                        rec.model, rec.adapter = res.model.identity, res.model.adapter
                        rec.agent, rec.confidence = res.agent, conf
                        rec.escalated = res.escalated
                        rec.escalation_reason = res.escalation_reason
                        rec.cost_usd = _cost(res.model, res.usage, res.latency_s)
                        rec.output, bad = _json_value(res.output)
                        rec.output = self.log_redact(rec.output)
                        if bad:
                            rec.meta["nonfinite"] = bad
                        if res.escalated:
                            info.escalated = True
                            info.escalation_reason = res.escalation_reason
                    else:
                        rr, run_id = await self._run_workflow(t, value, key, rec.trace_id)
                        if rr.error is not None:
                            raise rr.error
                        text = _answer_text(rr.answer)
                        text = self.guard_text(text, "output", decisions)
                        usage, conf, finish = rr.usage, None, "stop"
                        rec.run_id, rec.workflow = run_id, t.name
                        rec.output, bad = _json_value(rr.answer)
                        rec.output = self.log_redact(rec.output)
                        if bad:
                            rec.meta["nonfinite"] = bad
                        rec.status = rr.status
                        rec.escalated = bool(rr.escalations)
                        # agent records carry the tokens; this one would double-count them
                        rec.meta["usage"] = {"input_tokens": usage.input_tokens,
                                             "output_tokens": usage.output_tokens}
                tracing.set_attributes(sp, {"slmflow.cache": info.cache,
                                            "slmflow.escalated": info.escalated or None})
        except BaseException as e:
            gw.release(held)
            rec.status = "blocked" if isinstance(e, GuardrailViolation) else "error"
            rec.error = f"{type(e).__name__}: {getattr(e, 'message', str(e))}"[:1000]
            rec.latency_s = time.perf_counter() - t0
            rec.meta["guardrails"] = [d.as_dict() for d in decisions if d.action != "pass"]
            pub = self.public(e, rec)
            self.finish(rec, t.name)
            if pub is e:
                raise
            raise pub from e
        finally:
            from .wrappers import _INFO

            _INFO.reset(token)
        rec.latency_s = time.perf_counter() - t0
        rec.cache = info.cache
        if t.kind == "agent":  # the agent's only record (its own logging is off): its tokens
            rec.input_tokens, rec.output_tokens = usage.input_tokens, usage.output_tokens
        if t.kind == "model":
            self.model_record(rec, r, info)
        shown = [d.as_dict() for d in decisions if d.action != "pass"]
        if shown:
            rec.meta["guardrails"] = shown
        self.finish(rec, t.name, usage=usage)
        await gw.settle(held, usage.total_tokens)
        body = {
            "id": f"chatcmpl-{rec.id}", "object": "chat.completion", "created": int(rec.ts),
            "model": t.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if finish == "length" else "stop"}],
            "usage": {"prompt_tokens": usage.input_tokens,
                      "completion_tokens": usage.output_tokens,
                      "total_tokens": usage.total_tokens},
            "slmflow": {"call_id": rec.id, "trace_id": rec.trace_id, "cache": info.cache,
                        "confidence": conf, "escalated": bool(rec.escalated),
                        "model": rec.model, "run_id": rec.run_id, "guardrails": shown},
        }
        return body, rec

    async def stream_chat(self, req: ChatRequest, key: KeyInfo | None) -> ChatStream:
        """Start a streamed chat completion. A model target streams as it decodes (`ChatStream`);
        an agent or a workflow answers whole and its answer is replayed in pieces. Returns once
        the first piece of the answer is there, so that a failure before it (a guardrail on the
        input, the context length, a backend down) is still an HTTP error status."""
        gw = self.gw
        t, msgs, settings, schema, max_tokens = self.chat_inputs(req, key)
        if t.kind != "model":
            body, rec = await self.run_chat(req, key)
            await gw.committed()
            return ChatStream.replay(gw, body, rec)
        held = await gw.limit(key, gw.need(t, [m.content for m in msgs], max_tokens))
        rec = CallRecord(kind=t.kind, key_name=key.name if key else None,
                         input=self.log_redact([{"role": m.role, "content": m.content}
                                                for m in msgs]),
                         meta={"target": t.name, "stream": True})
        info = RequestInfo()
        st = ChatStream(gw, t.name, rec, info)
        st.task = asyncio.create_task(produce(self, t, msgs, schema, settings, rec, held, info,
                                              st.queue))
        try:
            await st.prefetch()
        except BaseException:
            st.stop()
            raise
        return st

    async def _run_workflow(self, t: Target, value: Any, key: KeyInfo | None,
                            trace_id: str | None) -> tuple[Any, str]:
        """Run a workflow target; every agent call inside it is logged by the agent itself, to
        this gateway's writer, under this run id, key and redaction (the logging context)."""
        gw = self.gw
        run_id = uuid.uuid4().hex
        with logging_context(run_id=run_id, workflow=t.name, key=key.name if key else None,
                             writer=gw.writer, enabled=True, trace_id=trace_id,
                             redact=None if gw.config.guardrails.log_pii else _redact):
            rr = await asyncio.wait_for(t.workflow.run(value), t.timeout_s)
        for s in rr.steps:
            if s.agent_result is not None:
                gw.metrics.inc("agent_calls", agent=s.agent_result.agent,
                               help="Agent calls inside workflow runs.")
        return rr, run_id

    async def run_workflow(self, name: str, value: Any, key: KeyInfo | None) -> dict:
        """Run the workflow ``name`` once (``POST /v1/workflows/{name}/runs``): its answer, every
        step, the run id. A run that fails a handoff between steps or a structured output is
        still an answer, with its status; a rejected input or any other failure raises."""
        gw = self.gw
        t = gw.targets.get(name)
        if t is None or t.kind != "workflow":
            raise ApiError(404, f"no workflow named {name!r}", "invalid_request_error",
                           "workflow_not_found", "name")
        gw.admit(key, name)
        self.check_input_depth(value, "input")
        held = await gw.limit(key, gw.need(t, [_answer_text(value)], 0))
        t0 = time.perf_counter()
        rec = CallRecord(kind="workflow", workflow=name, key_name=key.name if key else None,
                         input=self.log_redact(_value(value)), meta={"target": name})
        decisions: list = []
        try:
            with tracing.span("gateway", "workflow.run", attributes={
                    "slmflow.gateway.target": name}), collect_decisions() as decisions:
                rec.trace_id = tracing.current_trace_id() or uuid.uuid4().hex
                if isinstance(value, str):
                    value = self.guard_text(value, "input", decisions)
                elif gw.in_policy is not None:
                    self.guard_text(json.dumps(value, default=str), "input", decisions)
                rr, run_id = await self._run_workflow(t, value, key, rec.trace_id)
                if rr.error is not None and isinstance(rr.error, HandoffError) and \
                        rr.handoffs and rr.handoffs[0].source == "input":
                    raise rr.error
                if rr.error is not None and not isinstance(rr.error, (HandoffError,
                                                                      StructuredOutputError)):
                    raise rr.error
                answer = rr.answer
                if answer is not None and gw.out_policy is not None:
                    txt = _answer_text(answer)
                    red = self.guard_text(txt, "output", decisions)
                    if red != txt:
                        answer = red if isinstance(answer, str) else _redact(_value(answer))
        except BaseException as e:
            gw.release(held)
            rec.status = "blocked" if isinstance(e, GuardrailViolation) else "error"
            rec.error = f"{type(e).__name__}: {getattr(e, 'message', str(e))}"[:1000]
            rec.latency_s = time.perf_counter() - t0
            pub = self.public(e, rec)
            self.finish(rec, name)
            if pub is e:
                raise
            raise pub from e
        rec.run_id, rec.status = run_id, rr.status
        logged, bad = _json_value(rr.answer)
        rec.output = self.log_redact(logged)
        answer, bad_sent = _json_value(answer)
        if bad or bad_sent:
            rec.meta["nonfinite"] = max(bad, bad_sent)
        rec.escalated = bool(rr.escalations)
        rec.latency_s = time.perf_counter() - t0
        usage = rr.usage
        rec.meta["usage"] = {"input_tokens": usage.input_tokens,
                             "output_tokens": usage.output_tokens}
        if rr.error is not None:
            rec.error = f"{type(rr.error).__name__}: {getattr(rr.error, 'message', rr.error)}"
        self.finish(rec, name, usage=usage)
        await gw.settle(held, usage.total_tokens)
        steps = [{"step": s.step, "kind": s.kind, "status": s.status, "model": s.model,
                  "latency_ms": round(s.latency_s * 1000, 2), "confidence": s.confidence,
                  "escalated": s.escalated,
                  "call_id": s.agent_result.call_id if s.agent_result else None}
                 for s in rr.steps]
        return {"id": run_id, "object": "workflow.run", "workflow": name, "status": rr.status,
                "answer": answer, "detail": rr.detail or "", "steps": steps,
                "usage": {"prompt_tokens": usage.input_tokens,
                          "completion_tokens": usage.output_tokens,
                          "total_tokens": usage.total_tokens},
                "latency_ms": round(rec.latency_s * 1000, 2), "trace_id": rec.trace_id}

    def public(self, e: BaseException, rec: CallRecord) -> BaseException:
        """`public_error`, and the full story in the server log; the call record keeps it too."""
        pub = public_error(e, rec.id)
        if pub is not e:
            log.warning("call %s: %s: %s", rec.id, type(e).__name__, e)
            rec.meta["public_error"] = pub.message  # type: ignore[attr-defined]
        return pub

    def finish(self, rec: CallRecord, target: str, usage: Usage | None = None) -> None:
        """Queue a request's record to the call log and count it in the metrics."""
        gw = self.gw
        gw.writer.submit(rec)
        m = gw.metrics
        m.inc("calls", target=target, status=rec.status, help="Requests by target and outcome.")
        if rec.cache:
            m.inc("cache", target=target, result=rec.cache, help="Cache lookups by result.")
        for d in (rec.meta or {}).get("guardrails", []):
            m.inc("guardrail_decisions", stage=d["stage"], check=d["check"], action=d["action"],
                  help="Guardrail decisions other than pass.")
        if usage is not None:
            k = rec.key_name or "-"
            m.inc("tokens", usage.input_tokens, key=k, target=target, direction="input",
                  help="Tokens by key, target and direction.")
            m.inc("tokens", usage.output_tokens, key=k, target=target, direction="output")
        if rec.cost_usd:
            m.inc("cost_usd", rec.cost_usd, key=rec.key_name or "-", target=target,
                  help="Estimated cost in USD (tracing/cost.py price table).")


def _redact(v: Any) -> Any:
    """PII-redact every string inside a JSON-able value."""
    if isinstance(v, str):
        return redact_pii(v)
    if isinstance(v, list):
        return [_redact(x) for x in v]
    if isinstance(v, dict):
        return {k: _redact(x) for k, x in v.items()}
    return v
