"""``gateway.yaml``: the gateway's configuration, validated with pydantic; errors name file, line
and field (``gateway.yaml:12: models.slm.pool_size: Input should be less than or equal to 8``).

Shape (every section optional; see examples/gateway.yaml and docs/gateway.md):

    host: 127.0.0.1
    port: 8080
    call_log: sqlite:///path/calls.db        # or postgresql://...; default $SLMFLOW_HOME/calls.db
    call_log_durable: true                    # commit a request's record before answering it
    models:                                   # names clients put in "model"
      slm: {model: smollm2-135m, pool_size: 2, escalate_to: strong, confidence_threshold: 0.4}
      strong: {model: "openai:gpt-4o-mini@https://api.openai.com/v1", timeout_s: 30}
    workflows:                                # each also exposes its agents as "<workflow>.<agent>"
      support: {path: support/workflow.yaml}
    cache: {enabled: true, ttl_s: 300, semantic: false, threshold: 0.95}
    guardrails: {input: {pii: redact, toxicity: 0.8, injection: 0.8, max_chars: 20000},
                 output: {pii: redact, toxicity: 0.8}, log_pii: false}
    auth: {enabled: true, keys: [{name: ci, sha256: <hex>, models: [slm], rpm: 60}]}
    limits: {max_body_bytes: 1000000, request_timeout_s: 120, breaker_failures: 5,
             breaker_reset_s: 30, json_schema: {max_depth: 64, max_count: 512}}
    allowed_imports: [support_, myco.]        # module prefixes workflow specs may import from
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..structured import SchemaLimits

__all__ = ["GatewayConfig", "ModelCfg", "WorkflowCfg", "CacheCfg", "GuardCfg", "GuardrailsCfg",
           "KeyCfg", "AuthCfg", "LimitsCfg", "SchemaLimitsCfg", "load_config"]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheCfg(_Cfg):
    enabled: bool = True
    ttl_s: float = Field(300.0, gt=0)
    max_entries: int = Field(10_000, ge=1)
    semantic: bool = False
    threshold: float = Field(0.95, gt=0, le=1)
    embedder: str = "minilm"


class ModelCfg(_Cfg):
    model: str = "smollm2-135m"
    pool_size: int = Field(1, ge=1, le=8)
    escalate_to: Optional[str] = None
    confidence_threshold: float = Field(0.0, ge=0, le=1)
    timeout_s: Optional[float] = Field(None, gt=0)
    cache_ttl_s: Optional[float] = Field(None, ge=0)  # per-model TTL; 0 turns caching off
    description: str = ""


class WorkflowCfg(_Cfg):
    path: str
    fallback: Optional[str] = None
    model: Optional[str] = None
    expose_agents: bool = True
    timeout_s: Optional[float] = Field(None, gt=0)


class GuardCfg(_Cfg):
    pii: Literal["off", "redact", "block"] = "redact"
    toxicity: Optional[float] = Field(0.8, ge=0, le=1)
    injection: Optional[float] = Field(0.8, ge=0, le=1)
    max_chars: Optional[int] = Field(20_000, ge=1)


class GuardrailsCfg(_Cfg):
    enabled: bool = True
    input: GuardCfg = Field(default_factory=GuardCfg)
    output: GuardCfg = Field(default_factory=lambda: GuardCfg(injection=None, max_chars=None))
    log_pii: bool = False


class KeyCfg(_Cfg):
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: Optional[list[str]] = None
    rpm: Optional[int] = Field(None, ge=1)
    tokens_per_day: Optional[int] = Field(None, ge=1)


class AuthCfg(_Cfg):
    enabled: bool = True
    keys: list[KeyCfg] = Field(default_factory=list)


class SchemaLimitsCfg(_Cfg):
    """Bounds on a request's JSON schema (``response_format``); see `structured.SchemaLimits`."""

    max_depth: int = Field(64, ge=2, le=256)
    max_bytes: int = Field(65_536, ge=256)
    max_count: int = Field(512, ge=1, le=1000)  # llama.cpp refuses bounded repetitions > ~1000
    chars_per_token: int = Field(8, ge=1)
    max_enum: int = Field(512, ge=1)
    max_pattern: int = Field(512, ge=1)
    max_properties: int = Field(256, ge=1, le=900)

    def limits(self) -> "SchemaLimits":
        from ..structured import SchemaLimits

        return SchemaLimits(**self.model_dump())


class LimitsCfg(_Cfg):
    max_body_bytes: int = Field(1_000_000, ge=1024)
    request_timeout_s: float = Field(120.0, gt=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(30.0, gt=0)
    max_tokens: int = Field(4096, ge=1)
    max_input_depth: int = Field(64, ge=1, le=256)  # nesting of a workflow run's JSON input
    json_schema: SchemaLimitsCfg = Field(default_factory=SchemaLimitsCfg)


class GatewayConfig(_Cfg):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    call_log: Optional[str] = None
    # a request's records are committed before its answer is sent (group commit); false: queued
    call_log_durable: bool = True
    prices: Optional[str] = None
    expose_catalog: bool = False
    models: dict[str, ModelCfg] = Field(default_factory=dict)
    workflows: dict[str, WorkflowCfg] = Field(default_factory=dict)
    cache: CacheCfg = Field(default_factory=CacheCfg)
    guardrails: GuardrailsCfg = Field(default_factory=GuardrailsCfg)
    auth: AuthCfg = Field(default_factory=AuthCfg)
    limits: LimitsCfg = Field(default_factory=LimitsCfg)
    # None: workflow specs may import any module; a list: only modules whose dotted name starts
    # with one of these prefixes (checked before anything is imported; see docs/workflows.md)
    allowed_imports: Optional[list[str]] = None
    base_dir: Optional[str] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _refs(self) -> "GatewayConfig":
        for name, m in self.models.items():
            if m.escalate_to is not None and m.escalate_to not in self.models:
                raise ValueError(f"models.{name}.escalate_to: unknown model {m.escalate_to!r} "
                                 f"(declared: {', '.join(self.models)})")
            if m.escalate_to == name:
                raise ValueError(f"models.{name}.escalate_to: a model cannot escalate to itself")
        reserved = sorted((set(self.models) | set(self.workflows)) & {"admin", "metrics",
                                                                      "review"})
        if reserved:
            raise ValueError(f"{reserved[0]!r} is a key scope (auth.keys[].models), not a name "
                             "for a model or a workflow")
        clash = set(self.models) & set(self.workflows)
        if clash:
            raise ValueError(f"names used for both a model and a workflow: {sorted(clash)}")
        return self

    def resolve_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        if not path.is_absolute() and self.base_dir:
            path = Path(self.base_dir) / path
        return path


def _line(lines: dict[tuple, int], loc: tuple) -> int:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``gateway.yaml``; a `ConfigError` names file, line and field."""
    from ..workflow.spec import load_yaml_with_lines

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"gateway config not found: {p}", where=str(p))
    data, lines = load_yaml_with_lines(p.read_text(encoding="utf-8"), str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}:1: a gateway config is a mapping, got {type(data).__name__}",
                          where=f"{p}:1")
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors()[:10]:
            loc = tuple(err["loc"])
            field = ".".join(str(x) for x in loc) or "(root)"
            msg = err["msg"].removeprefix("Value error, ")
            msgs.append(f"{p}:{_line(lines, loc)}: {field}: {msg}")
        first = tuple(e.errors()[0]["loc"])
        raise ConfigError("invalid gateway config:\n  " + "\n  ".join(msgs),
                          where=f"{p}:{_line(lines, first)}",
                          field=".".join(str(x) for x in first)) from None
    cfg.base_dir = str(p.parent.resolve())
    for name, w in cfg.workflows.items():
        wp = cfg.resolve_path(w.path)
        if not wp.is_file():
            line = _line(lines, ("workflows", name, "path"))
            raise ConfigError(f"{p}:{line}: workflows.{name}.path: file not found: {wp}",
                              where=f"{p}:{line}", field=f"workflows.{name}.path")
    return cfg
