"""Guardrails: offline detectors (PII, toxicity, prompt injection) and the `Guarded` wrapper.

The detector functions are a stable API (the eval suite imports them):
``detect_pii(text) -> list[Span]``, ``redact_pii(text) -> str``, ``toxicity(text) -> float``,
``injection(text) -> float``. See `detectors` for what each catches and what it misses, and
`pii` for the PII engines (Presidio + spaCy when installed, the regex set otherwise) and
`toxicity_model` for the toxicity engines (a classifier + lexicon groups, or the lexicon alone).
"""

from __future__ import annotations

from .detectors import (PII_KINDS, Span, detect_pii, injection, redact_pii, toxicity,
                        word_toxicity)
from .pii import (ALL_KINDS, DEFAULT_KINDS, PiiEngineError, pii_engine, pii_engine_info,
                  set_pii_engine)
from .toxicity_model import (ToxicityEngineError, set_toxicity_engine, toxicity_engine,
                             toxicity_engine_info)
from .guarded import (Decision, GuardPolicy, Guarded, GuardrailViolation, check_text,
                      collect_decisions)

__all__ = ["Span", "detect_pii", "redact_pii", "toxicity", "word_toxicity", "injection",
           "PII_KINDS",
           "Guarded", "GuardPolicy", "Decision", "GuardrailViolation", "check_text",
           "collect_decisions", "PiiEngineError", "pii_engine", "pii_engine_info",
           "set_pii_engine", "DEFAULT_KINDS", "ALL_KINDS", "ToxicityEngineError",
           "toxicity_engine", "toxicity_engine_info", "set_toxicity_engine"]
