"""`Guarded`: input and output guardrails as a `Model` wrapper.

Why a wrapper: a guardrail is the same whether the model behind it is the embedded SLM, a
fallback chain or a remote server, and it must sit in one place in the stack
(``Cached(Guarded(Fallback(slm, strong)))``: a cached answer was already checked when it was
made). Every check produces a `Decision` (stage, check, action, score); each is added as an event
to a ``guardrail {stage}`` span and collected for the caller (`collect_decisions`), so the gateway
can put them in the response, the call log and the metrics.

Streams (`Model.stream`): the output checks run on windows of the answer before they are sent
(`_Windows`), so a stream never sends text the output guardrail blocks; the decisions of the
whole answer are emitted at its end, as for `generate`.

Actions: ``pass``; ``redact`` (PII replaced by ``[KIND]`` and the call goes on); ``block`` (a
`GuardrailViolation` is raised, the model is not called for an input block).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Sequence

from .. import tracing
from ..errors import SlmflowError
from ..models.base import Model, WrapperModel
from ..types import Message, MessageLike, Response, Settings, ToolSpec, as_messages
from .detectors import (detect_pii, injection, lexicon_toxicity, redact_pii, regex_pii,
                        word_toxicity)
from .pii import PiiEngineError
from .toxicity_model import ToxicityEngineError

__all__ = ["GuardPolicy", "Decision", "GuardrailViolation", "Guarded", "collect_decisions",
           "check_text"]


class GuardrailViolation(SlmflowError):
    """A guardrail blocked the input or the output (``stage``, ``check``, ``score``)."""

    def __init__(self, message: str, *, stage: str, check: str, score: float | None = None,
                 decisions: list["Decision"] | None = None) -> None:
        super().__init__(message, where=f"guardrail {stage}/{check}", stage=stage, check=check,
                         score=score)
        self.stage, self.check, self.score = stage, check, score
        self.decisions = decisions or []


@dataclass(frozen=True)
class GuardPolicy:
    """What to check at one stage. Thresholds are block levels in [0, 1]; None turns a check off.
    pii: "off" | "redact" | "block". pii_kinds: the PII kinds looked for (None: the engine's
    default, `pii.DEFAULT_KINDS`). max_chars: total characters of the messages (input) or the
    answer (output)."""

    pii: Literal["off", "redact", "block"] = "redact"
    pii_kinds: tuple[str, ...] | None = None
    toxicity: float | None = 0.8
    injection: float | None = 0.8
    max_chars: int | None = 20_000


@dataclass(frozen=True)
class Decision:
    stage: str
    check: str
    action: str  # pass | redact | block
    score: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "check": self.check, "action": self.action,
                "score": self.score, "detail": self.detail}


_DECISIONS: contextvars.ContextVar[list[Decision] | None] = contextvars.ContextVar(
    "slmflow_guardrail_decisions", default=None)


@contextlib.contextmanager
def collect_decisions() -> Iterator[list[Decision]]:
    """Collect the decisions of every `Guarded` call made inside the block (same task)."""
    bucket: list[Decision] = []
    token = _DECISIONS.set(bucket)
    try:
        yield bucket
    finally:
        _DECISIONS.reset(token)


def check_text(text: str, policy: GuardPolicy, stage: str, *,
               toxicity_fn: Callable[[str], float] = word_toxicity,
               injection_fn: Callable[[str], float] = injection,
               check_injection: bool = True) -> tuple[str, list[Decision]]:
    """Run one stage's checks on ``text``: (possibly redacted text, decisions). Never raises;
    a decision with action "block" means the caller must refuse."""
    out: list[Decision] = []
    if policy.max_chars is not None:
        n = len(text)
        act = "block" if n > policy.max_chars else "pass"
        out.append(Decision(stage, "size", act, float(n),
                            f"{n} chars > {policy.max_chars}" if act == "block" else ""))
        if act == "block":
            return text, out
    if policy.injection is not None and check_injection:
        s = injection_fn(text)
        out.append(Decision(stage, "injection", "block" if s >= policy.injection else "pass", s))
    if policy.toxicity is not None:
        note = ""
        try:
            s = toxicity_fn(text)
        except ToxicityEngineError as e:  # the classifier failed: the lexicon still decides
            s, note = lexicon_toxicity(text), f"classifier error, lexicon used ({e.message[:120]})"
        out.append(Decision(stage, "toxicity", "block" if s >= policy.toxicity else "pass", s,
                            note))
    if policy.pii != "off":
        note = ""
        try:
            spans = detect_pii(text, policy.pii_kinds)
        except PiiEngineError as e:
            # the NER engine failed on this text: the checksum/regex set still runs, and the
            # decision says so (a guardrail that raises would take the request down with it)
            spans = regex_pii(text, policy.pii_kinds)
            note = f"; PII engine error, regex fallback used ({e.message[:120]})"
        kinds = sorted({sp.kind for sp in spans})
        if not spans:
            out.append(Decision(stage, "pii", "pass", 0.0, note.lstrip("; ")))
        elif policy.pii == "block":
            out.append(Decision(stage, "pii", "block", float(len(spans)),
                                ",".join(kinds) + note))
        else:
            text = redact_pii(text, spans=spans)
            out.append(Decision(stage, "pii", "redact", float(len(spans)),
                                ",".join(kinds) + note))
    return text, out


class Guarded(WrapperModel):
    """Checks the messages before the wrapped model sees them and the answer before the caller
    does; see the module doc. Only user and tool messages are checked for injection (the system
    prompt is the developer's own)."""

    def __init__(self, wrapped: Model, *, input: GuardPolicy | None = None,
                 output: GuardPolicy | None = None,
                 toxicity_fn: Callable[[str], float] = word_toxicity,
                 injection_fn: Callable[[str], float] = injection) -> None:
        super().__init__(wrapped)
        self.input_policy = input or GuardPolicy()
        self.output_policy = output or GuardPolicy(injection=None, max_chars=None)
        self.toxicity_fn = toxicity_fn
        self.injection_fn = injection_fn

    def _emit(self, stage: str, decisions: list[Decision]) -> None:
        bucket = _DECISIONS.get()
        if bucket is not None:
            bucket.extend(decisions)
        with tracing.span("guardrail", stage, attributes={
                "slmflow.guardrail.stage": stage,
                "slmflow.guardrail.action": _worst(decisions)}) as sp:
            for d in decisions:
                tracing.add_event(sp, "slmflow.guardrail", {
                    "slmflow.guardrail.check": d.check, "slmflow.guardrail.action": d.action,
                    "slmflow.guardrail.score": d.score, "slmflow.guardrail.detail": d.detail})

    def _raise_if_blocked(self, stage: str, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.action == "block":
                what = {"size": "is too large", "injection": "looks like a prompt injection",
                        "toxicity": "is toxic", "pii": "contains personal data"}.get(d.check,
                                                                                    "was blocked")
                raise GuardrailViolation(
                    f"the {stage} {what}" + (f" ({d.detail})" if d.detail else
                                             f" (score {d.score:.2f})" if d.score is not None
                                             else ""),
                    stage=stage, check=d.check, score=d.score, decisions=decisions)

    def check_input(self, messages: Sequence[MessageLike] | str) -> tuple[list[Message],
                                                                          list[Decision]]:
        msgs = as_messages(messages)
        pol = self.input_policy
        decisions: list[Decision] = []
        if pol.max_chars is not None:
            n = sum(len(m.content) for m in msgs)
            if n > pol.max_chars:
                decisions.append(Decision("input", "size", "block", float(n),
                                          f"{n} chars > {pol.max_chars}"))
                return msgs, decisions
        inner = replace(pol, max_chars=None)
        out: list[Message] = []
        for m in msgs:
            if m.role in ("user", "tool"):
                text, ds = check_text(m.content, inner, "input", toxicity_fn=self.toxicity_fn,
                                      injection_fn=self.injection_fn)
                decisions.extend(ds)
                out.append(replace(m, content=text) if text != m.content else m)
            else:
                out.append(m)
        return out, _merge(decisions)

    def check_output(self, r: Response, schema: Any = None) -> tuple[Response, list[Decision]]:
        text, decisions = check_text(r.text, self.output_policy, "output",
                                     toxicity_fn=self.toxicity_fn,
                                     injection_fn=self.injection_fn, check_injection=False)
        if text == r.text or any(d.action == "block" for d in decisions):
            return r, decisions
        parsed = r.parsed
        if parsed is not None:
            try:
                if schema is not None:
                    # the redacted answer must still follow the schema (an enum value with a
                    # name in it is no longer one of the enum's values)
                    from ..structured import OutputSpec

                    spec = OutputSpec.build(schema)
                    parsed, _, _, errors = spec.parse(text) if spec else (None, (), None, ["?"])
                    if errors:
                        raise ValueError(errors[0])
                else:
                    parsed = (type(parsed).model_validate_json(text)
                              if hasattr(parsed, "model_dump") else json.loads(text))
            except Exception:
                decisions = decisions + [Decision("output", "pii", "block", None,
                                                  "structured output cannot be redacted")]
                return r, decisions
        return replace(r, text=text, parsed=parsed), decisions

    async def generate(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                       tools: Sequence[ToolSpec] | None = None,
                       settings: Settings | None = None) -> Response:
        msgs, din = self.check_input(messages)
        self._emit("input", din)
        self._raise_if_blocked("input", din)
        r = await self.wrapped.generate(msgs, schema=schema, tools=tools, settings=settings)
        r, dout = self.check_output(r, schema=None if tools else schema)
        self._emit("output", dout)
        self._raise_if_blocked("output", dout)
        return r

    async def _stream(self, messages: Sequence[MessageLike] | str, *, schema: Any = None,
                      tools: Sequence[ToolSpec] | None = None,
                      settings: Settings | None = None) -> AsyncIterator[Any]:
        """The answer is held back in windows and each window is sent only once the whole text
        up to its end has passed the output checks (see `_Windows`); a structured answer is
        checked whole (a redacted JSON text must still parse), so it comes as one delta."""
        if schema is not None or tools:
            async for item in Model._stream(self, messages, schema=schema, tools=tools,
                                            settings=settings):
                yield item
            return
        msgs, din = self.check_input(messages)
        self._emit("input", din)
        self._raise_if_blocked("input", din)
        win = _Windows(self)
        async with self.wrapped.stream(msgs, settings=settings) as inner:
            async for delta in inner:
                piece = win.add(delta)
                if piece:
                    yield piece
        r = inner.response
        rest = win.finish(r.text)
        if rest:
            yield rest
        yield replace(r, text=win.sent)


_RANK = {"pass": 0, "redact": 1, "block": 2}


def _worst(decisions: list[Decision]) -> str:
    return max((d.action for d in decisions), key=lambda a: _RANK.get(a, 0), default="pass")


def _merge(decisions: list[Decision]) -> list[Decision]:
    """One decision per check (the worst action, the highest score) across messages."""
    by: dict[str, Decision] = {}
    for d in decisions:
        old = by.get(d.check)
        if old is None or (_RANK[d.action], d.score or 0) > (_RANK[old.action], old.score or 0):
            by[d.check] = d
    return list(by.values())


_SENTENCE_END = re.compile(r"[.!?;:](?=\s)\s|\n")


class _Windows:
    """The output guardrail of a stream.

    Text arrives in deltas and is held back; a window of it (up to the end of a sentence or a
    line, or, in a long run without one, up to a space `margin` characters before the newest
    text) is released only after the *whole* answer up to the window's end has passed the
    output checks: toxicity scores add up over the answer, so each window is checked with
    everything before it, and what has been sent is, taken as one text, always an answer the
    guardrail passes. A check that blocks raises `GuardrailViolation` and nothing of that window
    is sent. PII is redacted window by window; a redaction that would reach back into text
    already sent (a PII span across a window's end) blocks the stream. At the end the whole
    answer is checked once more (the decisions `generate` would make) and the rest is sent."""

    def __init__(self, guard: "Guarded", window: int = 32, margin: int = 64) -> None:
        self.guard, self.window, self.margin = guard, window, margin
        self.raw = ""
        self.released = 0
        self.sent = ""

    def _check(self, text: str) -> tuple[str, list[Decision]]:
        g = self.guard
        return check_text(text, g.output_policy, "output", toxicity_fn=g.toxicity_fn,
                          injection_fn=g.injection_fn, check_injection=False)

    def _release(self, upto: int, final: bool) -> str:
        text, decisions = self._check(self.raw[:upto])
        if not text.startswith(self.sent):
            decisions = decisions + [Decision("output", "pii", "block", None,
                                              "a redaction reached into text already streamed")]
        if final or any(d.action == "block" for d in decisions):
            self.guard._emit("output", decisions)
            self.guard._raise_if_blocked("output", decisions)
        piece, self.sent, self.released = text[len(self.sent):], text, upto
        return piece

    def add(self, delta: str) -> str:
        self.raw += delta
        pending = self.raw[self.released:]
        ends = [m.end() for m in _SENTENCE_END.finditer(pending)]
        if ends:
            return self._release(self.released + ends[-1], final=False)
        if len(pending) >= self.window + self.margin:
            cut = pending.rfind(" ", 0, len(pending) - self.margin)
            if cut > 0:
                return self._release(self.released + cut + 1, final=False)
        return ""

    def finish(self, text: str) -> str:
        """Check the whole answer (`text`, what the wrapped stream's response says); the rest."""
        if not text.startswith(self.raw[:self.released]):  # cannot happen: deltas add up
            text = self.raw
        self.raw = text
        return self._release(len(text), final=True)
