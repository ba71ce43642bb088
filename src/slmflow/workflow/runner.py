"""Running a workflow: handoff contracts, verifier escalation, and a result for every request.

The invariant this module exists to hold: **every request ends in an answer or an explicit,
recorded failure or escalation.** `run_workflow` never raises for a failure of the work itself
(only `asyncio.CancelledError`, the caller stopping it, propagates). A model that produces garbage,
a tool that raises or hangs, a function that returns the wrong type, a bug in user code: each
ends the run with ``status="failed"`` and the exception object itself on `RunResult.error`
(re-raised by `RunResult.raise_for_status()`), the failing step's `StepRecord` carrying it too,
and the span marked with the error. Nothing is logged-and-dropped. That includes user code that
calls ``sys.exit()`` or raises `SystemExit` / `KeyboardInterrupt` in a function step, a tool or a
verifier check: it becomes the step's `StepError` (a tool's, its `ToolError`), caught inside the
step's own coroutine, before asyncio's task machinery would re-raise it out of the event loop
(which would end a whole server).

Handoff contract, checked on every edge into a step with a typed input: the consuming step's
input type is validated from the state. When that fails, the step that produced the offending
field (its *owner*) is, in order:

  (a) repaired: re-generated once under a *contract type*, its own output type with the shared
      fields' definitions taken from the consumer's input type, told the validation errors;
  (b) escalated: the same, on the owner agent's fallback model;
  (c) given up: the run ends with a `HandoffError` naming the edge ``owner -> consumer``, the
      payload and the validation errors.

Each outcome is a `HandoffRecord` (status validated | repaired | escalated | failed) and a
``handoff {src} -> {dst}`` span. A function step cannot be re-generated: a wrong output goes
straight to (c).

Verifier steps (``Step.verifies``): a rejection re-runs the verified agent on its fallback model
(recorded as an escalation on its `StepRecord`) and the verifier runs once more; a second rejection,
or no fallback to escalate to, ends the run with ``status="rejected"``: the draft is kept on the
result but flagged, never passed off as a verified answer.

The runner records nothing itself beyond the `RunResult` and spans: it emits events
(`slmflow.hooks`: ``run_finished``, ``verifier_rejected``, ``handoff_repaired``, and
``call_flagged`` for the call a rejection or a broken handoff is about) under the run's
`logging_context` (run id, workflow, step), and the call log listens where logging is on. So a
workflow imports nothing of the store, the loop or the gateway (docs/architecture.md).

One job, running: the walk, a step, the handoff check with its repair, the verifier with its
escalation; they share one `_Run`'s state, which is why they stay in one module (~500 lines). The
values a run gives back are in `result.py`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from typing import Any

from .. import hooks, tracing
from ..agents import AgentResult, render_value
from ..errors import HandoffError, SlmflowError
from ..hooks import current_context, logging_context
from ..tools import ExitRaised, ToolResult, contain_exits
from ..tracing import attrs
from .graph import END, Branch, Parallel, Step, Workflow, _is_model
from .result import HandoffRecord, RunResult, StepError, StepRecord

__all__ = ["RunResult", "StepRecord", "HandoffRecord", "StepError", "run_workflow"]


def _exit_error(what: str, step: str, e: ExitRaised) -> StepError:
    return StepError(f"{what} tried to end the process ({e})", where=f"step {step}",
                     step=step, exception_type=type(e.original).__name__)


def _errors(e: Any) -> list[str]:
    return [f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in e.errors()]


def _payload_text(payload: Any) -> str:
    try:
        return json.dumps(payload, default=str)[:1000]
    except Exception:
        return repr(payload)[:1000]


class _Run:
    def __init__(self, wf: Workflow) -> None:
        self.wf = wf
        self.state: dict[str, Any] = {}
        self.owner: dict[str, str] = {}
        self.steps: list[StepRecord] = []
        self.latest: dict[str, StepRecord] = {}
        self.handoffs: list[HandoffRecord] = []
        self.reverified: set[str] = set()
        self.rejected: str | None = None

    # -- input ------------------------------------------------------------------------------
    def start(self, value: Any) -> None:
        wf = self.wf
        first = wf.nodes[0].name
        size = len(value) if isinstance(value, str) else len(_payload_text(value))
        if size > wf.max_input_chars:
            self._input_fail(first, [f"input is {size} characters; this workflow takes at most "
                                     f"{wf.max_input_chars}"], value)
        t = wf.input_type
        if t is None:
            if isinstance(value, dict):
                self.state.update(value)
            else:
                self.state["input"] = value
            return
        from pydantic import ValidationError

        if hasattr(value, "model_dump") and not isinstance(value, t):
            value = value.model_dump()
        if isinstance(value, str):
            req = [k for k, f in t.model_fields.items() if f.is_required()]
            value = {req[0]: value} if len(req) == 1 else {"input": value}
        try:
            obj = value if isinstance(value, t) else t.model_validate(value)
        except ValidationError as e:
            self._input_fail(first, _errors(e), value)
        for k, v in obj.model_dump().items():
            self.state[k] = v
            self.owner[k] = "input"

    def _input_fail(self, first: str, errors: list[str], value: Any) -> None:
        self.handoffs.append(HandoffRecord("input", first, "failed", errors))
        raise HandoffError("the request does not fit the workflow's input: " + "; ".join(errors),
                           where=f"input -> {first}", edge=f"input -> {first}",
                           payload=_payload_text(value), errors=errors)

    # -- walking ----------------------------------------------------------------------------
    async def walk(self) -> None:
        name = self.wf.nodes[0].name
        while name != END:
            node = self.wf.by_name[name]
            if isinstance(node, Step):
                await self.step(node)
            elif isinstance(node, Parallel):
                done = await asyncio.gather(*(self.step(s) for s in node.steps),
                                            return_exceptions=True)
                for r in done:
                    if isinstance(r, asyncio.CancelledError):
                        raise r
                errs = [r for r in done if isinstance(r, BaseException)]
                if errs:
                    raise errs[0]  # every child's record (and error) is already on the result
            else:
                name = self.branch(node)
                continue
            nxt = self.wf.edges[name]
            name = nxt[0] if nxt else END

    def branch(self, n: Branch) -> str:
        value = self.state.get(n.on)
        key = str(value).lower() if isinstance(value, bool) else str(value)
        target = n.cases.get(key, n.default)
        rec = StepRecord(n.name, "branch", status="ok" if target else "failed",
                         detail=f"{n.on}={value!r} -> {target or 'no case'}")
        self.steps.append(rec)
        if target is None:
            rec.error = HandoffError(f"branch {n.name!r} has no case for {n.on}={value!r} and no "
                                     "default", where=f"branch {n.name}", value=value)
            raise rec.error
        return target

    async def step(self, s: Step, note: str = "") -> StepRecord:
        rec = StepRecord(s.name, s.kind, detail=note)
        t0 = time.perf_counter()
        try:
            try:
                inp = await self.handoff(s)  # a repair re-run is recorded before this step
            finally:
                self.steps.append(rec)
            rec.input = inp
            work = self.execute(s, inp, rec)
            out = await (asyncio.wait_for(work, s.timeout_s) if s.timeout_s else work)
        except asyncio.TimeoutError:
            rec.status = "failed"
            rec.error = SlmflowError(f"step {s.name!r} timed out after {s.timeout_s:g}s",
                                     where=f"step {s.name}")
            raise rec.error from None
        except BaseException as e:
            rec.status, rec.error = "failed", e
            if isinstance(e, SlmflowError):
                e.details.setdefault("step", s.name)  # which step, for whoever reports it
            done = getattr(e, "details", {}).get("attempts") if isinstance(e, SlmflowError) \
                else None
            if done and isinstance(done[-1], dict) and rec.model == "-":
                rec.model = done[-1].get("model", "-")
            raise
        finally:
            rec.latency_s = time.perf_counter() - t0
        self.merge(s, out)
        rec.output = out
        if rec.status == "running":
            rec.status = "ok"
        self.latest[s.name] = rec
        if s.verifies:
            await self.verify(s, rec)
        return rec

    async def execute(self, s: Step, inp: Any, rec: StepRecord) -> Any:
        try:
            return await contain_exits(self._execute(s, inp, rec))
        except ExitRaised as e:
            raise _exit_error(f"step {s.name!r}", s.name, e) from None

    async def _execute(self, s: Step, inp: Any, rec: StepRecord) -> Any:
        if s.agent is not None:
            with logging_context(step=s.name):
                res = await s.agent.run(inp)
            self._fill(rec, res)
            out = res.output
            if isinstance(out, ToolResult):
                return self._tool_outcome(s, out, rec)
            return out
        if s.tool is not None:
            args = {p: self.state.get(src) for p, src in s.args.items()}
            return self._tool_outcome(s, await s.tool.invoke(args), rec)
        out = s.fn(inp)  # type: ignore[misc]
        if inspect.isawaitable(out):
            out = await out
        return self._check_fn_output(s, out)

    def _fill(self, rec: StepRecord, res: AgentResult) -> None:
        rec.agent_result = res
        rec.model = res.model.identity
        rec.usage = res.usage
        rec.confidence = res.confidence
        rec.escalated = res.escalated
        rec.escalation_reason = res.escalation_reason
        rec.repaired = res.repaired

    def _tool_outcome(self, s: Step, res: ToolResult, rec: StepRecord) -> Any:
        rec.model = f"tool:{res.tool}"
        if res.ok:
            self.state[f"{s.key}_error"] = None
            return res.value
        if s.on_error == "continue":
            rec.status, rec.error = "error_continued", res.error
            rec.detail = f"{res.error_kind}: {res.error.message}"  # type: ignore[union-attr]
            self.state[f"{s.key}_error"] = res.error_kind
            return None
        raise res.error  # type: ignore[misc]

    def _check_fn_output(self, s: Step, out: Any) -> Any:
        t = s.output_type
        if t is None or isinstance(out, t):
            return out
        from pydantic import ValidationError

        nxt = (self.wf.edges.get(s.name) or [END])[0]
        try:
            if hasattr(out, "model_dump"):
                out = out.model_dump()
            if not isinstance(out, dict):
                raise TypeError(f"step {s.name!r} returned {type(out).__name__}, "
                                f"not {t.__name__}")
            return t.model_validate(out)
        except (ValidationError, TypeError) as e:
            errs = _errors(e) if isinstance(e, ValidationError) else [str(e)]
            self.handoffs.append(HandoffRecord(s.name, nxt, "failed", errs))
            raise HandoffError(f"step {s.name!r} returned output that is not a {t.__name__}: "
                               + "; ".join(errs), where=f"{s.name} -> {nxt}",
                               edge=f"{s.name} -> {nxt}", payload=_payload_text(out),
                               errors=errs) from None

    def merge(self, s: Step, out: Any) -> None:
        if _is_model(type(out)) and s.tool is None:
            # a function step owns the fields it set; a field it left at its default keeps its
            # value and its owner (a check that fills in one missing id does not take over the
            # others: a repair still goes back to the agent that wrote them)
            data = out.model_dump(exclude_unset=True) if s.fn is not None else out.model_dump()
            for k, v in data.items():
                self.state[k] = v
                self.owner[k] = s.name
        else:
            self.state[s.key] = out
            self.owner[s.key] = s.name

    # -- handoff contracts ------------------------------------------------------------------
    async def handoff(self, s: Step) -> Any:
        t = s.input_type
        if s.tool is not None:
            return None
        if t is None:
            if s.agent is not None:
                return self.state["input"] if isinstance(self.state.get("input"), str) \
                    else render_value(self.state)
            return dict(self.state)
        from pydantic import ValidationError

        payload = {k: self.state[k] for k in t.model_fields if k in self.state}
        owners = [self.owner[k] for k in payload]
        src = next((o for o in reversed(list(self.latest)) if o in owners), "input")
        with tracing.span("handoff", f"{src} -> {s.name}", attributes={
                attrs.HANDOFF_SOURCE: src, attrs.HANDOFF_TARGET: s.name}) as sp:
            tracing.set_content(sp, {attrs.HANDOFF_PAYLOAD: payload})
            try:
                obj = t.model_validate(payload)
            except ValidationError as e:
                tracing.set_attributes(sp, {attrs.HANDOFF_ERRORS: _errors(e)})
                obj, status = await self._repair(s, t, payload, _errors(e), e)
            else:
                status = "validated"
                self.handoffs.append(HandoffRecord(src, s.name, status))
            tracing.set_attributes(sp, {attrs.HANDOFF_STATUS: status})
            return obj

    async def _repair(self, s: Step, t: Any, payload: dict[str, Any], errors: list[str],
                      exc: Any) -> tuple[Any, str]:
        from pydantic import ValidationError

        fields = [str(err["loc"][0]) for err in exc.errors() if err["loc"]]
        owner_name = next((self.owner[f] for f in fields if f in self.owner), None)
        owner = self.wf.steps.get(owner_name) if owner_name else None
        edge = f"{owner_name or 'input'} -> {s.name}"
        tried: list[str] = []
        if owner is not None and owner.agent is not None and owner_name in self.latest:
            agent = owner.agent
            contract = contract_type(owner, t)
            note = ("Your previous answer did not fit the next step. Fix: "
                    + "; ".join(errors[:3]))
            modes = ["repaired"] + (["escalated"] if agent.can_escalate else [])
            fallback_tried = False
            for mode in modes:
                if mode == "escalated" and fallback_tried:
                    break  # the repair attempt already escalated inside the agent, and failed
                rec = StepRecord(owner.name, "agent", detail=f"handoff {mode[:-2]} for {s.name}")
                self.steps.append(rec)
                t0 = time.perf_counter()
                bad = self.latest[owner.name].agent_result
                if mode == "repaired" and bad is not None and bad.call_id:
                    # the call whose output broke the handoff: a weak output for the review queue
                    _flag(bad.call_id, f"handoff:{edge}", "malformed_handoff: "
                          + "; ".join(errors[:3]))
                try:
                    with logging_context(step=owner.name):
                        res = await agent.run(self.latest[owner.name].input,
                                              output_type=contract, note=note,
                                              use_fallback=(mode == "escalated"),
                                              reason=f"handoff {edge}: {'; '.join(errors[:2])}")
                except SlmflowError as e:
                    rec.status, rec.error = "failed", e
                    rec.latency_s = time.perf_counter() - t0
                    done = e.details.get("attempts") or []
                    if done:
                        rec.model = done[-1].get("model", "-")
                    fallback_tried = fallback_tried or any(a.get("role") == "fallback"
                                                           for a in done)
                    tried.append(f"{mode[:-2]}: {type(e).__name__}: {e.message}")
                    continue
                self._fill(rec, res)
                if res.escalated:
                    mode = "escalated"
                rec.latency_s = time.perf_counter() - t0
                rec.status, rec.output = "ok", res.output
                vals = res.output.model_dump()
                for k in owner.provides():
                    if k in vals:
                        self.state[k] = vals[k]
                        self.owner[k] = owner.name
                payload = {k: self.state[k] for k in t.model_fields if k in self.state}
                try:
                    obj = t.model_validate(payload)
                except ValidationError as e2:
                    errors = _errors(e2)
                    tried.append(f"{mode[:-2]}: still invalid: {'; '.join(errors[:3])}")
                    continue
                self.handoffs.append(HandoffRecord(owner.name, s.name, mode, errors))
                hooks.emit("handoff_repaired", source=owner.name, target=s.name, status=mode,
                           errors=list(errors))
                return obj, mode
        else:
            tried.append("no regeneration possible: "
                         + ("the field comes from the request" if owner is None else
                            f"{owner_name!r} is a {owner.kind} step, not an agent"))
        self.handoffs.append(HandoffRecord(owner_name or "input", s.name, "failed", errors))
        raise HandoffError(f"handoff {edge} failed: " + "; ".join(errors)
                           + (f" (after: {' | '.join(tried)})" if tried else ""),
                           where=edge, edge=edge, payload=_payload_text(payload),
                           errors=errors, tried=tried)

    # -- verifiers --------------------------------------------------------------------------
    def _verdict(self, s: Step) -> str | None:
        reasons = []
        out = s.output_type
        if _is_model(out) and s.verdict_field in out.model_fields:
            if not self.state.get(s.verdict_field):
                why = self.state.get("reason")
                reasons.append(f"{s.name}: {s.verdict_field}=false"
                               + (f" ({why})" if isinstance(why, str) and why else ""))
        if s.check is not None:
            try:
                r = s.check(dict(self.state))
            except (SystemExit, KeyboardInterrupt) as e:
                raise _exit_error(f"the check of step {s.name!r}", s.name,
                                  ExitRaised(e)) from None
            if r:
                reasons.append(f"check: {r}")
        return "; ".join(reasons) or None

    async def verify(self, s: Step, rec: StepRecord) -> None:
        target = self.wf.steps[s.verifies]  # type: ignore[index]
        trec = self.latest.get(target.name)
        if trec is None:
            rec.detail = f"{target.name} did not run: nothing to verify"
            return
        try:
            reason = self._verdict(s)
        except StepError as e:
            rec.status, rec.error = "failed", e
            raise
        if reason is None:
            rec.status, rec.detail = "approved", rec.detail or "approved"
            return
        rec.status, rec.detail = "rejected", reason
        call_id = trec.agent_result.call_id if trec.agent_result is not None else None
        hooks.emit("verifier_rejected", step=s.name, target=target.name, reason=reason,
                   call_id=call_id)
        if call_id:
            _flag(call_id, f"verifier:{s.name}", f"verifier_rejected: {reason}")
        agent = target.agent
        if s.name in self.reverified or not agent.can_escalate:  # type: ignore[union-attr]
            why = ("" if s.name in self.reverified else
                   f" (no fallback model for {target.name!r} to escalate to)"
                   if agent.fallback is None else  # type: ignore[union-attr]
                   f" ({target.name!r}'s fallback is its own model at temperature 0: a re-run "
                   "would repeat the draft)")
            self.rejected = reason + why
            return
        self.reverified.add(s.name)
        new = StepRecord(target.name, "agent", detail=f"re-run after {s.name} rejected it")
        self.steps.append(new)
        t0 = time.perf_counter()
        try:
            with logging_context(step=target.name):
                res = await target.agent.run(  # type: ignore[union-attr]
                    trec.input, use_fallback=True,
                    reason=f"verifier {s.name} rejected: {reason}")
        except BaseException as e:
            new.status, new.error = "failed", e
            raise
        finally:
            new.latency_s = time.perf_counter() - t0
        self._fill(new, res)
        new.status, new.output, new.input = "ok", res.output, trec.input
        self.merge(target, res.output)
        self.latest[target.name] = new
        await self.step(s, note="re-verify after escalation")


def contract_type(owner: Step, consumer: Any) -> Any:
    """The owner's output type with shared fields defined as the consumer's input type has them."""
    from pydantic import create_model

    out = owner.output_type
    fields: dict[str, Any] = {}
    if _is_model(out):
        for k, f in out.model_fields.items():
            fields[k] = (f.annotation, f)
    else:
        fields[owner.key] = (str, ...)
    for k, f in consumer.model_fields.items():
        if k in fields:
            fields[k] = (f.annotation, f)
    return create_model(f"{owner.name}_for_handoff", **fields)


def _flag(call_id: str, by: str, label: str) -> None:
    """A negative signal on an agent's call, from inside the run (a verifier's rejection, an
    output that broke a handoff): the call log stores it as feedback, the improvement loop's
    flagging job reads it."""
    hooks.emit("call_flagged", call_id=call_id, by=by, label=label[:500], signal="down")


async def run_workflow(wf: Workflow, value: Any) -> RunResult:
    """Run ``wf`` on one request; see the module docstring for what can come back."""
    run = _Run(wf)
    t0 = time.perf_counter()
    error: BaseException | None = None
    ctx = current_context()
    run_id = ctx.run_id or uuid.uuid4().hex
    with logging_context(run_id=run_id, workflow=ctx.workflow or wf.name), \
            tracing.span("invoke_workflow", wf.name, attributes={
                attrs.WORKFLOW_NAME: wf.name, attrs.RUN_ID: run_id}) as sp:
        tracing.set_content(sp, {attrs.INPUT: value})
        # the workflow span's own trace: not `current_trace_id()`, which with tracing off
        # would give a span of the caller's (their own OpenTelemetry set-up), not this run's
        own = sp.get_span_context()
        trace_id = format(own.trace_id, "032x") if own.is_valid else None
        try:
            run.start(value)
            await run.walk()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # recorded on the result and the span, never dropped
            error = e
            tracing.set_attributes(sp, {attrs.ERROR_TYPE: type(e).__name__})
            tracing.add_event(sp, "workflow.failed", {"error": f"{type(e).__name__}: {e}"})
        if error is not None:
            status = "failed"
        elif run.rejected is not None:
            status = "rejected"
        elif any(r.escalated for r in run.steps):
            status = "escalated"
        else:
            status = "ok"
        esc = [r for r in run.steps if r.escalated]
        for r in esc:
            tracing.add_event(sp, attrs.ESCALATION_EVENT, {"step": r.step, "model": r.model,
                                                           "reason": r.escalation_reason})
        answer = None if wf.output is None or error is not None else run.state.get(wf.output)
        detail = run.rejected or (f"{type(error).__name__}: {error}" if error else "")
        tracing.set_attributes(sp, {attrs.WORKFLOW_STATUS: status, attrs.ESCALATED: bool(esc),
                                    attrs.WORKFLOW_DETAIL: detail[:2000] or None})
        tracing.set_content(sp, {attrs.OUTPUT: answer})
        result = RunResult(wf.name, status, answer, run.state, run.steps, run.handoffs, error,
                           time.perf_counter() - t0, detail, run_id, trace_id)
        hooks.emit("run_finished", result=result)  # under the run's context and span
    return result
