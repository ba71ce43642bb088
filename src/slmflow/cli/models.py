"""`slmflow models`, `slmflow generate`, `slmflow demo`: the model layer from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import SchemaError


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
    app.command("generate")(generate_cmd)
    app.command("demo")(demo_cmd)


def models_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the models slmflow knows: name, backend, availability, where the weights come from."""
    from rich.text import Text

    from ..models.catalog import list_models
    from ..output import Col, print_table

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_table([Col("name", key=True), Col("backend"), Col("available"), Col("description"),
                 Col("source", key=True)],
                [[r["name"], r["backend"], "yes" if r["available"] else Text("no", style="dim"),
                  r["description"], r["source"]] for r in rows],
                title="models (also: gguf:/path, hf:/path, openai:<model>@<url>)")


def generate_cmd(
    prompt: str = typer.Argument(..., help="the user message"),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="catalog name or spec"),
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON schema file for the answer"),
    system: Optional[str] = typer.Option(None, "--system", help="a system message"),
    max_tokens: int = typer.Option(256, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="usage, latency, confidence"),
) -> None:
    """Generate an answer (text, or JSON valid against --schema)."""
    from ..models.catalog import resolve
    from ..types import Message, Settings

    schema_obj = None
    if schema is not None:
        if not schema.is_file():
            raise SchemaError(f"schema file not found: {schema}", where=str(schema))
        try:
            schema_obj = json.loads(schema.read_text())
        except json.JSONDecodeError as e:
            raise SchemaError(f"not JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                              where=str(schema)) from None
    msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    m = resolve(model)
    r = m.generate_sync(msgs, schema=schema_obj,
                        settings=Settings(max_tokens=max_tokens, temperature=temperature))
    typer.echo(json.dumps(r.parsed, indent=2) if schema_obj is not None else r.text)
    if verbose:
        conf = f"{r.confidence:.3f}" if r.confidence is not None else "n/a"
        typer.echo(f"model={r.model.identity} input_tokens={r.usage.input_tokens} "
                   f"output_tokens={r.usage.output_tokens} latency={r.latency_s * 1000:.0f}ms "
                   f"confidence={conf} finish={r.finish_reason}"
                   + (" repaired=yes" if r.repaired else ""), err=True)


def demo_cmd(model: str = typer.Option("smollm2-135m", "--model", "-m"),
             no_adapters: bool = typer.Option(False, "--no-adapters",
                                              help="run every agent zero-shot, without the "
                                                   "example's adapters"),
             compare: bool = typer.Option(True, help="after the fine-tuned run, run the same "
                                                     "tickets zero-shot and compare")) -> None:
    """The main job on the embedded model: the reference support workflow on sample tickets."""
    from ..demo import run_demo

    run_demo(model, adapters=False if no_adapters else None, compare=compare)
