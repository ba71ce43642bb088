"""slmflow: build, fine-tune, evaluate, trace and improve multi-agent workflows of small models.

The curated public API. Heavy backends (llama.cpp, torch, transformers) load only when a model of
theirs is built, so ``import slmflow`` stays fast.
"""

from __future__ import annotations

from typing import Any

from .errors import (BackendUnavailableError, ConfigError, ContextLengthError, GenerationError,
                     HandoffError, ModelError, ModelLoadError, ModelNotFoundError, SchemaError,
                     ServerError, ServerResponseError, ServerUnreachableError, SlmflowError,
                     StructuredOutputError, ToolError)
from .models.base import Model, WrapperModel, run_sync
from .models.function import FunctionModel, ScriptedModel
from .types import Message, ModelInfo, Response, Settings, ToolCall, ToolSpec, Usage

__version__ = "0.1.0"

__all__ = [
    "Model", "WrapperModel", "FunctionModel", "ScriptedModel", "run_sync", "model",
    "LlamaCppModel", "TransformersModel", "OpenAIModel", "list_models",
    "Message", "ModelInfo", "Response", "Settings", "ToolCall", "ToolSpec", "Usage",
    "SlmflowError", "ConfigError", "SchemaError", "ModelError", "ModelNotFoundError",
    "ModelLoadError", "BackendUnavailableError", "ContextLengthError", "GenerationError",
    "ServerError", "ServerUnreachableError", "ServerResponseError", "StructuredOutputError",
    "ToolError", "HandoffError",
    "trace", "Traced",
    "Agent", "AgentResult", "tool", "Tool", "ToolResult",
    "Workflow", "Step", "Parallel", "Branch", "RunResult", "load_workflow",
]

_WORKFLOW_API = {"Agent": "agents", "AgentResult": "agents", "tool": "tools", "Tool": "tools",
                 "ToolResult": "tools", "Workflow": "workflow", "Step": "workflow",
                 "Parallel": "workflow", "Branch": "workflow", "RunResult": "workflow",
                 "load_workflow": "workflow"}


def model(name: str = "smollm2-135m", **kwargs: Any) -> Model:
    """A `Model` from a catalog name or spec (``gguf:``, ``hf:``, ``openai:<m>@<url>``)."""
    from .models.catalog import resolve

    return resolve(name, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _WORKFLOW_API:  # agents, tools, workflows: imported on first use
        import importlib

        return getattr(importlib.import_module(f".{_WORKFLOW_API[name]}", __name__), name)
    if name in ("LlamaCppModel", "TransformersModel", "OpenAIModel", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "trace":  # @slmflow.trace.agent / .tool / .chain
        from .tracing.decorators import trace

        return trace
    if name == "Traced":
        from .tracing.model import Traced

        return Traced
    if name in ("Index", "Passage", "Passages", "retrieval_tool", "retrieval_step",
                "RetrievalError"):  # retrieval: torch/usearch load on first use, not here
        from . import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module 'slmflow' has no attribute {name!r}")


# ---- evals (appended by the evals issue): lazy, so `import slmflow` stays light ----------------
_EVALS_API = ("run_suite", "SuiteReport", "compare", "GateResult", "Evaluator", "EvalResult",
              "run_scenarios")
__all__ += list(_EVALS_API)
_getattr_before_evals = __getattr__


def __getattr__(name: str) -> Any:  # noqa: F811
    if name in _EVALS_API:
        from . import evals

        return getattr(evals, name)
    return _getattr_before_evals(name)


# ---- gateway, guardrails, call-log store (issue 8/9): imported on first use ----------------------
_GATEWAY_API = {"Gateway": "gateway", "GatewayConfig": "gateway", "Guarded": "guardrails",
                "GuardPolicy": "guardrails", "GuardrailViolation": "guardrails",
                "detect_pii": "guardrails", "redact_pii": "guardrails",
                "toxicity": "guardrails", "injection": "guardrails",
                "open_call_log": "store", "CallRecord": "store", "CallLogging": "store",
                "record_agent_result": "store",
                "enable_logging": "store"}
__all__ += list(_GATEWAY_API)
_getattr_before_gateway = __getattr__


def __getattr__(name: str) -> Any:  # noqa: F811 - extends the lazy table above
    if name in _GATEWAY_API:
        import importlib

        return getattr(importlib.import_module(f".{_GATEWAY_API[name]}", __name__), name)
    return _getattr_before_gateway(name)


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
