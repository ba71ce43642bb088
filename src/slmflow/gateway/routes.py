"""The FastAPI routes, the body-size limit and the error handlers of the gateway.

The one module of the gateway that imports FastAPI, loaded when a `Gateway` is constructed (it
builds its app then): importing ``slmflow.gateway``, its app.py or schemas.py loads no FastAPI."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _FastJSON
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import (_ERRORS, ApiError, ChatRequest, ChatResponse, ErrorBody, FeedbackRequest,
                      FeedbackResponse, ModelList, RunRequest, RunResponse, map_error)

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["make_app"]


class JSONResponse(_FastJSON):
    """ASCII-escaped JSON: a lone surrogate in a client's string can never break the encoder."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, default=str,
                          separators=(",", ":")).encode("ascii")


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.type, "param": e.param,
                                   "code": e.code}}, status_code=e.status, headers=e.headers)


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over the limit (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > self.limit or n < 0:
                    return await self._reject(scope, receive, send, n)
        # Read the whole body first (at most limit + one chunk), then replay it to the app.
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away before sending its body
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                return await self._reject(scope, receive, send, seen)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replayed() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()

        await self.app(scope, replayed, send)

    async def _reject(self, scope: Any, receive: Any, send: Any, n: int) -> None:
        msg = (f"request body of {n} bytes is over the limit of {self.limit}" if n >= 0
               else "invalid Content-Length")
        resp = error_response(ApiError(413 if n >= 0 else 400, msg, "invalid_request_error",
                                       "request_too_large" if n >= 0 else "invalid_request"))
        await resp(scope, receive, send)


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def make_app(gw: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.startup()
        try:
            yield
        finally:
            await gw.shutdown()

    app = FastAPI(title="slmflow gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=JSONResponse, responses=_ERRORS,
                  description="OpenAI-compatible gateway over slmflow models, agents and "
                              "workflows.")
    app.state.gateway = gw

    app.add_middleware(BodyLimit, limit=gw.config.limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        if e.status in (401, 403, 404, 429):  # refusals go in the call log: abuse is visible
            gw.log_refusal(request, e)
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        else:
            msg = "; ".join(f"{_param(tuple(x.get('loc', ()))) or 'body'}: {x.get('msg')}"
                            for x in errs[:5])
        param = None if first.get("type") == "json_invalid" else _param(
            tuple(first.get("loc", ())))
        return error_response(ApiError(400, msg, "invalid_request_error", "invalid_request",
                                       param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(ApiError(e.status_code, str(e.detail), "invalid_request_error",
                                       code, headers=getattr(e, "headers", None)))

    @app.exception_handler(Exception)
    async def _any(request: Request, e: Exception):
        return error_response(map_error(e))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            resp = await call_next(request)
        except Exception as e:  # belt and braces: never a traceback to the client
            resp = error_response(map_error(e))
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        gw.metrics.inc("requests", route=path, method=request.method, status=resp.status_code,
                       help="HTTP requests by route, method and status.")
        gw.metrics.observe(time.perf_counter() - t0, route=path)
        return resp

    def _errors(*codes: int) -> dict:
        return {c: _ERRORS[c] for c in codes}

    @app.get("/healthz", responses=_errors(503))
    async def healthz(request: Request) -> dict:
        """Liveness; with a ``metrics``-scope key (or auth off) also the state of the call-log
        writer and the circuit breakers (which name the models)."""
        out: dict[str, Any] = {"status": "ok", "uptime_s": round(time.time() - gw.started, 1)}
        try:
            gw.require_scope(request, "metrics")
        except ApiError:
            return out  # a probe without a key still learns that the process is alive
        out.update(call_log=gw.writer.stats(),
                   breakers={n: b.state for n, b in gw.breakers.items()})
        return out

    # not response_class=PlainTextResponse: FastAPI would document the JSON errors as text too
    @app.get("/metrics", responses={200: {"content": {"text/plain": {}}}, **_errors(401, 403)})
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format; needs a key with the ``metrics`` scope when auth is on."""
        gw.require_scope(request, "metrics")
        return PlainTextResponse(gw.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401))
    async def list_models(request: Request) -> Any:
        key = gw.authenticate(request)
        data = [{"id": n, "object": "model", "created": int(gw.started),
                 "owned_by": f"slmflow-{t.kind}"} for n, t in gw.targets.items()
                if key is None or key.allows(n)]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=ChatResponse,
              responses=_errors(400, 401, 403, 404, 413, 429, 503, 504))
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        """OpenAI chat completions; ``model`` names a model, an agent (``workflow.agent``) or a
        workflow. ``stream: true`` answers with server-sent events."""
        key = gw.authenticate(request)
        if req.stream:
            st = await gw.stream_chat(req, key)
            inc = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(st.events(inc, request), media_type="text/event-stream",
                                     headers={"x-slmflow-call-id": st.rec.id,
                                              "x-slmflow-cache": st.cache or "none",
                                              "Cache-Control": "no-cache"})
        body, rec = await gw.run_chat(req, key)
        await gw.committed()  # the call is in the log before the client has its answer
        headers = {"x-slmflow-call-id": rec.id, "x-slmflow-cache": rec.cache or "none"}
        return JSONResponse(body, headers=headers)

    @app.post("/v1/workflows/{name}/runs", response_model=RunResponse,
              responses=_errors(400, 401, 403, 404, 413, 429, 503, 504))
    async def run_workflow(name: str, req: RunRequest, request: Request) -> Any:
        """Run a whole workflow once; the response has every step and the run id."""
        key = gw.authenticate(request)
        out = await gw.run_workflow(name, req.input, key)
        await gw.committed()
        return JSONResponse(out)

    @app.post("/v1/feedback", response_model=FeedbackResponse, status_code=201,
              responses=_errors(400, 401, 404))
    async def feedback(req: FeedbackRequest, request: Request) -> Any:
        """Attach thumbs up/down, a label or a correction to a call or a workflow run of the
        key's own (any key's with the ``admin`` scope); ``by`` is the key's name when auth is on
        (the body's ``by`` is used only without auth)."""
        key = gw.authenticate(request)
        from ..errors import ConfigError
        from .auth import owns_call

        if (req.call_id is None) == (req.run_id is None):
            raise ApiError(400, "give exactly one of call_id and run_id", param="call_id")
        if req.thumbs is None and req.label is None and req.correction is None:
            raise ApiError(400, "give thumbs, a label or a correction", param="thumbs")
        await asyncio.to_thread(gw.writer.flush, 10.0)
        if key is not None and not key.has_scope("admin") and not await asyncio.to_thread(
                owns_call, gw.call_log, key.name, req.call_id, req.run_id):
            what = f"call {req.call_id!r}" if req.call_id else f"run {req.run_id!r}"
            raise ApiError(404, f"no {what} made with this key", "invalid_request_error",
                           "not_found", "call_id" if req.call_id else "run_id")
        try:
            fb = await asyncio.to_thread(gw.call_log.add_feedback, req.call_id,
                                         run_id=req.run_id, signal=req.thumbs, label=req.label,
                                         correction=req.correction,
                                         by=key.name if key is not None else req.by)
        except ConfigError as e:
            raise ApiError(404, e.message, "invalid_request_error", "not_found",
                           "call_id" if req.call_id else "run_id") from None
        return JSONResponse({"id": fb.id, "object": "feedback", "call_id": fb.call_id,
                             "run_id": fb.run_id}, status_code=201)

    @app.get("/v1/calls/{call_id}", responses=_errors(401, 404))
    async def get_call(call_id: str, request: Request) -> Any:
        """One call-log record (input and output as logged, so PII-redacted by default): the
        key's own calls, or any with the ``admin`` scope."""
        key = gw.authenticate(request)
        await asyncio.to_thread(gw.writer.flush, 10.0)
        rec = await asyncio.to_thread(gw.call_log.get, call_id)
        if rec is None or (key is not None and rec.key_name != key.name
                           and not key.has_scope("admin")):
            raise ApiError(404, f"no call {call_id!r}", code="not_found", param="call_id")
        d = rec.as_dict()
        public = (d.get("meta") or {}).pop("public_error", None)
        if public is not None:  # a tool's own message stays with the operator (public_error)
            d["error"] = public
        return JSONResponse(d)

    _ = ErrorBody
    return app
