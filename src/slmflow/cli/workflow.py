"""`slmflow run workflow.yaml --input "..."`: run a declared workflow once and show every step.

``--no-adapters`` runs the same workflow with every agent on its base model (the adapters named in
the spec are ignored through the agents' adapter resolver), to compare fine-tuned and zero-shot.

Exit status: 0 for an answer (status ok or escalated), 1 for a rejected or failed run (the reason
is printed, never a traceback), so a shell script can tell the two apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)


def run_cmd(
    spec: Path = typer.Argument(..., help="the workflow YAML file"),
    input: Optional[str] = typer.Option(None, "--input", "-i",
                                        help="the request: text, or a JSON object"),
    input_file: Optional[Path] = typer.Option(None, "--input-file",
                                              help="read the request from a file"),
    fallback: Optional[str] = typer.Option(None, "--fallback",
                                           help="escalate every agent to this model "
                                                "(catalog name or openai:<model>@<url>)"),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="run every agent on this model"),
    no_adapters: bool = typer.Option(False, "--no-adapters",
                                     help="ignore every agent's adapter: run the zero-shot base "
                                          "models (to compare with the fine-tuned agents)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    no_table: bool = typer.Option(False, "--no-table", help="print the answer only"),
) -> None:
    """Run a workflow declared in YAML on one request; print the answer and a per-step table."""
    from ..errors import ConfigError
    from ..workflow import load_workflow, print_result

    if (input is None) == (input_file is None):
        raise ConfigError("give exactly one of --input and --input-file", where="slmflow run")
    if input_file is not None:
        if not input_file.is_file():
            raise ConfigError(f"input file not found: {input_file}", where=str(input_file))
        input = input_file.read_text(encoding="utf-8")
    value: object = input
    text = (input or "").strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = input
    if no_adapters:
        from ..agents import set_adapter_resolver
        from ..finetune.registry import base_model_resolver

        set_adapter_resolver(base_model_resolver)
    wf = load_workflow(spec, fallback=fallback, model=model)
    result = wf.run_sync(value)
    if as_json:
        from ..workflow.report import step_rows

        typer.echo(json.dumps({
            "status": result.status, "answer": result.answer, "detail": result.detail,
            "trace_id": result.trace_id,
            "latency_ms": round(result.latency_s * 1000, 1),
            "model_latency_ms": round(result.model_latency_s * 1000, 1),
            "steps": step_rows(result),
            "handoffs": [h.__dict__ for h in result.handoffs]}, indent=2, default=str))
    else:
        print_result(result, show_table=not no_table)
    if not result.ok:
        import sys

        sys.exit(1)
