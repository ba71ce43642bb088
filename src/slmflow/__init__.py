"""slmflow: build, fine-tune, evaluate, trace and improve multi-agent workflows of small models.

The curated public API, in one table. Why a table and ``TYPE_CHECKING`` imports: heavy backends
(llama.cpp, torch, transformers, FastAPI, the call-log store) load only when a name of theirs is
first used, so ``import slmflow`` stays fast (tests/test_public_api.py holds it to that); but a
module ``__getattr__`` alone is invisible to pyright and mypy, which then see every lazy name as
``Any``. So each lazy name is listed once in `_LAZY` (name -> the module that defines it), imported
from that same module under ``if TYPE_CHECKING:`` for type checkers, and resolved from the table at
run time by the one `__getattr__` below. ``__all__`` is a literal list (what type checkers read as
the exports); the tests check that the three agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (BackendUnavailableError, ConfigError, ContextLengthError, GenerationError,
                     HandoffError, ModelError, ModelLoadError, ModelNotFoundError, SchemaError,
                     ServerError, ServerResponseError, ServerUnreachableError, SlmflowError,
                     StorageError, StructuredOutputError, ToolError)
from .models.base import Model, WrapperModel, run_sync
from .models.function import FunctionModel, ScriptedModel
from .types import Message, ModelInfo, Response, Settings, ToolCall, ToolSpec, Usage

if TYPE_CHECKING:  # the same names and modules as `_LAZY` (a test compares them)
    from .agents import Agent, AgentResult
    from .evals.base import EvalResult, Evaluator
    from .evals.gate import GateResult, compare
    from .evals.scenarios import run_scenarios
    from .evals.suite import SuiteReport, run_suite
    from .gateway.app import Gateway
    from .gateway.config import GatewayConfig
    from .guardrails.detectors import detect_pii, injection, redact_pii, toxicity
    from .guardrails.guarded import GuardPolicy, Guarded, GuardrailViolation
    from .models.catalog import list_models
    from .models.llamacpp import LlamaCppModel
    from .models.openai import OpenAIModel
    from .models.transformers import TransformersModel
    from .retrieval.errors import RetrievalError
    from .retrieval.index import Index
    from .retrieval.tool import retrieval_step, retrieval_tool
    from .retrieval.types import Passage, Passages
    from .store.calllog import CallRecord, open_call_log
    from .store.writer import CallLogging, enable_logging, record_agent_result
    from .tools import Tool, ToolResult, tool
    from .tracing.decorators import trace
    from .tracing.model import Traced
    from .workflow.graph import Branch, Parallel, Step, Workflow
    from .workflow.result import RunResult
    from .workflow.spec import load_workflow

__version__ = "0.1.0"

# name -> the module (relative to this package) that defines it; imported on first use
_LAZY: dict[str, str] = {
    # backends: llama.cpp, torch/transformers, an OpenAI-compatible server
    "LlamaCppModel": ".models.llamacpp", "TransformersModel": ".models.transformers",
    "OpenAIModel": ".models.openai", "list_models": ".models.catalog",
    # tracing: @slmflow.trace.agent / .tool / .chain, and the tracing model wrapper
    "trace": ".tracing.decorators", "Traced": ".tracing.model",
    # agents, tools, workflows
    "Agent": ".agents", "AgentResult": ".agents",
    "tool": ".tools", "Tool": ".tools", "ToolResult": ".tools",
    "Workflow": ".workflow.graph", "Step": ".workflow.graph", "Parallel": ".workflow.graph",
    "Branch": ".workflow.graph", "RunResult": ".workflow.result",
    "load_workflow": ".workflow.spec",
    # retrieval: torch/usearch load on first use of an index, not here
    "Index": ".retrieval.index", "Passage": ".retrieval.types", "Passages": ".retrieval.types",
    "retrieval_tool": ".retrieval.tool", "retrieval_step": ".retrieval.tool",
    "RetrievalError": ".retrieval.errors",
    # evals
    "run_suite": ".evals.suite", "SuiteReport": ".evals.suite", "compare": ".evals.gate",
    "GateResult": ".evals.gate", "Evaluator": ".evals.base", "EvalResult": ".evals.base",
    "run_scenarios": ".evals.scenarios",
    # gateway (FastAPI), guardrails, the call-log store
    "Gateway": ".gateway.app", "GatewayConfig": ".gateway.config",
    "Guarded": ".guardrails.guarded", "GuardPolicy": ".guardrails.guarded",
    "GuardrailViolation": ".guardrails.guarded", "detect_pii": ".guardrails.detectors",
    "redact_pii": ".guardrails.detectors", "toxicity": ".guardrails.detectors",
    "injection": ".guardrails.detectors",
    "open_call_log": ".store.calllog", "CallRecord": ".store.calllog",
    "CallLogging": ".store.writer", "record_agent_result": ".store.writer",
    "enable_logging": ".store.writer",
}

__all__ = [
    # imported above
    "Model", "WrapperModel", "FunctionModel", "ScriptedModel", "run_sync", "model",
    "Message", "ModelInfo", "Response", "Settings", "ToolCall", "ToolSpec", "Usage",
    "SlmflowError", "ConfigError", "SchemaError", "ModelError", "ModelNotFoundError",
    "ModelLoadError", "BackendUnavailableError", "ContextLengthError", "GenerationError",
    "ServerError", "ServerUnreachableError", "ServerResponseError", "StructuredOutputError",
    "ToolError", "HandoffError", "StorageError",
    # lazy (`_LAZY`)
    "LlamaCppModel", "TransformersModel", "OpenAIModel", "list_models",
    "trace", "Traced",
    "Agent", "AgentResult", "tool", "Tool", "ToolResult",
    "Workflow", "Step", "Parallel", "Branch", "RunResult", "load_workflow",
    "Index", "Passage", "Passages", "retrieval_tool", "retrieval_step", "RetrievalError",
    "run_suite", "SuiteReport", "compare", "GateResult", "Evaluator", "EvalResult",
    "run_scenarios",
    "Gateway", "GatewayConfig", "Guarded", "GuardPolicy", "GuardrailViolation",
    "detect_pii", "redact_pii", "toxicity", "injection",
    "open_call_log", "CallRecord", "CallLogging", "record_agent_result", "enable_logging",
]


def model(name: str = "smollm2-135m", **kwargs: Any) -> Model:
    """A `Model` from a catalog name or spec (``gguf:``, ``hf:``, ``openai:<m>@<url>``)."""
    from .models.catalog import resolve

    return resolve(name, **kwargs)


def __getattr__(name: str) -> Any:
    """A lazy export: import its module on first use (then it is a plain module global)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slmflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ---- scale-out: one deployment file for every store (slmflow.scale.config, docs/deploy.md) -----
if __import__("os").environ.get("SLMFLOW_CONFIG"):
    from .scale.config import apply_config as _apply_config

    _apply_config()

# ---- the call log where the environment asks for it (a deployment file, SLMFLOW_CALLLOG=on);
# otherwise only the CLI, the gateway or `slmflow.enable_logging()` turn it on (slmflow.hooks) ---
if __import__("os").environ.get("SLMFLOW_CONFIG") or __import__("os").environ.get(
        "SLMFLOW_CALLLOG", "").strip().lower() in ("on", "1", "true", "yes"):
    from .store.writer import enable_logging as _enable_logging

    _enable_logging()
