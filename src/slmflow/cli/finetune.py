"""`slmflow train agent` and `slmflow adapters list|show|promote|rollback`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import (BATCH_SIZE, BF16, EPOCHS, LR, MAX_LEN, MAX_STEPS, SEED, TARGETS, THREADS,
                     train_config)

train_app = typer.Typer(help="Fine-tune an agent (LoRA on its own data).", no_args_is_help=True)
adapters_app = typer.Typer(help="Versioned adapters per agent: list, show, promote, rollback, "
                                "copy (files or PostgreSQL).",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(adapters_app, name="adapters")


@train_app.command("agent")
def train_agent_cmd(
    name: str = typer.Argument(..., help="the agent's name in the workflow"),
    workflow: Path = typer.Option(..., "--workflow", "-w", help="the workflow YAML"),
    data: Path = typer.Option(..., "--data", help="training pairs (.jsonl or .csv)"),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data",
                                             help="held-out cases for the gate"),
    input_field: str = typer.Option("input", "--input-field"),
    target_field: str = typer.Option("target", "--target-field"),
    target_key: Optional[str] = typer.Option(None, "--target-key",
                                             help="wrap a scalar target as {key: value}"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (resumes if present)"),
    epochs: float = EPOCHS, lr: float = LR,
    r: int = typer.Option(16, "--r", "--lora-r", help="LoRA rank (write --lora-r under torchrun, "
                          "whose parser takes --r for an abbreviation of its own options)"),
    batch_size: int = BATCH_SIZE, max_len: int = MAX_LEN, max_steps: Optional[int] = MAX_STEPS,
    targets: str = TARGETS, bf16: Optional[bool] = BF16, threads: int = THREADS,
    promote: bool = typer.Option(True, help="promote through the eval gate"),
    seed: int = SEED,
    init_adapter: Optional[Path] = typer.Option(
        None, "--init-adapter", help="start from this trained PEFT adapter folder (same rank and "
        "targets) instead of a fresh LoRA: more epochs on an adapter without redoing the first"),
    also: List[str] = typer.Option(
        [], "--also", help="another agent of the workflow trained into the same adapter, as "
        "NAME=TRAIN.jsonl[,EVAL.jsonl] (repeatable): a multi-task adapter, so agents on it share "
        "llama.cpp KV states; each is gated on its own eval file"),
) -> None:
    """Train a LoRA adapter for one agent, register it, and promote it only through its gate.

    Multi-process (``torchrun --nproc_per_node N -m slmflow train agent ...`` or ``accelerate
    launch --multi_gpu --num_processes N -m slmflow ...``): every process trains its shard of each
    batch; the main process registers, gates and prints (docs/finetune.md)."""
    from ..finetune.agent_train import base_for, find_agent, train_agent
    from ..finetune.data import load_examples
    from ..finetune.trainer import is_main_process, main_process_first

    agent = find_agent(workflow, name)
    examples = load_examples(data, input_field=input_field, target_field=target_field,
                             target_key=target_key)
    cases = (load_examples(eval_data, input_field=input_field, target_field=target_field,
                           target_key=target_key) if eval_data else [])
    others = [_also_agent(spec, workflow, input_field, target_field, target_key)
              for spec in also]
    cfg = train_config(r=r, lr=lr, epochs=epochs, batch_size=batch_size, max_len=max_len,
                       max_steps=max_steps, seed=seed, bf16=bf16, targets=targets)
    if init_adapter is not None:
        from dataclasses import replace

        cfg = replace(cfg, init_adapter=str(init_adapter))
    with main_process_first():  # a first run dequantizes the base once, not once per process
        base_for(agent.model)
    main = is_main_process()  # in a multi-process launch the others train their shard only
    res = train_agent(agent, examples, eval_cases=cases, config=cfg, run_dir=out,
                      promote=promote, threads=threads or None, also=others,
                      log=typer.echo if main else (lambda s: None), progress=main)
    if not main:
        return
    typer.echo(json.dumps({"version": res.version, "promoted": res.promoted,
                           "scores": res.scores, "baseline": res.baseline_scores,
                           "metrics": res.card["metrics"]}, indent=2))


def _also_agent(spec: str, workflow: Path, input_field: str, target_field: str,
                target_key: Optional[str]):
    """`--also NAME=TRAIN.jsonl[,EVAL.jsonl]` → the agent, its examples and its eval cases."""
    from ..errors import ConfigError
    from ..finetune.agent_train import AlsoAgent, find_agent
    from ..finetune.data import load_examples

    name, eq, files = spec.partition("=")
    paths = [p for p in files.split(",") if p]
    if not eq or not name.strip() or not 1 <= len(paths) <= 2:
        raise ConfigError(f"--also {spec!r}: write NAME=TRAIN.jsonl or NAME=TRAIN.jsonl,EVAL.jsonl",
                          where="--also")
    load = lambda p: load_examples(Path(p), input_field=input_field,  # noqa: E731
                                   target_field=target_field, target_key=target_key)
    return AlsoAgent(find_agent(workflow, name.strip()), load(paths[0]),
                     load(paths[1]) if len(paths) == 2 else [])


def _registry():
    from ..finetune.registry import AdapterRegistry

    return AdapterRegistry()


@adapters_app.command("list")
def adapters_list(agent: Optional[str] = typer.Argument(None),
                  as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Adapters per agent, with the promoted version marked."""
    from ..output import Col, print_table

    reg = _registry()
    recs = []
    for a in ([agent] if agent else reg.agents()):
        promoted = reg.promoted(a)
        for v in reg.versions(a):
            c = reg.card(a, v)
            recs.append({"agent": a, "version": v, "promoted": v == promoted,
                         "base_model": c.get("base_model", ""),
                         "train_loss": c.get("metrics", {}).get("train_loss"),
                         "eval_scores": c.get("eval_scores", {}),
                         "parent": c.get("lineage", {}).get("parent")})
    if as_json:
        typer.echo(json.dumps(recs, indent=2, default=str))
        return
    print_table([Col("agent", key=True), Col("version", key=True), Col("promoted"),
                 Col("base", key=True), Col("train loss"), Col("eval scores"),
                 Col("parent", key=True)],
                [[r["agent"], r["version"], "*" if r["promoted"] else "", r["base_model"],
                  f"{r['train_loss'] if r['train_loss'] is not None else float('nan'):.4f}",
                  json.dumps(r["eval_scores"]), str(r["parent"] or "")] for r in recs],
                title="adapters")


@adapters_app.command("show")
def adapters_show(agent: str, version: str) -> None:
    """The training card and lineage of one version."""
    typer.echo(json.dumps(_registry().card(agent, version), indent=2))


@adapters_app.command("promote")
def adapters_promote(agent: str, version: str,
                     score: List[str] = typer.Option([], "--score", help="metric=value"),
                     tolerance: float = typer.Option(0.0),
                     force: bool = typer.Option(False, help="skip the gate (recorded)")) -> None:
    """Promote a version if its eval scores are at least the promoted version's."""
    from ..errors import ConfigError

    scores = {}
    for s in score:
        k, _, v = s.partition("=")
        try:
            scores[k] = float(v)
        except ValueError:
            raise ConfigError(f"--score wants metric=number, got {s!r}", where="--score") from None
    d = _registry().promote(agent, version, scores or None, tolerance=tolerance, force=force)
    typer.echo(json.dumps(d, indent=2, default=str))


@adapters_app.command("rollback")
def adapters_rollback(agent: str) -> None:
    """Serve the previously promoted version again."""
    typer.echo(f"{agent} now serves {_registry().rollback(agent)}")


@adapters_app.command("copy")
def adapters_copy(to: str = typer.Option(..., "--to", help="destination: postgresql://... or a "
                                         "folder"),
                  source: Optional[str] = typer.Option(
                      None, "--from", help="source (default: this machine's registry, "
                      "$SLMFLOW_ADAPTERS_URL or $SLMFLOW_HOME/adapters)"),
                  agent: List[str] = typer.Option([], "--agent", help="only these agents")
                  ) -> None:
    """Copy the registry (versions, cards, promoted pointers, history) to another store, e.g.
    from files to PostgreSQL when moving to a cluster."""
    from ..finetune.registry import AdapterRegistry

    src = AdapterRegistry(source) if source else _registry()
    dst = AdapterRegistry(to)
    copied = dst.copy_from(src, agent or None)
    for a, vs in copied.items():
        typer.echo(f"{a}: {', '.join(vs) or 'no versions'} → {dst.store.location} "
                   f"(promoted: {dst.promoted(a) or 'none'})")
