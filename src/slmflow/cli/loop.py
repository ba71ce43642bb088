"""`slmflow loop ...`: the improvement loop from the shell (flag, queue, review, retrain,
add-to-evals, schedule, status). The review UI itself is `slmflow ui` (/review).

`review --judge-verdict right|wrong` and `retrain --judge NAME` are the judge half of the loop:
reviewers' decisions on a judge's verdicts retrain the judge (`slmflow.loop.judges`)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .common import (BATCH_SIZE, BF16, EPOCHS, LR, MAX_LEN, MAX_STEPS, SEED, TARGETS, THREADS,
                     json_or_text, train_config)

loop_app = typer.Typer(help="The improvement loop: flag weak calls, review, retrain, promote.",
                       no_args_is_help=True)

CALLS = typer.Option(None, "--calls", help="call-log URL (default: $SLMFLOW_CALLS_URL or "
                                           "$SLMFLOW_HOME/calls.db)")


def register(app: typer.Typer) -> None:
    app.add_typer(loop_app, name="loop")


def _log(calls: Optional[str]):
    from ..store import open_call_log

    return open_call_log(calls)


@loop_app.command("flag")
def flag_cmd(since: str = typer.Option("24h", help="window start: 24h, 7d, an ISO time"),
             until: Optional[str] = typer.Option(None, help="window end (default: now)"),
             rules: Optional[str] = typer.Option(None, help="comma-separated rules (default: "
                                                            "all)"),
             confidence_below: float = typer.Option(0.5, "--confidence-below"),
             budget: Optional[int] = typer.Option(50, "--budget",
                                                  help="max pending items per agent (0 = none "
                                                       "new; omit with --no-budget)"),
             no_budget: bool = typer.Option(False, "--no-budget"),
             agent: List[str] = typer.Option([], "--agent", help="only these agents"),
             dry_run: bool = typer.Option(False, "--dry-run"),
             as_json: bool = typer.Option(False, "--json"),
             calls: Optional[str] = CALLS,
             ray: Optional[str] = typer.Option(None, "--ray", help="select the window's time "
                                               "slices as Ray tasks on this cluster (host:port, "
                                               "ray://host:10001, auto, env = "
                                               "$SLMFLOW_RAY_ADDRESS)"),
             slices: Optional[int] = typer.Option(None, "--slices", min=1,
                                                  help="time slices (default with --ray: one "
                                                       "per cluster CPU)")) -> None:
    """Queue the window's weak calls for review, by rule, priority and per-agent budget."""
    from ..loop import RULES, FlagRules, flag_calls

    r = FlagRules(rules=tuple(x.strip() for x in rules.split(",") if x.strip()) if rules
                  else RULES, confidence_below=confidence_below,
                  budget_per_agent=None if no_budget else budget,
                  agents=tuple(agent) or None)
    log = _log(calls)
    try:
        rep = flag_calls(log, since=since, until=until, rules=r, dry_run=dry_run, ray=ray,
                         slices=slices)
    finally:
        log.close()
    if as_json:
        typer.echo(json.dumps(rep.as_dict(), indent=2))
        return
    from ..output import Col, print_table

    typer.echo(f"flag run {rep.run_id}{' (dry run)' if dry_run else ''}: "
               f"{rep.scanned} calls scanned, {rep.candidates} matched, "
               f"{rep.already_queued} already queued, {rep.total} queued now, "
               f"{rep.wall_s * 1000:.0f} ms")
    if rep.ray:
        typer.echo(f"on Ray at {rep.ray['address']}: {rep.slices} time slices as Ray tasks, "
                   f"{rep.ray['worker_processes']} worker process(es), "
                   f"{rep.ray['cluster_cpus'] or 0:g} cluster CPUs")
    elif rep.slices > 1:
        typer.echo(f"{rep.slices} time slices, in this process")
    print_table([Col("agent", key=True), Col("flagged"), Col("over budget")],
                [[a, str(rep.flagged.get(a, 0)), str(rep.over_budget.get(a, 0))]
                 for a in sorted(set(rep.flagged) | set(rep.over_budget))])
    if rep.by_reason:
        typer.echo("reasons: " + ", ".join(f"{k} {v}" for k, v in
                                           sorted(rep.by_reason.items(), key=lambda x: -x[1])))


@loop_app.command("evaluate")
def evaluate_cmd(evaluator: str = typer.Option(..., "--evaluator",
                                               help="a reference-free evaluator: toxicity, pii, "
                                                    "json_schema, groundedness, judge..."),
                 agent: Optional[str] = typer.Option(None, "--agent"),
                 since: str = typer.Option("24h"),
                 calls: Optional[str] = CALLS) -> None:
    """Judge logged calls with an evaluator; failures feed the flag job's failed_eval rule."""
    from ..loop import evaluate_calls

    log = _log(calls)
    try:
        rep = evaluate_calls(log, evaluator, agent=agent, since=since)
    finally:
        log.close()
    typer.echo(f"{rep.evaluator}: {rep.checked} checked, {rep.failed} failed, "
               f"{rep.skipped} already judged" + (f", {len(rep.errors)} errors (first: "
                                                  f"{rep.errors[0]})" if rep.errors else ""))


@loop_app.command("queue")
def queue_cmd(agent: Optional[str] = typer.Option(None, "--agent"),
              status: str = typer.Option("pending", help="pending | reviewed | orphaned | all"),
              limit: int = typer.Option(30, "--limit", "-n"),
              calls: Optional[str] = CALLS,
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The review queue, highest priority first, with counts per agent. Item ids are whole
    (`slmflow loop review` takes one, or a unique prefix); the input column is its first 60
    characters (``--json``: all of it)."""
    from ..output import Col, print_table
    from ..store.review import ReviewQueue

    log = _log(calls)
    try:
        q = ReviewQueue(log)
        items = q.items(agent, None if status == "all" else status, limit=limit)
        stats = q.stats()
        found = log.get_many(i.call_id for i in items)
    finally:
        log.close()
    recs = []
    for i in items:
        c = found.get(i.call_id)
        recs.append({"item": i.id, "call_id": i.call_id, "agent": i.agent,
                     "priority": i.priority, "status": i.status, "verdict": i.verdict,
                     "reasons": list(i.reasons), "input": None if c is None else c.input})
    if as_json:
        typer.echo(json.dumps({"stats": stats, "items": recs}, indent=2, default=str))
        return

    def preview(v: object) -> str:
        if v is None:
            return "(deleted)"
        return (v if isinstance(v, str) else json.dumps(v))[:60]

    print_table([Col("item", key=True), Col("agent", key=True), Col("priority"), Col("status"),
                 Col("reasons"), Col("input")],
                [[r["item"], r["agent"] or "", f"{r['priority']:.2f}",
                  r["verdict"] or r["status"], ", ".join(r["reasons"]), preview(r["input"])]
                 for r in recs],
                title="review queue: " + ("; ".join(
                    f"{a}: " + ", ".join(f"{k} {v}" for k, v in sorted(s.items()))
                    for a, s in sorted(stats.items())) or "empty"))


@loop_app.command("review")
def review_cmd(item: str = typer.Argument(..., help="item id (or a unique prefix)"),
               accept: bool = typer.Option(False, "--accept"),
               reject: bool = typer.Option(False, "--reject"),
               correct: Optional[str] = typer.Option(None, "--correct",
                                                     help="the corrected output, as JSON"),
               reviewer: str = typer.Option(..., "--reviewer"),
               note: Optional[str] = typer.Option(None, "--note"),
               judge_verdict: Optional[str] = typer.Option(
                   None, "--judge-verdict", help="right | wrong: was the judge's verdict on "
                   "this item right? (with or without an --accept/--reject/--correct)"),
               judge: Optional[str] = typer.Option(None, "--judge", help="which judge (when "
                                                   "several judged the item)"),
               label: Optional[str] = typer.Option(None, "--label", help="the right label "
                                                   "(with --judge-verdict wrong, when the "
                                                   "judge has more than two)"),
               calls: Optional[str] = CALLS) -> None:
    """Decide one item from the shell (the web UI is `slmflow ui`, /review). With
    --judge-verdict, also (or only) say whether the judge that flagged it was right."""
    from ..errors import ConfigError
    from ..store.review import ReviewQueue

    chosen = [v for v, on in (("accept", accept), ("reject", reject),
                              ("correct", correct is not None)) if on]
    if len(chosen) > 1 or (not chosen and judge_verdict is None):
        raise ConfigError("give exactly one of --accept, --reject, --correct JSON (and/or "
                          "--judge-verdict right|wrong)", where="loop review")
    if judge_verdict is None and (judge or label):
        raise ConfigError("--judge and --label go with --judge-verdict right|wrong",
                          where="loop review")
    corr = json_or_text(correct)
    log = _log(calls)
    try:
        q = ReviewQueue(log)
        full = log._all("SELECT id FROM review_items WHERE id LIKE ?", (item + "%",))
        if len(full) != 1:
            raise ConfigError(f"{'no' if not full else 'more than one'} review item matches "
                              f"{item!r}", where="loop review")
        if judge_verdict is not None:
            from ..store.judges import JudgeReviews

            d = JudgeReviews(log).decide(full[0][0], judge_verdict, reviewer=reviewer,
                                         judge=judge, label=label, note=note)
            typer.echo(f"{d.item_id}: judge {d.judge} {d.verdict} (it said "
                       f"{d.judge_label or ('pass' if d.judge_passed else 'fail')}; right label "
                       f"{d.label}) by {d.reviewer}")
        if chosen:
            it = q.review(full[0][0], chosen[0], reviewer=reviewer, correction=corr, note=note)
            typer.echo(f"{it.id}: {it.verdict} by {it.reviewer}")
    finally:
        log.close()


@loop_app.command("retrain")
def retrain_cmd(
    agent: Optional[str] = typer.Option(None, "--agent", help="the agent's name in the "
                                                              "workflow"),
    workflow: Optional[Path] = typer.Option(None, "--workflow", "-w", help="the workflow YAML "
                                                                           "(with --agent)"),
    judge: Optional[str] = typer.Option(None, "--judge", help="retrain a judge evaluator from "
                                        "reviewers' right/wrong decisions on its verdicts "
                                        "(instead of --agent)"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="the judge's model "
                                              "(default: the one it ran with)"),
    min_decisions: int = typer.Option(8, "--min-decisions", help="--judge: reviewed verdicts "
                                      "needed"),
    min_holdout: int = typer.Option(4, "--min-holdout", help="--judge: held-out decisions for "
                                    "the kappa gate, at least"),
    shots: int = typer.Option(4, "--shots", help="--judge: few-shot examples in the rubric"),
    no_few_shot: bool = typer.Option(False, "--no-few-shot", help="--judge: no few-shot "
                                     "candidate"),
    no_lora: bool = typer.Option(False, "--no-lora", help="--judge: no LoRA candidate"),
    min_gain: float = typer.Option(0.0, "--min-gain", help="--judge: kappa a candidate must add "
                                   "over the serving judge to be promoted (a few hundred "
                                   "decisions: use ~0.1, smaller gains are noise)"),
    data: Optional[Path] = typer.Option(None, "--data", help="the agent's original training "
                                                             "pairs (.jsonl/.csv)"),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="the agent's eval cases"),
    input_field: str = typer.Option("input", "--input-field"),
    target_field: str = typer.Option("target", "--target-field"),
    target_key: Optional[str] = typer.Option(None, "--target-key"),
    evaluator: List[str] = typer.Option([], "--evaluator", "-e",
                                        help="eval-suite evaluator for the gate (repeatable; "
                                             "default: exact match of the whole output)"),
    field: Optional[str] = typer.Option(None, "--field",
                                        help="output field the evaluators compare"),
    holdout: float = typer.Option(0.3, help="share of reviewed items held out for the gate"),
    min_new: int = typer.Option(5, "--min-new", help="reviewed items not yet in an adapter"),
    epochs: float = EPOCHS, lr: float = LR, r: int = typer.Option(16),
    batch_size: int = BATCH_SIZE, max_len: int = MAX_LEN, max_steps: Optional[int] = MAX_STEPS,
    targets: str = TARGETS, bf16: Optional[bool] = BF16, threads: int = THREADS,
    tolerance: float = typer.Option(0.0),
    seed: int = SEED,
    warm_start: bool = typer.Option(False, "--warm-start",
                                    help="start from the serving version's weights (same --r "
                                         "and --targets); fewer --epochs are enough"),
    calls: Optional[str] = CALLS,
) -> None:
    """Reviewed calls + original data → a new adapter → the agent's gate → promoted or not.
    With --judge NAME: reviewers' decisions on the judge's verdicts → a few-shot rubric and a
    LoRA → the one with the higher held-out kappa is promoted if it beats the current judge."""
    from ..errors import ConfigError
    from ..finetune.agent_train import find_agent
    from ..finetune.data import load_examples
    from ..loop import retrain_agent
    from ..loop.retrain import suite_score

    if (agent is None) == (judge is None):
        raise ConfigError("give --agent NAME --workflow YAML, or --judge NAME", where="loop "
                          "retrain")
    cfg = train_config(r=r, lr=lr, epochs=epochs, batch_size=batch_size, max_len=max_len,
                       max_steps=max_steps, seed=seed, bf16=bf16, targets=targets)
    if judge is not None:
        from ..loop.judges import retrain_judge

        log = _log(calls)
        try:
            jr = retrain_judge(judge, log, model=judge_model, holdout=holdout,
                               min_decisions=min_decisions, min_holdout=min_holdout,
                               few_shot=not no_few_shot, lora=not no_lora, shots=shots,
                               min_gain=min_gain, config=cfg, threads=threads or None,
                               say=typer.echo)
        finally:
            log.close()
        typer.echo(json.dumps({k: v for k, v in jr.as_dict().items()
                               if k not in ("train_ids", "held_out_ids")}, indent=2,
                              default=str))
        if jr.promoted is None:
            raise typer.Exit(3)  # candidates written, the current judge keeps judging
        return
    if workflow is None:
        raise ConfigError("--agent needs --workflow YAML", where="loop retrain")
    a = find_agent(workflow, agent)
    scorer = (suite_score([{"name": e, **({"field": field} if field else {})}
                           for e in evaluator]) if evaluator else None)
    kw = dict(input_field=input_field, target_field=target_field, target_key=target_key)
    original = load_examples(data, **kw) if data else []
    cases = load_examples(eval_data, **kw) if eval_data else []
    log = _log(calls)
    try:
        res = retrain_agent(a, log, data=original, eval_cases=cases, holdout=holdout,
                            min_new=min_new, config=cfg, threads=threads or None,
                            tolerance=tolerance, score=scorer, warm_start=warm_start,
                            say=typer.echo)
    finally:
        log.close()
    typer.echo(json.dumps({k: v for k, v in res.as_dict().items()
                           if k not in ("reviewed_train", "reviewed_holdout")}, indent=2,
                          default=str))
    if not res.promoted:
        raise typer.Exit(3)  # trained and registered, but the gate kept the old version


@loop_app.command("add-to-evals")
def add_to_evals_cmd(agent: str = typer.Option(..., "--agent"),
                     to: Path = typer.Option(..., "--to", help="the agent's eval set (.jsonl)"),
                     calls: Optional[str] = CALLS) -> None:
    """Append the agent's reviewed items to its eval set instead of (or before) training."""
    from ..loop import add_to_evals

    log = _log(calls)
    try:
        n = add_to_evals(log, agent, to)
    finally:
        log.close()
    typer.echo(f"added {n} case(s) to {to}")


@loop_app.command("schedule")
def schedule_cmd(every: str = typer.Option("24h", help="how often: 30m, 6h, 24h"),
                 at: str = typer.Option("03:00", help="time of day for daily runs (cron)"),
                 run: bool = typer.Option(False, "--run", help="run the loop in this process "
                                                               "instead of printing a cron line"),
                 max_runs: Optional[int] = typer.Option(None, "--max-runs"),
                 budget: int = typer.Option(50, "--budget"),
                 calls: Optional[str] = CALLS) -> None:
    """A cron entry for the daily flagging job (or `--run` to loop here)."""
    from ..store.records import _DUR

    m = _DUR.match(every.strip())
    if not m:
        from ..errors import ConfigError

        raise ConfigError(f"cannot read {every!r} as a period (use 30m, 6h, 24h)",
                          where="loop schedule")
    secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    args = ["loop", "flag", "--since", every, "--budget", str(budget)] + \
        (["--calls", calls] if calls else [])
    if not run:
        exe = shlex.quote(str(Path(sys.executable).parent / "slmflow"))
        hh, _, mm = at.partition(":")
        if secs >= 86400:
            when = f"{int(mm or 0)} {int(hh)} * * *"
        elif secs >= 3600:
            when = f"0 */{int(secs // 3600)} * * *"
        else:
            when = f"*/{max(1, int(secs // 60))} * * * *"
        from ..home import home

        typer.echo(f"# slmflow improvement loop: flag weak calls every {every}\n"
                   f"{when} SLMFLOW_HOME={shlex.quote(str(home()))} {exe} "
                   + " ".join(shlex.quote(a) for a in args)
                   + f" >> {shlex.quote(str(home() / 'loop.log'))} 2>&1")
        typer.echo("# install: (crontab -l; slmflow loop schedule) | crontab -", err=True)
        return
    n = 0
    while max_runs is None or n < max_runs:
        flag_cmd(since=every, until=None, rules=None, confidence_below=0.5, budget=budget,
                 no_budget=False, agent=[], dry_run=False, as_json=False, calls=calls,
                 ray=None, slices=None)
        n += 1
        if max_runs is not None and n >= max_runs:
            break
        time.sleep(secs)


@loop_app.command("status")
def status_cmd(calls: Optional[str] = CALLS,
               as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Where the loop stands: queue per agent, the last flag runs, promoted adapters."""
    from ..finetune.registry import AdapterRegistry
    from ..store.review import ReviewQueue

    log = _log(calls)
    try:
        stats = ReviewQueue(log).stats()
        runs = log._all("SELECT ts, scanned, candidates, flagged, wall_s FROM flag_runs "
                        "ORDER BY seq DESC LIMIT 5", ())
    finally:
        log.close()
    reg = AdapterRegistry()
    if as_json:
        typer.echo(json.dumps({
            "queue": stats,
            "flag_runs": [{"ts": ts, "scanned": sc, "matched": ca, "queued": fl, "wall_s": w}
                          for ts, sc, ca, fl, w in runs],
            "adapters": {a: {"serving": reg.promoted(a), "versions": list(reg.versions(a))}
                         for a in reg.agents()}}, indent=2, default=str))
        return
    for a, s in sorted(stats.items()):
        typer.echo(f"queue {a}: " + ", ".join(f"{k} {v}" for k, v in sorted(s.items())))
    for ts, scanned, cand, flagged, wall in runs:
        typer.echo(f"flag run {time.strftime('%Y-%m-%d %H:%M', time.localtime(ts))}: "
                   f"{scanned} scanned, {cand} matched, {flagged} queued ({wall or 0:.2f} s)")
    for a in reg.agents():
        typer.echo(f"adapter {a}: serving {reg.promoted(a) or 'base model'} "
                   f"(versions: {', '.join(reg.versions(a))})")
