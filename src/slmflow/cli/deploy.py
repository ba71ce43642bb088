"""`slmflow deploy vllm|llamacpp`: launch files for serving a workflow's agents and adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

deploy_app = typer.Typer(help="Serve a workflow's agents and LoRA adapters on one server "
                              "(vLLM multi-LoRA, llama.cpp server).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")


def _report(files: dict[str, str], out: Path, plan: object) -> None:
    from ..scale import write_deployment

    for p in write_deployment(files, out):
        typer.echo(f"wrote {p}")
    for a in plan.adapters:  # type: ignore[attr-defined]
        typer.echo(f"  {a.agent}: {a.adapter} served as {a.served_name}")


@deploy_app.command("vllm")
def vllm_cmd(workflow: Path = typer.Option(..., "--workflow", "-w"),
             out: Path = typer.Option(Path("deploy"), "--out"),
             base_model: Optional[str] = typer.Option(
                 None, "--base-model", help="the Hugging Face id or folder vLLM loads (default: "
                 "the folder the adapters were trained on)"),
             host: str = typer.Option("0.0.0.0"), port: int = typer.Option(8000),
             extra: str = typer.Option("", help="more vllm serve flags")) -> None:
    """vllm.sh (vllm serve --enable-lora --lora-modules ...) and a workflow copy pointing at it."""
    from ..scale import plan_deployment, vllm_files

    plan = plan_deployment(workflow)
    hf = base_model
    if hf is None and plan.bases:
        from ..finetune.agent_train import base_for

        hf = str(base_for(plan.bases[0])[0])  # the exact weights the adapters were trained on
    _report(vllm_files(plan, base_model=hf, host=host, port=port, extra=extra), out, plan)


@deploy_app.command("llamacpp")
def llamacpp_cmd(workflow: Path = typer.Option(..., "--workflow", "-w"),
                 out: Path = typer.Option(Path("deploy"), "--out"),
                 host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000)) -> None:
    """llamacpp.json for `python -m llama_cpp.server --config_file` and a workflow copy."""
    from ..scale import llamacpp_files, plan_deployment

    plan = plan_deployment(workflow)
    _report(llamacpp_files(plan, host=host, port=port), out, plan)
