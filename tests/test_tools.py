"""@tool: schema from hints and docstring, argument validation, timeouts, typed errors."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import pytest

from slmflow import FunctionModel, ToolError
from slmflow.agents import Agent
from slmflow.errors import ConfigError
from slmflow.models.base import run_sync
from slmflow.tools import Tool, ToolResult, tool


@tool
def lookup_order(order_id: str, include_items: bool = False) -> dict:
    """Look up an order.

    Args:
        order_id: the order id, such as A-1042
        include_items: also list the items
    """
    if order_id == "boom":
        raise RuntimeError("database down")
    return {"order_id": order_id, "items": ["mug"] if include_items else []}


def test_schema_from_hints_and_docstring():
    assert isinstance(lookup_order, Tool)
    assert lookup_order.name == "lookup_order"
    assert lookup_order.description == "Look up an order."
    p = lookup_order.parameters
    assert p["required"] == ["order_id"]
    assert p["properties"]["order_id"] == {"type": "string",
                                           "description": "the order id, such as A-1042"}
    assert p["properties"]["include_items"]["type"] == "boolean"
    assert p["properties"]["include_items"]["default"] is False
    assert p["additionalProperties"] is False
    spec = lookup_order.spec
    assert spec.to_openai()["function"]["name"] == "lookup_order"
    # still a plain function
    assert lookup_order("A-1")["order_id"] == "A-1"


def test_decorator_with_options_and_literal():
    @tool(name="set_prio", timeout_s=1.5, description="Set a priority.")
    def f(level: Literal["low", "high"]) -> str:
        return level

    assert f.name == "set_prio" and f.timeout_s == 1.5 and f.description == "Set a priority."
    assert f.parameters["properties"]["level"]["enum"] == ["low", "high"]
    r = run_sync(f.invoke({"level": "medium"}))
    assert not r.ok and r.error_kind == "invalid_arguments"


def test_invalid_arguments_are_a_typed_result_and_tool_is_not_called():
    calls = []

    @tool
    def t(n: int) -> int:
        """Count."""
        calls.append(n)
        return n

    for bad in ({"n": "x"}, {}, {"n": 1, "extra": 2}):
        r = run_sync(t.invoke(bad))
        assert isinstance(r, ToolResult) and not r.ok
        assert isinstance(r.error, ToolError)
        assert r.error.details["kind"] == "invalid_arguments"
        assert r.error.details["tool"] == "t"
    assert calls == []
    assert run_sync(t.invoke({"n": "3"})).value == 3  # coerced by validation


def test_exception_becomes_typed_error_with_cause():
    r = run_sync(lookup_order.invoke({"order_id": "boom"}))
    assert not r.ok and r.error_kind == "exception"
    assert r.error.details["exception_type"] == "RuntimeError"
    assert "database down" in r.error.message
    assert isinstance(r.error.__cause__, RuntimeError)
    with pytest.raises(ToolError):
        r.unwrap()


def test_async_tool_timeout_is_cancelled():
    @tool(timeout_s=0.1)
    async def hang() -> str:
        """Never returns."""
        await asyncio.sleep(30)
        return "late"

    t0 = time.perf_counter()
    r = run_sync(hang.invoke({}))
    assert time.perf_counter() - t0 < 2
    assert r.error_kind == "timeout" and "timed out after 0.1s" in r.error.message


def test_sync_tool_timeout_returns_at_deadline():
    @tool(timeout_s=0.1)
    def slow() -> str:
        """Blocks."""
        time.sleep(1.0)
        return "late"

    t0 = time.perf_counter()
    r = run_sync(slow.invoke({}))
    assert time.perf_counter() - t0 < 0.9
    assert r.error_kind == "timeout"


def test_bad_tool_definitions_fail_at_decoration():
    with pytest.raises(ConfigError, match="no type hint"):
        @tool
        def f(x):  # noqa: ANN001
            return x
    with pytest.raises(ConfigError, match=r"\*args"):
        @tool
        def g(*args: int) -> int:
            return 0


def test_agent_picks_tool_under_schema_and_runs_it():
    seen = {}

    def fn(messages, spec):
        seen["schema"] = spec.json_schema
        return {"name": "lookup_order", "arguments": {"order_id": "A-7"}}

    agent = Agent("clerk", FunctionModel(fn), tools=(lookup_order,))
    res = agent.run_sync("where is A-7?")
    assert isinstance(res.output, ToolResult) and res.output.ok
    assert res.output.value["order_id"] == "A-7"
    # the model was constrained to the tool-call schema (name const + argument schema)
    assert seen["schema"]["properties"]["name"] == {"const": "lookup_order"}
    assert res.tool_results[0].tool == "lookup_order"


def test_agent_tool_error_comes_back_typed():
    agent = Agent("clerk", FunctionModel(
        lambda m, s: {"name": "lookup_order", "arguments": {"order_id": "boom"}}),
        tools=(lookup_order,))
    res = agent.run_sync("x")
    assert res.output.error_kind == "exception"
