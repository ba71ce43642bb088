"""Workflows declared in YAML: schema-validated, with errors that name file, line and field.

Why YAML at all: the people who tune a pipeline (swap a step's model, change a threshold, point a
fallback at a server) should not have to edit Python. Why pydantic for the schema: one definition
gives the validation, the defaults and the error locations. Why our own line bookkeeping: pydantic
reports *where in the data* (``steps.3.agent``), PyYAML knows *where in the file* each node
started; composing the YAML node tree once and recording every key path's line joins the two, so
an error reads ``workflow.yaml:42: steps.3.agent: unknown agent 'extracter'``.

Python objects are referenced as ``module:attr`` (pydantic types, step functions, tools, checks),
importable from the spec's own directory, which is put on ``sys.path`` while loading. Everything
that can be checked without running is checked at load: unknown keys, missing agents, tools and
models, imports, cycles, unreachable steps, input fields nothing produces.

A spec is therefore code: importing a module runs it, and ``function: os:system`` is a valid step.
Load only specs you trust as you trust your Python. ``allowed_imports`` (a list of module-name
prefixes, e.g. ``["support_", "myco."]``; the gateway's config key of that name) narrows what a
spec may import: every reference is checked against it *before anything is imported*, and an
attribute path may not walk into a module outside it (``support_steps:os.system``). A refusal
names the file, the line, the key and the import.

Shape (see docs/workflows.md for the full reference):

    name: support
    input: schemas:Ticket            # pydantic model of the request
    output: reply                    # state field that is the answer
    models: {default: smollm2-135m, strong: "openai:gpt-4o-mini@https://api.openai.com/v1"}
    tools: {lookup_order: {function: tools:lookup_order, timeout_s: 2}}
    agents:
      router: {model: default, fallback: strong, input: schemas:Ticket, output: schemas:Route,
               instructions: "...", prompt: "Ticket: {text}", max_tokens: 16}
    steps:
      - {name: router, agent: router}
      - {name: gather, parallel: [{name: retrieve, function: steps:retrieve},
                                  {name: extract, agent: extractor}]}
      - {name: route, branch: {on: category, cases: {refund: order}, default: reason}}
      - {name: order, tool: lookup_order, args: {order_id: order_id}, on_error: continue}
      - {name: reason, agent: reasoner}
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = ["load_workflow", "WorkflowSpec", "load_yaml_with_lines"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolSpecYaml(_Spec):
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    timeout_s: Optional[float] = Field(30.0, gt=0)
    name: Optional[str] = None
    description: Optional[str] = None


class AgentSpec(_Spec):
    model: str = "default"
    fallback: Optional[str] = None
    adapter: Optional[str] = None
    instructions: str = ""
    context: Optional[str] = None
    prompt: Optional[str] = None
    input: Optional[str] = None
    output: str = "str"
    tools: list[str] = Field(default_factory=list)
    confidence_threshold: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    stop: list[str] = Field(default_factory=list)
    score_forced: bool = True  # Agent.score_forced: forced tokens count in confidence


class BranchSpec(_Spec):
    on: str
    cases: dict[str, str] = Field(default_factory=dict)
    default: Optional[str] = None


class StepSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z_][\w\-]*$")
    agent: Optional[str] = None
    function: Optional[str] = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    tool: Optional[str] = None
    parallel: Optional[list["StepSpec"]] = None
    branch: Optional[BranchSpec] = None
    next: Optional[str] = None
    args: dict[str, str] = Field(default_factory=dict)
    output_key: Optional[str] = None
    verifies: Optional[str] = None
    verdict_field: str = "approved"
    check: Optional[str] = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    on_error: Literal["fail", "continue"] = "fail"
    timeout_s: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> "StepSpec":
        kinds = [k for k in ("agent", "function", "tool", "parallel", "branch")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a step needs exactly one of agent, function, tool, parallel, "
                             f"branch (got {', '.join(kinds) or 'none'})")
        return self


class WorkflowSpec(_Spec):
    name: str = Field(min_length=1)
    description: str = ""
    input: Optional[str] = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    output: Optional[str] = None
    max_input_chars: int = Field(20_000, ge=1)
    models: dict[str, str] = Field(default_factory=lambda: {"default": "smollm2-135m"})
    tools: dict[str, ToolSpecYaml | str] = Field(default_factory=dict)
    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)


# ---- YAML with line numbers ----------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``on:``, ``yes``, ``no`` stay strings
    (``branch: {on: category}`` would otherwise read as ``{True: category}``)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def load_yaml_with_lines(text: str, file: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML (safely) and map each key path, e.g. ``("steps", 3, "agent")``, to its line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"{file}:{line}: not valid YAML: {e.problem or e}",
                          where=f"{file}:{line}") from None
    if node is None:
        raise ConfigError(f"{file}: the file is empty", where=file)
    lines: dict[tuple, int] = {}

    def walk(n: Any, path: tuple) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (i,))

    walk(node, ())
    loader = _Loader(text)
    try:
        data = loader.construct_document(loader.get_single_node())
    finally:
        loader.dispose()
    return data, lines


def _line(lines: dict[tuple, int], loc: tuple) -> int:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


class _Ctx:
    def __init__(self, file: str, lines: dict[tuple, int], base: Path) -> None:
        self.file, self.lines, self.base = file, lines, base

    def error(self, loc: tuple, msg: str) -> ConfigError:
        line = _line(self.lines, loc)
        return ConfigError(f"{self.file}:{line}: {_dotted(loc)}: {msg}",
                           where=f"{self.file}:{line}", field=_dotted(loc), line=line)

    def where(self, loc: tuple) -> str:
        return f"{self.file}:{_line(self.lines, loc)}"

    allowed: tuple[str, ...] | None = None

    def allows(self, module: str) -> bool:
        return self.allowed is None or module.startswith(self.allowed)

    def refuse(self, ref: str, loc: tuple, module: str) -> ConfigError:
        prefixes = ", ".join(self.allowed or ()) or "none"
        return self.error(loc, f"import {ref!r} is not allowed: module {module!r} does not start "
                          f"with any of allowed_imports ({prefixes})")

    def ref(self, ref: str, loc: tuple) -> Any:
        """Import ``module:attr`` (from the spec's directory first)."""
        mod_name, _, attr = ref.partition(":")
        if not self.allows(mod_name):
            raise self.refuse(ref, loc, mod_name)
        try:
            mod = importlib.import_module(mod_name)
        except Exception as e:
            raise self.error(loc, f"cannot import module {mod_name!r}: "
                             f"{type(e).__name__}: {e}") from None
        obj: Any = mod
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise self.error(loc, f"module {mod_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
            if isinstance(obj, type(sys)) and not self.allows(obj.__name__):
                raise self.refuse(ref, loc, obj.__name__)
        return obj

    def type_ref(self, ref: str | None, loc: tuple, allow_str: bool = False) -> Any:
        if ref is None:
            return None
        if allow_str and ref == "str":
            return str
        if ":" not in ref:
            raise self.error(loc, f"expected module:Type, got {ref!r}")
        t = self.ref(ref, loc)
        if not (isinstance(t, type) and hasattr(t, "model_fields")):
            raise self.error(loc, f"{ref} is not a pydantic model class")
        return t


@contextlib.contextmanager
def _on_path(d: Path):
    d = str(d.resolve())
    sys.path.insert(0, d)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(d)


def _check_model_name(ctx: _Ctx, name: str, loc: tuple) -> None:
    from ..models.catalog import CATALOG

    if name.startswith(("gguf:", "hf:")):
        return
    if name.startswith("openai:"):
        from ..models.catalog import _split_openai

        try:
            _split_openai(name)
        except Exception as e:
            raise ctx.error(loc, getattr(e, "message", str(e))) from None
        return
    if name not in CATALOG:
        import difflib

        close = difflib.get_close_matches(name, list(CATALOG), n=1)
        raise ctx.error(loc, f"unknown model {name!r}"
                        + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" (catalog: {', '.join(CATALOG)}; or gguf:, hf:, openai:<m>@<url>)")


# ---- building --------------------------------------------------------------------------------------

def _refs(spec: WorkflowSpec) -> list[tuple[str, tuple]]:
    """Every ``module:attr`` reference of a spec, with its key path."""
    out: list[tuple[str, tuple]] = []
    if spec.input:
        out.append((spec.input, ("input",)))
    for name, ts in spec.tools.items():
        out.append((ts if isinstance(ts, str) else ts.function, ("tools", name)))
    for name, a in spec.agents.items():
        for k in ("input", "output"):
            v = getattr(a, k)
            if v and ":" in v:
                out.append((v, ("agents", name, k)))

    def steps(lst: list[StepSpec], loc: tuple) -> None:
        for i, st in enumerate(lst):
            for k in ("function", "check"):
                v = getattr(st, k)
                if v:
                    out.append((v, loc + (i, k)))
            if st.parallel:
                steps(st.parallel, loc + (i, "parallel"))

    steps(spec.steps, ("steps",))
    return out


def load_workflow(path: str | Path, *, fallback: str | None = None,
                  model: str | None = None, allowed_imports: list[str] | None = None) -> Any:
    """Load, validate and build the `Workflow` a YAML file declares.

    fallback / model: override every agent's fallback / primary model (a catalog name or spec).
    allowed_imports: module-name prefixes the spec may import from (None: any); checked for every
    reference before the first import.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"workflow file not found: {p}", where=str(p))
    text = p.read_text(encoding="utf-8")
    data, lines = load_yaml_with_lines(text, str(p))
    ctx = _Ctx(str(p), lines, p.parent)
    if not isinstance(data, dict):
        raise ctx.error((), f"a workflow spec is a mapping, got {type(data).__name__}")
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        msgs = [f"{p}:{_line(lines, tuple(err['loc']))}: {_dotted(tuple(err['loc']))}: "
                f"{err['msg']}" for err in errs[:10]]
        line = _line(lines, tuple(first["loc"]))
        raise ConfigError("invalid workflow spec:\n  " + "\n  ".join(msgs),
                          where=f"{p}:{line}", field=_dotted(tuple(first["loc"])),
                          line=line) from None
    if allowed_imports is not None:
        ctx.allowed = tuple(allowed_imports)
        for ref, loc in _refs(spec):
            module = ref.partition(":")[0]
            if not ctx.allows(module):
                raise ctx.refuse(ref, loc, module)
    with _on_path(p.parent):
        return _build(spec, ctx, fallback=fallback, model=model)


def _adapter_ref(ctx: _Ctx, adapter: str | None) -> str | None:
    """A registry name stays as written; an adapter given as a path (``adapters/router``) is read
    relative to the spec's folder, so the workflow runs from any directory."""
    if adapter is None:
        return None
    from ..finetune.registry import is_adapter_path

    if not is_adapter_path(adapter):
        return adapter
    return str((ctx.base / Path(adapter).expanduser()).resolve())


def _build(spec: WorkflowSpec, ctx: _Ctx, *, fallback: str | None, model: str | None) -> Any:
    from ..agents import Agent
    from ..tools import Tool, tool
    from .graph import Branch, Parallel, Step, Workflow

    def model_ref(name: str | None, loc: tuple) -> str | None:
        if name is None:
            return None
        resolved = spec.models.get(name, name)
        _check_model_name(ctx, resolved, loc)
        return resolved

    for k, v in spec.models.items():
        _check_model_name(ctx, v, ("models", k))
    if model is not None:
        _check_model_name(ctx, model, ())
    if fallback is not None:
        _check_model_name(ctx, fallback, ())

    tools: dict[str, Tool] = {}
    for name, ts in spec.tools.items():
        ts = ToolSpecYaml(function=ts) if isinstance(ts, str) else ts
        loc = ("tools", name)
        obj = ctx.ref(ts.function, loc)
        if isinstance(obj, Tool):
            tools[name] = obj
        elif callable(obj):
            try:
                tools[name] = tool(obj, name=ts.name or name, description=ts.description,
                                   timeout_s=ts.timeout_s)
            except ConfigError as e:
                raise ctx.error(loc, e.message) from None
        else:
            raise ctx.error(loc, f"{ts.function} is not a function")

    agents: dict[str, Agent] = {}
    for name, a in spec.agents.items():
        loc = ("agents", name)
        for i, tn in enumerate(a.tools):
            if tn not in tools:
                raise ctx.error(loc + ("tools", i), f"unknown tool {tn!r} (tools: "
                                f"{', '.join(tools) or 'none'})")
        try:
            agents[name] = Agent(
                name=name, model=model or model_ref(a.model, loc + ("model",)),
                fallback=fallback or model_ref(a.fallback, loc + ("fallback",)),
                adapter=_adapter_ref(ctx, a.adapter), instructions=a.instructions,
                context=a.context, prompt=a.prompt,
                input_type=ctx.type_ref(a.input, loc + ("input",)),
                output_type=ctx.type_ref(a.output, loc + ("output",), allow_str=True),
                tools=tuple(tools[t] for t in a.tools),
                confidence_threshold=a.confidence_threshold, max_tokens=a.max_tokens,
                temperature=a.temperature, stop=tuple(a.stop), score_forced=a.score_forced)
        except ConfigError as e:
            if e.message.startswith(ctx.file):
                raise
            raise ctx.error(loc, e.message) from None

    where: dict[str, str] = {}

    def step(s: StepSpec, loc: tuple) -> Any:
        where[s.name] = ctx.where(loc)
        if s.parallel is not None:
            return Parallel(s.name, tuple(step(c, loc + ("parallel", i))
                                          for i, c in enumerate(s.parallel)), next=s.next)
        if s.branch is not None:
            return Branch(s.name, s.branch.on, s.branch.cases, s.branch.default)
        kw: dict[str, Any] = {}
        if s.agent is not None:
            if s.agent not in agents:
                raise ctx.error(loc + ("agent",), f"unknown agent {s.agent!r} (agents: "
                                f"{', '.join(agents) or 'none'})")
            kw["agent"] = agents[s.agent]
        elif s.tool is not None:
            if s.tool not in tools:
                raise ctx.error(loc + ("tool",), f"unknown tool {s.tool!r} (tools: "
                                f"{', '.join(tools) or 'none'})")
            kw["tool"] = tools[s.tool]
            params = set(tools[s.tool].parameters.get("properties", {}))
            for a in s.args:
                if a not in params:
                    raise ctx.error(loc + ("args", a), f"tool {s.tool!r} has no parameter {a!r}"
                                    f" (parameters: {', '.join(sorted(params))})")
        else:
            fn = ctx.ref(s.function, loc + ("function",))  # type: ignore[arg-type]
            if not callable(fn):
                raise ctx.error(loc + ("function",), f"{s.function} is not callable")
            kw["fn"] = fn
        check = ctx.ref(s.check, loc + ("check",)) if s.check else None
        try:
            return Step(s.name, args=s.args, next=s.next, output_key=s.output_key,
                        verifies=s.verifies, verdict_field=s.verdict_field, check=check,
                        on_error=s.on_error, timeout_s=s.timeout_s, **kw)
        except ConfigError as e:
            raise ctx.error(loc, e.message) from None

    nodes = [step(s, ("steps", i)) for i, s in enumerate(spec.steps)]
    input_type = ctx.type_ref(spec.input, ("input",))
    try:
        return Workflow(spec.name, nodes, input_type=input_type, output=spec.output,
                        description=spec.description, max_input_chars=spec.max_input_chars,
                        where=where)
    except ConfigError as e:
        w = e.where or ctx.file
        if not w.startswith(ctx.file):
            w = ctx.file
        raise ConfigError(f"{w}: {e.message}", where=w) from None
