"""The one escalation policy (models/fallback.py) and the resilience wrapper (models/resilient.py).

Unit tests on fakes: the policy's triggers, reasons and trace event, and that an agent and the
gateway's `Fallback` decide and word an escalation alike. The real-model proofs are elsewhere
(tests/test_support_example.py, tests/test_gateway_real.py).
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from slmflow import Agent
from slmflow.errors import (ConfigError, ContextLengthError, GenerationError,
                            StructuredOutputError)
from slmflow.models import FunctionModel, ScriptedModel
from slmflow.models.fallback import FALLBACK_ON, Fallback, FallbackPolicy
from slmflow.models.resilient import (BackendTimeoutError, CircuitBreaker, CircuitOpenError,
                                      Resilient)


def _run(coro):
    return asyncio.run(coro)


def _failing(exc):
    def fn(msgs, spec):
        raise exc
    return FunctionModel(fn, name="weak")


def test_low_confidence_escalates_with_the_pair_and_the_reason():
    weak = FunctionModel(lambda m, s: "maybe", name="weak", confidence=0.2)
    strong = FunctionModel(lambda m, s: "surely", name="strong", confidence=0.9)
    seen = []
    fb = Fallback(weak, strong, threshold=0.5,
                  on_escalation=lambda msgs, esc, ans: seen.append((msgs, esc, ans)))
    r = _run(fb.generate("question?"))
    assert r.text == "surely"
    (msgs, esc, ans), = seen
    assert msgs == "question?" and ans is r
    assert esc.kind == "low_confidence" and esc.reason == "low_confidence: 0.200 < 0.500"
    assert esc.weak is not None and esc.weak.text == "maybe" and esc.confidence == 0.2
    assert esc.source == "weak" and esc.target == "strong"  # model identities


def test_a_confident_answer_stands_and_the_fallback_is_not_called():
    weak = FunctionModel(lambda m, s: "yes", name="weak", confidence=0.8)
    strong = ScriptedModel([], name="strong")  # would fail loudly if called
    assert _run(Fallback(weak, strong, threshold=0.5).generate("q")).text == "yes"


def test_errors_escalate_by_kind_and_context_length_only_when_asked():
    strong = FunctionModel(lambda m, s: "ok", name="strong")
    r = _run(Fallback(_failing(GenerationError("boom")), strong).generate("q"))
    assert r.text == "ok"
    # the gateway's default: a prompt over the window is the client's error (HTTP 400)
    with pytest.raises(ContextLengthError):
        _run(Fallback(_failing(ContextLengthError("too long")), strong).generate("q"))
    seen = []
    fb = Fallback(_failing(ContextLengthError("too long")), strong, fallback_on=FALLBACK_ON,
                  on_escalation=lambda m, esc, a: seen.append(esc))
    assert _run(fb.generate("q")).text == "ok"
    assert seen[0].kind == "context_length" and seen[0].reason == "model_error: too long"
    # not listed in fallback_on: raised as it is
    with pytest.raises(GenerationError):
        _run(Fallback(_failing(GenerationError("boom")), strong,
                      fallback_on={"low_confidence"}).generate("q"))


def test_a_failing_fallback_is_raised_not_retried():
    with pytest.raises(GenerationError, match="strong down"):
        _run(Fallback(_failing(StructuredOutputError("bad json")),
                      _failing(GenerationError("strong down"))).generate("q"))


def test_unknown_trigger_is_a_config_error():
    with pytest.raises(ConfigError, match="fallback_on: unknown"):
        FallbackPolicy(0.5, frozenset({"low_confidance"}))


class Out(BaseModel):
    answer: str


def test_agent_and_gateway_word_the_same_escalation_alike():
    """One policy: the agent's recorded reason equals the gateway wrapper's for the same case."""
    weak = FunctionModel(lambda m, s: {"answer": "maybe"}, name="weak", confidence=0.3)
    strong = FunctionModel(lambda m, s: {"answer": "surely"}, name="strong", confidence=0.95)
    agent = Agent("a", weak, output_type=Out, fallback=strong, confidence_threshold=0.6)
    res = agent.run_sync("q")
    assert res.escalated and res.output.answer == "surely" and not res.low_confidence
    seen = []
    _run(Fallback(weak, strong, threshold=0.6,
                  on_escalation=lambda m, esc, a: seen.append(esc)).generate("q", schema=Out))
    assert res.escalation_reason == seen[0].reason == "low_confidence: 0.300 < 0.600"
    assert [a.role for a in res.attempts] == ["primary", "fallback"]


def test_agent_invalid_output_escalates_and_a_forced_one_skips_the_primary():
    bad = FunctionModel(lambda m, s: "not json", name="weak")
    strong = FunctionModel(lambda m, s: {"answer": "fine"}, name="strong")
    agent = Agent("a", bad, output_type=Out, fallback=strong)
    res = agent.run_sync("q")
    assert res.escalated and res.escalation_reason.startswith("invalid_output: ")
    forced = agent.run_sync("q", use_fallback=True, reason="verifier rejected")
    assert forced.escalation_reason == "verifier rejected"
    assert [a.role for a in forced.attempts] == ["fallback"]


def test_agent_without_fallback_raises_with_its_attempts():
    agent = Agent("a", FunctionModel(lambda m, s: "not json", name="weak"), output_type=Out)
    with pytest.raises(StructuredOutputError) as e:
        agent.run_sync("q")
    assert e.value.details["attempts"][0]["role"] == "primary"


# ---- Resilient: one refusal and one classification for calls and streams --------------------

def test_client_errors_do_not_open_the_breaker_backend_errors_do():
    br = CircuitBreaker(failures=2, reset_s=60.0)
    bad_out = Resilient(_failing(StructuredOutputError("bad")), breaker=br)
    for _ in range(3):
        with pytest.raises(StructuredOutputError):
            _run(bad_out.generate("q"))
    assert br.state == "closed"
    down = Resilient(_failing(GenerationError("down")), breaker=br)
    for _ in range(2):
        with pytest.raises(GenerationError):
            _run(down.generate("q"))
    assert br.state == "open"
    with pytest.raises(CircuitOpenError):
        _run(down.generate("q"))

    async def stream_once():
        async with down.stream("q") as s:
            async for _ in s:
                pass

    with pytest.raises(CircuitOpenError):  # a stream is refused the same way
        _run(stream_once())


def test_a_timeout_counts_as_a_failure_and_names_the_backend():
    slow = FunctionModel(lambda m, s: "late", name="slow", delay_s=0.5)
    br = CircuitBreaker(failures=1, reset_s=60.0)
    with pytest.raises(BackendTimeoutError, match="'slow' did not answer within 0.05 s"):
        _run(Resilient(slow, timeout_s=0.05, breaker=br).generate("q"))
    assert br.state == "open"
