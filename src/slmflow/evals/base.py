"""The evaluator interface and its registry.

One small interface: an evaluator turns (case, output) into an `EvalResult` (score, label,
explanation). Everything else (concurrency, error rows, traces, reports, the gate) lives in the
suite runner, so a new evaluator is one class with one method, sync or async.

Corpus-level metrics that are not a mean of row scores (a confusion matrix, macro F1, per-field
precision/recall) come from the optional `Evaluator.aggregate`, which sees every scored row.

Why a registry of *factories*: ``slmflow eval list`` and YAML suites name evaluators by string
(``routing``, ``judge``), and some take arguments (a judge model, a rubric, a field name), so the
registry stores classes and `create(name, **kwargs)` builds one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError

__all__ = ["Case", "EvalResult", "Evaluator", "FunctionEvaluator", "register", "create",
           "list_evaluators", "get_evaluator_class", "evaluator"]


class Case(BaseModel):
    """One row of a suite: what goes in, what should come out, and what the answer may use."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    input: Any
    expected: Any = None
    context: Any = None  # passages / text an answer must be faithful to (str or list)
    metadata: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """What one evaluator says about one output.

    score: in [0, 1], higher is better (None: not applicable). label: a short verdict
    (``correct``, ``faithful``, the predicted class...). passed: defaults to ``score >= 0.5``.
    """

    score: float | None
    label: str | None = None
    explanation: str = ""
    passed: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.passed is not None:
            return self.passed
        return self.score is not None and self.score >= 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "label": self.label, "explanation": self.explanation,
                "passed": self.ok, **({"data": self.data} if self.data else {})}


class Evaluator:
    """Subclass and implement `evaluate` (sync or async).

    name: the registry name. kind: ``deterministic`` | ``judge`` (a model decides) | ``model``
    (a classifier). agreement: the measured agreement with human labels, as documented
    (bench/evals.py measures it; never an assumed figure); a card written by ``slmflow eval
    calibrate`` (`calibrate`) takes its place in `list_evaluators`. calibration_labels: the human
    labels that mean pass and fail for calibration (``pass``/``fail`` always work).
    """

    name: ClassVar[str] = "evaluator"
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "deterministic"
    agreement: ClassVar[str] = "exact by construction (a deterministic metric; unit-tested)"
    calibration_labels: tuple[tuple[str, ...], tuple[str, ...]] = (("pass",), ("fail",))

    def evaluate(self, case: Case, output: Any) -> EvalResult:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aevaluate(self, case: Case, output: Any) -> EvalResult:
        r = self.evaluate(case, output)
        if inspect.isawaitable(r):
            r = await r
        if not isinstance(r, EvalResult):
            raise TypeError(f"evaluator {self.name!r} returned {type(r).__name__}, "
                            "not an EvalResult")
        return r

    def aggregate(self, rows: list[tuple[Case, Any, EvalResult]]) -> dict[str, Any]:
        """Suite-level metrics from the scored rows. Default: the mean score, under the name.
        Return plain numbers under keys (they become `SuiteReport.scores`) and, optionally,
        extra structures under ``"details"``."""
        vals = [r.score for _, _, r in rows if r.score is not None]
        return {self.name: sum(vals) / len(vals)} if vals else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class FunctionEvaluator(Evaluator):
    """An evaluator from a function ``fn(case, output) -> EvalResult | float | bool``."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")  # type: ignore[misc]
        self.description = (inspect.getdoc(fn) or "").split("\n")[0]  # type: ignore[misc]

    async def aevaluate(self, case: Case, output: Any) -> EvalResult:
        r = self.fn(case, output)
        if inspect.isawaitable(r):
            r = await r
        if isinstance(r, EvalResult):
            return r
        if isinstance(r, bool):
            return EvalResult(1.0 if r else 0.0, "pass" if r else "fail")
        if isinstance(r, (int, float)):
            return EvalResult(float(r))
        raise TypeError(f"evaluator {self.name!r} returned {type(r).__name__}")


_REGISTRY: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator] | None = None, *, name: str | None = None) -> Any:
    """Register an `Evaluator` subclass (decorator). Names are unique."""

    def wrap(c: type[Evaluator]) -> type[Evaluator]:
        n = name or c.name
        if not (isinstance(c, type) and issubclass(c, Evaluator)):
            raise ConfigError(f"{c!r} is not an Evaluator subclass", where="evals.register")
        if n in _REGISTRY and _REGISTRY[n] is not c:
            raise ConfigError(f"an evaluator named {n!r} is already registered",
                              where="evals.register")
        _REGISTRY[n] = c
        return c

    return wrap(cls) if cls is not None else wrap


def evaluator(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Decorator: a plain function as an evaluator instance (not registered)."""
    if fn is None:
        return lambda f: FunctionEvaluator(f, name)
    return FunctionEvaluator(fn, name)


def _ensure_builtins() -> None:
    from . import builtin  # noqa: F401  (registers on import)


def get_evaluator_class(name: str) -> type[Evaluator]:
    _ensure_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown evaluator {name!r}; known: {', '.join(sorted(_REGISTRY))}",
                          where="evals")
    return _REGISTRY[name]


def create(spec: str | Evaluator | dict[str, Any], **kwargs: Any) -> Evaluator:
    """An evaluator from a registry name (``"routing"``), a dict ``{"name": ..., **kwargs}``
    or an instance (returned as is)."""
    if isinstance(spec, Evaluator):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        n = spec.pop("name", None) or spec.pop("evaluator", None)
        if not n:
            raise ConfigError(f"an evaluator entry needs a name: {spec}", where="evals")
        return create(n, **{**spec, **kwargs})
    cls = get_evaluator_class(spec)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"evaluator {spec!r}: {e}", where="evals") from None


def list_evaluators() -> list[dict[str, Any]]:
    """Every registered evaluator: name, kind, description, agreement with human labels (the
    measurements on its card when ``slmflow eval calibrate`` wrote one, else the documented
    figure) and the card's measurements."""
    from .calibrate import agreement_line, read_cards

    _ensure_builtins()
    out = []
    for n, c in sorted(_REGISTRY.items()):
        ms = read_cards(n)
        out.append({"name": n, "kind": c.kind, "description": c.description,
                    "agreement": "; ".join(agreement_line(m) for m in ms) if ms
                    else c.agreement, "measurements": ms})
    return out
