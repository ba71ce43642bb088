"""The OpenAI-compatible backend against a real server: llama.cpp's server on the embedded GGUF,
started on loopback by the fixture. Failure modes use small real HTTP servers of our own."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
from typing import Literal

import pytest
from pydantic import BaseModel

from slmflow import (ContextLengthError, ServerResponseError, ServerUnreachableError, Settings,
                     ToolSpec)
from slmflow.models.catalog import embedded_gguf_path, resolve
from slmflow.models.openai import OpenAIModel

from .conftest import free_port, wait_http


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "2048", "--n_threads", "1"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{url}/models", proc, log, timeout=90)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


class Ticket(BaseModel):
    category: Literal["refund", "shipping", "account"]
    urgent: bool


def test_text_via_catalog_spec(llama_server):
    m = resolve(f"openai:smollm2@{llama_server}")
    r = m.generate_sync("What is the capital of France? Answer in one word.",
                        settings=Settings(max_tokens=12))
    assert "Paris" in r.text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.confidence is not None and 0 < r.confidence <= 1  # from the server's logprobs
    assert r.model.provider == "openai"


def test_schema_on_a_server_that_only_takes_json_object(llama_server):
    m = OpenAIModel("smollm2", base_url=llama_server)
    for text in ["Refund my broken order now!", "Where is my parcel?"]:
        r = m.generate_sync(text, schema=Ticket, settings=Settings(max_tokens=48))
        assert isinstance(r.parsed, Ticket), r.text
    assert m.schema_style == "json_object"  # learned from the server's 4xx on json_schema


def test_tool_call_through_the_server(llama_server):
    m = OpenAIModel("smollm2", base_url=llama_server, schema_style="json_object")
    tools = [ToolSpec("lookup_order", "Look up an order by id.", {
        "type": "object", "properties": {"order_id": {"type": "string", "maxLength": 16}},
        "required": ["order_id"], "additionalProperties": False})]
    r = m.generate_sync("Where is order A-1042?", tools=tools, settings=Settings(max_tokens=48))
    assert r.tool_calls and r.tool_calls[0].name == "lookup_order"
    assert isinstance(r.tool_calls[0].arguments["order_id"], str)


def test_prompt_too_long_for_the_server(llama_server):
    m = OpenAIModel("smollm2", base_url=llama_server)
    with pytest.raises((ContextLengthError, ServerResponseError)) as e:
        m.generate_sync("word " * 6000, settings=Settings(max_tokens=8))
    assert "127.0.0.1" in str(e.value)


def test_unreachable_server_names_the_url():
    port = free_port()
    m = OpenAIModel("x", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2)
    with pytest.raises(ServerUnreachableError) as e:
        m.generate_sync("hi")
    assert f"127.0.0.1:{port}" in str(e.value)


class _Scripted(http.server.BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status, body, headers = self.replies.pop(0) if self.replies else (200, "{}", {})
        self.seen.append(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *a):
        pass


@pytest.fixture
def scripted_server():
    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Scripted)
    _Scripted.replies, _Scripted.seen = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{port}/v1", _Scripted
    srv.shutdown()


def test_garbage_answer_is_a_response_error(scripted_server):
    url, h = scripted_server
    h.replies = [(200, "<html>not an API</html>", {})]
    with pytest.raises(ServerResponseError) as e:
        OpenAIModel("x", base_url=url).generate_sync("hi")
    assert "not an OpenAI chat completion" in str(e.value)


def test_overloaded_server_is_retried_then_answers(scripted_server):
    url, h = scripted_server
    ok = {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    h.replies = [(503, "busy", {"Retry-After": "0"}), (429, "slow down", {"Retry-After": "0"}),
                 (200, json.dumps(ok), {})]
    r = OpenAIModel("x", base_url=url).generate_sync("hi")
    assert r.text == "fine" and h.seen == [503, 429, 200] and r.confidence is None


def test_overload_that_never_ends_is_reported_not_dropped(scripted_server):
    url, h = scripted_server
    h.replies = [(503, "busy", {"Retry-After": "0"})] * 3
    with pytest.raises(ServerResponseError) as e:
        OpenAIModel("x", base_url=url, max_retries=2).generate_sync("hi")
    assert e.value.status == 503 and len(h.seen) == 3


def test_a_stream_is_retried_and_reported_as_a_whole_answer_is(scripted_server):
    """Opening a stream goes through the same retry as a whole answer: an overload is waited
    out, and one that never ends is the server's status with its body."""
    url, h = scripted_server
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in (
        {"choices": [{"delta": {"content": "fi"}}]},
        {"choices": [{"delta": {"content": "ne"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2}})) + "data: [DONE]\n\n"
    h.replies = [(503, "busy", {"Retry-After": "0"}), (200, sse, {})]
    m = OpenAIModel("x", base_url=url, logprobs=False)

    async def pieces(model):
        s = model.stream("hi")
        return [d async for d in s], s.response

    got, r = asyncio.run(pieces(m))
    assert got == ["fi", "ne"] and r.text == "fine" and r.usage.output_tokens == 2
    assert h.seen == [503, 200]
    h.replies, h.seen[:] = [(503, "still busy", {"Retry-After": "0"})] * 2, []
    with pytest.raises(ServerResponseError) as e:
        asyncio.run(pieces(OpenAIModel("x", base_url=url, max_retries=1)))
    assert e.value.status == 503 and e.value.body == "still busy" and len(h.seen) == 2
