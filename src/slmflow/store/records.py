"""The call log's records: what one call, one piece of feedback, one escalation example, one
agent's description and one API key look like, how each becomes a row and back, and how a
``since`` is read.

Why apart from the backends (`slmflow.store.calllog`): the writer, the review queue, the judges'
reviews, the gateway and the loop build and read these records without caring which database
holds them; the row helpers (`_txt`, `_dumps`, `_loads`) are the one place a value is made safe
for both SQLite and PostgreSQL text.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Sequence

from ..errors import ConfigError
from ..types import db_text

__all__ = ["CallRecord", "Feedback", "Example", "AgentInfo", "ApiKey", "new_id", "parse_since"]


def new_id() -> str:
    return uuid.uuid4().hex


def _txt(v: Any) -> str | None:
    """Text safe for both SQLite and PostgreSQL: no lone surrogates, no NUL bytes."""
    if v is None:
        return None
    return db_text(v if isinstance(v, str) else str(v))


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _dumps(v: Any) -> str | None:
    if v is None:
        return None
    return json.dumps(v, default=_json_default, ensure_ascii=True)


def _loads(s: str | None) -> Any:
    if s is None:
        return None
    try:
        return json.loads(s)
    except ValueError:
        return s


@dataclass
class CallRecord:
    """One call: ``kind`` is agent | model | gateway | workflow. ``input``/``output`` are any
    JSON-able values (stored as JSON text)."""

    kind: str = "agent"
    agent: str | None = None
    workflow: str | None = None
    run_id: str | None = None
    trace_id: str | None = None
    key_name: str | None = None
    model: str | None = None
    adapter: str | None = None
    input: Any = None
    output: Any = None
    latency_s: float | None = None
    confidence: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    escalated: bool = False
    escalation_reason: str | None = None
    cache: str | None = None
    status: str = "ok"
    error: str | None = None
    meta: dict[str, Any] | None = None
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)
    seq: int | None = None

    COLUMNS = ("id", "ts", "kind", "agent", "workflow", "run_id", "trace_id", "key_name", "model",
               "adapter", "input", "output", "latency_s", "confidence", "input_tokens",
               "output_tokens", "cost_usd", "escalated", "escalation_reason", "cache", "status",
               "error", "meta")

    def to_row(self) -> tuple:
        out = []
        for c in self.COLUMNS:
            v = getattr(self, c)
            if c in ("input", "output", "meta"):
                v = _dumps(v)
            elif c == "escalated":
                v = int(bool(v))
            elif c in ("input_tokens", "output_tokens"):
                v = int(v or 0)
            elif isinstance(v, str):
                v = _txt(v)
            out.append(v)
        return tuple(out)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "CallRecord":
        d = dict(zip(("seq",) + cls.COLUMNS, row))
        for c in ("input", "output", "meta"):
            d[c] = _loads(d[c])
        d["escalated"] = bool(d["escalated"])
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Feedback:
    """A user signal attached to a call or a run: thumbs (up/down), a label, a correction."""

    call_id: str | None = None
    run_id: str | None = None
    signal: str | None = None
    label: str | None = None
    correction: Any = None
    by: str | None = None
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)

    COLUMNS = ("id", "ts", "call_id", "run_id", "signal", "label", "correction", "by")


@dataclass
class Example:
    """A training example produced by an escalation: the small model's input and the stronger
    model's accepted output, for fine-tuning the small model."""

    agent: str | None
    input: Any
    output: Any
    source_model: str | None = None
    target_model: str | None = None
    reason: str | None = None
    confidence: float | None = None
    call_id: str | None = None
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)

    COLUMNS = ("id", "ts", "call_id", "agent", "source_model", "target_model", "input", "output",
               "reason", "confidence")


@dataclass
class AgentInfo:
    """What the review UI needs to know about an agent: its output JSON schema (the correction
    form is generated from it) and its instructions. Upserted by name, once per process."""

    name: str
    output_schema: dict[str, Any] | None = None
    instructions: str | None = None
    updated: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.name


@dataclass
class ApiKey:
    name: str
    key_hash: str
    prefix: str
    models: list[str] | None = None
    rpm: int | None = None
    tokens_per_day: int | None = None
    created: float = field(default_factory=time.time)
    revoked: float | None = None

    COLUMNS = ("name", "key_hash", "prefix", "models", "rpm", "tokens_per_day", "created",
               "revoked")


# ---- time ----------------------------------------------------------------------------------------

_DUR = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")


def parse_since(value: Any) -> float | None:
    """None, epoch seconds, a datetime, an ISO date/time, or a duration back from now (``30m``,
    ``24h``, ``7d``) → epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    s = str(value).strip()
    m = _DUR.match(s)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - float(m.group(1)) * mult
    try:
        return parse_since(datetime.fromisoformat(s))
    except ValueError:
        raise ConfigError(f"cannot read {s!r} as a time: use epoch seconds, an ISO date or a "
                          "duration such as 24h or 7d", where="since") from None
