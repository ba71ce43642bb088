"""The OpenAI-compatible gateway: a FastAPI app over models, agents and workflows.

Routes: ``POST /v1/chat/completions`` (JSON or SSE stream), ``GET /v1/models``,
``POST /v1/workflows/{name}/runs``, ``POST /v1/feedback``, ``GET /v1/calls/{id}``, ``GET /healthz``,
``GET /metrics`` (Prometheus), ``GET /openapi.json``.

A request goes: body-size limit → JSON validation (400 on any error, OpenAI error body) → API key
(401) → allowed model (403) → rate limit and token budget (429: both checked and reserved in the
call-log database, so replicas share them; see auth.py) → the target:

* a model: ``Cached(Guarded(Resilient(Fallback(slm, strong))))``, each layer optional;
* an agent (``<workflow>.<agent>``) or a workflow: input guardrails, ``agent.run`` /
  ``workflow.run`` under the request timeout, output guardrails.

Every request, failed ones included, is queued to the call log (the background writer batches
and never drops; PII redacted unless ``guardrails.log_pii``); every agent call of a workflow run
is logged too, with the run id and trace id. With ``call_log_durable`` (the default) an answer is
sent only once its records are committed (group commit), so a SIGKILL loses no answered call.
Refused requests (401/403/404/429) are logged as ``kind="gateway"``, ``status="rejected"``.
Streaming (`stream: true`): a model target streams as it decodes (`Model.stream` through the
whole stack, `ChatStream`); the call log and the cache still get the complete answer, the output
guardrails check it in windows before they are sent, and a client that disconnects stops the
generation. An agent or a workflow answers whole; its answer is replayed as SSE chunks.

The wire format, the error mapping (`map_error`, `public_error`) and answers as JSON (no NaN or
Infinity) are schemas.py's; their names stay importable from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from .. import tracing
from ..errors import HandoffError, StructuredOutputError
from ..guardrails import (GuardPolicy, Guarded, GuardrailViolation, check_text,
                          collect_decisions, redact_pii)
from ..models.base import Model
from ..store.calllog import CallLog, CallRecord, Example, open_call_log
from ..store.writer import (CallLogWriter, _cost, _value, agent_meta, enable_logging,
                            logging_context, note_agent)
from ..types import Message, Settings, Usage
from .auth import (Authenticator, KeyInfo, RateLimiter, Reservation, TokenBudget,
                   estimate_tokens)
from .config import GatewayConfig
from .metrics import Metrics
# re-exported: these lived here before the split (from slmflow.gateway.app import ApiError, ...)
from .schemas import (_ERRORS, _TOOL_FAILURE, ApiError, ChatMessage, ChatRequest,  # noqa: F401
                      ChatResponse, ChatUsage, Choice, ContentPart, ErrorBody, ErrorDetail,
                      FeedbackRequest, FeedbackResponse, ModelCard, ModelList, ResponseFormat,
                      RunRequest, RunResponse, RunStep, StreamOptions, _answer_text, _finite,
                      _json_value, _text, _Wire, map_error, public_error)
from .wrappers import (Cached, CircuitBreaker, Fallback, RequestInfo, Resilient, note_cache,
                       note_escalation, set_info)

log = logging.getLogger("slmflow.gateway")

__all__ = ["Gateway", "ChatStream", "create_app", "ApiError"]


# ---- targets -----------------------------------------------------------------------------------

class Target:
    def __init__(self, name: str, kind: str, *, model: Model | None = None, workflow: Any = None,
                 agent: Any = None, base: Model | None = None, timeout_s: float | None = None,
                 description: str = "") -> None:
        self.name, self.kind = name, kind
        self.model, self.workflow, self.agent, self.base = model, workflow, agent, base
        self.timeout_s = timeout_s
        self.description = description


# ---- the gateway -----------------------------------------------------------------------------------

class Gateway:
    """Builds the model stacks from the config and serves them (``gateway.app``).

    models / workflows: ready objects by name, used instead of (or besides) the config's entries
    (tests inject `FunctionModel`s this way). embed: the semantic cache's ``list[str] -> vectors``
    (default: the retrieval package's MiniLM, loaded only if the semantic cache is on).
    """

    def __init__(self, config: GatewayConfig | None = None, *,
                 models: dict[str, Model] | None = None, workflows: dict[str, Any] | None = None,
                 embed: Any = None, call_log: CallLog | str | None = None) -> None:
        self.config = cfg = config or GatewayConfig()
        if cfg.prices:
            from ..tracing.cost import configure_prices

            configure_prices(cfg.resolve_path(cfg.prices))
        log_ = call_log if isinstance(call_log, CallLog) else open_call_log(call_log or
                                                                            cfg.call_log)
        self.call_log = log_
        # durable: requests await the commit of their records, so no lingering for a batch
        self.writer = CallLogWriter(log_, max_wait_s=0.0 if cfg.call_log_durable else 0.05)
        # a gateway process logs its agent calls, as it always did (the agents only emit events:
        # slmflow.hooks); a request's own calls go to self.writer through its logging context
        enable_logging()
        self.metrics = Metrics()
        self.auth = Authenticator(log_, cfg.auth.keys) if cfg.auth.enabled else None
        self.limiter = RateLimiter(log_)
        self.budget = TokenBudget(log_)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.caches: dict[str, Cached] = {}
        g = cfg.guardrails
        self.in_policy = GuardPolicy(**g.input.model_dump()) if g.enabled else None
        self.out_policy = GuardPolicy(**g.output.model_dump()) if g.enabled else None
        self._embed = embed
        self.schema_limits = cfg.limits.json_schema.limits()
        self.targets: dict[str, Target] = {}
        self._base: dict[str, Model] = {}
        self._build_models(models or {})
        self._build_workflows(workflows or {})
        self.started = time.time()
        self._register_gauges()
        self.app = self._make_app()

    # -- building ----------------------------------------------------------------------------------
    def _base_model(self, name: str, injected: dict[str, Model]) -> Model:
        if name in self._base:
            return self._base[name]
        if name in injected:
            m = injected[name]
        else:
            from ..models.catalog import resolve

            mc = self.config.models[name]
            kwargs = {"pool_size": mc.pool_size} if mc.pool_size > 1 else {}
            try:
                m = resolve(mc.model, **kwargs)
            except TypeError:
                m = resolve(mc.model)
        self._base[name] = m
        return m

    def _embedder(self) -> Any:
        if self._embed is not None:
            return self._embed
        from ..retrieval.embedder import resolve_embedder

        emb = resolve_embedder(self.config.cache.embedder)
        return emb.embed

    def _on_escalation(self, name: str):
        def record(messages: Any, esc: Any, strong: Any) -> None:
            note_escalation(esc)
            msgs = [{"role": m.role, "content": m.content} for m in _as_msgs(messages)]
            inp, out = msgs, strong.text
            if not self.config.guardrails.log_pii:
                inp, out = _redact(inp), _redact(out)
            weak = esc.weak
            self.writer.submit(Example(
                agent=name, input=inp, output=out,
                source_model=weak.model.identity if weak else esc.source,
                target_model=strong.model.identity, reason=esc.reason,
                confidence=esc.confidence))
            self.metrics.inc("escalations", model=name, help="Answers escalated to a "
                             "stronger model.")
        return record

    def _build_models(self, injected: dict[str, Model]) -> None:
        cfg = self.config
        from .config import ModelCfg

        names = list(dict.fromkeys(list(cfg.models) + list(injected)))
        for name in names:
            mc = cfg.models.get(name) or ModelCfg()
            base = self._base_model(name, injected)
            m: Model = base
            if mc.escalate_to:
                strong = Resilient(self._base_model(mc.escalate_to, injected),
                                   timeout_s=cfg.models[mc.escalate_to].timeout_s or
                                   cfg.limits.request_timeout_s,
                                   breaker=self._breaker(mc.escalate_to))
                m = Fallback(Resilient(base, timeout_s=mc.timeout_s or
                                       cfg.limits.request_timeout_s,
                                       breaker=self._breaker(name)),
                             strong, threshold=mc.confidence_threshold,
                             on_escalation=self._on_escalation(name))
            else:
                m = Resilient(base, timeout_s=mc.timeout_s or cfg.limits.request_timeout_s,
                              breaker=self._breaker(name))
            if self.in_policy is not None:
                m = Guarded(m, input=self.in_policy, output=self.out_policy)
            ttl = mc.cache_ttl_s if mc.cache_ttl_s is not None else cfg.cache.ttl_s
            if cfg.cache.enabled and ttl > 0:
                m = Cached(m, ttl_s=ttl, max_entries=cfg.cache.max_entries,
                           embed=self._embedder() if cfg.cache.semantic else None,
                           threshold=cfg.cache.threshold, on_status=note_cache)
                self.caches[name] = m  # type: ignore[assignment]
            self.targets[name] = Target(name, "model", model=m, base=base,
                                        description=mc.description or mc.model)

    def _breaker(self, name: str) -> CircuitBreaker:
        lim = self.config.limits
        return self.breakers.setdefault(name, CircuitBreaker(lim.breaker_failures,
                                                             lim.breaker_reset_s))

    def _build_workflows(self, injected: dict[str, Any]) -> None:
        cfg = self.config
        wfs: dict[str, tuple[Any, Any]] = {}
        for name, wc in cfg.workflows.items():
            from ..workflow import load_workflow

            wfs[name] = (load_workflow(cfg.resolve_path(wc.path), fallback=wc.fallback,
                                       model=wc.model, allowed_imports=cfg.allowed_imports), wc)
        for name, wf in injected.items():
            wfs[name] = (wf, None)
        for name, (wf, wc) in wfs.items():
            timeout = (wc.timeout_s if wc and wc.timeout_s else cfg.limits.request_timeout_s)
            self.targets[name] = Target(name, "workflow", workflow=wf, timeout_s=timeout,
                                        description=getattr(wf, "description", ""))
            if wc is None or wc.expose_agents:
                for aname, agent in wf.agents.items():
                    self.targets[f"{name}.{aname}"] = Target(
                        f"{name}.{aname}", "agent", agent=agent, workflow=wf, timeout_s=timeout)

    def _register_gauges(self) -> None:
        w = self.writer
        self.metrics.gauge("calllog_records", lambda: {
            (("state", "submitted"),): w.submitted, (("state", "written"),): w.written,
            (("state", "pending"),): w.pending}, "Call-log records by state.")
        self.metrics.gauge("calllog_failed_batches", lambda: {(): w.failed_batches},
                           "Call-log batch writes that failed and were retried.")
        self.metrics.gauge("circuit_open", lambda: {
            (("model", n),): float(b.state != "closed") for n, b in self.breakers.items()},
            "1 while a backend's circuit breaker is open.")
        self.metrics.gauge("cache_entries", lambda: {
            (("model", n),): len(c._exact) for n, c in self.caches.items()},
            "Entries in the exact-match response cache.")

    async def startup(self) -> None:
        """Load every local model's weights now rather than on the first request."""
        for m in self._base.values():
            load = getattr(m, "load", None)
            if callable(load):
                await asyncio.to_thread(load)

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.writer.close, 60.0)

    # -- request handling helpers ------------------------------------------------------------------
    def authenticate(self, request: Any) -> KeyInfo | None:
        if self.auth is None:
            return None
        h = request.headers.get("authorization", "")
        scheme, _, token = h.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", "missing_api_key")
        info = self.auth.lookup(token)
        if info is None:
            raise ApiError(401, "invalid API key", "invalid_request_error", "invalid_api_key")
        request.state.slmflow_key = info.name  # for the record of a refusal
        return info

    def admit(self, key: KeyInfo | None, model: str) -> None:
        if key is not None and not key.allows(model):
            raise ApiError(403, f"the key {key.name!r} may not use {model!r}",
                           "permission_error", "model_not_allowed", "model")

    async def limit(self, key: KeyInfo | None, need: int = 0) -> Reservation | None:
        """429 unless the key's rate bucket has a request and its daily budget has room for
        ``need`` tokens, which stay reserved until `settle` / `release`. Both are checked in the
        call-log database (shared by replicas), off the event loop. Called right before the
        work, so that every later failure releases the reservation."""
        if key is None or (key.rpm is None and key.tokens_per_day is None):
            return None
        try:
            wait = await asyncio.to_thread(self.limiter.take, key.name, key.rpm)
            if wait > 0:  # refused by rate: nothing is reserved (it would never be released)
                res, used = None, 0
            else:
                res, used = (None, 0) if key.tokens_per_day is None else await asyncio.to_thread(
                    self.budget.reserve, key.name, need, key.tokens_per_day)
        except Exception as e:  # noqa: BLE001 - the limits cannot be checked: refuse, say why
            log.warning("key limits unavailable: %s: %s", type(e).__name__, e)
            raise ApiError(503, "the key's limits cannot be checked (call-log database "
                           "unavailable)", "server_error", "backend_unavailable",
                           headers={"Retry-After": "2"}) from None
        if wait > 0:
            raise ApiError(429, f"rate limit of {key.rpm} requests per minute reached for key "
                           f"{key.name!r}; retry in {wait:.1f} s", "rate_limit_error",
                           "rate_limit_exceeded", headers={"Retry-After": str(int(wait) + 1)})
        if key.tokens_per_day is not None and res is None:
            left = max(0, key.tokens_per_day - used)
            raise ApiError(429, f"the daily token budget of key {key.name!r} "
                           f"({key.tokens_per_day}) has {left} tokens left; this request may "
                           f"use up to {need} (prompt estimate + max_tokens): lower max_tokens "
                           "or wait for the next UTC day", "insufficient_quota",
                           "insufficient_quota")
        return res

    def _need(self, t: Target, texts: list[str], max_tokens: int) -> int:
        """The tokens a request may use at most, for its budget reservation: the prompt estimate
        plus max_tokens for a model; for an agent or a workflow, each agent's instructions and
        the input plus its max_tokens (an estimate: the real usage settles it)."""
        size = sum(len(x.encode("utf-8", "surrogatepass")) for x in texts)
        if t.kind == "model":
            return estimate_tokens(size, len(texts)) + max_tokens
        agents = [t.agent] if t.kind == "agent" else list(getattr(t.workflow, "agents",
                                                                  {}).values())
        return sum(estimate_tokens(size + len((getattr(a, "instructions", "") or "").encode()),
                                   len(texts) + 1) + int(getattr(a, "max_tokens", 256) or 256)
                   for a in agents) or estimate_tokens(size, len(texts))

    async def settle(self, res: Reservation | None, used: int) -> None:
        """Replace a reservation by the real usage (awaited: the next request sees it)."""
        if res is not None:
            try:
                await asyncio.to_thread(self.budget.settle, res, used)
            except Exception as e:  # noqa: BLE001 - the reservation stays: over-, never under-
                log.warning("could not settle the token reservation of key %s: %s", res.key, e)

    def release(self, res: Reservation | None) -> None:
        """Give a failed request's reservation back, without waiting (usable while unwinding)."""
        if res is not None and not res.settled:
            import threading

            threading.Thread(target=self._release, args=(res,), daemon=True).start()

    def _release(self, res: Reservation) -> None:
        try:
            self.budget.settle(res, 0)
        except Exception as e:  # noqa: BLE001
            log.warning("could not release the token reservation of key %s: %s", res.key, e)

    def require_scope(self, request: Any, scope: str) -> KeyInfo | None:
        """401 without a valid key, 403 unless it holds ``scope`` (no check when auth is off)."""
        key = self.authenticate(request)
        if key is not None and not key.has_scope(scope):
            raise ApiError(403, f"the key {key.name!r} lacks the {scope!r} scope",
                           "permission_error", "scope_required")
        return key

    async def committed(self) -> None:
        """With ``call_log_durable``: wait until this request's records are committed (group
        commit with the concurrent requests); 503 if the call log cannot take them in time."""
        if self.config.call_log_durable and not await self.writer.committed(
                self.config.limits.request_timeout_s):
            raise ApiError(503, "the call log could not be written in time; the answer was "
                           "not sent (it is logged once the database is back)", "server_error",
                           "call_log_unavailable", headers={"Retry-After": "2"})

    def log_refusal(self, request: Any, e: ApiError) -> None:
        """Put a refused request (401/403/404/429) in the call log: route, code and message, the
        key's name when known, the client address; never the key or the body."""
        route = request.scope.get("route")
        client = request.client.host if request.client else None
        rec = CallRecord(kind="gateway", status="rejected",
                         key_name=getattr(request.state, "slmflow_key", None),
                         error=f"HTTP {e.status} {e.code}: {e.message}"[:1000],
                         meta={"route": getattr(route, "path", request.url.path[:200]),
                               "method": request.method, "http_status": e.status,
                               "code": e.code, "client": client})
        try:
            self.writer.submit(rec)
        except Exception as err:  # noqa: BLE001 - never fail the refusal itself
            log.warning("could not log a refused request: %s", err)
        self.metrics.inc("refused", status=e.status, code=e.code,
                         help="Requests refused (401/403/404/429) by status and code.")

    def target(self, name: str, key: KeyInfo | None = None) -> Target:
        t = self.targets.get(name)
        if t is None and self.config.expose_catalog:
            from ..models.catalog import CATALOG

            if name in CATALOG:
                base = self._base_model(name, {})
                self.targets[name] = t = Target(name, "model", model=Resilient(
                    base, timeout_s=self.config.limits.request_timeout_s,
                    breaker=self._breaker(name)), base=base)
        if t is None:
            import difflib

            usable = [n for n in self.targets if key is None or key.allows(n)]
            close = difflib.get_close_matches(name, usable, n=1)
            raise ApiError(404, f"the model {name!r} does not exist"
                           + (f"; did you mean {close[0]!r}?" if close else ""),
                           "invalid_request_error", "model_not_found", "model")
        return t

    def check_input_depth(self, value: Any, param: str) -> None:
        """A run's JSON input is walked recursively (redaction, logging, validation): a 400 past
        ``limits.max_input_depth`` levels, before a RecursionError would make it a 500."""
        from ..structured import schema_depth

        n = self.config.limits.max_input_depth
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
            check_limits(schema, self.schema_limits, max_tokens=max_tokens, where=param)
        except SchemaLimitError as e:  # "/minItems: minItems is ... (limit max_count: 512)"
            path = str(e.details.get("path", "(root)"))
            rest = e.message.removeprefix(f"{path}: ")
            raise ApiError(400, f"{param}{'' if path == '(root)' else path}: {rest}",
                           "invalid_request_error", "schema_too_complex", param) from None

    def _log_redact(self, v: Any) -> Any:
        return v if self.config.guardrails.log_pii else _redact(v)

    def _guard_text(self, text: str, stage: str, decisions: list) -> str:
        pol = self.in_policy if stage == "input" else self.out_policy
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
    def _chat_inputs(self, req: ChatRequest, key: KeyInfo | None) -> tuple:
        """The target, messages, settings, schema and max_tokens of a chat request (4xx here)."""
        t = self.target(req.model, key)
        self.admit(key, req.model)
        msgs = [Message("system" if m.role == "developer" else m.role, _text(m.content),
                        name=m.name, tool_call_id=m.tool_call_id) for m in req.messages]
        lim = self.config.limits
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

    def _model_record(self, rec: CallRecord, r: Any, info: RequestInfo) -> None:
        """A model target's answer on its call record."""
        rec.model, rec.adapter = r.model.identity, r.model.adapter
        rec.confidence = r.confidence
        rec.cost_usd = (None if info.cache in ("hit", "semantic")
                        else _cost(r.model, r.usage, r.latency_s))
        rec.output = self._log_redact(r.text if r.parsed is None else _value(r.parsed))
        rec.input_tokens, rec.output_tokens = r.usage.input_tokens, r.usage.output_tokens
        rec.escalated = info.escalated
        rec.escalation_reason = info.escalation_reason
        if info.escalated:
            rec.meta["primary"] = {"model": info.primary_model,
                                   "confidence": info.primary_confidence}

    async def run_chat(self, req: ChatRequest, key: KeyInfo | None) -> tuple[dict, CallRecord]:
        """Run a chat completion; returns (the response body, its call record)."""
        t, msgs, settings, schema, max_tokens = self._chat_inputs(req, key)
        held = await self.limit(key, self._need(t, [m.content for m in msgs], max_tokens))
        info = RequestInfo()
        token = set_info(info)
        t0 = time.perf_counter()
        rec = CallRecord(kind=t.kind, key_name=key.name if key else None,
                         input=self._log_redact([{"role": m.role, "content": m.content}
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
                    user = self._guard_text(user, "input", decisions)
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
                        rec.meta.update(agent_meta(res, self._log_redact))
                        note_agent(self.writer, t.agent)
                        text = _answer_text(res.output)
                        text = self._guard_text(text, "output", decisions)
                        usage, conf, finish = res.usage, res.confidence, "stop"
                        rec.model, rec.adapter = res.model.identity, res.model.adapter
                        rec.agent, rec.confidence = res.agent, conf
                        rec.escalated = res.escalated
                        rec.escalation_reason = res.escalation_reason
                        rec.cost_usd = _cost(res.model, res.usage, res.latency_s)
                        rec.output, bad = _json_value(res.output)
                        rec.output = self._log_redact(rec.output)
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
                        text = self._guard_text(text, "output", decisions)
                        usage, conf, finish = rr.usage, None, "stop"
                        rec.run_id, rec.workflow = run_id, t.name
                        rec.output, bad = _json_value(rr.answer)
                        rec.output = self._log_redact(rec.output)
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
            self.release(held)
            rec.status = "blocked" if isinstance(e, GuardrailViolation) else "error"
            rec.error = f"{type(e).__name__}: {getattr(e, 'message', str(e))}"[:1000]
            rec.latency_s = time.perf_counter() - t0
            rec.meta["guardrails"] = [d.as_dict() for d in decisions if d.action != "pass"]
            pub = self._public(e, rec)
            self._finish(rec, t.name)
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
            self._model_record(rec, r, info)
        shown = [d.as_dict() for d in decisions if d.action != "pass"]
        if shown:
            rec.meta["guardrails"] = shown
        self._finish(rec, t.name, usage=usage)
        await self.settle(held, usage.total_tokens)
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

    async def stream_chat(self, req: ChatRequest, key: KeyInfo | None) -> "ChatStream":
        """Start a streamed chat completion. A model target streams as it decodes (`ChatStream`);
        an agent or a workflow answers whole and its answer is replayed in pieces. Returns once
        the first piece of the answer is there, so that a failure before it (a guardrail on the
        input, the context length, a backend down) is still an HTTP error status."""
        t, msgs, settings, schema, max_tokens = self._chat_inputs(req, key)
        if t.kind != "model":
            body, rec = await self.run_chat(req, key)
            await self.committed()
            return ChatStream.replay(self, body, rec)
        held = await self.limit(key, self._need(t, [m.content for m in msgs], max_tokens))
        rec = CallRecord(kind=t.kind, key_name=key.name if key else None,
                         input=self._log_redact([{"role": m.role, "content": m.content}
                                                 for m in msgs]),
                         meta={"target": t.name, "stream": True})
        info = RequestInfo()
        st = ChatStream(self, t.name, rec, info)
        st.task = asyncio.create_task(self._produce(t, msgs, schema, settings, rec, held, info,
                                                    st.queue))
        try:
            await st.prefetch()
        except BaseException:
            st.stop()
            raise
        return st

    async def _produce(self, t: Target, msgs: list[Message], schema: Any, settings: Settings,
                       rec: CallRecord, held: Reservation | None, info: RequestInfo,
                       q: asyncio.Queue) -> None:
        """Run a model target's stream (in its own task: its spans and context variables stay
        in one context) and put ``("delta", text)``, then ``("end", summary)`` or
        ``("error", exception)`` on ``q``. The call is logged here, whole answer included,
        whatever the client does; a cancelled task (the client went away) stops the model and
        logs what was generated up to then."""
        token = set_info(info)
        t0 = time.perf_counter()
        decisions: list = []
        parts: list[str] = []
        try:
            with tracing.span("gateway", "chat.completions", attributes={
                    "slmflow.gateway.target": t.name, "slmflow.gateway.key": rec.key_name,
                    "slmflow.stream": True}) as sp, collect_decisions() as decisions:
                rec.trace_id = tracing.current_trace_id() or uuid.uuid4().hex
                async with t.model.stream(msgs, schema=schema, settings=settings) as s:
                    async for delta in s:
                        parts.append(delta)
                        q.put_nowait(("delta", delta))
                r = s.response
                tracing.set_attributes(sp, {"slmflow.cache": info.cache,
                                            "slmflow.escalated": info.escalated or None})
        except BaseException as e:
            self.release(held)
            gone = isinstance(e, (asyncio.CancelledError, GeneratorExit))
            rec.status = "blocked" if isinstance(e, GuardrailViolation) else "error"
            rec.error = ("ClientDisconnected: the client went away mid-stream" if gone else
                         f"{type(e).__name__}: {getattr(e, 'message', str(e))}"[:1000])
            rec.latency_s = time.perf_counter() - t0
            rec.meta["guardrails"] = [d.as_dict() for d in decisions if d.action != "pass"]
            if parts:  # what the client was sent
                rec.output = self._log_redact("".join(parts))
                rec.meta["streamed_chars"] = sum(len(p) for p in parts)
            pub = e if gone else self._public(e, rec)
            self._finish(rec, t.name)
            q.put_nowait(("error", pub))
            if gone:
                raise
            return
        finally:
            from .wrappers import _INFO

            _INFO.reset(token)
        rec.latency_s = time.perf_counter() - t0
        rec.cache = info.cache
        self._model_record(rec, r, info)
        shown = [d.as_dict() for d in decisions if d.action != "pass"]
        if shown:
            rec.meta["guardrails"] = shown
        self._finish(rec, t.name, usage=r.usage)
        await self.settle(held, r.usage.total_tokens)
        q.put_nowait(("end", {
            "finish_reason": "length" if r.finish_reason == "length" else "stop",
            "usage": {"prompt_tokens": r.usage.input_tokens,
                      "completion_tokens": r.usage.output_tokens,
                      "total_tokens": r.usage.total_tokens},
            "slmflow": {"call_id": rec.id, "trace_id": rec.trace_id, "cache": info.cache,
                        "confidence": r.confidence, "escalated": bool(rec.escalated),
                        "model": rec.model, "run_id": None, "guardrails": shown}}))

    async def _run_workflow(self, t: Target, value: Any, key: KeyInfo | None,
                            trace_id: str | None) -> tuple[Any, str]:
        """Run a workflow target; every agent call inside it is logged by the agent itself, to
        this gateway's writer, under this run id, key and redaction (the logging context)."""
        run_id = uuid.uuid4().hex
        with logging_context(run_id=run_id, workflow=t.name, key=key.name if key else None,
                             writer=self.writer, enabled=True, trace_id=trace_id,
                             redact=None if self.config.guardrails.log_pii else _redact):
            rr = await asyncio.wait_for(t.workflow.run(value), t.timeout_s)
        for s in rr.steps:
            if s.agent_result is not None:
                self.metrics.inc("agent_calls", agent=s.agent_result.agent,
                                 help="Agent calls inside workflow runs.")
        return rr, run_id

    async def run_workflow(self, name: str, value: Any, key: KeyInfo | None) -> dict:
        t = self.targets.get(name)
        if t is None or t.kind != "workflow":
            raise ApiError(404, f"no workflow named {name!r}", "invalid_request_error",
                           "workflow_not_found", "name")
        self.admit(key, name)
        self.check_input_depth(value, "input")
        held = await self.limit(key, self._need(t, [_answer_text(value)], 0))
        t0 = time.perf_counter()
        rec = CallRecord(kind="workflow", workflow=name, key_name=key.name if key else None,
                         input=self._log_redact(_value(value)), meta={"target": name})
        decisions: list = []
        try:
            with tracing.span("gateway", "workflow.run", attributes={
                    "slmflow.gateway.target": name}), collect_decisions() as decisions:
                rec.trace_id = tracing.current_trace_id() or uuid.uuid4().hex
                if isinstance(value, str):
                    value = self._guard_text(value, "input", decisions)
                elif self.in_policy is not None:
                    self._guard_text(json.dumps(value, default=str), "input", decisions)
                rr, run_id = await self._run_workflow(t, value, key, rec.trace_id)
                if rr.error is not None and isinstance(rr.error, HandoffError) and \
                        rr.handoffs and rr.handoffs[0].source == "input":
                    raise rr.error
                if rr.error is not None and not isinstance(rr.error, (HandoffError,
                                                                      StructuredOutputError)):
                    raise rr.error
                answer = rr.answer
                if answer is not None and self.out_policy is not None:
                    txt = _answer_text(answer)
                    red = self._guard_text(txt, "output", decisions)
                    if red != txt:
                        answer = red if isinstance(answer, str) else _redact(_value(answer))
        except BaseException as e:
            self.release(held)
            rec.status = "blocked" if isinstance(e, GuardrailViolation) else "error"
            rec.error = f"{type(e).__name__}: {getattr(e, 'message', str(e))}"[:1000]
            rec.latency_s = time.perf_counter() - t0
            pub = self._public(e, rec)
            self._finish(rec, name)
            if pub is e:
                raise
            raise pub from e
        rec.run_id, rec.status = run_id, rr.status
        logged, bad = _json_value(rr.answer)
        rec.output = self._log_redact(logged)
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
        self._finish(rec, name, usage=usage)
        await self.settle(held, usage.total_tokens)
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

    def _public(self, e: BaseException, rec: CallRecord) -> BaseException:
        """`public_error`, and the full story in the server log; the call record keeps it too."""
        pub = public_error(e, rec.id)
        if pub is not e:
            log.warning("call %s: %s: %s", rec.id, type(e).__name__, e)
            rec.meta["public_error"] = pub.message  # type: ignore[attr-defined]
        return pub

    def _finish(self, rec: CallRecord, target: str, usage: Usage | None = None) -> None:
        self.writer.submit(rec)
        m = self.metrics
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

    # -- the app -------------------------------------------------------------------------------------
    def _make_app(self) -> Any:
        from .routes import make_app

        return make_app(self)


class ChatStream:
    """A streamed chat completion: the server-sent events of one answer.

    For a model target a producer task (`Gateway._produce`) runs the model's stream and feeds
    a queue; `events` turns the queue into OpenAI ``chat.completion.chunk`` events as the
    pieces arrive: a first chunk with the role (and the ``slmflow`` object as far as it is known:
    call id, trace id, cache), content deltas, a chunk with the finish reason (and the whole
    ``slmflow`` object: confidence, model, guardrails), the usage chunk when asked for, then
    ``data: [DONE]``. The finish is sent only after the call is committed to the call log
    (``call_log_durable``). A guardrail that blocks mid-stream ends it with finish reason
    ``content_filter``; any other failure mid-stream is an ``{"error": {...}}`` event. When the
    client goes away, the producer is cancelled, which stops the model."""

    def __init__(self, gw: Gateway, model: str, rec: CallRecord, info: RequestInfo) -> None:
        self.gw, self.model, self.rec, self.info = gw, model, rec, info
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self._first: Any = None
        self._replay: dict | None = None

    @classmethod
    def replay(cls, gw: Gateway, body: dict, rec: CallRecord) -> "ChatStream":
        """An answer that is already whole (an agent, a workflow), sent in word-sized pieces."""
        st = cls(gw, body["model"], rec, RequestInfo(cache=rec.cache))
        st._replay = body
        return st

    @property
    def cache(self) -> str | None:
        return self.info.cache

    async def prefetch(self) -> None:
        """Wait for the first item; a failure before any text raises here (an HTTP status)."""
        item = await self.queue.get()
        if item[0] == "error":
            raise item[1]
        self._first = item

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _chunk(self, delta: dict, finish: str | None = None, **extra: Any) -> bytes:
        obj = {"id": f"chatcmpl-{self.rec.id}", "object": "chat.completion.chunk",
               "created": int(self.rec.ts), "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(obj, ensure_ascii=True).encode() + b"\n\n"

    def _usage(self, usage: dict) -> bytes:
        obj = {"id": f"chatcmpl-{self.rec.id}", "object": "chat.completion.chunk",
               "created": int(self.rec.ts), "model": self.model, "choices": [],
               "usage": usage}
        return b"data: " + json.dumps(obj, ensure_ascii=True).encode() + b"\n\n"

    @staticmethod
    def _error(e: BaseException) -> bytes:
        api = map_error(e)
        return b"data: " + json.dumps({"error": {
            "message": api.message, "type": api.type, "param": api.param, "code": api.code}},
            ensure_ascii=True).encode() + b"\n\n"

    async def events(self, include_usage: bool, request: Any = None) -> Any:
        """The SSE body (bytes)."""
        if self._replay is not None:
            async for b in self._replayed(include_usage, request):
                yield b
            return
        rec = self.rec
        try:
            yield self._chunk({"role": "assistant", "content": ""}, slmflow={
                "call_id": rec.id, "trace_id": rec.trace_id, "cache": self.info.cache})
            item = self._first
            while True:
                kind, value = item
                if kind == "delta":
                    yield self._chunk({"content": value})
                elif kind == "end":
                    if not await self._committed():
                        yield self._error(ApiError(
                            503, "the call log could not be written in time; the answer is "
                            "logged once the database is back", "server_error",
                            "call_log_unavailable"))
                        return
                    yield self._chunk({}, value["finish_reason"], slmflow=value["slmflow"])
                    if include_usage:
                        yield self._usage(value["usage"])
                    yield b"data: [DONE]\n\n"
                    return
                else:  # an error after the first piece
                    if isinstance(value, GuardrailViolation):
                        yield self._chunk({}, "content_filter", slmflow={
                            "call_id": rec.id, "trace_id": rec.trace_id,
                            "guardrails": rec.meta.get("guardrails", []),
                            "error": map_error(value).message})
                        yield b"data: [DONE]\n\n"
                    else:
                        yield self._error(value)
                    return
                item = await self.queue.get()
        finally:
            self.stop()  # the client went away (or the answer is complete: a no-op)

    async def _committed(self) -> bool:
        gw = self.gw
        return not gw.config.call_log_durable or await gw.writer.committed(
            gw.config.limits.request_timeout_s)

    async def _replayed(self, include_usage: bool, request: Any) -> Any:
        body = self._replay
        text = body["choices"][0]["message"]["content"] or ""
        yield self._chunk({"role": "assistant", "content": ""}, slmflow=body["slmflow"])
        pieces, cur = [], ""
        for ch in text:
            cur += ch
            if ch in " \n" and len(cur) >= 4:
                pieces.append(cur)
                cur = ""
        if cur:
            pieces.append(cur)
        for i, p in enumerate(pieces):
            if request is not None and i % 16 == 15 and await request.is_disconnected():
                return  # the call is already logged; stop sending
            yield self._chunk({"content": p})
        yield self._chunk({}, body["choices"][0]["finish_reason"])
        if include_usage:
            yield self._usage(body["usage"])
        yield b"data: [DONE]\n\n"


def _as_msgs(messages: Any) -> list[Message]:
    from ..types import as_messages

    return as_messages(messages)


def _redact(v: Any) -> Any:
    """PII-redact every string inside a JSON-able value."""
    if isinstance(v, str):
        return redact_pii(v)
    if isinstance(v, list):
        return [_redact(x) for x in v]
    if isinstance(v, dict):
        return {k: _redact(x) for k, x in v.items()}
    return v


def create_app(config: GatewayConfig | str | None = None, **kwargs: Any) -> Any:
    """The FastAPI app for a config (object or gateway.yaml path)."""
    if isinstance(config, str):
        from .config import load_config

        config = load_config(config)
    return Gateway(config, **kwargs).app
