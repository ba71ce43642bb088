"""Judges that learn from reviewers: reviewers' "judge right / judge wrong" decisions → a better
judge, promoted only when it agrees more with held-out human decisions.

Why: the improvement loop's flags come from evaluators, and a judge-type evaluator (an SLM with a
rubric) disagrees with people often (docs/evals.md measures kappa near chance for SmolLM2-135M).
A flag the judge got wrong wastes a reviewer's time; a failure it missed is never flagged. The
reviewers who look at a flagged item see the judge's verdict anyway, and their decisions on it
(`slmflow.store.judges`) are the labelled data to fix the judge with, the same way reviewed
outputs fix an agent (`slmflow.loop.retrain`).

`retrain_judge` (what `slmflow loop retrain --judge NAME` runs):

1. reads the judge's decisions (each: the call, the judge's label, the right label) and refuses
   to run with fewer than ``min_decisions`` or without room for a held-out split;
2. holds out a stable share by a hash of the call id (the same rule as the agent retrain, so a
   decision held out once stays held out in every later retrain); at least ``min_holdout``;
3. builds up to two candidates from the other decisions:
   (a) **few-shot**: a new rubric version whose examples are reviewed cases with their right
       verdict (balanced across labels, newest first, at most ``shots``);
   (b) **LoRA**: the judge as an agent (its system prompt as instructions, the verdict schema as
       output type) trained with the agent trainer (`slmflow.finetune.agent_train.train_agent`)
       on the reviewed cases, registered in the adapter registry as ``judge.<name>`` with its
       parent and trace ids, and wrapped in a rubric version that names the adapter;
4. scores the judge serving now (its promoted rubric version, or the bare rubric) and each
   candidate on the *same* held-out decisions: Cohen's kappa between the judge's pass/fail and
   the reviewer's (`slmflow.evals.calibrate.cohen_kappa`); a judge error counts as a
   disagreement;
5. promotes the candidate with the higher kappa only if it is above the current judge's (by more
   than ``min_gain``), else neither; both candidates stay on disk unpromoted for the record, and
   every decision goes to the judge's ``history.jsonl`` (and, for a LoRA, the registry's
   history). The promoted version's decisions are tagged ``judge:<name>@vN`` (``used_in``).

The judge evaluators load the promoted version when built (`slmflow.evals.learned`), so the next
`slmflow loop evaluate` judges with it.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..store.calllog import CallLog
from ..store.judges import JudgeDecision, JudgeReviews
from .retrain import LoopError, is_held_out

__all__ = ["JudgeRetrainResult", "retrain_judge", "judge_kappa", "build_judge"]

SHOT_CHARS = 800  # a few-shot example's case text is cut here (a 135M model's context is short)


@dataclass
class JudgeRetrainResult:
    judge: str
    current: str | None  # the rubric version serving before (None: the bare rubric)
    current_scores: dict[str, float]
    candidates: dict[str, dict[str, Any]]  # rubric version -> {kind, scores, adapter}
    promoted: str | None
    train_ids: list[str] = field(default_factory=list)
    held_out_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_judge(name: str, log: CallLog, *, model: Any = None) -> Any:
    """The judge evaluator ``name`` as the online job ran it (from the call log's ``judges``
    table), without any learned rubric. model: replace the recorded model (needed when the
    judge ran with a model object, which the log cannot rebuild)."""
    from ..evals.base import create

    info = JudgeReviews(log).judge(name, where=f"loop retrain --judge {name}")
    spec = dict(info.spec)
    if model is not None:
        spec["model"] = model
    if spec.get("model") is None:
        raise ConfigError(f"judge {name} ran with a model object the call log cannot rebuild; "
                          "pass the judge's model (--judge-model NAME)",
                          where=f"loop retrain --judge {name}")
    if info.evaluator == "judge":
        spec["name"] = name
    return create(info.evaluator, **{**spec, "learned": False})


def _variant(ev: Any, rubric: dict[str, Any] | None, model: Any = None) -> Any:
    """A copy of the evaluator with ``rubric`` (or none) applied, on ``model`` if given."""
    from ..evals.learned import apply_rubric

    e = copy.copy(ev)
    e.judge = copy.copy(ev.judge)
    e.judge.few_shot, e.judge.adapter = [], None
    if rubric is not None:
        apply_rubric(e.judge, rubric, where=f"judges/{ev.name}@{rubric.get('version')}")
    if model is not None:
        e.judge.model_spec, e.judge.adapter = model, None
    return e


def _case(call: Any) -> Any:
    from ..evals.base import Case

    return Case(id=call.id, input=call.input, context=(call.meta or {}).get("context"))


def judge_kappa(ev: Any, rows: Sequence[tuple[Any, Any, bool]]) -> dict[str, float]:
    """Agreement of ``ev`` with people on (case, output, human says pass) rows: Cohen's kappa,
    accuracy, n and errored (an error counts as a disagreement)."""
    from ..evals.calibrate import cohen_kappa
    from ..models.base import run_sync
    from ..store.writer import logging_context

    async def one(case: Any, out: Any) -> Any:
        try:
            return (await ev.aevaluate(case, out)).ok
        except Exception as e:  # noqa: BLE001 - an unjudged row counts against the judge
            return e

    async def main() -> list[Any]:
        return [await one(c, o) for c, o, _ in rows]

    with logging_context(enabled=False):  # gate traffic stays out of the call log
        got = run_sync(main())
    pairs = [(h, (not h) if isinstance(g, Exception) else bool(g))
             for (_, _, h), g in zip(rows, got)]
    acc, kappa = cohen_kappa(pairs)
    return {"kappa": round(kappa, 4), "accuracy": round(acc, 4), "n": len(pairs),
            "errored": sum(isinstance(g, Exception) for g in got)}


def _target(d: JudgeDecision, judge_reason: str) -> dict[str, Any]:
    """The verdict a judge should have given: the right label, score 5 (pass) or 1 (fail), the
    reviewer's note, or the judge's own reason when it was right."""
    reason = (d.note or (judge_reason if d.judge_right else "") or
              f"A reviewer judged this {d.label}.")
    return {"verdict": d.label, "score": 5 if d.passed else 1, "reason": reason[:160]}


def _shots(decs: Sequence[JudgeDecision], texts: dict[str, str], targets: dict[str, dict],
           n: int) -> list[dict[str, Any]]:
    """Up to ``n`` examples, newest first, alternating pass and fail labels."""
    by = {True: [d for d in reversed(decs) if d.passed],
          False: [d for d in reversed(decs) if not d.passed]}
    out: list[JudgeDecision] = []
    turn = True
    while len(out) < n and (by[True] or by[False]):
        if by[turn]:
            out.append(by[turn].pop(0))
        turn = not turn
    return [{"user": texts[d.id][:SHOT_CHARS], "verdict": targets[d.id], "review_id": d.id,
             "item_id": d.item_id, "call_id": d.call_id} for d in out]


def retrain_judge(name: str, log: CallLog, *, evaluator: Any = None, model: Any = None,
                  holdout: float = 0.3, min_decisions: int = 8, min_holdout: int = 4,
                  few_shot: bool = True, lora: bool = True, shots: int = 4,
                  min_gain: float = 0.0, config: Any = None, registry: Any = None,
                  threads: int | None = None, run_dir: str | Path | None = None,
                  root: str | Path | None = None, progress: bool = True,
                  say: Callable[[str], None] = print) -> JudgeRetrainResult:
    """One turn of the loop for one judge; see the module doc. evaluator: the judge evaluator to
    improve (default: rebuilt from the call log's ``judges`` table, on ``model`` if given).
    root: the judges folder (default ``$SLMFLOW_HOME/judges``)."""
    from ..evals import learned

    t0 = time.perf_counter()
    where = f"loop retrain --judge {name}"
    reviews = JudgeReviews(log)
    info = reviews.judge(name, where=where)  # unknown judge: a ConfigError naming the known
    if not few_shot and not lora:
        raise ConfigError("nothing to train: both the few-shot and the LoRA candidate are off",
                          where=where)
    if min_holdout < 1 or min_decisions < min_holdout + 1:
        raise ConfigError(f"min_decisions ({min_decisions}) must exceed min_holdout "
                          f"({min_holdout}), which must be at least 1", where=where)
    decs = reviews.decisions(name)
    calls = log.get_many(d.call_id for d in decs)
    decs = [d for d in decs if d.call_id in calls]
    need = max(min_decisions, min_holdout + 1)
    if len(decs) < need:
        raise LoopError(f"judge {name} has {len(decs)} reviewed verdict(s) in the call log; a "
                        f"retrain needs at least {need} ({min_holdout} held out for the gate, the "
                        "rest to learn from): mark more verdicts right or wrong in `slmflow ui` "
                        "or `slmflow loop review ITEM --judge-verdict right|wrong`",
                        where=f"{where} ({log.url_safe})", decisions=len(decs))
    ev = evaluator if evaluator is not None else build_judge(name, log, model=model)
    if getattr(ev, "kind", None) != "judge" or not hasattr(ev, "judge"):
        raise ConfigError(f"{ev!r} is not a judge evaluator", where=where)
    if list(ev.judge.labels) != list(info.labels):
        raise ConfigError(f"the evaluator's labels {list(ev.judge.labels)} differ from the "
                          f"logged judge's {info.labels}", where=where)
    rank = lambda d: hashlib.sha256(d.call_id.encode()).hexdigest()  # noqa: E731
    held = [d for d in decs if is_held_out(d.call_id, holdout)]
    if len(held) < min_holdout:  # top up in hash order: the choice stays stable
        rest = sorted((d for d in decs if d not in held), key=rank)
        held += rest[:min_holdout - len(held)]
    held_ids = {d.id for d in held}
    train = [d for d in decs if d.id not in held_ids]
    if not train:
        raise LoopError(f"judge {name}: every decision is held out for the gate; review more",
                        where=where)

    def row(d: JudgeDecision) -> tuple[Any, Any, bool]:
        c = calls[d.call_id]
        return _case(c), ev.judged(c.output), d.passed

    held_rows = [row(d) for d in held]
    texts = {d.id: ev.judge.user_text(*row(d)[:2]) for d in train}
    targets = {d.id: _target(d, _judge_reason(reviews, d)) for d in train}
    if len({h for *_, h in held_rows}) < 2:
        say(f"note: every held-out decision says {'pass' if held_rows[0][2] else 'fail'}; "
            "kappa cannot rise above 0 on such a split unless the judge is perfect")
    say(f"judge {name}: {len(decs)} reviewed verdicts: {len(train)} to learn from, "
        f"{len(held)} held out")

    from ..finetune.registry import AdapterRegistry

    registry = registry or AdapterRegistry()
    current = learned.promoted_version(name, root)
    cur_rubric = learned.load_rubric(name, current, root) if current else None
    lineage = {
        "parent": current, "review_ids": [d.id for d in train],
        "held_out_review_ids": sorted(held_ids), "item_ids": [d.item_id for d in train],
        "call_ids": [d.call_id for d in train],
        "trace_ids": sorted({calls[d.call_id].trace_id for d in train
                             if calls[d.call_id].trace_id}),
        "reviewers": sorted({d.reviewer for d in decs})}
    cur_ev = _variant(ev, cur_rubric, _adapter_model(ev, cur_rubric, registry))
    cur_scores = judge_kappa(cur_ev, held_rows)
    say(f"serving {name}@{current or 'base rubric'}: kappa {cur_scores['kappa']:.3f} on "
        f"{len(held)} held-out decisions")
    base = {"rubric": ev.judge.rubric, "labels": list(ev.judge.labels),
            "pass_labels": list(ev.judge.pass_labels), "model": info.spec.get("model"),
            "lineage": lineage, "current_scores": cur_scores, "created": time.time()}
    candidates: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    if few_shot:
        rubric = {**base, "kind": "few_shot", "adapter": None,
                  "few_shot": _shots(train, texts, targets, shots)}
        scores = judge_kappa(_variant(ev, rubric), held_rows)
        v = learned.write_rubric(name, {**rubric, "scores": scores}, root)
        candidates[v] = {"kind": "few_shot", "scores": scores, "adapter": None}
        say(f"candidate {name}@{v} (few-shot, {len(rubric['few_shot'])} examples): kappa "
            f"{scores['kappa']:.3f}")

    if lora:
        why = _cannot_train(ev)
        if why:
            notes.append(f"LoRA candidate skipped: {why}")
            say(notes[-1])
        else:
            v, cand = _lora_candidate(name, ev, train, texts, targets, calls, lineage, base,
                                      held_rows, registry=registry, config=config,
                                      threads=threads, run_dir=run_dir, root=root,
                                      progress=progress, say=say)
            candidates[v] = cand

    best = max(candidates, key=lambda v: candidates[v]["scores"]["kappa"], default=None)
    promoted = None
    decision = {"judge": name, "current": current, "current_scores": cur_scores,
                "candidates": candidates, "held_out": len(held), "min_gain": min_gain}
    if best is not None and candidates[best]["scores"]["kappa"] > cur_scores["kappa"] + min_gain:
        cand = candidates[best]
        if cand["adapter"]:
            agent, version = cand["adapter"].split("@", 1)
            registry.promote(agent, version, {"kappa": cand["scores"]["kappa"]},
                             baseline={"kappa": cur_scores["kappa"]},
                             extra={"judge": name, "rubric_version": best,
                                    "held_out_decisions": sorted(held_ids)})
        learned.promote(name, best, decision, root)
        reviews.mark_used([d.id for d in train], f"judge:{name}@{best}")
        reviews.mark_used(sorted(held_ids), f"judge-gate:{name}@{best}")
        promoted = best
        say(f"promoted {name}@{best} ({cand['kind']}): kappa {cur_scores['kappa']:.3f} -> "
            f"{cand['scores']['kappa']:.3f}")
    else:
        learned.log_decision(name, {**decision, "action": "rejected", "best": best}, root)
        say(f"not promoted: no candidate raised kappa over {cur_scores['kappa']:.3f}; "
            f"{name}@{current or 'base rubric'} keeps judging")
    return JudgeRetrainResult(name, current, cur_scores, candidates, promoted,
                              [d.id for d in train], sorted(held_ids), notes,
                              time.perf_counter() - t0)


def _judge_reason(reviews: JudgeReviews, d: JudgeDecision) -> str:
    for v in reviews.verdicts(d.call_id):
        if v.judge == d.judge:
            return v.reason
    return ""


def _adapter_model(ev: Any, rubric: dict[str, Any] | None, registry: Any) -> Any:
    """The judge model with a rubric's adapter, loaded from ``registry`` (None: no adapter)."""
    if not rubric or not rubric.get("adapter"):
        return None
    from ..agents import resolve_model

    agent, version = rubric["adapter"].split("@", 1)
    base = resolve_model(ev.judge.model_spec, where=f"judge {ev.name}")
    return registry.model_for(base, agent, version)


def _cannot_train(ev: Any) -> str | None:
    from ..agents import resolve_model
    from ..models.llamacpp import LlamaCppModel
    from ..models.transformers import TransformersModel

    try:
        m = resolve_model(ev.judge.model_spec, where=f"judge {ev.name}")
    except ConfigError as e:
        return e.message
    if isinstance(m, (LlamaCppModel, TransformersModel)):
        return None
    return (f"the judge's model {m.info.identity} ({type(m).__name__}) cannot be fine-tuned "
            "(a llama.cpp GGUF or a transformers model can)")


def _lora_candidate(name: str, ev: Any, train: Sequence[JudgeDecision], texts: dict[str, str],
                    targets: dict[str, dict], calls: dict[str, Any], lineage: dict[str, Any],
                    base: dict[str, Any], held_rows: Sequence[tuple[Any, Any, bool]], *,
                    registry: Any, config: Any, threads: int | None,
                    run_dir: str | Path | None, root: str | Path | None, progress: bool,
                    say: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """Train the judge as an agent (same system prompt, verdict schema), register the adapter,
    score it and write the rubric version that names it."""
    from ..agents import Agent, resolve_model
    from ..evals import learned
    from ..finetune.agent_train import train_agent
    from ..finetune.data import Example, data_hash
    from ..finetune.trainer import TrainConfig
    from ..home import subdir

    agent_name = learned.adapter_agent(name)
    judge_agent = Agent(agent_name, ev.judge.model_spec, instructions=ev.judge.system_prompt(),
                        output_type=ev.judge.schema, max_tokens=ev.judge.max_tokens)
    examples = [Example(texts[d.id], targets[d.id], source=f"judge-review:{d.id}")
                for d in train]
    run_dir = Path(run_dir) if run_dir else \
        subdir("runs") / f"judge-{name}-{data_hash(examples)[:12]}"
    res = train_agent(judge_agent, examples, config=config or TrainConfig(), run_dir=run_dir,
                      registry=registry, promote=False, threads=threads, progress=progress,
                      trace_ids=lineage["trace_ids"], log=say)
    version = res.version
    card = registry.card(agent_name, version)
    card["lineage"]["loop"] = {**lineage, "judge": name}
    registry.update_card(agent_name, version, card)
    adapter = f"{agent_name}@{version}"
    model = registry.model_for(resolve_model(ev.judge.model_spec, where=f"judge {name}"),
                               agent_name, version)
    scores = judge_kappa(_variant(ev, None, model), held_rows)
    registry.record_scores(agent_name, version, {"kappa": scores["kappa"]})
    v = learned.write_rubric(name, {**base, "kind": "lora", "adapter": adapter, "few_shot": [],
                                    "scores": scores}, root)
    say(f"candidate {name}@{v} (LoRA {adapter}): kappa {scores['kappa']:.3f}")
    return v, {"kind": "lora", "scores": scores, "adapter": adapter}
