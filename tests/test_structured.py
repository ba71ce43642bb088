"""Structured output: schema handling, tool-call schemas and the one repair step (no model)."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, field_validator

from slmflow import FunctionModel, ScriptedModel, SchemaError, StructuredOutputError, ToolSpec
from slmflow.structured import OutputSpec, tightened, tool_call_schema


class Ticket(BaseModel):
    order_id: str
    category: Literal["billing", "shipping"]


def test_pydantic_schema_validates_and_rejects():
    spec = OutputSpec.build(Ticket)
    parsed, calls, answer, errors = spec.parse('{"order_id": "A1", "category": "billing"}')
    assert errors == [] and parsed == Ticket(order_id="A1", category="billing")
    _, _, _, errors = spec.parse('{"order_id": "A1", "category": "food"}')
    assert errors and "category" in errors[0]
    _, _, _, errors = spec.parse('{"order_id": ')
    assert errors and "not valid JSON" in errors[0]


def test_dict_schema_and_invalid_schema_errors():
    spec = OutputSpec.build({"type": "object", "properties": {"n": {"type": "integer"}},
                             "required": ["n"]})
    assert spec.parse('{"n": 3}')[3] == []
    assert spec.parse('{"n": "x"}')[3]
    with pytest.raises(SchemaError) as e:
        OutputSpec.build({"type": "object", "properties": {"n": {"type": "integr"}}})
    assert "properties/n/type" in str(e.value)
    with pytest.raises(SchemaError):
        OutputSpec.build("{not json")
    with pytest.raises(SchemaError):
        OutputSpec.build(Ticket, tools=[ToolSpec("t", "d", {"type": "object"})])


def test_tool_call_schema_is_one_of_the_tools():
    tools = [ToolSpec("lookup_order", "Find an order", {
        "type": "object", "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"]}),
        ToolSpec("refund", "Refund", {"type": "object", "properties": {
            "amount": {"type": "number"}}, "required": ["amount"]})]
    spec = OutputSpec.build(tools=tools)
    parsed, calls, answer, errors = spec.parse(
        '{"name": "refund", "arguments": {"amount": 12.5}}')
    assert errors == [] and calls[0].name == "refund" and calls[0].arguments == {"amount": 12.5}
    assert spec.parse('{"name": "delete_db", "arguments": {}}')[3]
    assert spec.parse('{"name": "refund", "arguments": {"amount": "lots"}}')[3]
    auto = OutputSpec.build(tools=tools, tool_choice="auto")
    _, calls, answer, errors = auto.parse('{"name": "respond", "arguments": {"content": "hi"}}')
    assert errors == [] and calls == () and answer == "hi"
    with pytest.raises(SchemaError):
        tool_call_schema([tools[0], tools[0]])


def test_tightened_bounds_strings_and_arrays():
    s = tightened({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "array", "items": {"type": "string"}},
        "c": {"type": "string", "enum": ["x"]}}})
    assert s["properties"]["a"]["maxLength"] > 0
    assert s["properties"]["b"]["maxItems"] > 0 and s["properties"]["b"]["items"]["maxLength"]
    assert "maxLength" not in s["properties"]["c"]


def test_repair_step_recovers_once():
    def fn(messages, spec, repair=False):
        return {"order_id": "A1", "category": "billing"} if repair else '{"order_id": "A1"'

    r = FunctionModel(fn).generate_sync("x", schema=Ticket)
    assert r.repaired and r.parsed.order_id == "A1"


def test_repair_failure_raises_with_text_and_errors():
    m = ScriptedModel(['{"order_id": 1}', '{"order_id": "A", "category": "nope"}'])
    with pytest.raises(StructuredOutputError) as e:
        m.generate_sync("x", schema=Ticket)
    assert "category" in str(e.value) and e.value.text.startswith('{"order_id": "A"')
    assert m.remaining == 0


def test_pydantic_validators_beyond_the_schema_trigger_repair():
    class Positive(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def positive(cls, v):
            if v <= 0:
                raise ValueError("must be positive")
            return v

    m = ScriptedModel([json.dumps({"n": -1}), json.dumps({"n": 4})])
    r = m.generate_sync("x", schema=Positive)
    assert r.parsed.n == 4 and r.repaired


def test_scripted_model_runs_out_loudly():
    from slmflow import GenerationError

    m = ScriptedModel(["a"])
    assert m.generate_sync("x").text == "a"
    with pytest.raises(GenerationError):
        m.generate_sync("x")


def test_run_sync_inside_running_loop():
    import asyncio

    async def outer():
        return FunctionModel(lambda m, s: "ok").generate_sync("x").text

    assert asyncio.run(outer()) == "ok"


def test_token_bound_of_tightened_schema_is_finite():
    from slmflow.structured import _UNBOUNDED, attempt_budget, token_bound

    spec = OutputSpec.build(Ticket)
    assert token_bound(spec.json_schema) >= _UNBOUNDED  # order_id is an unbounded string
    t = spec.tightened()
    bound = token_bound(t.json_schema)
    assert 64 < bound < 200
    assert attempt_budget(t, 32, repair=True) >= bound
    assert attempt_budget(t, 32, repair=False) == 32
