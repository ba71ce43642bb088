"""Models: the one-method `Model` interface, its backends (imported lazily) and the catalog."""

from __future__ import annotations

from typing import Any

from .base import Model, ResponseStream, WrapperModel, run_sync
from .function import FunctionModel, ScriptedModel

__all__ = ["Model", "ResponseStream", "WrapperModel", "FunctionModel", "ScriptedModel", "run_sync",
           "resolve", "LlamaCppModel", "TransformersModel", "OpenAIModel", "list_models",
           "Fallback", "FallbackPolicy", "Cached", "Resilient", "CircuitBreaker"]

_LAZY = {
    "LlamaCppModel": ".llamacpp",
    "TransformersModel": ".transformers",
    "OpenAIModel": ".openai",
    "resolve": ".catalog",
    "list_models": ".catalog",
    # the wrappers that are themselves Models (the gateway stacks them; agents use the policy)
    "Fallback": ".fallback",
    "FallbackPolicy": ".fallback",
    "Cached": ".cached",
    "Resilient": ".resilient",
    "CircuitBreaker": ".resilient",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
