"""Agent: typed run, AgentResult fields, escalation (invalid output, low confidence), swapping."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from slmflow import FunctionModel, ScriptedModel
from slmflow.agents import Agent, AgentResult, render_value, set_adapter_resolver
from slmflow.errors import ConfigError, HandoffError, StructuredOutputError
from slmflow.models.base import WrapperModel
from slmflow.types import ModelInfo


class Ticket(BaseModel):
    text: str


class Route(BaseModel):
    category: Literal["refund", "other"]


def test_run_returns_typed_output_and_full_result():
    model = FunctionModel(lambda m, s: {"category": "refund"}, name="fake", confidence=0.9)
    a = Agent("router", model, instructions="Classify.", prompt="Ticket: {text}",
              input_type=Ticket, output_type=Route)
    r = a.run_sync({"text": "broken mug"})
    assert isinstance(r, AgentResult)
    assert r.output == Route(category="refund")
    assert r.confidence == 0.9 and not r.escalated and r.escalation_reason is None
    assert r.model.identity == "fake" and r.adapter is None
    assert r.usage.total_tokens > 0 and r.latency_s >= 0
    assert len(r.attempts) == 1 and r.attempts[0].ok
    msgs = model.calls[0]
    assert msgs[0].role == "system" and msgs[0].content.startswith("Classify.")
    assert msgs[-1].content == "Ticket: broken mug"


def test_string_input_fills_single_required_field_and_bad_input_is_handoff_error():
    a = Agent("r", FunctionModel(lambda m, s: {"category": "other"}), input_type=Ticket,
              output_type=Route)
    assert a.run_sync("hi").output.category == "other"
    with pytest.raises(HandoffError) as e:
        a.run_sync({"txt": "x"})
    assert "text" in e.value.message and e.value.where == "agent r input"


def test_invalid_output_repairs_then_escalates_to_fallback():
    primary = ScriptedModel(["not json", "still not json"], name="small")
    fallback = ScriptedModel([{"category": "refund"}], name="big")
    a = Agent("router", primary, output_type=Route, fallback=fallback)
    r = a.run_sync("x")
    assert r.output.category == "refund"
    assert r.escalated and r.escalation_reason.startswith("invalid_output")
    assert r.model.identity == "big"
    assert [(x.model, x.ok, x.role) for x in r.attempts] == [
        ("small", False, "primary"), ("big", True, "fallback")]


def test_invalid_output_without_fallback_raises_typed_error():
    a = Agent("router", ScriptedModel(["nope", "nope"]), output_type=Route)
    with pytest.raises(StructuredOutputError) as e:
        a.run_sync("x")
    assert e.value.details["attempts"][0]["ok"] is False


def test_low_confidence_escalates_and_is_recorded():
    primary = FunctionModel(lambda m, s: {"category": "other"}, name="small", confidence=0.2)
    fallback = FunctionModel(lambda m, s: {"category": "refund"}, name="big", confidence=0.95)
    a = Agent("router", primary, output_type=Route, fallback=fallback, confidence_threshold=0.5)
    r = a.run_sync("x")
    assert r.escalated and "low_confidence: 0.200 < 0.500" in r.escalation_reason
    assert r.output.category == "refund" and r.confidence == 0.95 and not r.low_confidence
    assert r.usage.total_tokens == sum(x.usage.total_tokens for x in r.attempts)


def test_low_confidence_without_fallback_is_flagged_not_hidden():
    a = Agent("router", FunctionModel(lambda m, s: {"category": "other"}, confidence=0.1),
              output_type=Route, confidence_threshold=0.5)
    r = a.run_sync("x")
    assert r.low_confidence and not r.escalated


def test_use_fallback_without_fallback_is_config_error():
    a = Agent("r", FunctionModel(lambda m, s: "x"))
    with pytest.raises(ConfigError, match="no fallback"):
        a.run_sync("x", use_fallback=True)


def test_swapping_model_touches_nothing_else():
    m1 = FunctionModel(lambda m, s: "one", name="m1")
    m2 = FunctionModel(lambda m, s: "two", name="m2")
    a = Agent("writer", m1, instructions="Write.", max_tokens=20)
    b = a.with_model(m2)
    assert a.model is m1 and b.model is m2
    assert b.instructions == a.instructions and b.max_tokens == 20
    assert a.run_sync("x").output == "one" and b.run_sync("x").output == "two"
    with pytest.raises(Exception):
        a.model = m2  # frozen


def test_unknown_adapter_is_an_error_then_a_resolver_applies_it():
    base = FunctionModel(lambda m, s: "base", name="base")
    a = Agent("w", base, adapter="support-v1")
    with pytest.raises(ConfigError, match="no promoted adapter"):
        a.run_sync("x")  # the default registry has no adapter of that name

    class Adapted(WrapperModel):
        def __init__(self, wrapped, adapter):
            super().__init__(wrapped)
            self._info = ModelInfo("function", wrapped.info.name, adapter)

        @property
        def info(self):
            return self._info

        async def generate(self, messages, **kw):
            from dataclasses import replace

            r = await self.wrapped.generate(messages, **kw)
            return replace(r, model=self._info)

    set_adapter_resolver(lambda m, name: Adapted(m, name))
    try:
        r = a.run_sync("x")
        assert r.model.identity == "base+support-v1" and r.adapter == "support-v1"
    finally:
        set_adapter_resolver(None)


def test_catalog_name_is_resolved_lazily_and_shared():
    from slmflow.agents import resolve_model

    a = Agent("x", "no-such-model")  # declaring does not load anything
    from slmflow.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        a.run_sync("hi")
    m = FunctionModel(lambda m, s: "x")
    assert resolve_model(m) is m


def test_bad_definitions():
    with pytest.raises(ConfigError, match="confidence_threshold"):
        Agent("a", FunctionModel(lambda m, s: ""), confidence_threshold=1.5)
    with pytest.raises(ConfigError, match="not fields of Ticket"):
        Agent("a", FunctionModel(lambda m, s: ""), input_type=Ticket, prompt="{nope}")
    with pytest.raises(ConfigError, match="output_type"):
        Agent("a", FunctionModel(lambda m, s: ""), output_type=dict)


def test_render_value_is_compact():
    assert render_value([{"id": "a", "text": "t"}, None]) == "- id: a; text: t\n- none"
    assert render_value(Route(category="refund")) == "category: refund"


class Pick(BaseModel):
    """An output type that narrows its own schema per input: the answer is one of the input's
    options (what the support reasoner does with its passages' sentences)."""

    choice: str

    @classmethod
    def constraint_for(cls, inp):
        return {"type": "object", "properties": {"choice": {"enum": inp.options}},
                "required": ["choice"], "additionalProperties": False}


class Options(BaseModel):
    options: list[str]


def test_an_output_type_narrows_decoding_per_input():
    """`constraint_for(input)` reaches the model as `Settings.constraint` (JSON text), one per
    call; the model is still told the type's own schema (the hint) and the answer is validated
    against the type."""
    import json

    from slmflow.models.base import Model, call_parts, sent_messages
    from slmflow.structured import generate_validated
    from slmflow.types import Response, Settings

    seen: list[tuple[str | None, str]] = []

    class Recorder(Model):
        info = ModelInfo("test", "recorder")

        async def generate(self, messages, *, schema=None, tools=None, settings=None):
            settings, spec, msgs = call_parts(messages, schema, tools, settings)
            sent = sent_messages(msgs, spec, settings)
            seen.append((settings.constraint, sent[0].content))
            if settings.constraint is None:
                answer = {"category": "refund"}
            else:
                answer = {"choice": json.loads(settings.constraint)["properties"]["choice"]
                          ["enum"][-1]}

            async def attempt(s, repair):
                return Response(text=json.dumps(answer), model=self.info)

            return await generate_validated(attempt, spec, where="recorder")

    a = Agent("p", Recorder(), input_type=Options, output_type=Pick)
    assert a.run_sync({"options": ["a", "b"]}).output.choice == "b"
    assert a.run_sync({"options": ["c"]}).output.choice == "c"
    assert [json.loads(c)["properties"]["choice"]["enum"] for c, _ in seen] == [["a", "b"], ["c"]]
    assert "enum" not in seen[0][1] and '"choice"' in seen[0][1]  # the hint: Pick's own schema
    # a type without the hook sends no constraint
    b = Agent("r", Recorder(), input_type=Ticket, output_type=Route)
    assert b.run_sync("x").output.category == "refund"
    assert seen[-1][0] is None


def test_a_constraint_that_is_not_an_object_schema_is_refused_by_name():
    from slmflow.errors import SchemaError

    class Bad(Pick):
        @classmethod
        def constraint_for(cls, inp):
            return ["not", "a", "schema"]

    a = Agent("p", FunctionModel(lambda m, s: {"choice": "a"}), input_type=Options,
              output_type=Bad)
    with pytest.raises(SchemaError) as e:
        a.run_sync({"options": ["a"]})
    assert "Bad.constraint_for" in str(e.value) and "agent p" in str(e.value)
