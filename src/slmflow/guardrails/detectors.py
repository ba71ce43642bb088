"""Detectors: PII spans, a toxicity score and a prompt-injection score, all offline and fast.

The stable API (the eval suite imports it):

    detect_pii(text) -> list[Span]      redact_pii(text) -> str
    toxicity(text) -> float in [0, 1]   injection(text) -> float in [0, 1]

**PII**: `detect_pii` asks the process's PII engine (`pii`): Presidio with a spaCy NER pipeline
when installed (person names, and on request locations, organisations, dates, NRP), else the
regular-expression set below, which both engines share (Presidio runs it as a custom recognizer):
e-mail addresses, phone numbers (international ``+CC`` and North-American forms, at least 9
digits), payment-card numbers (13-19 digits, or 12 with a Maestro prefix, and a valid Luhn
checksum), IBANs (country code, length *and* mod-97 checksum), US social-security numbers
(area/group/serial rules), IPv4 and IPv6 addresses, secrets that look like API keys (``sk-...``,
``ghp_...``, ``AKIA...``) and street addresses (a house number, capitalised words and a USPS or
British street suffix). The regex set alone does *not* catch person names, dates of birth or
free-form IDs.

**Toxicity**: `toxicity` asks the process's toxicity engine (`toxicity_model`): a trained
classifier (alt-profanity-check) combined with this module's threat, hate and insult groups when
installed, else `lexicon_toxicity`, the lexicon alone. The lexicon: text is normalised against
common obfuscation (case, leetspeak ``@→a 0→o 1→i 3→e 4→a 5→s $→s``, repeated letters,
separators as in ``f.u.c.k``), then matched against weighted terms in four groups: insults aimed
at a person ("you idiot", "moron"), profanity, threats of violence ("I will kill you", "kys",
"watch your back") and dehumanising or hateful generalisations ("you people are animals", a group
"are" vermin/criminals/...). The score is ``1 - prod(1 - w)`` over matches, so one strong term
crosses 0.8 and mild profanity alone stays under 0.5. It catches explicit, lexical toxicity in
English; it misses sarcasm, implicit insults, new slang and other languages, and it can fire on
quoted or reclaimed use (figures: docs/evals.md).

**Prompt injection** is a weighted pattern scorer over the known attack phrasings: instructions to
ignore / forget / override earlier instructions, requests to reveal the system prompt, role
hijacks ("you are now DAN", "developer mode"), fake role or template delimiters (``</system>``,
``[INST]``, ``<|im_start|>``), and "do anything now" jailbreak vocabulary. Same combination rule.
It catches the common copy-paste attacks; a paraphrased or encoded attack gets through.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Callable

__all__ = ["Span", "detect_pii", "regex_pii", "redact_pii", "toxicity", "lexicon_toxicity",
           "injection", "PII_KINDS",
           "toxic_terms", "injection_matches"]


@dataclass(frozen=True, slots=True)
class Span:
    """One PII finding: ``text[start:end]`` is of ``kind`` (email, phone, credit_card, iban,
    ssn, ip_address, secret, address; with Presidio also person, location, organization,
    date_time, nrp)."""

    start: int
    end: int
    kind: str
    text: str


# ---- PII ------------------------------------------------------------------------------------------

def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        alt = not alt
    return total % 10 == 0


_IBAN_LEN = {"AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22,
             "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21,
             "HU": 28, "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
             "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24,
             "SI": 19, "SK": 24, "SM": 27, "TR": 26, "AE": 23, "SA": 24, "IL": 23, "BR": 29}


def _iban_ok(s: str) -> bool:
    s = re.sub(r"\s", "", s).upper()
    if _IBAN_LEN.get(s[:2]) not in (None, len(s)):
        return False
    if s[:2] not in _IBAN_LEN and not 15 <= len(s) <= 34:
        return False
    num = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(num) % 97 == 1


def _ssn_ok(s: str) -> bool:
    a, g, n = s[0:3], s[4:6], s[7:11]
    return a not in ("000", "666") and not a.startswith("9") and g != "00" and n != "0000"


def _ip_ok(s: str) -> bool:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    return not (ip.is_unspecified)


def _phone_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if re.fullmatch(r"\d{3}-\d{2}-\d{4}", s):  # SSN-shaped, valid or not: not a phone
        return False
    return 9 <= len(digits) <= 15 and len(set(digits)) > 2


# USPS Publication 28 street suffixes (full names and standard abbreviations) and British ones
_SUFFIX = "|".join(sorted(set("""alley aly anex arcade avenue ave bayou beach bend bluff bluffs
bottom boulevard blvd branch bridge brook brooks burg burgs bypass camp canyon cape causeway
center centers circle circles cir cliff cliffs club common commons corner corners course court
courts ct cove coves creek crescent crest crossing crossroad crossroads curve dale dam divide
drive drives dr estate estates expressway expy extension extensions fall falls ferry field
fields flat flats ford fords forest forge forges fork forks fort freeway fwy garden gardens
gateway glen glens green greens grove groves harbor harbors haven heights highway hwy hill hills
hollow inlet island islands isle junction junctions key keys knoll knolls lake lakes land
landing lane ln light lights loaf lock locks lodge loop mall manor manors meadow meadows mews
mill mills mission motorway mount mountain mountains neck orchard oval overpass park parks
parkway parkways pkwy pass passage path pike pine pines place pl plain plains plaza point
points port ports prairie radial ramp ranch rapid rapids rest ridge ridges river road roads rd
route row rue run shoal shoals shore shores skyway spring springs spur spurs square squares sq
station stravenue stream street streets st summit terrace ter throughway trace track
trafficway trail trl trailer tunnel turnpike underpass union unions valley valleys viaduct view
views village villages ville vista walk walks wall way ways well wells close grove gardens
""".split()), key=len, reverse=True))

# Maestro issues 12-digit card numbers too (IIN 50, 56-59, 63, 67); other 12-digit strings are
# too often order or phone numbers to be read as cards
_MAESTRO12 = ("50", "56", "57", "58", "59", "63", "67")


def _card_ok(s: str) -> bool:
    d = re.sub(r"\D", "", s)
    if len(d) == 12 and not d.startswith(_MAESTRO12):
        return False
    return _luhn(d) and len(set(d)) > 1


_PATTERNS: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}"
                         r"(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"), None),
    ("secret", re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{36}|"
                          r"AKIA[0-9A-Z]{16}|xox[abpr]-[A-Za-z0-9-]{10,})\b"), None),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _iban_ok),
    ("credit_card", re.compile(r"(?<![\d-])(?:\d[ -]?){11,18}\d(?![\d-])"), _card_ok),
    ("ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), _ssn_ok),
    ("ip_address", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}"
                              r"(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"), _ip_ok),
    ("ip_address", re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![:\w])|"
                              r"(?<![:\w])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}"
                              r"(?![:\w])"), _ip_ok),
    ("phone", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
                         r"\d{1,4}(?:[ .-]?\d{2,4}){2,5}(?!\w)"), _phone_ok),
    # a house number, one to four capitalised words, a street suffix (USPS Publication 28 names
    # and common British ones), then an optional unit: "12 Baker Street", "4017 N Oak Ave Apt. 3"
    ("address", re.compile(
        r"\b\d{1,6}[A-Za-z]?,? (?:[NSEW]\.? )?(?:[A-Z][a-zA-Z'.-]+ ){1,4}(?i:" + _SUFFIX +
        r")\b\.?(?:,? (?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|#) ?[A-Za-z0-9-]{1,6}\b)?"),
     None),
]
PII_KINDS = tuple(dict.fromkeys(k for k, _, _ in _PATTERNS))


def regex_pii(text: str, kinds: tuple[str, ...] | None = None) -> list[Span]:
    """The regex engine: PII spans in ``text``, left to right, never overlapping (earlier kinds
    in the list win: an IBAN is not also reported as a phone number)."""
    if not text:
        return []
    found: list[Span] = []
    taken: list[tuple[int, int]] = []
    for kind, rx, ok in _PATTERNS:
        if kinds is not None and kind not in kinds:
            continue
        for m in rx.finditer(text):
            s, e = m.span()
            frag = m.group(0)
            if ok is not None and not ok(frag):
                continue
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            found.append(Span(s, e, kind, frag))
    found.sort(key=lambda sp: sp.start)
    return found


def detect_pii(text: str, kinds: tuple[str, ...] | None = None) -> list[Span]:
    """PII spans in ``text``, left to right, never overlapping, from the process's PII engine
    (`slmflow.guardrails.pii`: Presidio when installed, else the regex set). ``kinds`` defaults
    to `pii.DEFAULT_KINDS`. Raises `pii.PiiEngineError` when the engine fails on the text."""
    from .pii import pii_engine

    if not isinstance(text, str):
        raise TypeError(f"detect_pii needs a str, got {type(text).__name__}")
    if not text:
        return []
    return pii_engine().detect(text, kinds)


def redact_pii(text: str, kinds: tuple[str, ...] | None = None,
               spans: list[Span] | None = None) -> str:
    """``text`` with each PII span replaced by ``[KIND]`` (``[EMAIL]``, ``[PERSON]``, ...);
    ``spans``: already detected ones (saves a second pass). Redaction never fails: when the PII
    engine fails on the text, the regex set redacts it and a warning is logged (the gateway
    redacts its logs with this; `detect_pii` raises instead, so an evaluator is marked errored)."""
    if spans is None:
        from .pii import PiiEngineError

        try:
            spans = detect_pii(text, kinds)
        except PiiEngineError as e:
            logging.getLogger("slmflow.guardrails").warning(
                "PII engine failed, text redacted with the regex set: %s", e)
            from .pii import NER_KINDS

            spans = regex_pii(text, tuple(k for k in kinds if k not in NER_KINDS)
                              if kinds is not None else None)
    if not spans:
        return text
    out, last = [], 0
    for sp in spans:
        out.append(text[last:sp.start])
        out.append(f"[{sp.kind.upper()}]")
        last = sp.end
    out.append(text[last:])
    return "".join(out)


# ---- shared scoring -----------------------------------------------------------------------------

def _combine(weights: list[float]) -> float:
    p = 1.0
    for w in weights:
        p *= (1.0 - w)
    return round(1.0 - p, 4)


_LEET = str.maketrans({"@": "a", "4": "a", "0": "o", "1": "i", "!": "i", "3": "e", "5": "s",
                       "$": "s", "7": "t", "+": "t"})


def _normalise(text: str) -> str:
    t = text.lower()
    # f.u.c.k / f-u-c-k / f u c k: single letters split by separators, rejoined
    t = re.sub(r"(?<![\w.\-*])(?:[a-z@$0-9][.\-_*]){2,}[a-z@$0-9](?![\w.\-*])",
               lambda m: re.sub(r"[.\-_*]", "", m.group(0)), t)
    t = re.sub(r"(?<!\S)(?:[a-z] ){3,}[a-z](?!\S)", lambda m: m.group(0).replace(" ", ""), t)
    t = t.translate(_LEET)
    t = re.sub(r"(.)\1{2,}", r"\1\1", t)  # sooooo -> soo, fuuuuck -> fuuck
    t = re.sub(r"[^a-z' ]+", " ", t)
    return re.sub(r"\s+", " ", t).strip()


# ---- toxicity -------------------------------------------------------------------------------------

# (pattern over normalised text, weight, group)
_TOXIC: list[tuple[str, float, str]] = [
    # threats of violence
    (r"\b(i|we)('ll| will| am going to| gonna|'m going to) (kill|murder|hurt|stab|shoot|beat) "
     r"(you|u|him|her|them)\b", 0.95, "threat"),
    (r"\b(kill|hang|shoot) (yourself|urself)\b", 0.95, "threat"),
    (r"\bkys\b", 0.9, "threat"),
    (r"\b(go )?die in a (fire|hole|ditch)\b", 0.9, "threat"),
    (r"\byou (should|deserve to|ought to) (die|be killed|suffer)\b", 0.9, "threat"),
    (r"\b(i hope|hope) (you|u) (die|get cancer|suffer)\b", 0.9, "threat"),
    # insults aimed at a person
    (r"\b(you|u|ur|you're|youre|your) ?(are |r )?(an? |such an? |a total |a fucking |fucking )?"
     r"(idiot|moron|imbecile|retard|loser|scumbag|dumbass|jackass|piece of shit|piece of crap|"
     r"bitch|bastard|cunt|dickhead|asshole|arsehole|twat|prick|wanker|dumb ?fuck|clown|"
     r"pathetic|worthless|garbage|trash|stupid|ugly|disgusting)\b", 0.85, "insult"),
    (r"\b(shut (the fuck )?up|stfu|screw you|fuck (you|u|off)|f off|go to hell|eat shit)\b",
     0.85, "insult"),
    (r"\b(idiot|moron|imbecile|retard(ed)?|scumbag|dumbass|jackass|dickhead|asshole|arsehole|"
     r"cunt|twat|wanker|bastard|bitch)s?\b", 0.6, "insult"),
    (r"\b(stupid|useless|worthless|pathetic|incompetent) (company|bot|people|staff|service|"
     r"support)\b", 0.35, "insult"),
    (r"\b(i|we)('ll| will| am going to| gonna|'m going to| are going to|'re going to) "
     r"(\w+ ){0,3}(kill|murder|hurt|stab|shoot|beat|smash|break|burn|strangle|choke|punch|"
     r"slap|bash|destroy|cut)( \w+){0,5}? (you|u|ya|him|her|them|everyone|everybody|someone|"
     r"somebody|whoever|anyone|person|people|guy|one|your \w+|all of you)\b", 0.8, "threat"),
    (r"\b(watch your back|i know where you (live|work)|(i'm|i am) coming for you|"
     r"you('ll| will) (regret|be sorry|pay for)|(put|pump) a bullet in|"
     r"(should|ought to|deserve to) (be )?(shot|killed|hanged|hung|strangled|put down|burned|"
     r"die|suffer|bleed))\b", 0.85, "threat"),
    (r"\b(hope|wish) (you|u|your \w+( \w+)?) (die|dies|get hit|gets hit|rot|burn|suffer|"
     r"get cancer)\b", 0.9, "threat"),
    (r"\bburn (your|the|their) (\w+ ){0,2}(down|to the ground)\b", 0.85, "threat"),
    # dehumanising
    (r"\b(you|these|those|all) (people|guys|immigrants|foreigners)? ?(are|r) (animals|vermin|"
     r"subhuman|parasites|cockroaches|rats)\b", 0.9, "hate"),
    (r"\b(subhuman|untermensch|vermin)\b", 0.6, "hate"),
    # a group, then "are", then something no group is: the shape of a hateful generalisation
    (r"\b(all |those |these |most )?(immigrants|refugees|foreigners|migrants|muslims|jews|"
     r"christians|atheists|blacks|black people|whites|white people|gays|gay people|lesbians|"
     r"trans people|women|men|asians|mexicans|arabs|africans|disabled people|old people|"
     r"fat people|poor people)( like you)? (are|r) (all )?(\w+ ){0,2}(animals|vermin|parasites|"
     r"cockroaches|rats|subhuman|criminals|terrorists|thieves|filth|a disease|scum|savages|"
     r"freaks|pigs|disgusting|inferior|trash|garbage|a burden|liars|dirty|brainwashed|"
     r"mentally ill|ruining|too stupid)\b", 0.9, "hate"),
    (r"\b(your|their) kind\b|\b(barely|not even|not) human\b|\bgo back (to )?where "
     r"(you|they) came from\b|\b(don't|do not|doesn't) belong here\b", 0.8, "hate"),
    # profanity (mild on its own)
    (r"\b(fuck(ing|ed|er|s)?|motherfuck\w*|shit(ty|s)?|bullshit|crap|damn|piss(ed)?|"
     r"bloody hell|wtf)\b", 0.3, "profanity"),
]
_TOXIC_RX = [(re.compile(p), w, g) for p, w, g in _TOXIC]


def toxic_terms(text: str) -> list[tuple[str, float, str]]:
    """The lexicon matches behind `toxicity`: (matched text, weight, group)."""
    t = _normalise(text)
    return [(m.group(0), w, g) for rx, w, g in _TOXIC_RX for m in rx.finditer(t)]


def toxicity(text: str, *, meaning: bool = True) -> float:
    """A toxicity score in [0, 1] from the process's toxicity engine (`guardrails.toxicity`:
    the classifier + the lexicon's threat/hate/insult groups + the meaning model when
    alt-profanity-check is installed, else `lexicon_toxicity`). ``meaning=False`` scores words
    only (`word_toxicity`)."""
    from .toxicity_model import toxicity_engine

    if not isinstance(text, str):
        raise TypeError(f"toxicity needs a str, got {type(text).__name__}")
    if not text.strip():
        return 0.0
    eng = toxicity_engine()
    if not meaning and hasattr(eng, "word_score"):
        return float(eng.word_score(text))
    return float(eng.score(text))


def word_toxicity(text: str) -> float:
    """`toxicity` without the meaning model: what the gateway's guard blocks on by default. A
    guard refuses the request, so a false alarm loses a user's call, while an evaluator's false
    flag costs one look in the review queue; the meaning model, trained on 380 texts, raised
    false alarms on everyday prompts it had not seen (docs/evals.md), so it only flags.
    ``Guarded(toxicity_fn=toxicity)`` puts it in front of a model too."""
    return toxicity(text, meaning=False)


def lexicon_toxicity(text: str) -> float:
    """A toxicity score in [0, 1] from the lexicon alone (see the module doc)."""
    if not text:
        return 0.0
    matches = toxic_terms(text)
    # one weight per pattern: ten "damn"s are not a threat
    best: dict[str, float] = {}
    for frag, w, g in matches:
        best[f"{g}:{w}"] = max(best.get(f"{g}:{w}", 0.0), w)
    return _combine(list(best.values()))


# ---- prompt injection ------------------------------------------------------------------------------

_INJ: list[tuple[str, float]] = [
    (r"\b(ignore|disregard|forget|override|bypass)\s+(all\s+|any\s+|the\s+|your\s+|of\s+|"
     r"my\s+|these\s+|those\s+)*(previous|prior|above|earlier|preceding|original|initial|"
     r"system|safety|existing)?\s*(instructions?|prompts?|rules|directions|guidelines|"
     r"constraints|directives)\b", 0.9),
    (r"\b(ignore|disregard|forget)\s+(everything|all|anything)\s+(above|before|previously|"
     r"you were told|you have been told|i said before)\b", 0.85),
    (r"\b(reveal|show|print|repeat|output|tell me|display|leak|dump)\b[\w\s,']{0,30}"
     r"\b(system prompt|system message|initial prompt|hidden prompt|your instructions|"
     r"original instructions|prompt above|instructions above)\b", 0.85),
    (r"\bwhat (is|are|were) your (system prompt|instructions|initial instructions|rules)\b", 0.6),
    (r"\b(you are now|from now on,? you are|from now on,? you will|act as|pretend (to be|you are)|"
     r"roleplay as)\b[\w\s,']{0,40}\b(dan|jailbr\w*|unfiltered|uncensored|evil|without "
     r"(any )?(restrictions|rules|limits|filters)|no (restrictions|rules|limits|filters))\b", 0.9),
    (r"\b(do anything now|developer mode|dev mode enabled|jailbreak|jailbroken|god mode)\b", 0.8),
    (r"\bnew (instructions|rules|system prompt)\s*:", 0.7),
    (r"(</?\s*(system|assistant|instructions?)\s*>|\[/?inst\]|<\|im_(start|end)\|>|"
     r"<\|(system|endoftext|eot_id|start_header_id)\|>|^\s*#{2,}\s*(system|instruction))", 0.75),
    (r"\b(without|ignoring) (any |your )?(safety|content|ethical) (guidelines|filters|policies|"
     r"restrictions)\b", 0.7),
    (r"\b(override|disable|turn off)\b[\w\s]{0,20}\b(safety|guardrails?|filters?|moderation)\b",
     0.75),
]
_INJ_RX = [(re.compile(p, re.IGNORECASE | re.MULTILINE), w) for p, w in _INJ]


def injection_matches(text: str) -> list[tuple[str, float]]:
    return [(m.group(0), w) for rx, w in _INJ_RX for m in rx.finditer(text or "")]


def injection(text: str) -> float:
    """A prompt-injection score in [0, 1] (see the module doc for what it catches)."""
    if not text:
        return 0.0
    best: dict[float, float] = {}
    for _, w in injection_matches(text[:20_000]):
        best[w] = w
    return _combine(list(best.values()))
