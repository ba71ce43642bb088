"""Streaming end to end: `Model.stream` on the real SmolLM2-135M (llama.cpp, token by token),
through the wrappers (guardrail windows), through the gateway's SSE on loopback, and back
through the OpenAI-compatible backend; a client that leaves mid-stream stops the generation."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from slmflow.errors import StructuredOutputError
from slmflow.gateway.app import Gateway
from slmflow.gateway.config import GatewayConfig
from slmflow.gateway.server import GatewayServer
from slmflow.guardrails import GuardPolicy, Guarded, GuardrailViolation
from slmflow.models.base import Model, WrapperModel
from slmflow.models.function import FunctionModel
from slmflow.types import ModelInfo, Response, Settings, Usage, as_messages

GREEDY = Settings(max_tokens=24, temperature=0.0)
COLOURS = "Name three colours."
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12},
                                           "n": {"type": "integer"}},
          "required": ["colour", "n"]}


def _blue(text: str) -> float:
    """A toxicity scorer for the tests: 'blue' is the forbidden word."""
    return 1.0 if "blue" in text.lower() else 0.0


OUT_POLICY = GuardPolicy(pii="redact", toxicity=0.5, injection=None, max_chars=None)
IN_POLICY = GuardPolicy(pii="off", toxicity=None, injection=None)


async def _drain(stream) -> tuple[list[str], Response]:
    parts = [d async for d in stream]
    return parts, stream.response


# ---- the model ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_llamacpp_streams_the_same_text_as_generate(smollm):
    async def go():
        parts, r = await _drain(smollm.stream(COLOURS, settings=GREEDY))
        g = await smollm.generate(COLOURS, settings=GREEDY)
        return parts, r, g

    parts, r, g = asyncio.run(go())
    assert len(parts) > 1
    assert "".join(parts) == r.text == g.text
    assert r.usage.output_tokens == g.usage.output_tokens and r.usage.input_tokens > 0
    assert r.finish_reason == g.finish_reason and r.confidence == pytest.approx(g.confidence)


@pytest.mark.slow
def test_llamacpp_streams_up_to_a_stop_string_as_generate_cuts(smollm):
    """The deltas never send the stop string (nor a piece that may begin it) and add up to the
    text `generate` returns, cut at the same place."""
    s = Settings(max_tokens=40, temperature=0.0, stop=("\n5.",))
    prompt = "Count from 1 to 10 separated by commas."

    async def go():
        parts, r = await _drain(smollm.stream(prompt, settings=s))
        return parts, r, await smollm.generate(prompt, settings=s)

    parts, r, g = asyncio.run(go())
    assert g.finish_reason == "stop" and "5" not in g.text and "4" in g.text, g.text
    assert "".join(parts) == r.text == g.text and r.finish_reason == "stop"


@pytest.mark.slow
def test_llamacpp_streams_structured_output_validated_at_the_end(smollm):
    prompt = "Pick a colour and a number."

    async def go():
        parts, r = await _drain(smollm.stream(prompt, schema=SCHEMA, settings=GREEDY))
        g = await smollm.generate(prompt, schema=SCHEMA, settings=GREEDY)
        return parts, r, g

    parts, r, g = asyncio.run(go())
    assert len(parts) > 1 and "".join(parts) == r.text == g.text
    assert r.parsed == g.parsed == json.loads(r.text)

    # cut off by max_tokens: the stream cannot repair what it sent, it raises
    async def short():
        return await _drain(smollm.stream(prompt, schema=SCHEMA,
                                          settings=Settings(max_tokens=3)))

    with pytest.raises(StructuredOutputError):
        asyncio.run(short())


@pytest.mark.slow
def test_closing_a_stream_stops_the_engine(smollm):
    msgs = as_messages("Tell me a long story about a dragon and a knight.")
    max_tokens = 200

    async def go():
        s = smollm.stream(msgs, settings=Settings(max_tokens=max_tokens))
        got = []
        async for d in s:
            got.append(d)
            if len(got) == 3:
                break
        await s.aclose()
        for _ in range(600):  # the context goes back to the pool once the worker let go
            if smollm._free.qsize() == smollm.pool_size:
                break
            await asyncio.sleep(0.05)
        return got

    got = asyncio.run(go())
    assert len(got) == 3 and smollm._free.qsize() == smollm.pool_size
    llm = smollm._llamas[0]
    prompt_tokens = len(smollm._tokens(llm, smollm.prompt_text(msgs), max_tokens)[0])
    held = len(smollm._base.sessions[id(llm)].tokens)  # what the context evaluated
    assert prompt_tokens <= held < prompt_tokens + max_tokens // 2
    r = smollm.generate_sync(COLOURS, settings=GREEDY)  # and the model still answers
    assert r.text


# ---- wrappers ----------------------------------------------------------------------------------

class _Pieces(Model):
    """A fake that streams fixed pieces (unit tests of the windows)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.info = ModelInfo("fake", "pieces")

    async def generate(self, messages, *, schema=None, tools=None, settings=None) -> Response:
        return Response("".join(self.pieces), self.info, Usage(1, len(self.pieces)))

    async def _stream(self, messages, *, schema=None, tools=None, settings=None):
        for p in self.pieces:
            yield p
        yield await self.generate(messages)


def test_guarded_stream_redacts_pii_split_across_deltas_before_sending():
    m = Guarded(_Pieces(["Mail me at jo", "hn.doe@exa", "mple.com today. ", "Bye", " now."]),
                input=IN_POLICY, output=OUT_POLICY)
    parts, r = asyncio.run(_drain(m.stream("hi")))
    assert not any("john" in p or "@" in p for p in parts)
    assert "".join(parts) == r.text == m.generate_sync("hi").text
    assert len(parts) == 2 and "[EMAIL" in parts[0]


def test_toxicity_adds_up_over_the_windows():
    # each sentence alone scores under the threshold, the answer as a whole does not: the
    # second sentence is never sent
    def score(text: str) -> float:
        return 0.4 * text.count("meh")

    m = Guarded(_Pieces(["A meh answer. ", "Another meh one. ", "The end."]),
                input=IN_POLICY, output=GuardPolicy(pii="off", toxicity=0.7, injection=None),
                toxicity_fn=score)
    got: list[str] = []

    async def go():
        async for d in m.stream("hi"):
            got.append(d)

    with pytest.raises(GuardrailViolation):
        asyncio.run(go())
    assert got == ["A meh answer. "]


def test_a_wrapper_that_only_overrides_generate_is_never_bypassed():
    class Upper(WrapperModel):
        async def generate(self, messages, **kw):
            r = await self.wrapped.generate(messages, **kw)
            return Response(r.text.upper(), r.model)

    parts, r = asyncio.run(_drain(Upper(_Pieces(["a b ", "c"])).stream("x")))
    assert parts == ["A B C"] and r.text == "A B C"
    parts, r = asyncio.run(_drain(WrapperModel(_Pieces(["a b ", "c"])).stream("x")))
    assert parts == ["a b ", "c"]


@pytest.mark.slow
def test_guardrail_blocked_word_never_streamed(smollm):
    assert "blue" in smollm.generate_sync(COLOURS, settings=GREEDY).text.lower()  # precondition
    m = Guarded(smollm, input=IN_POLICY, output=OUT_POLICY, toxicity_fn=_blue)
    got: list[str] = []

    async def go():
        async for d in m.stream(COLOURS, settings=GREEDY):
            got.append(d)

    with pytest.raises(GuardrailViolation) as e:
        asyncio.run(go())
    assert e.value.stage == "output" and e.value.check == "toxicity"
    assert got and not any("blue" in p.lower() for p in got)


# ---- the gateway -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(smollm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-stream")
    cfg = GatewayConfig.model_validate({
        "call_log": f"sqlite:///{tmp / 'calls.db'}", "auth": {"enabled": False},
        "cache": {"enabled": False}, "guardrails": {"enabled": False}})
    models = {"slm": smollm,
              "guarded": Guarded(smollm, input=IN_POLICY, output=OUT_POLICY, toxicity_fn=_blue),
              "echo": FunctionModel(lambda msgs, spec: "echo: " + msgs[-1].content, name="echo")}
    with GatewayServer(Gateway(cfg, models=models)) as s:
        yield s


def _sse(s, body: dict, on_data=None) -> tuple[list[dict], list[float], httpx.Headers]:
    """POST a streamed request; the parsed events, their receive times and the headers."""
    events, times = [], []
    with httpx.stream("POST", f"{s.url}/chat/completions", json={**body, "stream": True},
                      timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            times.append(time.perf_counter())
            data = line[6:]
            events.append({"done": True} if data == "[DONE]" else json.loads(data))
            if on_data is not None:
                on_data(events[-1], r.headers)
        return events, times, r.headers


@pytest.mark.slow
def test_gateway_streams_tokens_as_they_are_decoded(gw, smollm):
    writer = gw.gateway.writer
    seen_before_logged = []

    def on_data(ev, headers):
        if ev.get("choices") and ev["choices"][0]["delta"].get("content"):
            # the call is logged when the generation has ended: a piece seen before that was
            # sent while the model was still decoding
            seen_before_logged.append(writer.submitted == start)

    start = writer.submitted
    events, times, headers = _sse(gw, {
        "model": "slm", "max_tokens": 48, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Count from one to twenty in words."}]},
        on_data)
    assert events[-1] == {"done": True}
    chunks = [e for e in events[:-1] if e.get("choices")]
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["slmflow"]["call_id"] == headers["x-slmflow-call-id"]
    content_idx = [i for i, e in enumerate(events) if e.get("choices")
                   and e["choices"][0]["delta"].get("content")]
    assert len(content_idx) >= 3
    assert len({times[i] for i in content_idx}) == len(content_idx)
    assert seen_before_logged[0], "the first piece came only after the whole answer"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = events[-2]["usage"]
    assert events[-2]["choices"] == [] and usage["completion_tokens"] > 0
    text = "".join(events[i]["choices"][0]["delta"]["content"] for i in content_idx)
    writer.flush()
    rec = gw.gateway.call_log.get(headers["x-slmflow-call-id"])
    assert rec.output == text and rec.status == "ok" and rec.meta["stream"] is True
    assert rec.output_tokens == usage["completion_tokens"] and rec.model == "smollm2-135m"
    g = smollm.generate_sync([{"role": "user", "content": "Count from one to twenty in words."}],
                             settings=Settings(max_tokens=48))
    assert text == g.text


@pytest.mark.slow
def test_gateway_stream_never_sends_a_blocked_word(gw):
    events, _, headers = _sse(gw, {"model": "guarded", "max_tokens": 24,
                                   "messages": [{"role": "user", "content": COLOURS}]})
    pieces = [e["choices"][0]["delta"].get("content") or "" for e in events
              if e.get("choices")]
    assert not any("blue" in p.lower() for p in pieces)
    finish = [e["choices"][0]["finish_reason"] for e in events if e.get("choices")]
    assert finish[-1] == "content_filter" and events[-1] == {"done": True}
    gw.gateway.writer.flush()
    rec = gw.gateway.call_log.get(headers["x-slmflow-call-id"])
    assert rec.status == "blocked" and "blue" not in (rec.output or "").lower()


@pytest.mark.slow
def test_gateway_client_disconnect_stops_generation_and_server_answers_next(gw):
    with httpx.stream("POST", f"{gw.url}/chat/completions", timeout=120, json={
            "model": "slm", "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a long story about a ship."}]}) \
            as r:
        call_id = r.headers["x-slmflow-call-id"]
        n = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                n += 1
            if n == 4:
                break
    rec = None
    for _ in range(600):
        gw.gateway.writer.flush()
        rec = gw.gateway.call_log.get(call_id)
        if rec is not None:
            break
        time.sleep(0.05)
    assert rec is not None and rec.status == "error"
    assert rec.error.startswith("ClientDisconnected") and rec.meta["streamed_chars"] > 0
    r = httpx.post(f"{gw.url}/chat/completions", timeout=120, json={
        "model": "slm", "max_tokens": 8, "messages": [{"role": "user", "content": COLOURS}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_gateway_stream_errors_before_the_first_piece_keep_their_status(gw):
    r = httpx.post(f"{gw.url}/chat/completions", timeout=60, json={
        "model": "nope", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    events, _, _ = _sse(gw, {"model": "echo", "stream_options": {"include_usage": True},
                             "messages": [{"role": "user", "content": "hi"}]})
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e.get("choices"))
    assert text == "echo: hi" and events[-2]["usage"]["total_tokens"] > 0


# ---- the OpenAI-compatible backend, against the gateway ------------------------------------------

@pytest.mark.slow
def test_openai_backend_streams_from_a_server(gw, smollm):
    from slmflow.models.openai import OpenAIModel

    remote = OpenAIModel("slm", base_url=gw.url, api_key="unused", max_retries=0)

    async def go():
        try:
            parts, r = await _drain(remote.stream(COLOURS, settings=GREEDY))
            jparts, jr = await _drain(remote.stream("Pick a colour and a number.",
                                                    schema=SCHEMA, settings=GREEDY))
        finally:
            await remote.aclose()
        return parts, r, jparts, jr

    parts, r, jparts, jr = asyncio.run(go())
    assert len(parts) > 1 and "".join(parts) == r.text
    assert r.text == smollm.generate_sync(COLOURS, settings=GREEDY).text
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    assert jr.parsed == json.loads("".join(jparts)) and set(jr.parsed) == {"colour", "n"}


# ---- tracing -----------------------------------------------------------------------------------

def test_traced_stream_keeps_its_span_open_until_the_end(tmp_path):
    from slmflow import tracing
    from slmflow.tracing.store import SpanStore

    class Spanning(_Pieces):
        async def _stream(self, messages, *, schema=None, tools=None, settings=None):
            for p in self.pieces:
                with tracing.span("step", p.strip()):  # the backend's own work: a child
                    pass
                yield p
            yield await self.generate(messages)

    tracing.configure(db_path=tmp_path / "spans.db", batch=False)
    try:
        async def go():
            ends = []
            with tracing.span("invoke_agent", "a"):
                async for d in tracing.Traced(Spanning(["one ", "two"])).stream("hi"):
                    with tracing.span("consumer", d.strip()):  # between deltas: not a child
                        pass
                    ends.append(time.time_ns())
            return ends

        ends = asyncio.run(go())
        spans = {s["name"]: s for s in SpanStore(tmp_path / "spans.db").trace("last")}
    finally:
        tracing.reset()
    chat = spans["chat pieces"]
    assert chat["end_ns"] >= ends[-1]  # ended after the last delta was handed over
    assert spans["step one"]["parent_id"] == spans["step two"]["parent_id"] == chat["span_id"]
    assert spans["consumer one"]["parent_id"] == spans["invoke_agent a"]["span_id"]
    assert chat["attributes"]["gen_ai.usage.output_tokens"] == 2


def test_a_stream_left_mid_way_gives_the_breaker_trial_back():
    from slmflow.gateway.wrappers import CircuitBreaker, Resilient

    br = CircuitBreaker(failures=1, reset_s=0.0)
    br.failure()  # open; with reset_s=0 the next call is the half-open trial
    m = Resilient(_Pieces(["a ", "b ", "c"]), breaker=br)

    async def leave():
        s = m.stream("x")
        async for _ in s:
            break
        await s.aclose()

    asyncio.run(leave())
    parts, r = asyncio.run(_drain(m.stream("x")))  # the next call may be the trial
    assert "".join(parts) == "a b c" and br.state == "closed"


def test_cached_stream_caches_a_complete_stream_only():
    from slmflow.gateway.wrappers import Cached

    m = Cached(_Pieces(["a ", "b ", "c"]))

    async def leave():
        s = m.stream("q1")
        async for _ in s:
            break
        await s.aclose()

    asyncio.run(leave())  # left mid-way: nothing cached
    parts, _ = asyncio.run(_drain(m.stream("q1")))
    assert parts == ["a ", "b ", "c"] and m.hits == 0 and m.misses == 2
    parts, r = asyncio.run(_drain(m.stream("q1")))  # now a hit: the whole text at once
    assert parts == ["a b c"] and r.text == "a b c" and m.hits == 1
