"""One agent, end to end: its data → a LoRA adapter → the registry → the eval gate.

This is what `slmflow train agent` runs. The agent supplies the prompt (``agent.messages``), the
output type (targets are validated against it) and the base model (a catalog name or a
llama.cpp/transformers model); the adapter is registered with a GGUF LoRA beside it when the base
is a GGUF, so the tuned agent serves on the fast llama.cpp path. Promotion is never implicit:
`train_agent` scores the candidate and the currently served version on the same held-out cases
and asks the registry's gate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, SlmflowError
from ..home import subdir
from .data import Example, check_leakage, dedupe, split, validate_targets
from .registry import AdapterRegistry, PromotionRejected
from .trainer import TrainConfig, is_main_process, train_lora


def base_for(model: Any) -> tuple[Path, Path | None, str]:
    """(Hugging Face folder to train on, the GGUF the adapter will serve on or None, name)."""
    from ..models.catalog import resolve
    from ..models.llamacpp import LlamaCppModel
    from ..models.transformers import TransformersModel, dequantized_base

    m = resolve(model) if isinstance(model, str) else model
    if isinstance(m, LlamaCppModel):  # train on the file as shipped, whatever it serves in
        return dequantized_base(m.source_path, m.info.name), m.source_path, m.info.name
    if isinstance(m, TransformersModel):
        if m.gguf:
            return dequantized_base(m.path, m.info.name), m.path, m.info.name
        return m.path, None, m.info.name
    raise ConfigError(f"cannot fine-tune {type(m).__name__}: train on a llama.cpp GGUF or a "
                      "transformers model", where=str(model))


def find_agent(workflow_path: str | Path, name: str) -> Any:
    """The agent called `name` in a workflow YAML."""
    from ..workflow import load_workflow

    return load_workflow(workflow_path).agent(name)


def exact_match_accuracy(agent: Any, cases: Sequence[Example], *, concurrency: int = 1,
                         progress: bool = False) -> dict[str, float]:
    """Share of cases whose output equals the target (structured outputs compared as dicts), and
    the share that ran without error (a run that raises counts as wrong). Both: higher is better,
    as the registry's gate expects."""
    from ..models.base import run_sync
    from ..hooks import logging_context

    async def one(ex: Example, sem: asyncio.Semaphore) -> tuple[bool, bool]:
        async with sem:
            try:
                with logging_context(enabled=False):  # gate traffic is not production traffic
                    r = await agent.run(ex.input)
            except SlmflowError:
                return False, True
        out = r.output.model_dump(mode="json") if hasattr(r.output, "model_dump") else r.output
        tgt = ex.target.model_dump(mode="json") if hasattr(ex.target, "model_dump") else ex.target
        return out == tgt, False

    async def main() -> list[tuple[bool, bool]]:
        sem = asyncio.Semaphore(concurrency)
        tasks = [one(ex, sem) for ex in cases]
        if not progress:
            return await asyncio.gather(*tasks)
        from tqdm.auto import tqdm

        out = []
        for fut in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc="eval"):
            out.append(await fut)
        return out

    results = run_sync(main())
    n = max(1, len(results))
    return {"accuracy": sum(ok for ok, _ in results) / n,
            "ok_rate": 1 - sum(err for _, err in results) / n}


def decoder_order(target: Any, output_type: Any) -> Any:
    """`target` with its object keys in the order the schema-constrained decoder emits them.

    Why: llama.cpp's JSON-schema grammar writes an object's *required* properties first and the
    optional ones after (each group in declaration order), so ``Fields(order_id=None,
    account_id=None, urgent: bool)`` is decoded as ``{"urgent":...,"order_id":...,...}``. An
    adapter trained on the declaration order learns a first token the grammar then forbids and
    goes off the rails (measured on the support extractor, same 200 rows and settings: exact
    match 0.27 trained in declaration order, 0.62 in the grammar's order). Training on the
    grammar's order keeps train and serve identical."""
    if hasattr(target, "model_dump"):
        target = target.model_dump(mode="json")
    if not isinstance(target, dict) or not hasattr(output_type, "model_json_schema"):
        return target
    schema = output_type.model_json_schema()
    defs = schema.get("$defs", {})

    def deref(s: dict) -> dict:
        while isinstance(s, dict) and "$ref" in s:
            s = defs.get(s["$ref"].rsplit("/", 1)[-1], {})
        return s

    def order(value: Any, s: dict) -> Any:
        s = deref(s)
        if isinstance(value, dict) and isinstance(s.get("properties"), dict):
            props, req = s["properties"], set(s.get("required", []))
            keys = [k for k in props if k in req] + [k for k in props if k not in req]
            keys += [k for k in value if k not in props]
            return {k: order(value[k], props.get(k, {})) for k in keys if k in value}
        if isinstance(value, dict):
            for alt in s.get("anyOf", []):
                if deref(alt).get("type") == "object":
                    return order(value, alt)
        if isinstance(value, list) and isinstance(s.get("items"), dict):
            return [order(v, s["items"]) for v in value]
        if isinstance(value, list):
            for alt in s.get("anyOf", []):
                if deref(alt).get("type") == "array":
                    return order(value, alt)
        return value

    return order(target, schema)


def _with_threads(model: Any, threads: int | None) -> Any:
    """The llama.cpp model the gate scores on, with the thread count training used (on a busy
    machine one llama.cpp thread, like one torch thread, is steadier than all cores)."""
    from ..models.llamacpp import LlamaCppModel

    if not threads or not isinstance(model, LlamaCppModel) or model.n_threads == threads:
        return model
    return LlamaCppModel(model.source_path, name=model.info.name, n_ctx=model.n_ctx,
                         n_threads=threads, pool_size=model.pool_size, chat=model.chat,
                         weights=model.weights or "as-shipped", engine=model.engine,
                         prefix_cache=model.prefix_cache)


@dataclass(frozen=True)
class ForAgent:
    """A training input tagged with the agent whose prompt renders it: the rows of a multi-task
    adapter (`train_agent(..., also=...)`). ``model_dump`` keeps dedupe, the split and the
    leakage check working on (agent, input), so the same input for two agents is two rows."""

    agent: str
    input: Any

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        x = self.input.model_dump(mode=mode) if hasattr(self.input, "model_dump") else self.input
        return {"agent": self.agent, "input": x}


@dataclass(frozen=True)
class AlsoAgent:
    """A second agent trained into the same adapter: its examples and its held-out cases."""

    agent: Any
    examples: Sequence[Example]
    eval_cases: Sequence[Example] = ()


def prepared(agent: Any, examples: Sequence[Example],
             eval_cases: Sequence[Example] = ()) -> list[Example]:
    """`examples` checked for `agent` (targets fit its output type, none leaks into its eval
    cases) with targets in its decoder's key order (`decoder_order`)."""
    validate_targets(examples, agent.output_type, where=f"agent {agent.name} data")
    if eval_cases:
        check_leakage(examples, [c.input for c in eval_cases], where=f"agent {agent.name}")
    return [replace(ex, target=decoder_order(ex.target, agent.output_type)) for ex in examples]


def multitask_rows(agent: Any, examples: Sequence[Example],
                   also: Sequence[AlsoAgent]) -> tuple[list[Example], Callable[[Any], Any]]:
    """Every agent's examples as one training set, and the format function that renders each
    row with its own agent's prompt. `examples` (the first agent's) are used as given; each
    `also` agent's are `prepared` here.

    Why one adapter for two agents: llama.cpp's KV states are kept per (model, adapter) and an
    adapter changes K and V, so two agents on different adapters never share a prefix. Two
    agents that read the same context one after the other (the support pipeline's reasoner and,
    until session 12, its verifier: the policy passages and the ticket), trained into one
    adapter, read it from the first one's KV state instead of evaluating it again (docs/models.md,
    "Prefix reuse"; measured in docs/benchmarks.md, not shipped there)."""
    agents = {agent.name: agent}
    rows = [replace(ex, input=ForAgent(agent.name, ex.input)) for ex in examples]
    for a in also:
        if a.agent.name in agents:
            raise ConfigError(f"agent {a.agent.name} is named twice in one multi-task adapter",
                              where=f"agent {a.agent.name}")
        agents[a.agent.name] = a.agent
        rows += [replace(ex, input=ForAgent(a.agent.name, ex.input))
                 for ex in prepared(a.agent, a.examples, a.eval_cases)]

    def fmt(x: ForAgent) -> Any:
        ag = agents[x.agent]
        return ag.messages(ag.coerce_input(x.input))

    return rows, fmt


def _scores_on(model: Any, agent: Any, eval_cases: Sequence[Example],
               also: Sequence[AlsoAgent], score: Callable[..., dict[str, float]]
               ) -> dict[str, float]:
    """`agent` and every `also` agent on `model` (adapter already applied, or none), each on its
    own cases; an `also` agent's keys are prefixed with its name."""
    out = score(replace(agent, model=model, adapter=None), eval_cases)
    for a in also:
        if a.eval_cases:
            sc = score(replace(a.agent, model=model, adapter=None), a.eval_cases)
            out.update({f"{a.agent.name}.{k}": v for k, v in sc.items()})
    return out


@dataclass
class AgentTrainResult:
    version: str
    run_dir: Path
    card: dict[str, Any]
    scores: dict[str, float]
    baseline_scores: dict[str, float] | None
    promoted: bool
    decision: dict[str, Any] | None


def train_agent(agent: Any, examples: Sequence[Example], *, eval_cases: Sequence[Example] = (),
                config: TrainConfig = TrainConfig(), run_dir: str | Path | None = None,
                registry: AdapterRegistry | None = None, promote: bool = True,
                tolerance: float = 0.0, threads: int | None = None, progress: bool = True,
                trace_ids: Sequence[str] = (),
                score: Callable[..., dict[str, float]] = exact_match_accuracy,
                also: Sequence[AlsoAgent] = (),
                log: Callable[[str], None] = print) -> AgentTrainResult:
    """Train `agent` on `examples`, register the adapter, gate it on `eval_cases`.

    also: other agents on the same base trained into the same adapter (a multi-task adapter,
    `multitask_rows`); each is scored on its own held-out cases with the scores' keys prefixed
    by its name (``verifier.accuracy``), so the gate holds every agent the adapter serves."""
    registry = registry or AdapterRegistry()
    examples = prepared(agent, examples, eval_cases)
    if also:
        if any(a.agent.model != agent.model for a in also):
            raise ConfigError("a multi-task adapter needs every agent on the same base model: "
                              + ", ".join(f"{a.name}={a.model}" for a in
                                          [agent, *(x.agent for x in also)]),
                              where=f"agent {agent.name}")
        examples, fmt = multitask_rows(agent, examples, also)
    else:
        fmt = lambda x: agent.messages(agent.coerce_input(x))  # noqa: E731  its own prompt
    train, val = split(dedupe(examples), 0.05, seed=config.seed)
    hf_dir, gguf, base_name = base_for(agent.model)
    run_dir = Path(run_dir) if run_dir else subdir("runs") / f"{agent.name}"
    res = train_lora(hf_dir, train, val, fmt, run_dir, config, base_name=base_name,
                     progress=progress, log=log, threads=threads)
    card = {**res.card, "agent": agent.name, "schema_hint": False}
    if also:
        card["agents"] = [agent.name, *(a.agent.name for a in also)]
    if not is_main_process():  # a multi-process launch: only the main process registers, gates
        return AgentTrainResult("", Path(run_dir), card, {}, None, False, None)
    parent = registry.promoted(agent.name)
    version = registry.register(agent.name, res.adapter_dir, card, base_gguf=gguf,
                                parent=parent, trace_ids=trace_ids)
    log(f"registered {agent.name}@{version} (train loss {res.train_loss:.4f}, "
        f"val loss {res.val_loss})")
    scores: dict[str, float] = {}
    baseline: dict[str, float] | None = None
    decision = None
    promoted = False
    if eval_cases:
        from ..agents import resolve_model

        base_model = _with_threads(resolve_model(agent.model, where=f"agent {agent.name}"),
                                   threads)
        tuned = registry.model_for(base_model, agent.name, version)
        scores = _scores_on(tuned, agent, eval_cases, also, score)  # every agent it serves
        registry.record_scores(agent.name, version, scores)
        log(f"{agent.name}@{version} on {len(eval_cases)} held-out cases: {scores}")
        if parent is None:
            baseline = _scores_on(base_model, agent, eval_cases, also, score)
            log(f"{agent.name} without adapter: {baseline}")
    if promote and eval_cases:
        try:
            worse = [k for k, v in (baseline or {}).items() if scores.get(k, 0) < v - tolerance]
            if parent is None and worse:
                raise PromotionRejected(f"{agent.name}@{version} is worse than the base model: "
                                        f"{scores} vs {baseline}", where=f"adapters/{agent.name}")
            decision = registry.promote(agent.name, version, tolerance=tolerance)
            promoted = True
            log(f"promoted {agent.name}@{version}")
        except PromotionRejected as e:
            decision = e.details.get("decision") or {"action": "rejected", "reason": e.message}
            log(f"not promoted: {e.message}")
    return AgentTrainResult(version, run_dir, card, scores, baseline, promoted, decision)
