"""Agents: a frozen, typed definition of one job, and the result of running it once.

Why an `Agent` is a frozen value and not an object with a model inside it: a workflow is a graph of
*jobs*; which model (or LoRA adapter) does a job is a deployment choice that changes often (a
fine-tuned adapter is promoted, a step is moved to a bigger model). Swapping is
``agent.with_model(m)`` / ``agent.with_adapter(a)``, a new value; the workflow, the other agents
and their tests are untouched.

Why models are named and resolved lazily: agents are declared at import time or from YAML, long
before weights should load. A catalog name (``"smollm2-135m"``, ``"openai:<m>@<url>"``) is resolved
on first use through a process-wide cache, so five agents naming the same model share one set of
weights (one llama.cpp context pool) instead of loading five copies.

Escalation follows the one policy the gateway uses too (`slmflow.models.fallback`), per call,
and is recorded on the `AgentResult`:

* the primary model's output does not validate even after the structured-output repair step
  (``reason="invalid_output"``), or it raised a model error (``"model_error"``);
* its confidence is under the agent's ``confidence_threshold`` (``"low_confidence"``);
* the caller asks for it (``use_fallback=True``: a handoff that could not be repaired, or a verifier
  that rejected the output).

With no fallback configured an invalid output raises its typed error (never a half object), and a
low confidence is recorded (``low_confidence=True``) but cannot be escalated. Every attempt, the
failed ones included, is kept in ``AgentResult.attempts``: the call log turns escalations into
training examples for the agent that escalated.

Why an agent does not write the call log itself: it emits ``agent_called`` (`slmflow.hooks`) and
the store, when logging is on (the CLI, the gateway, ``slmflow.enable_logging()``), listens. An
agent run in a notebook or a test writes nothing to disk unless asked.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generic, Mapping, overload

from typing_extensions import TypeVar

from . import hooks, tracing
from .errors import ConfigError, HandoffError, SchemaError, SlmflowError
from .models.base import Model, run_sync
from .models.fallback import FALLBACK_ON, FallbackPolicy
from .tools import Tool, ToolResult
from .tracing import attrs
from .types import Message, ModelInfo, Response, Settings, Usage

__all__ = ["Agent", "AgentResult", "Attempt", "resolve_model", "set_adapter_resolver"]

# The output type of an agent, for type checkers: ``Agent(..., output_type=Route)`` is an
# ``Agent[Route]`` whose ``run``/``run_sync`` give an ``AgentResult[Route]``. The default is Any
# (not str), so that a bare ``Agent`` annotation accepts an agent of any output type; an agent
# declared without ``output_type`` (free text) is an ``Agent[Any]`` to a checker.
OutT = TypeVar("OutT", default=Any)
T = TypeVar("T")

# ---- model and adapter resolution --------------------------------------------------------------

_MODELS: dict[tuple[str, str | None], Model] = {}
_MODELS_LOCK = threading.Lock()
_ADAPTER_RESOLVER: Callable[[Model, str], Model] | None = None


def set_adapter_resolver(fn: Callable[[Model, str], Model] | None) -> None:
    """Install the function that turns (base model, adapter name) into a model with that adapter.

    Without one, the default `AdapterRegistry` (under ``$SLMFLOW_HOME/adapters``) resolves names;
    an unknown adapter is a `ConfigError`, never a silent run of the base model.
    """
    global _ADAPTER_RESOLVER
    _ADAPTER_RESOLVER = fn
    with _MODELS_LOCK:
        for key in [k for k in _MODELS if k[1] is not None]:
            del _MODELS[key]


def resolve_model(model: Model | str, adapter: str | None = None, *, where: str = "agent") -> Model:
    """A `Model` for a `Model` or a catalog name, with ``adapter`` applied; cached per name."""
    if isinstance(model, Model) and adapter is None:
        return model
    if not isinstance(model, (Model, str)):
        raise ConfigError(f"model must be a Model or a catalog name, got {type(model).__name__}",
                          where=where)
    key = (model if isinstance(model, str) else f"id:{id(model)}", adapter)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
    base = model
    if isinstance(model, str):
        from .models.catalog import resolve

        base = resolve(model)
    if adapter is not None:
        resolver = _ADAPTER_RESOLVER
        if resolver is None:
            # The default registry ($SLMFLOW_HOME/adapters); imported here, on first use, so
            # that agents do not depend on the fine-tuning package unless an adapter is named.
            from .finetune.registry import AdapterRegistry

            resolver = AdapterRegistry().resolver()
        base = resolver(base, adapter)
    with _MODELS_LOCK:
        return _MODELS.setdefault(key, base)


def _model_name(model: Model | str | None) -> str | None:
    if model is None:
        return None
    return model if isinstance(model, str) else model.info.identity


# ---- results -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """One model call an agent made (kept for failed calls too)."""

    model: str
    ok: bool
    confidence: float | None = None
    latency_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    role: str = "primary"  # primary | fallback
    output: Any = None  # the parsed output (kept so a fallback's disagreement can be measured)


@dataclass(frozen=True)
class AgentResult(Generic[OutT]):
    """What one run of an agent produced, and how; ``output`` is an instance of the agent's
    ``output_type`` (a `ToolResult` for an agent with tools and a ``str`` output type)."""

    agent: str
    output: OutT
    model: ModelInfo
    confidence: float | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    escalated: bool = False
    escalation_reason: str | None = None
    low_confidence: bool = False
    repaired: bool = False
    text: str = ""
    attempts: tuple[Attempt, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    call_id: str | None = None  # the call-log record's id (attach feedback to it)

    @property
    def adapter(self) -> str | None:
        return self.model.adapter

    @property
    def model_identity(self) -> str:
        return self.model.identity


# ---- rendering ---------------------------------------------------------------------------------

def render_value(value: Any) -> str:
    """Compact text for a prompt: lists become "- item" lines, objects "k: v" pairs; an object
    with a ``__prompt__()`` method says itself how it reads in a prompt (a retrieved passage as
    ``[id] text``, without its score: every token of a prompt is paid for at prefill)."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if callable(getattr(value, "__prompt__", None)):
        return value.__prompt__()
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {render_value(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {render_value(v)}" for v in value) or "none"
    return str(value)


# ---- per-input output constraints ----------------------------------------------------------------

def output_constraint(out_type: Any, inp: Any, *, where: str) -> str | None:
    """The decoding constraint an output type asks for on this input, as JSON schema text, or
    None. An output type narrows its own schema per call with a classmethod
    ``constraint_for(input) -> dict | None`` (a JSON schema every answer of which is also valid
    for the type): the reasoner's reply made of the retrieved passages' sentences, a passage id
    from this call's passages. The model is told the type's own schema (``schema_hint``); the
    narrower one only steers decoding, and the answer is validated against the type as always.
    A constraint that is not a JSON object schema is a `SchemaError` naming the type."""
    hook = getattr(out_type, "constraint_for", None)
    if hook is None or not callable(hook):
        return None
    schema = hook(inp)
    if schema is None:
        return None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise SchemaError(f"{getattr(out_type, '__name__', out_type)}.constraint_for returned "
                          f"{type(schema).__name__}, not a JSON object schema", where=where)
    return json.dumps(schema, separators=(",", ":"))


# ---- the agent ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Agent(Generic[OutT]):
    """One job: a model, instructions, typed input and output, tools, a fallback and a threshold.

    prompt: a template for the user message, ``{field}`` for each input field (lists and objects
        are rendered compactly); without one the input's fields are listed ``field: value``.
    input_type: a pydantic model (or None: the input is a plain string, ``{input}``).
    output_type: a pydantic model (schema-constrained decoding), or ``str`` for free text. It is
        also the agent's type parameter: ``Agent(..., output_type=Route)`` is an ``Agent[Route]``
        and its ``run_sync(...).output`` a ``Route`` to pyright and mypy.
    tools: with tools the model first picks one tool call under the tool-call schema; the tool
        runs (validated, with its timeout) and, if ``output_type`` is a pydantic model, a second
        constrained call turns the tool result into the output; else the `ToolResult` is the output.
    """

    name: str
    model: Model | str
    instructions: str = ""
    prompt: str | None = None
    input_type: Any = None
    # A template (like `prompt`) rendered first in the system message, before `instructions`:
    # put what several agents read here (retrieved passages, the ticket), so they share a
    # token prefix and llama.cpp's prefix cache evaluates it once for the whole chain.
    context: str | None = None
    output_type: type[OutT] | None = str  # type: ignore[assignment]  # the default: free text
    tools: tuple[Tool, ...] = ()
    adapter: str | None = None
    fallback: Model | str | None = None
    fallback_adapter: str | None = None
    confidence_threshold: float = 0.0
    max_tokens: int = 128
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    # False: confidence counts only the tokens the model chose, not those its output constraint
    # forced, and llama.cpp does not evaluate a forced tail (`Settings.score_forced`): for an
    # output whose tail code writes, such as the reference reasoner's quoted reply.
    score_forced: bool = True

    def __post_init__(self) -> None:
        where = f"agent {self.name}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("an agent needs a name", where="agent")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigError(f"confidence_threshold must be in [0, 1], got "
                              f"{self.confidence_threshold}", where=where)
        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1", where=where)
        for t in ("input_type", "output_type"):
            v = getattr(self, t)
            if v not in (None, str) and not (isinstance(v, type) and hasattr(v, "model_fields")):
                raise ConfigError(f"{t} must be a pydantic model class or str, got {v!r}",
                                  where=where)
        object.__setattr__(self, "tools", tuple(self.tools))
        object.__setattr__(self, "stop", tuple(self.stop))
        for t in self.tools:
            if not isinstance(t, Tool):
                raise ConfigError(f"tools must be @tool functions, got {t!r}", where=where)
        for label in ("prompt", "context"):
            template = getattr(self, label)
            if template is not None and self.input_type is not None:
                import string

                names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
                unknown = names - set(self.input_type.model_fields)
                if unknown:
                    raise ConfigError(f"{label} references {sorted(unknown)}, not fields of "
                                      f"{self.input_type.__name__}", where=where)

    @property
    def fallback_repeats_primary(self) -> bool:
        """True when escalating could only repeat the first answer: the fallback is the primary
        model itself (the same object or catalog name, no adapter on either side) and decoding
        is greedy. The reference workflow's default ``fallback: smollm2-135m`` is such a case;
        re-running a rejected draft there cost a reasoner and a verifier call per rejected
        ticket (~3 s) for the same draft. ``SLMFLOW_ESCALATE_TO_SAME_MODEL=1`` restores the
        re-run (for benchmarks of the old path)."""
        if self.fallback is None or self.temperature > 0 or self.fallback_adapter or self.adapter:
            return False
        if os.environ.get("SLMFLOW_ESCALATE_TO_SAME_MODEL", "").lower() in ("1", "true", "on"):
            return False
        return self.fallback is self.model or (
            isinstance(self.fallback, str) and self.fallback == self.model)

    @property
    def can_escalate(self) -> bool:
        return self.fallback is not None and not self.fallback_repeats_primary

    # -- swapping ---------------------------------------------------------------------------
    def with_model(self, model: Model | str, adapter: str | None = None) -> Agent[OutT]:
        return replace(self, model=model, adapter=adapter)

    def with_adapter(self, adapter: str | None) -> Agent[OutT]:
        return replace(self, adapter=adapter)

    def with_fallback(self, fallback: Model | str | None,
                      adapter: str | None = None) -> Agent[OutT]:
        return replace(self, fallback=fallback, fallback_adapter=adapter)

    # -- prompt -----------------------------------------------------------------------------
    def coerce_input(self, value: Any) -> Any:
        """The input as `input_type` (a `HandoffError` naming the agent if it does not fit)."""
        if self.input_type is None:
            if isinstance(value, str):
                return value
            raise HandoffError(f"agent {self.name!r} takes a string, got {type(value).__name__}",
                               where=f"agent {self.name} input", payload=repr(value)[:500])
        if isinstance(value, self.input_type):
            return value
        from pydantic import ValidationError

        try:
            if isinstance(value, str):
                fields = [k for k, f in self.input_type.model_fields.items() if f.is_required()]
                if len(fields) == 1:
                    value = {fields[0]: value}
            if hasattr(value, "model_dump"):
                value = value.model_dump()
            return self.input_type.model_validate(value)
        except ValidationError as e:
            errs = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
            raise HandoffError(f"input does not fit {self.input_type.__name__}: "
                               + "; ".join(errs), where=f"agent {self.name} input",
                               payload=repr(value)[:500], errors=errs) from None

    def messages(self, input: Any) -> list[Message]:
        if self.input_type is None:
            values = {"input": input}
        else:
            values = {k: getattr(input, k) for k in self.input_type.model_fields}
        if self.prompt is not None:
            user = self.prompt.format_map({k: render_value(v) for k, v in values.items()})
        elif self.input_type is None:
            user = str(input)
        else:
            user = "\n".join(f"{k}: {render_value(v)}" for k, v in values.items())
        rendered = {k: render_value(v) for k, v in values.items()}
        context = self.context.format_map(rendered) if self.context is not None else ""
        system = "\n\n".join(p for p in (context, self.instructions) if p)
        msgs = [Message("system", system)] if system else []
        return msgs + [Message("user", user)]

    # -- running ----------------------------------------------------------------------------
    @overload
    def run_sync(self, input: Any, *, output_type: None = None, use_fallback: bool = False,
                 reason: str | None = None, note: str | None = None) -> AgentResult[OutT]: ...

    @overload
    def run_sync(self, input: Any, *, output_type: type[T], use_fallback: bool = False,
                 reason: str | None = None, note: str | None = None) -> AgentResult[T]: ...

    def run_sync(self, input: Any, *, output_type: Any = None, use_fallback: bool = False,
                 reason: str | None = None, note: str | None = None) -> AgentResult[Any]:
        """`run` from synchronous code (a script, a test)."""
        return run_sync(self.run(input, output_type=output_type, use_fallback=use_fallback,
                                 reason=reason, note=note))

    @overload
    async def run(self, input: Any, *, output_type: None = None, use_fallback: bool = False,
                  reason: str | None = None, note: str | None = None) -> AgentResult[OutT]: ...

    @overload
    async def run(self, input: Any, *, output_type: type[T], use_fallback: bool = False,
                  reason: str | None = None, note: str | None = None) -> AgentResult[T]: ...

    async def run(self, input: Any, *, output_type: Any = None, use_fallback: bool = False,
                  reason: str | None = None, note: str | None = None) -> AgentResult[Any]:
        """Run the job once (escalating to the fallback model when needed); see the module doc.

        output_type: override the agent's own (the workflow's handoff repair passes the consuming
            step's contract). use_fallback: go straight to the fallback model, recording
            ``reason``. note: an extra line for the user message (the validation errors a repair
            must fix).
        """
        out_type = output_type if output_type is not None else self.output_type
        inp = self.coerce_input(input)
        msgs = self.messages(inp)
        # a tool-calling agent decodes under the tool-call schema, not its output type's
        constraint = (None if self.tools else
                      output_constraint(out_type, inp, where=f"agent {self.name}"))
        if note:
            msgs[-1] = Message("user", msgs[-1].content + "\n" + note)
        where = f"agent {self.name}"
        if use_fallback and self.fallback is None:
            raise ConfigError(f"agent {self.name!r} has no fallback model to escalate to",
                              where=where)
        with tracing.span("invoke_agent", self.name, attributes={
                attrs.AGENT_NAME: self.name, attrs.REQUEST_MODEL: _model_name(self.model),
                attrs.ADAPTER: self.adapter, attrs.REQUEST_MAX_TOKENS: self.max_tokens}) as sp:
            attempts: list[Attempt] = []
            t0 = time.perf_counter()
            # one escalation policy for agents and the gateway (models/fallback.py); an agent
            # that cannot escalate (no fallback, or one that would repeat the primary) still
            # reads its confidence, to record a low one
            policy = FallbackPolicy(
                self.confidence_threshold,
                FALLBACK_ON if (use_fallback or self.can_escalate) else frozenset(),
                source=self.name, target=_model_name(self.fallback))
            try:
                (r, value, tools_done), esc = await policy.run(
                    lambda role: self._attempt(role, msgs, out_type, attempts, constraint),
                    response=lambda done: done[0],
                    force=(reason or "requested") if use_fallback else None, sp=sp)
            except SlmflowError as e:
                e.details.setdefault("attempts", [a.__dict__ for a in attempts])
                raise
            escalated, esc_reason = esc is not None, (esc.reason if esc else None)
            low = policy.low(r.confidence)
            usage = sum((a.usage for a in attempts), Usage())
            result = AgentResult(
                agent=self.name, output=value, model=r.model, confidence=r.confidence,
                usage=usage, latency_s=time.perf_counter() - t0, escalated=escalated,
                escalation_reason=esc_reason, low_confidence=low, repaired=r.repaired,
                text=r.text, attempts=tuple(attempts), tool_results=tools_done,
                call_id=uuid.uuid4().hex)
            # the call log (and anyone else) listens; nobody listening costs nothing
            hooks.emit("agent_called", agent=self, result=result, input=inp)
            tracing.set_content(sp, {attrs.INPUT: inp, attrs.OUTPUT: value})
            tracing.set_attributes(sp, {
                attrs.CALL_ID: result.call_id,
                attrs.RESPONSE_MODEL: r.model.identity, attrs.CONFIDENCE: r.confidence,
                attrs.ESCALATED: escalated, attrs.REPAIRED: r.repaired,
                attrs.USAGE_INPUT_TOKENS: usage.input_tokens,
                attrs.USAGE_OUTPUT_TOKENS: usage.output_tokens})
            return result

    async def _attempt(self, role: str, msgs: list[Message], out_type: Any,
                       attempts: list[Attempt], constraint: str | None = None
                       ) -> tuple[Response, Any, tuple[ToolResult, ...]]:
        where = f"agent {self.name}"
        if role == "primary":
            model = resolve_model(self.model, self.adapter, where=where)
        else:
            model = resolve_model(self.fallback, self.fallback_adapter, where=where)  # type: ignore[arg-type]
        from .tracing.model import traced

        model = traced(model)  # a `chat {model}` span under this agent's span
        settings = Settings(max_tokens=self.max_tokens, temperature=self.temperature,
                            stop=self.stop, constraint=constraint,
                            score_forced=self.score_forced)
        t0 = time.perf_counter()
        tool_results: tuple[ToolResult, ...] = ()
        try:
            if self.tools:
                call = await model.generate(msgs, tools=[t.spec for t in self.tools],
                                            settings=settings)
                tc = call.tool_calls[0]
                res = await {t.name: t for t in self.tools}[tc.name].invoke(tc.arguments,
                                                                            call_id=tc.id)
                tool_results = (res,)
                if out_type is str or out_type is None or not hasattr(out_type, "model_fields"):
                    r = call
                    value: Any = res
                else:
                    shown = (f"error ({res.error_kind}): {res.error.message}" if res.error
                             else render_value(res.value))
                    follow = msgs + [Message("assistant", call.text),
                                     Message("user", f"Tool {tc.name} returned: {shown}")]
                    r2 = await model.generate(follow, schema=out_type, settings=settings)
                    r = replace(r2, usage=call.usage + r2.usage,
                                latency_s=call.latency_s + r2.latency_s)
                    value = r2.parsed
            elif out_type is str or out_type is None:
                r = await model.generate(msgs, settings=settings)
                value = r.text.strip()
            else:
                r = await model.generate(msgs, schema=out_type, settings=settings)
                value = r.parsed
        except SlmflowError as e:
            attempts.append(Attempt(model.info.identity, False, latency_s=time.perf_counter() - t0,
                                    error=f"{type(e).__name__}: {e.message}"[:500], role=role))
            raise
        attempts.append(Attempt(model.info.identity, True, r.confidence,
                                time.perf_counter() - t0, r.usage, role=role, output=value))
        return r, value, tool_results
