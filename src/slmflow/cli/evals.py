"""`slmflow eval list|agent|workflow|calibrate`: evaluators, per-agent suites, workflow scenarios,
the gate, and an evaluator's agreement with human labels.

Exit status: 0 when the suite ran (and the gate, if ``--baseline`` is given, passed); 1 on a gate
failure or a configuration error. Failed and errored rows alone do not change the exit status:
the gate decides what a regression is.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import ConfigError

eval_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="Evaluate agents and workflows; gate on a baseline.")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the registered evaluators, their kind and their measured agreement."""
    from ..evals import list_evaluators
    from ..output import Col, print_table

    rows = list_evaluators()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_table([Col("name", key=True), Col("kind"), Col("description"),
                 Col("agreement with human labels")],
                [[r["name"], r["kind"], r["description"], r["agreement"]] for r in rows],
                title="evaluators")


def _opt_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


@eval_app.command("calibrate")
def calibrate_cmd(
    evaluator: str = typer.Argument(..., help="a registered evaluator (slmflow eval list)"),
    data: Path = typer.Option(..., "--data", "-d", help="JSONL: one output and its human label "
                              "per line ({\"output\": ..., \"label\": ...})"),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="evaluator argument "
                                               "KEY=VALUE (repeatable), e.g. -o model=gguf:/m"),
    output_field: str = typer.Option("output", "--output-field"),
    label_field: str = typer.Option("label", "--label-field"),
    input_field: str = typer.Option("input", "--input-field"),
    context_field: str = typer.Option("context", "--context-field"),
    concurrency: int = typer.Option(1, "--concurrency", "-c"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds per row"),
    card: Optional[Path] = typer.Option(None, "--card", help="write the card here (a .json "
                                        "file or a folder; default $SLMFLOW_HOME/evals/cards)"),
    no_card: bool = typer.Option(False, "--no-card", help="measure only, write no card"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the figures as JSON to "
                                            "this file ('-': to stdout, the tables to stderr)"),
) -> None:
    """Measure an evaluator against human labels: accuracy, Cohen's kappa, confusion matrix,
    per-label recall, the best threshold; written to the evaluator's card for `eval list`."""
    from ..evals.calibrate import calibrate, write_card
    from ..output import console, print_table

    opts: dict[str, Any] = {}
    for o in option or []:
        if "=" not in o:
            raise ConfigError(f"--option {o!r}: use KEY=VALUE", where="eval calibrate")
        k, v = o.split("=", 1)
        opts[k.strip()] = _opt_value(v)
    cal = calibrate(evaluator, data, options=opts, concurrency=concurrency, timeout_s=timeout,
                    output_field=output_field, label_field=label_field,
                    input_field=input_field, context_field=context_field)
    to_stdout = json_out is not None and str(json_out) == "-"
    con = console(stderr=to_stdout)
    lp, lf = cal.labels
    con.print(f"[bold]{cal.evaluator}[/] on {data}: n={cal.n}, errored={cal.errored}, "
              f"{cal.cases_per_s} cases/s" + (f", engine {cal.engine.get('engine')}"
                                               if cal.engine.get("engine") else ""))
    print_table(["accuracy", "Cohen's kappa", f"recall({lp})", f"recall({lf})",
                 f"precision({lf})", f"F1({lf})"],
                [[f"{cal.accuracy:.3f}", f"{cal.kappa:.3f}", f"{cal.recall[lp]:.3f}",
                  f"{cal.recall[lf]:.3f}", f"{cal.fail_precision:.3f}", f"{cal.fail_f1:.3f}"]],
                title="agreement with human labels", con=con)
    print_table(["human", lp, lf],
                [[h, str(cal.confusion[h][lp]), str(cal.confusion[h][lf])] for h in (lp, lf)],
                title="confusion (rows: human, columns: evaluator)", con=con)
    if cal.best_threshold:
        b = cal.best_threshold
        con.print(f"best threshold on the score (passes when score >= t): t={b['threshold']} "
                  f"-> accuracy {b['accuracy']:.3f}, kappa {b['kappa']:.3f} (in-sample)")
    for e in cal.errors[:5]:
        con.print(f"[yellow]errored[/] {e}", highlight=False)
    if to_stdout:
        typer.echo(json.dumps(cal.to_dict(), indent=2, default=str))
    elif json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(cal.to_dict(), indent=2, default=str))
    if not no_card:
        con.print(f"card: {write_card(cal, card)}", highlight=False)


def _finish(rep: Any, json_out: Optional[Path], html: Optional[Path], baseline: Optional[Path],
            tolerance: float, metrics: Optional[List[str]], save_baseline: Optional[Path],
            quiet: bool) -> None:
    from ..evals import compare, print_report, write_html
    from ..output import console

    to_stdout = json_out is not None and str(json_out) == "-"
    con = console(stderr=quiet or to_stdout)
    print_report(rep, con)
    gate = compare(rep, baseline, tolerance, metrics or None) if baseline else None
    if json_out:
        d = rep.to_dict()
        if gate is not None:
            d["gate"] = gate.to_dict()
        if to_stdout:
            typer.echo(json.dumps(d, indent=2, default=str))
        else:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(d, indent=2, default=str))
            con.print(f"JSON report: {json_out}")
    if html:
        write_html(rep, html, gate)
        con.print(f"HTML report: {html}")
    if save_baseline:
        rep.save(save_baseline, rows=False)
        con.print(f"baseline saved: {save_baseline}")
    if gate is not None:
        for line in gate.lines():
            con.print(("[red]" if line.startswith(("DROP", "MISS")) else "") + line,
                      highlight=False)
        if not gate.passed:
            con.print(f"[bold red]regression gate FAILED[/] (tolerance {tolerance})")
            raise typer.Exit(1)
        con.print(f"[bold green]regression gate passed[/] (tolerance {tolerance})")


_JSON = typer.Option(None, "--json", help="write the JSON report here ('-': to stdout, the "
                                          "tables to stderr)")
_HTML = typer.Option(None, "--html", help="write the self-contained HTML report here")
_BASE = typer.Option(None, "--baseline", help="a saved report JSON to gate against")
_TOL = typer.Option(0.02, "--tolerance", help="allowed drop per metric")
_MET = typer.Option(None, "--metric", help="gate only these metrics (repeatable)")
_SAVE = typer.Option(None, "--save-baseline", help="save this run's scores as a baseline")


@eval_app.command("agent")
def agent_cmd(
    target: str = typer.Argument(..., help="a suite YAML file, module:attr / file.py:attr of an "
                                 "Agent, or an agent name with --workflow"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="JSONL, CSV or YAML cases"),
    evaluator: Optional[List[str]] = typer.Option(None, "--evaluator", "-e",
                                                  help="evaluator name (repeatable)"),
    workflow: Optional[Path] = typer.Option(None, "--workflow", "-w",
                                            help="take the agent from this workflow YAML"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="run the agent on this model"),
    field: Optional[str] = typer.Option(None, "--field", help="output field to compare"),
    input_field: Optional[str] = typer.Option(None, "--input-field"),
    expected_field: Optional[str] = typer.Option(None, "--expected-field"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n",
                                        help="fixed-seed stratified sample of N cases (0: all)"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds per case"),
    json_out: Optional[Path] = _JSON, html: Optional[Path] = _HTML,
    baseline: Optional[Path] = _BASE, tolerance: float = _TOL,
    metric: Optional[List[str]] = _MET, save_baseline: Optional[Path] = _SAVE,
    no_progress: bool = typer.Option(False, "--no-progress"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run the cases as Ray tasks on this "
                                      "cluster (host:port, ray://host:10001, auto)"),
) -> None:
    """Run one agent over a dataset and grade it: `slmflow eval agent router --data cases.jsonl`."""
    from ..evals import create, load_cases, run_suite
    from ..scale.batch import AgentRef

    suite: dict[str, Any] = {}
    base = Path(".")
    name = None
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        import yaml

        suite = yaml.safe_load(Path(target).read_text()) or {}
        if not isinstance(suite, dict) or "agent" not in suite:
            raise ConfigError("a suite file is a mapping with agent, data and evaluators",
                              where=target)
        base = Path(target).parent
        name = suite.get("name")
        ref = AgentRef(suite["agent"], base=str(base), model=model)
    else:
        ref = AgentRef(target, workflow=str(workflow) if workflow else None, model=model)
    conc = concurrency or int(suite.get("concurrency", 1))
    agent = replace(ref, pool_size=conc).build()  # the Ray path builds it on each worker too
    if data is None:
        if "data" not in suite:
            raise ConfigError("no dataset: pass --data (or a suite file with data:)",
                              where="eval agent")
        data = base / suite["data"]
    lim = limit if limit is not None else suite.get("limit")
    cases = load_cases(data, input_field=input_field or suite.get("input_field", "input"),
                       expected_field=expected_field or suite.get("expected_field", "expected"),
                       context_field=suite.get("context_field", "context"),
                       limit=lim or None,
                       seed=seed if seed is not None else int(suite.get("seed", 0)))
    specs: list[Any] = list(evaluator or suite.get("evaluators") or ["exact_match"])
    evs = []
    for s in specs:
        if isinstance(s, str) and field and s in ("routing", "exact_match", "groundedness"):
            evs.append(create(s, field=field))
        else:
            evs.append(create(s))
    if ray:  # the same suite, its cases spread over Ray tasks (slmflow.scale, docs/deploy.md)
        from ..scale.batch import run_suite_ray

        rep = run_suite_ray(ref, cases, evs, address=ray, concurrency=conc,
                            name=name or agent.name, timeout_s=timeout)
    else:
        rep = run_suite(agent, cases, evs, concurrency=conc, name=name or agent.name,
                        progress=not no_progress, timeout_s=timeout)
    rep.meta["data"] = str(data)
    rep.meta["limit"] = lim
    _finish(rep, json_out, html, baseline, tolerance, metric, save_baseline, quiet=False)


@eval_app.command("workflow")
def workflow_cmd(
    spec: Path = typer.Argument(..., help="the workflow YAML (or a scenarios YAML that names it)"),
    scenarios: Optional[Path] = typer.Option(None, "--scenarios", "-s",
                                             help="scenarios YAML (default: scenarios.yaml "
                                             "next to the workflow)"),
    judge: Optional[str] = typer.Option(None, "--judge",
                                        help="check faithfulness with this judge model "
                                        "(default: lexical groundedness)"),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="run every agent on this model"),
    concurrency: int = typer.Option(1, "--concurrency", "-c"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds per scenario"),
    json_out: Optional[Path] = _JSON, html: Optional[Path] = _HTML,
    baseline: Optional[Path] = _BASE, tolerance: float = _TOL,
    metric: Optional[List[str]] = _MET, save_baseline: Optional[Path] = _SAVE,
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Run workflow scenarios end to end and check path, handoffs, outcome and faithfulness from
    each run's trace: `slmflow eval workflow examples/support/workflow.yaml`."""
    from ..evals.scenarios import load_scenarios, run_scenarios
    from ..workflow import load_workflow

    if scenarios is None:
        sf, _ = load_scenarios(spec) if spec.name.startswith("scenario") else (None, None)
        if sf is not None:
            scenarios, wf_path = spec, spec.parent / (sf.workflow or "workflow.yaml")
        else:
            scenarios, wf_path = spec.parent / "scenarios.yaml", spec
    else:
        wf_path = spec
    wf = load_workflow(wf_path, model=model)
    rep = run_scenarios(wf, scenarios, judge=judge, concurrency=concurrency,
                        progress=not no_progress, timeout_s=timeout)
    _finish(rep, json_out, html, baseline, tolerance, metric, save_baseline, quiet=False)
