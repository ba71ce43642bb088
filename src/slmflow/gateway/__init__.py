"""The OpenAI-compatible gateway: models, agents and workflows behind one HTTP API, with API keys,
rate limits and token budgets, caching, guardrails, confidence-gated escalation, cost tracking
and a call log that loses no record. FastAPI and uvicorn load only when this package's app or
server is used (``import slmflow.gateway`` itself stays light)."""

from __future__ import annotations

from typing import Any

__all__ = ["Gateway", "create_app", "GatewayConfig", "load_config", "serve", "GatewayServer",
           "Cached", "Fallback", "Resilient", "CircuitBreaker"]

_LAZY = {"Gateway": ".app", "create_app": ".app", "GatewayConfig": ".config",
         "load_config": ".config", "serve": ".server", "GatewayServer": ".server",
         "Cached": ".wrappers", "Fallback": ".wrappers", "Resilient": ".wrappers",
         "CircuitBreaker": ".wrappers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
