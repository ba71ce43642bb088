"""Toxicity engines: a trained classifier plus the lexicon's threat and hate groups (default), or
the lexicon alone (fallback).

Why this combination: ``alt-profanity-check`` (MIT; a linear model over TF-IDF features, trained
on ~200k human-labelled comments, weights inside the wheel, pins scikit-learn 1.9.1) scores
offensive language far better than a word list: it knows thousands of insults and their
spellings. It is a *profanity* model, though: it scores "Fucking finally, my parcel is here!" as
offensive and "I'm going to find you and beat you senseless" as clean. So:

* the classifier reads the raw text and the lexicon's de-obfuscated form (``f.u.c.k``, ``1d10t``,
  ``fuuuck``) and keeps the higher probability;
* profanity that is aimed at no one is not toxicity: when the text names no target (no second
  person, no insult, threat or hate term of the lexicon), the classifier's probability is scaled
  by 0.45, so casual swearing stays under the 0.5 threshold however strong the words;
* the lexicon's threat, dehumanisation (hate) and person-directed insult groups are combined with
  it (``1 - (1 - p)(1 - w)``): threats of violence and "those people are vermin" score high even
  when they are polite in their words.

Which engine: ``SLMFLOW_TOXICITY_ENGINE`` = ``auto`` (default: the classifier when
``alt-profanity-check`` imports, else the lexicon, with a warning saying why), ``classifier``
(required: a `ToxicityEngineError` when it cannot load) or ``lexicon``. The model loads lazily,
once per process; `toxicity_engine_info` says which engine is in use. Figures: docs/evals.md
(hand-labelled sets in ``slmflow/evals/datasets/toxicity*.jsonl``; `slmflow eval calibrate`).
"""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlmflowError
from .engine_choice import EngineChoice

__all__ = ["ToxicityEngineError", "toxicity_engine", "toxicity_engine_info",
           "set_toxicity_engine", "classifier_toxicity"]

ENGINE_ENV = "SLMFLOW_TOXICITY_ENGINE"
MEANING_ENV = "SLMFLOW_TOXICITY_MEANING"
# The meaning model reads texts of at least this many words; shorter ones are words only: the
# embedding of "Say hi" says little, and the model called such texts toxic.
MIN_WORDS = 6
_TARGET = re.compile(r"\b(you|your|youre|you're|yours|yourself|yourselves|u|ur|ya|yall|y'all)\b")
_COMBINED_GROUPS = ("threat", "hate", "insult")
_UNLOADED = object()


class ToxicityEngineError(SlmflowError):
    """The toxicity classifier could not be loaded or failed on a text."""


class _Classifier:
    name = "classifier"
    _WORDS = ("alt-profanity-check (linear model, ~200k labelled comments) + the lexicon's "
              "threat/hate/insult groups, de-obfuscated")

    def __init__(self) -> None:
        try:
            from profanity_check import profanity_check as pc  # loads the joblib model
        except Exception as e:  # noqa: BLE001 - ImportError, or a scikit-learn mismatch
            raise ToxicityEngineError(
                f"alt-profanity-check could not be loaded ({type(e).__name__}: {e}); install "
                "slmflow[evals] (alt-profanity-check==1.9.1, scikit-learn==1.9.1)",
                where="guardrails.toxicity classifier") from None
        self._vec, self._model = pc.vectorizer, pc.model
        self._meaning: Any = _UNLOADED
        self._meaning_lock = threading.Lock()

    @property
    def meaning(self) -> "_Meaning | None":
        """The meaning model, loaded on the first score that needs it: the gateway's guard
        scores words only (`word_toxicity`) and so never loads torch and MiniLM."""
        if self._meaning is _UNLOADED:
            with self._meaning_lock:
                if self._meaning is _UNLOADED:
                    self._meaning = _Meaning.load()
        return self._meaning

    @property
    def description(self) -> str:
        if self._meaning is _UNLOADED or self._meaning is None:
            return self._WORDS
        return self._WORDS + " + a meaning model (MiniLM embedding, logistic regression)"

    def probs(self, texts: list[str]) -> list[float]:
        try:
            return [float(p[1]) for p in self._model.predict_proba(self._vec.transform(texts))]
        except Exception as e:  # noqa: BLE001
            raise ToxicityEngineError(f"the classifier failed: {type(e).__name__}: {e}",
                                      where="guardrails.toxicity classifier") from e

    def score(self, text: str) -> float:
        """The word-level score (`word_score`), raised to the meaning model's probability where
        that is higher (`_Meaning`: toxicity in neutral words), for texts of `MIN_WORDS` words
        or more."""
        words = self.word_score(text)
        if words >= 0.5 or len(text.split()) < MIN_WORDS or self.meaning is None:
            return words
        return max(words, self.meaning.prob(text))

    def word_score(self, text: str) -> float:
        """alt-profanity-check on the raw and de-obfuscated text, scaled down for swearing at no
        one, combined with the lexicon's threat/hate/insult groups."""
        from .detectors import _combine, _normalise, toxic_terms

        norm = _normalise(text)
        p = max(self.probs([text, norm]))
        terms = toxic_terms(text)
        if not _TARGET.search(norm) and not any(g in _COMBINED_GROUPS for _, _, g in terms):
            p *= 0.45  # swearing at no one: under the 0.5 threshold however strong
        best: dict[str, float] = {}
        for _, w, g in terms:
            if g in _COMBINED_GROUPS:
                best[f"{g}:{w}"] = w
        return _combine([p, *best.values()])


class _Meaning:
    """P(toxic) from what a text means: a logistic regression over all-MiniLM-L6-v2 sentence
    embeddings (toxicity_meaning.json, trained by evals/datasets/train_toxicity_meaning.py on the
    hand-labelled tuning set and benign BANKING77 messages). It catches what words do not:
    implicit insults ("Maybe get a grown-up to read my ticket"), hate in neutral words. Loaded by
    the classifier on first need; absent (None, with a warning) when the embedder cannot load or
    ``SLMFLOW_TOXICITY_MEANING=off``."""

    FILE = Path(__file__).with_name("toxicity_meaning.json")

    def __init__(self, coef: np.ndarray, intercept: float, embedder: Any) -> None:
        self.coef, self.intercept, self.embedder = coef, intercept, embedder

    @classmethod
    def load(cls) -> "_Meaning | None":
        import os
        import warnings

        if os.environ.get(MEANING_ENV, "").lower() in ("off", "0", "false", "no"):
            return None
        try:
            spec = json.loads(cls.FILE.read_text())
            coef = np.asarray(spec["coef"], dtype=np.float32)
            from ..retrieval.embedder import default_embedder

            # the process's MiniLM without its on-disk cache: texts scored for toxicity (gateway
            # traffic) leave no embeddings on disk
            emb = default_embedder()
            emb = getattr(emb, "inner", emb)
            emb.embed(["warm-up"])  # loads MiniLM now: a missing package shows here
        except Exception as e:  # noqa: BLE001 - any reason means: words only, and say so
            warnings.warn(f"toxicity scores words only, the meaning model is off "
                          f"({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
            return None
        return cls(coef, float(spec["intercept"]), emb)

    def prob(self, text: str) -> float:
        try:
            v = np.asarray(self.embedder.embed([text])[0], dtype=np.float32)
        except Exception as e:  # noqa: BLE001
            raise ToxicityEngineError(f"the meaning model failed: {type(e).__name__}: {e}",
                                      where="guardrails.toxicity meaning") from e
        z = float(v @ self.coef) + self.intercept
        return 1.0 / (1.0 + math.exp(-z))


class _Lexicon:
    name = "lexicon"
    description = "English lexicon after de-obfuscation (no classifier)"

    def score(self, text: str) -> float:
        from .detectors import lexicon_toxicity

        return lexicon_toxicity(text)


# the builders look the classes up when called (tests patch them)
_CHOICE = EngineChoice(ENGINE_ENV, where="guardrails.toxicity",
                       best=("classifier", lambda: _Classifier()),
                       fallback=("lexicon", lambda: _Lexicon()), error=ToxicityEngineError,
                       fallback_reason="classifier unavailable, lexicon fallback",
                       warning="toxicity uses the lexicon alone: %s")


def set_toxicity_engine(engine: Any = None) -> None:
    """``"classifier"`` / ``"lexicon"`` / ``"auto"``, an object with ``score(text)``, or None
    (lazy selection from ``SLMFLOW_TOXICITY_ENGINE`` on the next call)."""
    _CHOICE.set(engine)


def toxicity_engine() -> Any:
    """The process's toxicity engine, built on first use."""
    return _CHOICE.get()


def toxicity_engine_info() -> dict[str, Any]:
    """``{"engine": "classifier" | "lexicon", "description": ..., "reason": ...}``."""
    return _CHOICE.info()


def classifier_toxicity(text: str) -> float:
    """The combined classifier score, whatever the process's engine (raises
    `ToxicityEngineError` when alt-profanity-check is not installed)."""
    eng = _CHOICE.engine
    return eng.score(text) if isinstance(eng, _Classifier) else _Classifier().score(text)
