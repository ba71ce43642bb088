"""Any OpenAI-compatible server: vLLM, TGI, llama.cpp server, Ollama, or a frontier API.

Why plain httpx and not the `openai` package: we need exact control over what a failing server
looks like to the user (unreachable vs overloaded vs garbage), retries on 429/503 that honour
``Retry-After``, and no heavy import. The wire format is small.

Structured output and tool calls both travel as a JSON schema in ``response_format`` (our tool
schema is the same ``anyOf`` every backend uses), so a tool call is constrained on any server that
can constrain to a schema, whether or not it implements native function calling. Servers differ in
how they take a schema: OpenAI and vLLM take ``{"type": "json_schema", "json_schema": {...}}``,
llama.cpp's Python server takes ``{"type": "json_object", "schema": {...}}``. ``schema_style="auto"``
tries the first and, if the server rejects the request shape (400/422, or a 500 naming
``response_format`` as llama.cpp's server sends), remembers to use the
second for that server.

Confidence comes from ``logprobs`` when the server returns them, else it is ``None``.

`Model.stream` sends ``stream: true`` and turns the server's SSE chunks into deltas as they
arrive (usage from the last chunk, ``stream_options.include_usage``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from ..errors import (ContextLengthError, ServerResponseError, ServerUnreachableError)
from ..structured import OutputSpec, attempt_budget, generate_validated
from ..types import (MessageLike, ModelInfo, Response, Settings, ToolSpec, Usage,
                     confidence_from_logprobs)
from .base import Model, call_parts, sent_messages

_RETRY_STATUS = {429, 502, 503, 504}


class OpenAIModel(Model):
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 3, schema_style: str = "auto",
                 logprobs: bool = True, name: str | None = None, adapter: str | None = None,
                 provider: str = "openai") -> None:
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.schema_style = schema_style
        self.logprobs = logprobs
        self.info = ModelInfo(provider, name or model, adapter)
        self._clients: dict[int, Any] = {}

    @property
    def where(self) -> str:
        return f"{self.info.identity} @ {self.base_url}"

    def _client(self):
        import httpx

        key = id(asyncio.get_running_loop())
        client = self._clients.get(key)
        if client is None or client.is_closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            client = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                       timeout=self.timeout_s)
            self._clients[key] = client
        return client

    def _response_format(self, spec: OutputSpec, style: str) -> dict[str, Any]:
        if style == "json_object":
            return {"type": "json_object", "schema": spec.json_schema}
        return {"type": "json_schema",
                "json_schema": {"name": spec.name[:64] or "output", "schema": spec.json_schema,
                                "strict": True}}

    def _raise_for(self, status: int, body: str) -> None:
        low = body.lower()
        if "context" in low and ("length" in low or "window" in low or "exceed" in low):
            raise ContextLengthError(f"the server says the prompt is too long: {body[:300]}",
                                     where=self.where)
        raise ServerResponseError(f"HTTP {status}: {body[:500]}", where=self.where,
                                  status=status, body=body)

    async def _request(self, payload: dict[str, Any], *, stream: bool) -> Any:
        """POST `payload` to ``/chat/completions``; the response, its body still unread when
        `stream`. 429/502/503/504 are retried up to `max_retries` times, waiting as
        ``Retry-After`` says (at most 30 s) or 0.5 s doubling; a server that cannot be reached
        or does not answer in time is a `ServerUnreachableError`; any other status >= 400 (or
        one still failing after the retries) a `ServerResponseError` or `ContextLengthError`."""
        import httpx

        client = self._client()
        delay = 0.5
        for attempt in range(self.max_retries + 1):
            try:
                r = await client.send(client.build_request("POST", "/chat/completions",
                                                           json=payload), stream=stream)
            except httpx.TimeoutException as e:
                raise ServerUnreachableError(
                    f"no answer within {self.timeout_s}s ({type(e).__name__})",
                    where=self.where) from None
            except httpx.HTTPError as e:
                raise ServerUnreachableError(f"cannot reach the server: {e}",
                                             where=self.where) from None
            if r.status_code in _RETRY_STATUS and attempt < self.max_retries:
                await r.aclose()
                retry_after = r.headers.get("retry-after")
                try:
                    wait = float(retry_after) if retry_after else delay
                except ValueError:
                    wait = delay
                await asyncio.sleep(min(wait, 30.0))
                delay *= 2
                continue
            break
        if r.status_code >= 400:
            try:
                body = (await r.aread()).decode("utf-8", errors="replace") if stream else r.text
            finally:
                await r.aclose()
            self._raise_for(r.status_code, body)
        return r

    async def _open_stream(self, payload: dict[str, Any]) -> Any:
        """The streamed response, its status checked (`_request`, retried as `_post` is)."""
        return await self._request(payload, stream=True)

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The whole answer, checked to be a chat completion."""
        r = await self._request(payload, stream=False)
        body = r.text
        try:
            data = r.json()
            data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServerResponseError(
                f"the server's answer is not an OpenAI chat completion: {body[:300]!r}",
                where=self.where, status=r.status_code, body=body) from None
        return data

    async def _send(self, payload: dict[str, Any], spec: OutputSpec | None,
                    send: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        """Send `payload` (a whole-answer post or a stream opening) with the schema as
        ``response_format``; in ``auto`` style, a server that rejects ``json_schema`` (400/422,
        or llama.cpp's server: a 500 whose body names response_format) is asked again with
        ``json_object`` and remembered as such."""
        if spec is None:
            return await send(payload)
        style = "json_schema" if self.schema_style in ("auto", "json_schema") else "json_object"
        payload["response_format"] = self._response_format(spec, style)
        try:
            return await send(payload)
        except ServerResponseError as e:
            rejected = e.status in (400, 422) or "response_format" in (e.body or "")
            if self.schema_style != "auto" or not rejected:
                raise
            payload["response_format"] = self._response_format(spec, "json_object")
            out = await send(payload)
            self.schema_style = "json_object"
            return out

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        settings, spec, msgs = call_parts(messages, schema, tools, settings)

        async def attempt(s: OutputSpec | None, repair: bool) -> Response:
            payload = self._payload(msgs, s, settings, repair)
            t0 = time.perf_counter()
            data = await self._send(payload, s, self._post)
            return self._to_response(data, time.perf_counter() - t0)

        return await generate_validated(attempt, spec, where=self.where)

    def _payload(self, msgs: list[Any], s: OutputSpec | None, settings: Settings,
                 repair: bool) -> dict[str, Any]:
        sent = sent_messages(msgs, s, settings)
        payload: dict[str, Any] = {
            "model": self.model, "messages": [m.to_openai() for m in sent],
            "max_tokens": attempt_budget(s, settings.max_tokens, repair),
            "temperature": settings.temperature, "top_p": settings.top_p}
        if settings.seed is not None:
            payload["seed"] = settings.seed
        if settings.stop:
            payload["stop"] = list(settings.stop)
        if self.logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = 1  # llama.cpp's server returns none without it
        return payload

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """``stream: true``: the server's SSE chunks become deltas; usage comes from the last
        chunk (``stream_options.include_usage``), confidence from the chunks' logprobs. Tool
        calls answer whole (the default)."""
        if tools:
            async for item in super()._stream(messages, schema=schema, tools=tools,
                                              settings=settings):
                yield item
            return
        import httpx

        settings, spec, msgs = call_parts(messages, schema, None, settings)
        payload = self._payload(msgs, spec, settings, False)
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        t0 = time.perf_counter()
        r = await self._send(payload, spec, self._open_stream)
        parts: list[str] = []
        lps: list[float] = []
        usage: dict[str, Any] = {}
        finish = "stop"
        ttft = None
        try:
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise ServerResponseError(f"the server sent a chunk that is not JSON: "
                                              f"{data[:300]!r}", where=self.where,
                                              status=r.status_code, body=data) from None
                if not isinstance(obj, dict):
                    continue
                if obj.get("error"):
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise ServerResponseError(f"the server failed mid-stream: {msg}"[:500],
                                              where=self.where, status=r.status_code,
                                              body=data)
                usage = obj.get("usage") or usage
                for c in obj.get("choices") or ():
                    delta = (c.get("delta") or {}).get("content")
                    lp = c.get("logprobs")
                    if isinstance(lp, dict) and lp.get("content"):
                        lps.extend(float(x["logprob"]) for x in lp["content"] if "logprob" in x)
                    if c.get("finish_reason"):
                        finish = c["finish_reason"]
                    if delta:
                        ttft = ttft if ttft is not None else time.perf_counter() - t0
                        parts.append(delta)
                        yield delta
        except httpx.TimeoutException as e:
            raise ServerUnreachableError(f"the stream stalled for {self.timeout_s}s "
                                         f"({type(e).__name__})", where=self.where) from None
        except httpx.HTTPError as e:
            raise ServerUnreachableError(f"the stream broke off: {e}", where=self.where) from None
        finally:
            await r.aclose()
        resp = Response(
            text="".join(parts),
            model=ModelInfo(self.info.provider, self.info.name, self.info.adapter),
            usage=Usage(int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0)),
            latency_s=time.perf_counter() - t0, finish_reason=finish,
            confidence=confidence_from_logprobs(lps or None),
            token_logprobs=tuple(lps) if lps else None, time_to_first_token_s=ttft)
        from ..structured import validate_streamed

        yield validate_streamed(spec, resp, where=self.where)

    def _to_response(self, data: dict[str, Any], latency: float) -> Response:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        usage = data.get("usage") or {}
        lps = None
        content = (choice.get("logprobs") or {}).get("content") if isinstance(
            choice.get("logprobs"), dict) else None
        if content:
            lps = tuple(float(c["logprob"]) for c in content if "logprob" in c)
        return Response(
            text=text, model=ModelInfo(self.info.provider, self.info.name, self.info.adapter),
            usage=Usage(int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0)),
            latency_s=latency, finish_reason=choice.get("finish_reason") or "stop",
            confidence=confidence_from_logprobs(lps), token_logprobs=lps)

    async def aclose(self) -> None:
        for c in self._clients.values():
            try:
                await c.aclose()
            except RuntimeError:  # its loop is gone
                pass
        self._clients.clear()

