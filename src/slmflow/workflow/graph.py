"""The workflow graph: steps, parallel groups and branches, checked when the workflow is built.

Why an explicit, small graph and not a general state machine: a support pipeline is five or six
jobs in a known order with one or two decisions. Written as a list of named nodes with explicit
``next`` edges, the graph can be checked *before* anything runs: unknown targets, cycles, steps
that can never be reached, a step whose required input fields no earlier step produces, a verifier
pointing at a step that cannot be re-run. Those are `ConfigError`s at build time (and, from YAML,
carry the file and line), instead of surprises halfway through a request.

Nodes:
  Step      runs an `Agent`, a plain function (sync or async) or a `Tool`.
  Parallel  runs its child steps concurrently (asyncio) and continues when all are done.
  Branch    reads a state field (a router's decision) and jumps to the matching case.

Typed state: the run keeps one namespace of fields. The workflow input's fields start it; each
step's output (a pydantic model) merges its fields in; a step with a non-model output (free text,
a tool's value) writes one field, ``output_key`` (default: the step's name). A step's input is its
input type validated from those fields, and that validation is the handoff contract (runner.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence, get_type_hints

from ..agents import Agent
from ..errors import ConfigError
from ..tools import Tool

if TYPE_CHECKING:  # runner.py imports this module
    from .result import RunResult

END = "end"

__all__ = ["Step", "Parallel", "Branch", "Workflow", "END"]


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and hasattr(t, "model_fields") and hasattr(t, "model_validate")


@dataclass(frozen=True)
class Step:
    """One unit of work: exactly one of ``agent``, ``fn``, ``tool``.

    args: for a tool step, ``{tool parameter: state field}``.
    next: the following node's name, ``"end"``, or None (the next node in the workflow's list).
    verifies: this step is a verifier of that (agent) step: when its ``verdict_field`` is false, or
        ``check(state)`` returns a reason, the verified step is re-run on its fallback model.
    on_error: for tool steps: ``"fail"`` ends the run with the `ToolError`; ``"continue"`` records
        it in state as ``<output_key>_error`` (its kind) so a later branch can route on it.
    """

    name: str
    agent: Agent | None = None
    fn: Callable[..., Any] | None = None
    tool: Tool | None = None
    args: Mapping[str, str] = field(default_factory=dict)
    next: str | None = None
    output_key: str | None = None
    verifies: str | None = None
    verdict_field: str = "approved"
    check: Callable[[Mapping[str, Any]], str | None] | None = None
    on_error: Literal["fail", "continue"] = "fail"
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        kinds = [k for k in ("agent", "fn", "tool") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ConfigError(f"a step needs exactly one of agent, fn, tool; got {kinds or 'none'}",
                              where=f"step {self.name}")
        if self.on_error not in ("fail", "continue"):
            raise ConfigError(f"on_error must be 'fail' or 'continue', got {self.on_error!r}",
                              where=f"step {self.name}")
        if self.agent is not None and not isinstance(self.agent, Agent):
            raise ConfigError(f"agent must be an Agent, got {type(self.agent).__name__}",
                              where=f"step {self.name}")
        if self.tool is not None and not isinstance(self.tool, Tool):
            raise ConfigError(f"tool must be a @tool, got {type(self.tool).__name__}",
                              where=f"step {self.name}")
        if self.fn is not None and not callable(self.fn):
            raise ConfigError("fn must be callable", where=f"step {self.name}")
        object.__setattr__(self, "args", dict(self.args))

    @property
    def kind(self) -> str:
        return "agent" if self.agent else "function" if self.fn else "tool"

    @property
    def key(self) -> str:
        return self.output_key or self.name

    def _fn_hints(self) -> tuple[Any, Any]:
        try:
            hints = get_type_hints(self.fn)
        except Exception as e:  # never silently treat a typed function as untyped
            raise ConfigError(f"cannot resolve the type hints of {self.fn!r}: {e} (define the "
                              "types at module level)", where=f"step {self.name}") from None
        params = list(inspect.signature(self.fn).parameters)
        return (hints.get(params[0]) if params else None), hints.get("return")

    @property
    def input_type(self) -> Any:
        """A pydantic model, or None (the step sees the whole state as a dict)."""
        if self.agent is not None:
            return self.agent.input_type
        if self.fn is not None:
            t = self._fn_hints()[0]
            return t if _is_model(t) else None
        return None

    @property
    def output_type(self) -> Any:
        if self.agent is not None:
            return self.agent.output_type
        if self.fn is not None:
            t = self._fn_hints()[1]
            return t if _is_model(t) else None
        return None

    def provides(self) -> set[str]:
        """The state fields this step writes."""
        if self.tool is not None:
            return {self.key, f"{self.key}_error"}
        out = self.output_type
        return set(out.model_fields) if _is_model(out) else {self.key}

    def required(self) -> set[str]:
        """The state fields this step cannot run without."""
        if self.tool is not None:
            return set()  # tool arguments are validated at run time (a ToolError to route on)
        t = self.input_type
        return {k for k, f in t.model_fields.items() if f.is_required()} if _is_model(t) else set()


@dataclass(frozen=True)
class Parallel:
    """Child steps run concurrently; the next node starts when all of them are done."""

    name: str
    steps: tuple[Step, ...]
    next: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise ConfigError("a parallel group needs at least one step", where=f"step {self.name}")
        for s in self.steps:
            if not isinstance(s, Step):
                raise ConfigError(f"parallel children must be steps, got {s!r}",
                                  where=f"step {self.name}")
            if s.next is not None:
                raise ConfigError(f"step {s.name!r} is inside parallel group {self.name!r} and "
                                  "cannot have its own next", where=f"step {s.name}")


@dataclass(frozen=True)
class Branch:
    """Jump on a state field's value: ``cases`` maps a value to a node name."""

    name: str
    on: str
    cases: Mapping[str, str]
    default: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", {str(k): v for k, v in dict(self.cases).items()})
        if not self.cases and self.default is None:
            raise ConfigError("a branch needs cases or a default", where=f"step {self.name}")


Node = Step | Parallel | Branch


class Workflow:
    """A named graph of nodes with a typed input and a named answer field.

    ``nodes`` in order: the first is the start; a node's ``next`` defaults to the one after it.
    ``where`` maps a node name to a location string (file:line) used in build errors.
    """

    def __init__(self, name: str, nodes: Sequence[Node], *, input_type: Any = None,
                 output: str | None = None, description: str = "",
                 max_input_chars: int = 20_000, where: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.nodes = tuple(nodes)
        self.input_type = input_type
        self.output = output
        self.description = description
        self.max_input_chars = max_input_chars
        self._where = dict(where or {})
        self._check()

    # -- building ---------------------------------------------------------------------------
    def _loc(self, name: str) -> str:
        return self._where.get(name, f"workflow {self.name}, step {name}")

    def _check(self) -> None:
        if not self.nodes:
            raise ConfigError("a workflow needs at least one step", where=f"workflow {self.name}")
        if self.input_type is not None and not _is_model(self.input_type):
            raise ConfigError("input_type must be a pydantic model class",
                              where=f"workflow {self.name}")
        self.by_name: dict[str, Node] = {}
        self.steps: dict[str, Step] = {}
        for n in self.nodes:
            if not isinstance(n, (Step, Parallel, Branch)):
                raise ConfigError(f"not a workflow node: {n!r}", where=f"workflow {self.name}")
            names = [n.name] + ([s.name for s in n.steps] if isinstance(n, Parallel) else [])
            for nm in names:
                if nm in self.by_name or nm in self.steps or nm == END:
                    raise ConfigError(f"step name {nm!r} is used twice (or is reserved)",
                                      where=self._loc(nm))
            self.by_name[n.name] = n
            if isinstance(n, Step):
                self.steps[n.name] = n
            elif isinstance(n, Parallel):
                self.steps.update({s.name: s for s in n.steps})
        self.edges: dict[str, list[str]] = {}
        for i, n in enumerate(self.nodes):
            if isinstance(n, Branch):
                targets = list(n.cases.values()) + ([n.default] if n.default else [])
            else:
                nxt = n.next if n.next is not None else (
                    self.nodes[i + 1].name if i + 1 < len(self.nodes) else END)
                targets = [nxt]
            for t in targets:
                if t != END and t not in self.by_name:
                    hint = (f" ({t!r} is inside a parallel group; jump to the group)"
                            if t in self.steps else "")
                    raise ConfigError(f"step {n.name!r} goes to unknown step {t!r}{hint}",
                                      where=self._loc(n.name))
            self.edges[n.name] = [t for t in dict.fromkeys(targets) if t != END]
        self._check_cycles()
        reach = self._reachable(self.nodes[0].name)
        for n in self.nodes:
            if n.name not in reach:
                raise ConfigError(f"step {n.name!r} can never be reached from "
                                  f"{self.nodes[0].name!r}", where=self._loc(n.name))
        self._check_fields()
        self._check_verifiers()

    def _reachable(self, start: str) -> list[str]:
        seen: dict[str, None] = {}
        todo = [start]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen[n] = None
                todo.extend(self.edges[n])
        return list(seen)

    def _check_cycles(self) -> None:
        state: dict[str, int] = {}
        path: list[str] = []

        def visit(n: str) -> None:
            state[n] = 1
            path.append(n)
            for t in self.edges[n]:
                if state.get(t) == 1:
                    cycle = path[path.index(t):] + [t]
                    raise ConfigError("the workflow graph has a cycle: " + " -> ".join(cycle),
                                      where=self._loc(n))
                if t not in state:
                    visit(t)
            path.pop()
            state[n] = 2

        for n in self.nodes:
            if n.name not in state:
                visit(n.name)

    def _children(self, n: Node) -> list[Step]:
        return list(n.steps) if isinstance(n, Parallel) else [n] if isinstance(n, Step) else []

    def _check_fields(self) -> None:
        """Every required input field must be produced by the input or some earlier step."""
        preds: dict[str, set[str]] = {n: set() for n in self.by_name}
        for src, ts in self.edges.items():
            for t in ts:
                preds[t].add(src)
        base = set(self.input_type.model_fields) if self.input_type is not None else set()

        def ancestors(n: str) -> set[str]:
            out: set[str] = set()
            todo = list(preds[n])
            while todo:
                p = todo.pop()
                if p not in out:
                    out.add(p)
                    todo.extend(preds[p])
            return out

        for n in self.nodes:
            avail = set(base)
            for a in ancestors(n.name):
                for s in self._children(self.by_name[a]):
                    avail |= s.provides()
            for s in self._children(n):
                missing = s.required() - avail
                if missing:
                    raise ConfigError(
                        f"step {s.name!r} needs {sorted(missing)} but neither the workflow input "
                        "nor any earlier step produces them", where=self._loc(s.name))
                for param, src in s.args.items():
                    if src not in avail:
                        raise ConfigError(f"step {s.name!r} passes state field {src!r} to "
                                          f"{param!r}, but no earlier step produces it",
                                          where=self._loc(s.name))
            if isinstance(n, Branch) and n.on not in avail:
                raise ConfigError(f"branch {n.name!r} reads {n.on!r}, which no earlier step "
                                  "produces", where=self._loc(n.name))
        if self.output is not None:
            every = base | {f for s in self.steps.values() for f in s.provides()}
            if self.output not in every:
                raise ConfigError(f"the workflow's output {self.output!r} is produced by no step",
                                  where=f"workflow {self.name}")

    def _check_verifiers(self) -> None:
        for s in self.steps.values():
            if s.verifies is None:
                continue
            target = self.steps.get(s.verifies)
            if target is None:
                raise ConfigError(f"step {s.name!r} verifies unknown step {s.verifies!r}",
                                  where=self._loc(s.name))
            if target.agent is None:
                raise ConfigError(f"step {s.name!r} verifies {s.verifies!r}, which is not an "
                                  "agent step (only agents can be re-run on a fallback model)",
                                  where=self._loc(s.name))
            out = s.output_type
            if s.check is None and not (_is_model(out) and s.verdict_field in out.model_fields):
                raise ConfigError(f"verifier {s.name!r} needs a check function or an output with "
                                  f"a boolean field {s.verdict_field!r}", where=self._loc(s.name))

    # -- swapping ---------------------------------------------------------------------------
    @property
    def agents(self) -> dict[str, Agent]:
        return {s.name: s.agent for s in self.steps.values() if s.agent is not None}

    def agent(self, name: str) -> Agent:
        """The agent of the step called ``name``, or the agent called ``name`` (a step's name
        and its agent's name usually agree, but need not)."""
        steps = self.agents
        if name in steps:
            return steps[name]
        by_name = {a.name: a for a in steps.values()}
        if name in by_name:
            return by_name[name]
        raise ConfigError(f"no agent {name!r} in workflow {self.name}; agent steps: "
                          f"{', '.join(steps) or 'none'}", where=f"workflow {self.name}")

    def with_agent(self, step: str, agent: Agent) -> "Workflow":
        """A copy where one step runs ``agent`` instead (another model or adapter, say)."""
        if step not in self.steps or self.steps[step].agent is None:
            raise ConfigError(f"no agent step named {step!r}", where=f"workflow {self.name}")

        def swap(n: Node) -> Node:
            if isinstance(n, Step) and n.name == step:
                return replace(n, agent=agent)
            if isinstance(n, Parallel):
                return replace(n, steps=tuple(swap(s) for s in n.steps))  # type: ignore[misc]
            return n

        return Workflow(self.name, [swap(n) for n in self.nodes], input_type=self.input_type,
                        output=self.output, description=self.description,
                        max_input_chars=self.max_input_chars, where=self._where)

    def with_fallback(self, fallback: Any) -> "Workflow":
        """A copy where every agent escalates to ``fallback`` (a Model or a catalog name)."""
        wf: Workflow = self
        for name, a in self.agents.items():
            wf = wf.with_agent(name, a.with_fallback(fallback))
        return wf

    # -- running ----------------------------------------------------------------------------
    async def run(self, input: Any) -> RunResult:
        """Run once; always returns a `RunResult` (an answer or an explicit failure)."""
        from .runner import run_workflow

        return await run_workflow(self, input)

    def run_sync(self, input: Any) -> RunResult:
        """`run` from synchronous code."""
        from ..models.base import run_sync

        return run_sync(self.run(input))

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, nodes={[n.name for n in self.nodes]})"
