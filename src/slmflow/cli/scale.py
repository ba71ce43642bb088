"""`slmflow batch infer` (batch work over the call log, in this process or on a Ray cluster) and
`slmflow config show|check` (the one deployment file that points every store at its server).

A thin layer over `slmflow.scale.batch`; ``slmflow eval agent ... --ray ADDRESS`` is the eval
side of the same machinery (see docs/deploy.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

batch_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Batch work over the call log (in this process or on Ray).")
config_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="The deployment file (deploy.yaml): one database for every "
                         "store, vectors, tracing, Ray.")


def register(app: typer.Typer) -> None:
    app.add_typer(batch_app, name="batch")
    app.add_typer(config_app, name="config")


_CFG = typer.Argument(None, help="deploy.yaml (default: $SLMFLOW_CONFIG)")


def _cfg(path: Optional[Path]):
    import os

    from ..errors import ConfigError
    from ..scale.config import load_config

    p = path or os.environ.get("SLMFLOW_CONFIG")
    if not p:
        raise ConfigError("pass a deploy.yaml or set SLMFLOW_CONFIG", where="config")
    return load_config(p)


@config_app.command("show")
def config_show(path: Optional[Path] = _CFG) -> None:
    """The environment variables the file stands for (what every process will use)."""
    for k, v in _cfg(path).env().items():
        typer.echo(f"{k}={v}")


@config_app.command("check")
def config_check(path: Optional[Path] = _CFG) -> None:
    """Open the call log and ping the vector store the file names."""
    for k, v in _cfg(path).check().items():
        typer.echo(f"{k}: {v}")


@batch_app.command("infer")
def batch_infer_cmd(
    agent: str = typer.Argument(..., help="agent name in --workflow, or module:attr / "
                                "file.py:attr of an Agent"),
    workflow: Optional[Path] = typer.Option(None, "--workflow", "-w"),
    calls: Optional[str] = typer.Option(None, "--calls", help="call-log URL (default: "
                                        "$SLMFLOW_CALLS_URL, else $SLMFLOW_HOME/calls.db)"),
    source_agent: Optional[str] = typer.Option(None, "--source-agent",
                                               help="read the inputs of calls by this agent "
                                               "(default: the agent's own name)"),
    after_seq: int = typer.Option(0, "--after-seq", help="resume after this call-log seq"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="run on this model"),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="run with this adapter "
                                          "(a candidate version on production inputs)"),
    ray: Optional[str] = typer.Option(None, "--ray", help="Ray address (host:port, "
                                      "ray://host:10001, auto); default: this process"),
    batch_size: int = typer.Option(16, "--batch-size"),
    workers: Optional[int] = typer.Option(None, "--workers", help="tasks in flight"),
    out: Path = typer.Option(Path("batch-infer.jsonl"), "--out", "-o"),
) -> None:
    """Re-run an agent on the inputs of logged calls: one JSON line per call with the logged and
    the new output; prints a summary (``last_seq`` resumes with --after-seq)."""
    from ..scale.batch import AgentRef, batch_infer

    ref = AgentRef(agent, workflow=str(workflow) if workflow else None, model=model,
                   adapter=adapter)
    res = batch_infer(ref, calls, source_agent=source_agent, after_seq=after_seq, limit=limit,
                      address=ray, batch_size=batch_size, workers=workers, out=out)
    res.pop("rows", None)
    typer.echo(json.dumps(res, indent=2))
