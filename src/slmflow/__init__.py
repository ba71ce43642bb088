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
]


def model(name: str = "smollm2-135m", **kwargs: Any) -> Model:
    """A `Model` from a catalog name or spec (``gguf:``, ``hf:``, ``openai:<m>@<url>``)."""
    from .models.catalog import resolve

    return resolve(name, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("LlamaCppModel", "TransformersModel", "OpenAIModel", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'slmflow' has no attribute {name!r}")
