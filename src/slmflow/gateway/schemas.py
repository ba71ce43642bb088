"""The gateway's wire format: the OpenAI request and response bodies, and the errors it sends.

Why a module of its own: the routes (routes.py), the request handling (service.py, stream.py) and
the OpenAPI document all speak these shapes, and none of them should have to import the gateway
itself to do so. Nothing here touches a model, the call log or FastAPI.

Errors never leak a traceback: every exception maps to an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}`` (`map_error`); an unexpected one is a 500 with
a reference id (logged server-side with its traceback). A failing tool inside an agent or workflow
is a 503 whose message names the step, the tool, what went wrong in general terms (raised, timed
out, bad arguments) and the call id (`public_error`); the tool's own exception message can hold
anything (a connection string, a customer's data), so it goes only to the call log and the server
log.

Answers are JSON, and JSON has no NaN or Infinity: a non-finite number in an answer is sent *and*
logged as ``null`` (the call record's ``meta.nonfinite`` counts them), so the response and the
call log always say the same thing (`_finite`, `_json_value`, `_answer_text`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import (ConfigError, ContextLengthError, HandoffError, ModelError,
                      ModelNotFoundError, ServerError, ServerUnreachableError, SlmflowError,
                      StructuredOutputError, ToolError)
from ..guardrails import GuardrailViolation
from ..store.writer import _value
from .wrappers import BackendTimeoutError, CircuitOpenError

log = logging.getLogger("slmflow.gateway")

__all__ = ["ChatRequest", "ChatResponse", "ChatMessage", "ContentPart", "ResponseFormat",
           "StreamOptions", "Choice", "ChatUsage", "ModelCard", "ModelList", "RunRequest",
           "RunStep", "RunResponse", "FeedbackRequest", "FeedbackResponse", "ErrorDetail",
           "ErrorBody", "ApiError", "map_error", "public_error"]


# ---- wire format -------------------------------------------------------------------------------

class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Wire):
    type: str = Field(max_length=64)
    text: Optional[str] = None


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = Field(None, max_length=256)
    tool_call_id: Optional[str] = Field(None, max_length=256)


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Optional[dict[str, Any]] = None


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatRequest(_Wire):
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=512)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    seed: Optional[int] = Field(None, ge=-(2 ** 31), le=2 ** 31 - 1)
    stop: Union[str, list[str], None] = None
    n: Optional[int] = Field(None, ge=1, le=1)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = Field(None, max_length=256)


class Choice(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: str


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    slmflow: dict[str, Any] = Field(default_factory=dict)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RunRequest(_Wire):
    input: Any = Field(..., description="the workflow's input: text or a JSON object")


class RunStep(BaseModel):
    step: str
    kind: str
    status: str
    model: str
    latency_ms: float
    confidence: Optional[float] = None
    escalated: bool = False
    call_id: Optional[str] = None


class RunResponse(BaseModel):
    id: str
    object: Literal["workflow.run"] = "workflow.run"
    workflow: str
    status: str
    answer: Any = None
    detail: str = ""
    steps: list[RunStep]
    usage: ChatUsage
    latency_ms: float
    trace_id: Optional[str] = None


class FeedbackRequest(_Wire):
    call_id: Optional[str] = Field(None, max_length=64)
    run_id: Optional[str] = Field(None, max_length=64)
    thumbs: Optional[Literal["up", "down"]] = None
    label: Optional[str] = Field(None, max_length=256)
    correction: Any = None
    by: Optional[str] = Field(None, max_length=256)


class FeedbackResponse(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    call_id: Optional[str] = None
    run_id: Optional[str] = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERRORS = {s: {"model": ErrorBody, "description": d} for s, d in [
    (400, "invalid request"), (401, "missing or invalid API key"),
    (403, "the key may not use this model"), (404, "unknown model, workflow or id"),
    (413, "request body too large"), (429, "rate limit or token budget exceeded"),
    (500, "internal error (a reference id, never a traceback)"),
    (503, "backend unavailable"), (504, "backend timeout")]}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers


def map_error(e: BaseException) -> ApiError:
    """Our exception tree → HTTP status and OpenAI error type/code."""
    if isinstance(e, ApiError):
        return e
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    if isinstance(e, GuardrailViolation):
        return ApiError(400, msg, "invalid_request_error", "content_policy_violation",
                        f"guardrail.{e.stage}.{e.check}")
    if isinstance(e, ContextLengthError):
        return ApiError(400, msg, "invalid_request_error", "context_length_exceeded", "messages")
    if isinstance(e, HandoffError):
        return ApiError(400, msg, "invalid_request_error", "invalid_input", "input")
    if isinstance(e, CircuitOpenError):
        ra = int(e.details.get("retry_after") or 1) + 1
        return ApiError(503, msg, "server_error", "backend_unavailable",
                        headers={"Retry-After": str(ra)})
    if isinstance(e, (BackendTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return ApiError(504, msg if isinstance(e, SlmflowError) else "the backend timed out",
                        "server_error", "backend_timeout")
    if isinstance(e, ServerUnreachableError):
        return ApiError(503, msg, "server_error", "backend_unavailable")
    if isinstance(e, ModelNotFoundError):
        return ApiError(503, msg, "server_error", "model_unavailable")
    if isinstance(e, (ServerError, ModelError, StructuredOutputError, ToolError)):
        return ApiError(503, msg, "server_error", "backend_error")
    if isinstance(e, ConfigError):
        return ApiError(400, msg, "invalid_request_error", "invalid_request")
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected error (ref %s)", ref, exc_info=e)
    return ApiError(500, f"internal error (reference {ref})", "server_error", "internal_error")


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type in ("text", "input_text"))


def _finite(v: Any) -> tuple[Any, int]:
    """``v`` with every NaN / +-Infinity float replaced by None, and how many were replaced.

    JSON has no such numbers: the response encoder refuses them (a 500 after the call was logged
    ``ok``) and PostgreSQL's JSON types reject them. Replacing them once, before both the log and
    the response are built, keeps the two in agreement."""
    if isinstance(v, float):
        return (v, 0) if math.isfinite(v) else (None, 1)
    if isinstance(v, dict):
        out, n = {}, 0
        for k, x in v.items():
            out[k], m = _finite(x)
            n += m
        return (out, n) if n else (v, 0)
    if isinstance(v, (list, tuple)):
        items = [_finite(x) for x in v]
        n = sum(m for _, m in items)
        return ([x for x, _ in items], n) if n else (v, 0)
    return v, 0


def _json_value(v: Any) -> tuple[Any, int]:
    """An answer as a JSON-able value without non-finite numbers (see `_finite`)."""
    if hasattr(v, "value") and hasattr(v, "error") and hasattr(v, "tool"):  # a ToolResult
        v = v.value
    return _finite(_value(v))


def _answer_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()  # pydantic writes NaN and Infinity as null too
    try:
        return json.dumps(_json_value(value)[0], default=str, ensure_ascii=False,
                          allow_nan=False)
    except Exception:
        return str(value)


_TOOL_FAILURE = {"exception": "raised an error", "timeout": "timed out",
                 "invalid_arguments": "got invalid arguments"}


def public_error(e: BaseException, call_id: str) -> BaseException:
    """What the client is told about ``e``: a tool's failure becomes a 503 naming the step, the
    tool and the call id, without the tool's own message (see the module docstring)."""
    if not isinstance(e, ToolError):
        return e
    d = e.details
    step, tool = d.get("step"), d.get("tool")
    what = _TOOL_FAILURE.get(str(d.get("kind")), "failed")
    msg = ((f"step {step!r} failed: " if step else "")
           + (f"the tool {tool!r} {what}" if tool else f"a tool {what}")
           + f"; the details are in the call log (call id {call_id})")
    return ApiError(503, msg, "server_error", "backend_error")

