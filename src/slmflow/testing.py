"""Helpers for your own tests of slmflow agents and workflows: no real model calls, swapped models.

Why this module: a unit test of the code around a workflow (a web handler, a queue worker, a
routing rule) should not load weights or reach a server, and should fail loudly when it would;
and it should be able to give one step a scripted answer without rebuilding the workflow the
application already holds. The same two tools as pydantic-ai's ``ALLOW_MODEL_REQUESTS = False``
and ``Agent.override``:

* `block_model_requests()` makes every call of a real backend (llama.cpp, transformers, an
  OpenAI-compatible server) raise `ModelRequestBlockedError`, naming the model, for as long as
  it is open (process-wide, worker threads included); `allow_model_requests()` lifts it inside.
  Loading and constructing models is not blocked, only ``generate``; a `FunctionModel` or
  `ScriptedModel` is never blocked.
* `override(workflow, step=..., model=...)` makes one agent step (or, without ``step``, every
  agent step) of *that workflow object* run on another model for as long as it is open, then
  puts the original agents back. The agent's adapter is dropped for the override (an adapter
  belongs to the model it was trained on); ``fallback=`` replaces its fallback model too.

In a pytest ``conftest.py``::

    import pytest
    from slmflow.testing import block_model_requests

    @pytest.fixture(autouse=True)
    def no_real_models():
        with block_model_requests():
            yield

and in a test::

    from slmflow.testing import FunctionModel, override

    def test_refunds_go_to_billing():
        with override(app.workflow, step="router", model=FunctionModel(
                lambda msgs, spec: {"category": "billing"})):
            assert app.handle("refund please").team == "billing"

A blocked call inside a workflow run ends that run ``failed`` (the runner never raises for the
work itself) with the `ModelRequestBlockedError` on ``RunResult.error``; ``raise_for_status()``
re-raises it. It is a `SlmflowError` but not a `ModelError`, so an agent does not escalate on it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import ConfigError, SlmflowError
from .models.base import Model
from .models.function import FunctionModel, ScriptedModel

if TYPE_CHECKING:
    from .workflow.graph import Workflow

__all__ = ["block_model_requests", "allow_model_requests", "model_requests_blocked",
           "ModelRequestBlockedError", "override", "FunctionModel", "ScriptedModel"]


class ModelRequestBlockedError(SlmflowError):
    """A real model was called while `block_model_requests` was in force."""


# The real backends: the classes whose ``generate`` does inference or I/O. Their modules import no
# backend package at module level (llama_cpp, torch and httpx clients load on first use), so
# patching them costs nothing.
_BACKENDS = (("slmflow.models.llamacpp", "LlamaCppModel"),
             ("slmflow.models.transformers", "TransformersModel"),
             ("slmflow.models.openai", "OpenAIModel"))

_lock = threading.Lock()
_blocks = 0  # open block_model_requests() contexts
_allows = 0  # open allow_model_requests() contexts inside them
_originals: dict[type, Callable[..., Any]] = {}


def model_requests_blocked() -> bool:
    """True while real model calls raise (a block is open and no allow inside it)."""
    return _blocks > 0 and _allows == 0


def _guard(cls: type, original: Callable[..., Any]) -> Callable[..., Any]:
    async def generate(self: Model, messages: Any, **kwargs: Any) -> Any:
        if model_requests_blocked():
            info = getattr(self, "info", None)
            name = info.identity if info is not None else "?"
            raise ModelRequestBlockedError(
                f"real model call to {name!r} ({type(self).__name__}) while model requests are "
                "blocked (slmflow.testing.block_model_requests); give the step a FunctionModel "
                "with slmflow.testing.override(workflow, step=..., model=...), or run this part "
                "under slmflow.testing.allow_model_requests()", where=f"model {name}")
        return await original(self, messages, **kwargs)

    generate.__wrapped__ = original  # type: ignore[attr-defined]
    generate.__qualname__ = f"{cls.__name__}.generate"
    generate.__doc__ = original.__doc__
    return generate


def _install() -> None:
    import importlib

    for module, name in _BACKENDS:
        cls = getattr(importlib.import_module(module), name)
        if cls not in _originals:
            _originals[cls] = cls.__dict__["generate"]
            setattr(cls, "generate", _guard(cls, _originals[cls]))


def _uninstall() -> None:
    for cls, original in _originals.items():
        setattr(cls, "generate", original)
    _originals.clear()


@contextlib.contextmanager
def block_model_requests() -> Iterator[None]:
    """Real model calls raise `ModelRequestBlockedError` while this is open (nests; usable as a
    decorator of a sync test function)."""
    global _blocks
    with _lock:
        if _blocks == 0:
            _install()
        _blocks += 1
    try:
        yield
    finally:
        with _lock:
            _blocks -= 1
            if _blocks == 0:
                _uninstall()


@contextlib.contextmanager
def allow_model_requests() -> Iterator[None]:
    """Lift an open `block_model_requests` for a block (a slow test that means to load a model)."""
    global _allows
    with _lock:
        _allows += 1
    try:
        yield
    finally:
        with _lock:
            _allows -= 1


class _Unset:
    pass


_UNSET: Any = _Unset()


def _agent_steps(workflow: Workflow, step: str | None) -> list[str]:
    agents = workflow.agents  # step name -> its agent
    agent_steps = list(agents)
    if step is None:
        if not agent_steps:
            raise ConfigError(f"workflow {workflow.name!r} has no agent steps to override",
                              where="slmflow.testing.override")
        return agent_steps
    if step in agent_steps:
        return [step]
    by_agent = [name for name, agent in agents.items() if agent.name == step]
    if by_agent:
        return by_agent
    what = ("a function or tool step, not an agent step" if step in workflow.steps
            else "not a step or agent of it")
    raise ConfigError(f"cannot override {step!r} in workflow {workflow.name!r}: {what}; agent "
                      f"steps: {', '.join(agent_steps) or 'none'}", where="slmflow.testing.override")


@contextlib.contextmanager
def override(workflow: Workflow, step: str | None = None, *, model: Model | str,
             fallback: Model | str | None = _UNSET) -> Iterator[Workflow]:
    """Run ``step`` (a step name or its agent's name; None: every agent step) of ``workflow`` on
    ``model`` while the block is open, on the workflow object itself (code that holds it sees the
    override), then restore it. ``fallback``: also replace the agent's fallback model (None: no
    fallback). Yields the workflow. Nests: an inner override of another step adds to the outer."""
    from .workflow.graph import Workflow as _Workflow

    if not isinstance(workflow, _Workflow):
        raise ConfigError(f"override takes a Workflow, got {type(workflow).__name__} (for a bare "
                          "Agent use agent.with_model(model))", where="slmflow.testing.override")
    if not isinstance(model, (Model, str)):
        raise ConfigError(f"model must be a Model or a catalog name, got {type(model).__name__}",
                          where="slmflow.testing.override")
    swapped = workflow
    for name in _agent_steps(workflow, step):
        agent = workflow.agents[name].with_model(model)
        if fallback is not _UNSET:
            agent = agent.with_fallback(fallback)
        swapped = swapped.with_agent(name, agent)
    saved = dict(workflow.__dict__)
    workflow.__dict__.update(swapped.__dict__)
    try:
        yield workflow
    finally:
        workflow.__dict__.clear()
        workflow.__dict__.update(saved)
