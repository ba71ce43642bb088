"""The values that cross the model boundary: messages in, a `Response` out.

Why plain frozen dataclasses and not pydantic models: these objects are built on every model call
(hot path) and never need validation of untrusted input (the OpenAI wire format is validated where
it enters, in the openai backend and the gateway). Frozen, so a wrapper (cache, fallback, tracing)
can hand the same object on without fear of it being changed underneath.

Confidence (`Response.confidence`) is defined once, here, for every backend:

    confidence = exp( mean_i log p(t_i | t_<i) )

the geometric mean of the probabilities the model gave to the tokens it produced, each taken from
the model's *raw* distribution (before sampling filters and before the decoding constraint masks
tokens out). It lies in (0, 1]; 1 means every token was the model's certain choice. Under a
schema constraint it says how much the model itself wanted the structured answer it was forced
into, which is what a confidence gate needs. `None` when the backend cannot see token
probabilities (a server that does not return logprobs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for: a tool name and its (already parsed) JSON arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            import json

            out["tool_calls"] = [
                {"id": c.id or f"call_{i}", "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for i, c in enumerate(self.tool_calls)
            ]
        return out


MessageLike = Message | Mapping[str, Any] | str


def as_messages(messages: Sequence[MessageLike] | str) -> list[Message]:
    """Accept a prompt string, dicts in the OpenAI shape, or `Message` objects."""
    if isinstance(messages, str):
        return [Message("user", messages)]
    out: list[Message] = []
    for m in messages:
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, str):
            out.append(Message("user", m))
        else:
            role = m.get("role")
            if role not in ("system", "user", "assistant", "tool"):
                from .errors import ConfigError

                raise ConfigError(f"message role must be system/user/assistant/tool, got {role!r}",
                                  where=f"messages[{len(out)}]")
            out.append(Message(role, str(m.get("content") or ""), name=m.get("name"),
                               tool_call_id=m.get("tool_call_id")))
    return out


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    # of input_tokens, how many came from a cached KV state instead of being evaluated
    # (llama.cpp's prefix cache; OpenAI's usage.prompt_tokens_details.cached_tokens)
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens,
                     self.cached_input_tokens + other.cached_input_tokens)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it: name, description and a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True, slots=True)
class Settings:
    """Per-call generation settings. `None` means "the backend's default"."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    tool_choice: Literal["auto", "required"] = "required"
    # Tell the model the schema in a system message (zero-shot models need it to know the field
    # names); an adapter fine-tuned on the bare prompt turns it off (the constraint stays).
    schema_hint: bool = True
    # A narrower JSON schema (JSON text) to decode with, where the backend constrains decoding:
    # the call's `schema` still validates the answer and is what the hint shows. An agent's
    # output type narrows it per input (`constraint_for`, agents.py): a reply made of the
    # retrieved passages' own sentences, a passage id from this call's passages. llama.cpp's
    # fast engine and transformers follow it; servers and engine="legacy" ignore it (the answer
    # is validated against `schema` either way).
    constraint: str | None = None
    # Whether tokens the constraint forces count in `Response.confidence` (their raw
    # probability; the default) or only the tokens the model chose do. False is the lever for
    # an output whose tail code writes (a quoted reply): llama.cpp's fast engine then does not
    # evaluate a forced tail at all. Other backends score what they are given.
    score_forced: bool = True

    def replace(self, **changes: Any) -> "Settings":
        from dataclasses import replace

        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What produced a response: the backend, the base model and the adapter (if any)."""

    provider: str
    name: str
    adapter: str | None = None

    @property
    def identity(self) -> str:
        return f"{self.name}+{self.adapter}" if self.adapter else self.name


@dataclass(frozen=True, slots=True)
class Response:
    text: str
    model: ModelInfo
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    finish_reason: str = "stop"
    parsed: Any = None
    tool_calls: tuple[ToolCall, ...] = ()
    confidence: float | None = None
    token_logprobs: tuple[float, ...] | None = None
    time_to_first_token_s: float | None = None
    repaired: bool = False


def confidence_from_logprobs(logprobs: Sequence[float] | None) -> float | None:
    """Geometric-mean token probability; see the module docstring for the definition."""
    if not logprobs:
        return None
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if not finite:
        return 0.0
    return math.exp(sum(finite) / len(finite))


def db_text(v: str) -> str:
    """Text any database takes: a NUL byte becomes U+FFFD and lone surrogates are escaped
    (PostgreSQL refuses both, and a refused row would lose a whole batch of log records/spans)."""
    if "\x00" in v:
        v = v.replace("\x00", "\ufffd")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        v = v.encode("utf-8", "backslashreplace").decode("utf-8")
    return v
