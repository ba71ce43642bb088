"""`EngineChoice`: one process-wide engine, chosen once, with a fallback; what PII detection
(`slmflow.guardrails.pii`) and toxicity scoring (`slmflow.guardrails.toxicity_model`) share.

Why one helper: both guardrails have a better engine that may not load (Presidio with spaCy; the
alt-profanity-check classifier) and a fallback that always does (the regex set; the lexicon),
and both choose the same way. An environment variable names ``auto`` (the better engine, else the
fallback with a warning saying why), the better engine (its failure is an error) or the fallback.
The choice is made on first use, once per process under a lock; a caller may set its own engine
(an object, or a choice by name); `info` says which engine runs and why.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

from ..errors import ConfigError

__all__ = ["EngineChoice"]

log = logging.getLogger("slmflow.guardrails")


class EngineChoice:
    """The process's engine for one guardrail (see the module doc).

    env: the variable naming the choice. best / fallback: the two engines' names (what the
    variable may say besides ``auto``) and how to build each; ``build_best`` raises ``error``
    when it cannot load. fallback_reason: the start of the reason recorded when ``auto`` falls
    back (the error follows). warning: logged with the error on that fallback. on_chosen: called
    with the engine once it is chosen (under the lock)."""

    def __init__(self, env: str, *, where: str, best: tuple[str, Callable[[], Any]],
                 fallback: tuple[str, Callable[[], Any]], error: type[Exception],
                 fallback_reason: str, warning: str,
                 on_chosen: Callable[[Any], None] | None = None) -> None:
        self.env, self.where = env, where
        (self.best, self._build_best), (self.fallback, self._build_fallback) = best, fallback
        self.error = error
        self.fallback_reason, self.warning = fallback_reason, warning
        self.on_chosen = on_chosen
        self._lock = threading.Lock()
        self.engine: Any = None  # None: chosen from the environment on the next `get`
        self._info: dict[str, Any] = {}

    def set(self, engine: Any = None) -> None:
        """A name (``auto`` or either engine's), an engine object, or None (choose again from
        the environment on the next `get`)."""
        with self._lock:
            self.engine, self._info = None, {}
        if isinstance(engine, str):
            self.select(engine)
        elif engine is not None:
            with self._lock:
                self.engine = engine
                self._info = {"engine": getattr(engine, "name", type(engine).__name__),
                              "description": getattr(engine, "description", ""),
                              "reason": "set by the caller"}

    def select(self, choice: str) -> Any:
        """The engine for ``choice`` (built unless one is chosen already)."""
        choice = (choice or "auto").strip().lower()
        if choice not in ("auto", self.best, self.fallback):
            raise ConfigError(f"{self.env}={choice!r}: use auto, {self.best} or {self.fallback}",
                              where=self.where)
        with self._lock:
            if self.engine is not None:
                return self.engine
            reason = f"{self.env}={choice}"
            if choice == self.fallback:
                eng = self._build_fallback()
            else:
                try:
                    eng = self._build_best()
                except self.error as e:
                    if choice == self.best:
                        raise
                    eng = self._build_fallback()
                    reason = f"{self.fallback_reason}: {e}"
                    log.warning(self.warning, e)
            self.engine = eng
            self._info = {"engine": eng.name, "description": getattr(eng, "description", ""),
                          "reason": reason}
            if self.on_chosen is not None:
                self.on_chosen(eng)
            return eng

    def get(self) -> Any:
        """The engine, chosen from the environment on first use."""
        eng = self.engine
        return eng if eng is not None else self.select(os.environ.get(self.env, "auto"))

    def info(self) -> dict[str, Any]:
        """``{"engine", "description", "reason"}`` (chooses the engine if none is chosen yet).
        The description is read from the engine now: an engine that loads a part on first use
        (the toxicity classifier's meaning model) says what it is using by then."""
        eng = self.get()
        out = dict(self._info)
        out["description"] = getattr(eng, "description", out.get("description", ""))
        return out
