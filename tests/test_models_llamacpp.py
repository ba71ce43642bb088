"""The llama.cpp backend on the real embedded SmolLM2-135M GGUF."""

from __future__ import annotations

import asyncio
import math
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from slmflow import (ContextLengthError, Message, ModelNotFoundError, SchemaError, Settings,
                     ToolSpec)
from slmflow.models.catalog import embedded_gguf_path, resolve
from slmflow.models.llamacpp import LlamaCppModel

TICKETS = [
    "My order A-1042 arrived broken, I want my money back.",
    "I was charged twice this month on account 88231.",
    "Where is order B-77? It has not shipped after 10 days.",
    "How do I change the email on my account?",
    "The app crashes when I open settings.",
    "Please cancel order Z-9 before it ships, thanks.",
]


class Fields(BaseModel):
    category: Literal["refund", "billing", "shipping", "account", "technical", "other"]
    order_id: str | None = None
    urgent: bool
    summary: str = Field(description="one short sentence")


def test_embedded_model_is_found_without_download():
    p = embedded_gguf_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000


def test_text_generation_reports_usage_latency_confidence(smollm):
    r = smollm.generate_sync("What is the capital of France? Answer in one word.",
                             settings=Settings(max_tokens=16))
    assert "Paris" in r.text
    assert r.usage.input_tokens > 5 and 0 < r.usage.output_tokens <= 16
    assert r.latency_s > 0 and r.time_to_first_token_s is not None
    assert r.model.provider == "llama.cpp" and r.model.name == "smollm2-135m"
    assert r.confidence is not None and 0 < r.confidence <= 1
    assert r.confidence == pytest.approx(math.exp(sum(r.token_logprobs) / len(r.token_logprobs)))
    assert r.finish_reason == "stop"


def test_max_tokens_gives_length_finish(smollm):
    r = smollm.generate_sync("Write a long story about a dragon.", settings=Settings(max_tokens=5))
    assert r.usage.output_tokens == 5 and r.finish_reason == "length"


def test_stop_strings(smollm):
    r = smollm.generate_sync("Count from 1 to 10 separated by commas.",
                             settings=Settings(max_tokens=40, stop=("5",)))
    assert "5" not in r.text and r.finish_reason == "stop"


def test_stop_strings_cut_the_same_on_the_legacy_engine(smollm):
    """The legacy engine's loop cuts at a stop string as the default engine does."""
    prompt = "Count from 1 to 10 separated by commas."
    s = Settings(max_tokens=40, temperature=0.0, stop=("6", "\n5."))
    legacy = resolve("smollm2-135m", engine="legacy").load()
    try:
        r = legacy.generate_sync(prompt, settings=s)
    finally:
        asyncio.run(legacy.aclose())
    assert r.finish_reason == "stop" and "5" not in r.text and "4" in r.text, r.text
    assert r.text == smollm.generate_sync(prompt, settings=s).text


def test_schema_constrained_output_always_validates(smollm):
    """Every answer of the 135M model validates against the pydantic model."""
    sys = Message("system", "Extract fields from the support ticket.")
    for t in TICKETS:
        r = smollm.generate_sync([sys, Message("user", t)], schema=Fields,
                                 settings=Settings(max_tokens=96))
        assert isinstance(r.parsed, Fields), r.text
        assert Fields.model_validate_json(r.text if not r.repaired else r.text) == r.parsed


def test_tool_call_is_constrained_to_declared_tools(smollm):
    tools = [
        ToolSpec("lookup_order", "Look up an order by its id.", {
            "type": "object", "properties": {"order_id": {"type": "string", "maxLength": 20}},
            "required": ["order_id"], "additionalProperties": False}),
        ToolSpec("reset_password", "Send a password reset email.", {
            "type": "object", "properties": {"email": {"type": "string", "maxLength": 60}},
            "required": ["email"], "additionalProperties": False}),
    ]
    r = smollm.generate_sync("Where is my order A-1042?", tools=tools,
                             settings=Settings(max_tokens=64))
    assert len(r.tool_calls) == 1
    call = r.tool_calls[0]
    assert call.name in {"lookup_order", "reset_password"}
    assert set(call.arguments) == ({"order_id"} if call.name == "lookup_order" else {"email"})


def test_context_window_overflow_is_a_clear_error(smollm):
    with pytest.raises(ContextLengthError) as e:
        smollm.generate_sync("word " * 5000)
    assert "context window is 2048" in str(e.value)


def test_invalid_schema_is_rejected_before_generation(smollm):
    with pytest.raises(SchemaError):
        smollm.generate_sync("x", schema={"type": "object", "properties": {"a": {"type": 7}}})


def test_missing_gguf_and_lora_files(tmp_path):
    with pytest.raises(ModelNotFoundError):
        LlamaCppModel(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError):
        LlamaCppModel(embedded_gguf_path(), lora_path=tmp_path / "nope.gguf")


def test_corrupt_gguf_is_a_load_error(tmp_path):
    from slmflow import ModelLoadError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError):
        resolve(f"gguf:{bad}").generate_sync("hi")


def test_concurrent_requests_on_a_pool_all_answer():
    m = resolve("smollm2-135m", pool_size=2)

    async def main():
        return await asyncio.gather(*[
            m.generate(f"Say the number {i}.", settings=Settings(max_tokens=8)) for i in range(6)])

    rs = asyncio.run(main())
    assert len(rs) == 6 and all(r.usage.output_tokens > 0 for r in rs)
    # same prompt, same answer, whichever context served it (greedy decoding)
    again = m.generate_sync("Say the number 3.", settings=Settings(max_tokens=8))
    assert again.text == rs[3].text


def test_thread_defaults_read_the_environment_and_share_the_cores(monkeypatch):
    import os

    from slmflow import ConfigError
    from slmflow.models.llamacpp import default_threads, default_threads_batch

    monkeypatch.delenv("SLMFLOW_LLAMA_THREADS", raising=False)
    monkeypatch.delenv("SLMFLOW_LLAMA_THREADS_BATCH", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert (default_threads(), default_threads(3), default_threads(16)) == (8, 2, 1)
    assert default_threads_batch(2) == 4
    monkeypatch.setenv("SLMFLOW_LLAMA_THREADS", "3")
    assert default_threads(4) == 3 and default_threads_batch(4) == 3  # batch follows it
    monkeypatch.setenv("SLMFLOW_LLAMA_THREADS_BATCH", "0")
    assert default_threads_batch(4) == 1  # at least one
    monkeypatch.setenv("SLMFLOW_LLAMA_THREADS_BATCH", "many")
    with pytest.raises(ConfigError, match="SLMFLOW_LLAMA_THREADS_BATCH must be a number, "
                                          "got 'many'") as e:
        default_threads_batch()
    assert e.value.where == "SLMFLOW_LLAMA_THREADS_BATCH"
