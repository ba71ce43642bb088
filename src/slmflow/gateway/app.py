"""The OpenAI-compatible gateway: a FastAPI app over models, agents and workflows.

Routes: ``POST /v1/chat/completions`` (JSON or SSE stream), ``GET /v1/models``,
``POST /v1/workflows/{name}/runs``, ``POST /v1/feedback``, ``GET /v1/calls/{id}``, ``GET /healthz``,
``GET /metrics`` (Prometheus), ``GET /openapi.json``.

A request goes: body-size limit → JSON validation (400 on any error, OpenAI error body) → API key
(401) → allowed model (403) → rate limit and token budget (429: both checked and reserved in the
call-log database, so replicas share them; see auth.py) → the target (a model, an agent or a
workflow). With ``call_log_durable`` (the default) an answer is sent only once its records are
committed (group commit), so a SIGKILL loses no answered call. Refused requests
(401/403/404/429) are logged as ``kind="gateway"``, ``status="rejected"``.

This module holds what lives as long as the process: the `Gateway` (the config, the model stacks
it builds, the targets, API keys, limits and budgets, the call-log writer, the metrics) and
`create_app`. The rest has a module per job, and the names stay importable from here:

* schemas.py: the wire format (request and response bodies), `ApiError`, `map_error`,
  `public_error`, and answers as JSON (no NaN or Infinity);
* service.py: answering one request for each kind of target (`Service`: ``gateway.service``),
  its call record and metrics;
* stream.py: streamed answers (`ChatStream` and the task that feeds it);
* routes.py: the FastAPI app itself (routes, body-size limit, error handlers); FastAPI is
  imported only there, when a `Gateway` is constructed and builds its app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..guardrails import GuardPolicy, Guarded
from ..models.base import Model
from ..store.calllog import CallLog, CallRecord, Example, open_call_log
from ..store.writer import CallLogWriter, enable_logging
from ..types import Message
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
from .service import Service, _redact
from .stream import ChatStream
from .wrappers import (Cached, CircuitBreaker, Fallback, Resilient, note_cache,
                       note_escalation)

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
        self.service = Service(self)
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

    def need(self, t: Target, texts: list[str], max_tokens: int) -> int:
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

    # -- requests (service.py) ---------------------------------------------------------------------
    async def run_chat(self, req: ChatRequest, key: KeyInfo | None) -> tuple[dict, CallRecord]:
        """Run a chat completion; returns (the response body, its call record)."""
        return await self.service.run_chat(req, key)

    async def stream_chat(self, req: ChatRequest, key: KeyInfo | None) -> ChatStream:
        """Start a streamed chat completion (`Service.stream_chat`)."""
        return await self.service.stream_chat(req, key)

    async def run_workflow(self, name: str, value: Any, key: KeyInfo | None) -> dict:
        """Run a workflow once; the response body of ``POST /v1/workflows/{name}/runs``."""
        return await self.service.run_workflow(name, value, key)

    # -- the app -------------------------------------------------------------------------------------
    def _make_app(self) -> Any:
        from .routes import make_app

        return make_app(self)


def _as_msgs(messages: Any) -> list[Message]:
    from ..types import as_messages

    return as_messages(messages)


def create_app(config: GatewayConfig | str | None = None, **kwargs: Any) -> Any:
    """The FastAPI app for a config (object or gateway.yaml path)."""
    if isinstance(config, str):
        from .config import load_config

        config = load_config(config)
    return Gateway(config, **kwargs).app
