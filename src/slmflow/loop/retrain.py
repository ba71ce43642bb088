"""Closing the loop: reviewed calls → a new adapter for the agent that failed → its gate → serving.

`retrain_agent` (what `slmflow loop retrain --agent router` runs):

1. collects the agent's reviewed items (accepted outputs and corrections; rejections carry no
   target) and refuses to run with fewer than ``min_new`` that no promoted adapter has used yet;
2. holds out a stable share of them as new eval cases: an item is held out when a hash of its call
   id says so, so a case held out once stays held out in every later retrain (no leakage between
   versions' gates);
3. trains a LoRA on the agent's original data plus the other reviewed items (a reviewed target
   replaces an original example with the same input), in a run folder keyed by the data hash, so
   re-running after a crash resumes from the last checkpoint; from a fresh LoRA, or with
   ``warm_start`` from the serving version's weights (fewer epochs reach the same gate: see
   bench/retrain.py);
4. scores the candidate and the version serving now on the *same* cases (the agent's eval set plus
   the held-out reviews) and asks the registry's gate, which promotes only without a regression;
5. records lineage: the card lists the review ids, call ids, trace ids and reviewers that produced
   the adapter, the gate's decision is in the registry history, and the review items are tagged
   with the adapter (``used_in``).

Until step 4 promotes, the serving adapter is untouched: registration is an atomic rename and
promotion an atomic write, so a crash anywhere leaves the old version serving.

`add_to_evals` sends reviewed items the other way: into the agent's eval set (a JSONL file the
agent's suite reads), de-duplicated by input.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, SlmflowError
from ..finetune.data import Example, _canonical, data_hash, dedupe
from ..store.calllog import CallLog
from ..store.review import ReviewItem, ReviewQueue
from ..store.writer import logging_context

__all__ = ["LoopError", "RetrainResult", "retrain_agent", "reviewed_examples", "add_to_evals",
           "is_held_out", "suite_score"]


class LoopError(SlmflowError):
    """The improvement loop cannot take this step (too few reviews, nothing to do)."""


def is_held_out(call_id: str, fraction: float) -> bool:
    """Stable hold-out membership: the same call is held out in every retrain."""
    h = int(hashlib.sha256(call_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def reviewed_examples(items: Sequence[ReviewItem]) -> list[Example]:
    """Training examples from reviewed items (``source="review:<id>"``)."""
    out = []
    for it in items:
        t = it.target
        if t is None or it.call is None:
            continue
        out.append(Example(it.call.input, t, source=f"review:{it.id}"))
    return out


def suite_score(evaluators: Sequence[Any]) -> Callable[..., dict[str, float]]:
    """A scorer for the gate that runs the agent's eval-suite evaluators (names, spec dicts or
    `Evaluator`s: routing accuracy, exact or per-field match...) on the gate's cases; the
    suite's scores (higher is better) are what the registry compares."""
    from ..evals import create, run_suite
    from ..evals.base import Case

    evs = [create(e) for e in evaluators]

    def score(agent: Any, cases: Sequence[Example]) -> dict[str, float]:
        def plain(v: Any) -> Any:
            return v.model_dump(mode="json") if hasattr(v, "model_dump") else v

        rows = [Case(id=f"case-{i}", input=plain(c.input), expected=plain(c.target))
                for i, c in enumerate(cases)]
        rep = run_suite(agent, rows, evs, name=f"gate {agent.name}", progress=False)
        return dict(rep.scores)

    return score


@dataclass
class RetrainResult:
    agent: str
    version: str | None
    promoted: bool
    decision: dict[str, Any] | None
    scores: dict[str, float]
    current_scores: dict[str, float]
    holdout_scores: dict[str, dict[str, float]]
    train_examples: int
    reviewed_train: list[str] = field(default_factory=list)
    reviewed_holdout: list[str] = field(default_factory=list)
    eval_cases: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def retrain_agent(agent: Any, log: CallLog, *, data: Sequence[Example] = (),
                  eval_cases: Sequence[Example] = (), holdout: float = 0.3, min_new: int = 5,
                  config: Any = None, registry: Any = None, threads: int | None = None,
                  tolerance: float = 0.0, run_dir: str | Path | None = None,
                  progress: bool = True, score: Callable[..., dict[str, float]] | None = None,
                  warm_start: bool = False,
                  say: Callable[[str], None] = print) -> RetrainResult:
    """One turn of the loop for one agent; see the module doc. warm_start: train from the
    promoted version's weights (its rank and target modules must match ``config``)."""
    from ..agents import resolve_model
    from ..finetune.agent_train import exact_match_accuracy, train_agent
    from ..finetune.registry import AdapterRegistry, PromotionRejected
    from ..finetune.trainer import TrainConfig
    from ..home import subdir

    t0 = time.perf_counter()
    score = score or exact_match_accuracy
    registry = registry or AdapterRegistry()
    config = config or TrainConfig()
    queue = ReviewQueue(log)
    items = queue.reviewed(agent.name)
    new = [it for it in items if not any(u.startswith("adapter:") for u in it.used_in)]
    if len(new) < min_new:
        raise LoopError(f"agent {agent.name} has {len(new)} reviewed item(s) not yet in a "
                        f"promoted adapter; a retrain needs at least {min_new} (review more in "
                        "`slmflow ui`, or lower --min-new)", where=f"loop retrain {agent.name}",
                        reviewed=len(items), new=len(new))
    held = [it for it in items if is_held_out(it.call_id, holdout)]
    if not held:  # a tiny batch: hold out the one the hash ranks first
        held = [min(items, key=lambda it: hashlib.sha256(it.call_id.encode()).hexdigest())]
    held_ids = {it.id for it in held}
    train_items = [it for it in items if it.id not in held_ids]
    rev_train = reviewed_examples(train_items)
    rev_hold = reviewed_examples(held)
    if not rev_train:
        raise LoopError(f"agent {agent.name}: every reviewed item is held out for evaluation; "
                        "review more items", where=f"loop retrain {agent.name}")

    # reviewed targets win over original examples with the same input; held-out inputs leave
    # the training data altogether (the gate must not see its own training set)
    reviewed_keys = {e.input_key() for e in rev_train}
    held_keys = {e.input_key() for e in rev_hold} | {_canonical(c.input) for c in eval_cases}
    base = [e for e in data if e.input_key() not in reviewed_keys | held_keys]
    dropped = len(data) - len(base)
    train = dedupe(list(base) + rev_train)
    cases = dedupe(list(eval_cases) + rev_hold)
    say(f"{agent.name}: {len(items)} reviewed ({len(new)} new): {len(rev_train)} to train, "
        f"{len(rev_hold)} held out; {len(base)} original examples"
        + (f" ({dropped} replaced or held out)" if dropped else "")
        + f"; {len(cases)} eval cases")

    trace_ids = sorted({it.call.trace_id for it in items if it.call and it.call.trace_id})
    parent = registry.promoted(agent.name) if warm_start else None
    if warm_start and parent is None:
        say(f"{agent.name} has no promoted adapter: training from a fresh LoRA")
    if parent is not None:
        config = replace(config, init_adapter=str(registry.path(agent.name, parent) / "adapter"))
        say(f"warm start from {agent.name}@{parent}")
    run_dir = Path(run_dir) if run_dir else subdir("runs") / f"loop-{agent.name}-" \
        f"{data_hash(train)[:12]}{'-from-' + parent if parent else ''}"
    res = train_agent(agent, train, config=config, run_dir=run_dir, registry=registry,
                      promote=False, threads=threads, progress=progress, trace_ids=trace_ids,
                      log=say)
    version = res.version

    # lineage on the card: which reviews, calls, traces and people produced this adapter
    card = registry.card(agent.name, version)
    card["lineage"]["loop"] = {
        "review_ids": [it.id for it in train_items], "held_out_review_ids": sorted(held_ids),
        "call_ids": [it.call_id for it in train_items],
        "reviewers": sorted({it.reviewer for it in items if it.reviewer}),
        "flag_runs": sorted({it.flag_run for it in items if it.flag_run}),
        "warm_start_from": parent,
    }
    registry.update_card(agent.name, version, card)

    base_model = resolve_model(agent.model, where=f"agent {agent.name}")
    candidate = replace(agent, model=registry.model_for(base_model, agent.name, version),
                        adapter=None)
    current_v = registry.promoted(agent.name)
    current = (replace(agent, model=registry.model_for(base_model, agent.name, current_v),
                       adapter=None) if current_v else replace(agent, adapter=None))
    say(f"scoring {agent.name}@{version} and the serving {current_v or 'base model'} on "
        f"{len(cases)} cases")
    with logging_context(enabled=False):  # gate traffic stays out of the call log
        cand_scores = score(candidate, cases)
        cur_scores = score(current, cases)
        hold = {"candidate": score(candidate, rev_hold), "current": score(current, rev_hold)}
    say(f"candidate {cand_scores} vs current {cur_scores}; on held-out reviews: "
        f"{hold['candidate']} vs {hold['current']}")
    extra = {"loop": {"held_out_reviews": hold, "reviewed": len(items), "eval_cases": len(cases),
                      "review_ids": card["lineage"]["loop"]["review_ids"]}}
    promoted, decision = False, None
    try:
        decision = registry.promote(agent.name, version, cand_scores, baseline=cur_scores,
                                    tolerance=tolerance, extra=extra)
        promoted = True
        say(f"promoted {agent.name}@{version} (was {current_v or 'base model'})")
    except PromotionRejected as e:
        decision = e.details.get("decision") or {"action": "rejected", "reason": e.message}
        say(f"not promoted: {e.message}; {current_v or 'the base model'} keeps serving")
    if promoted:
        queue.mark_used([it.id for it in train_items], f"adapter:{agent.name}@{version}")
        queue.mark_used(sorted(held_ids), f"evals:{agent.name}@{version}")
    return RetrainResult(agent.name, version, promoted, decision, cand_scores, cur_scores, hold,
                         len(train), [it.id for it in train_items], sorted(held_ids),
                         len(cases), time.perf_counter() - t0)


def add_to_evals(log: CallLog, agent: str, path: str | Path, *, input_field: str = "input",
                 target_field: str = "target") -> int:
    """Append the agent's reviewed items to an eval set (JSONL), skipping inputs already there.
    Returns how many cases were added; tags the items ``evals:<path>``."""
    p = Path(path)
    queue = ReviewQueue(log)
    items = queue.reviewed(agent)
    have: set[str] = set()
    if p.is_file():
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    have.add(_canonical(json.loads(line)[input_field]))
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"line {i} is not a JSON object with {input_field!r}",
                                      where=f"{p}:{i}") from None
    added, used = [], []
    for it in items:
        ex = reviewed_examples([it])
        if not ex or ex[0].input_key() in have:
            continue
        have.add(ex[0].input_key())
        added.append({input_field: ex[0].input, target_field: ex[0].target,
                      "source": ex[0].source, "call_id": it.call_id, "reviewer": it.reviewer})
        used.append(it.id)
    if added:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8") as f:
            for row in added:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        queue.mark_used(used, f"evals:{p}")
    return len(added)
