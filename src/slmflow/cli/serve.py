"""`slmflow serve`, `slmflow usage`, `slmflow feedback` and `slmflow keys create|list|revoke`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import json_or_text


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("usage")(usage_cmd)
    app.command("feedback")(feedback_cmd)
    keys = typer.Typer(help="API keys of the gateway (only their hashes are stored).",
                       no_args_is_help=True)
    keys.command("create")(keys_create)
    keys.command("list")(keys_list)
    keys.command("revoke")(keys_revoke)
    app.add_typer(keys, name="keys")


_URL = typer.Option(None, "--call-log", help="call-log URL (sqlite:///path or postgresql://...; "
                                             "default $SLMFLOW_HOME/calls.db)")


def serve_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="the gateway.yaml file"),
    host: Optional[str] = typer.Option(None, "--host", help="bind address (default: config)"),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="port (default: config)"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the OpenAI-compatible gateway declared in a gateway.yaml."""
    from ..gateway.config import load_config
    from ..gateway.server import serve

    cfg = load_config(config)
    serve(cfg, host=host, port=port, log_level=log_level)


def usage_cmd(
    since: str = typer.Option("30d", "--since", help="a duration back (24h, 7d) or a date"),
    by: str = typer.Option("key,agent,model", "--by",
                           help="group by: key, agent, model, workflow, kind, status, day"),
    key: Optional[str] = typer.Option(None, "--key", help="only this key"),
    url: Optional[str] = _URL,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Tokens and cost per key, per agent and per model, from the call log; ``rejected`` counts
    the requests the gateway refused (401/403/404/429)."""
    from ..store import open_call_log

    groups = tuple(b.strip() for b in by.split(",") if b.strip())
    with open_call_log(url) as log:
        rows = log.usage(groups, since=since, key=key)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from ..output import Col, print_table

    cols = [Col(g, key=True) for g in groups] + [
        Col(c, justify="right") for c in ("calls", "input tok", "output tok", "cost USD",
                                          "escalated", "cache hits", "rejected")]
    table = []
    tot = [0, 0, 0, 0.0]
    for r in rows:
        table.append([str(r[g]) if r[g] is not None else "-" for g in groups] + [
            str(r["calls"]), str(r["input_tokens"]), str(r["output_tokens"]),
            "-" if r["cost_usd"] is None else f"{r['cost_usd']:.6f}",
            str(r["escalated"]), str(r["cache_hits"]), str(r["rejected"])])
        tot[0] += r["calls"]
        tot[1] += r["input_tokens"]
        tot[2] += r["output_tokens"]
        tot[3] += r["cost_usd"] or 0.0
    table.append(["total"] + [""] * (len(groups) - 1) + [
        str(tot[0]), str(tot[1]), str(tot[2]), f"{tot[3]:.6f}", "", "", ""])
    print_table(cols, table, title=f"usage since {since}",
                row_styles=[None] * (len(table) - 1) + ["bold"])


def feedback_cmd(
    call_id: Optional[str] = typer.Argument(None, help="the call id (or use --run)"),
    run: Optional[str] = typer.Option(None, "--run", help="a workflow run id instead of a call"),
    thumbs: Optional[str] = typer.Option(None, "--thumbs", help="up or down"),
    label: Optional[str] = typer.Option(None, "--label"),
    correction: Optional[str] = typer.Option(None, "--correction",
                                             help="the right answer, as JSON (or plain text)"),
    by: Optional[str] = typer.Option(None, "--by", help="who gives the feedback"),
    url: Optional[str] = _URL,
) -> None:
    """Attach a user signal (thumbs, a label, a correction) to a call or a workflow run."""
    from ..errors import ConfigError
    from ..store import open_call_log

    if thumbs is not None and thumbs not in ("up", "down"):
        raise ConfigError(f"--thumbs must be up or down, got {thumbs!r}", where="slmflow feedback")
    corr = json_or_text(correction)
    with open_call_log(url) as log:
        fb = log.add_feedback(call_id, run_id=run, signal=thumbs, label=label, correction=corr,
                              by=by)
    typer.echo(f"feedback {fb.id} recorded for {'call ' + call_id if call_id else 'run ' + run}")


def keys_create(
    name: str = typer.Argument(..., help="a name for the key (shown in usage reports)"),
    models: Optional[str] = typer.Option(None, "--models",
                                         help="comma-separated models it may use (default all)"),
    rpm: Optional[int] = typer.Option(None, "--rpm", help="requests per minute"),
    tokens_per_day: Optional[int] = typer.Option(None, "--tokens-per-day"),
    url: Optional[str] = _URL,
) -> None:
    """Create an API key; it is printed once and only its SHA-256 is stored."""
    from ..gateway.auth import create_key
    from ..store import open_call_log

    ms = [m.strip() for m in models.split(",") if m.strip()] if models else None
    with open_call_log(url) as log:
        key, rec = create_key(log, name, models=ms, rpm=rpm, tokens_per_day=tokens_per_day)
    typer.echo(key)
    typer.echo(f"# key {name!r} created; store it now, it is not shown again", err=True)


def keys_list(url: Optional[str] = _URL,
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List API keys (name, prefix, limits, revoked)."""
    from ..output import Col, print_table
    from ..store import open_call_log

    with open_call_log(url) as log:
        keys = log.list_keys()
    if as_json:
        typer.echo(json.dumps([{"name": k.name, "prefix": k.prefix, "models": k.models,
                                "rpm": k.rpm, "tokens_per_day": k.tokens_per_day,
                                "created": k.created, "revoked": k.revoked} for k in keys],
                              indent=2, default=str))
        return
    print_table([Col("name", key=True), Col("prefix", key=True), Col("models"), Col("rpm"),
                 Col("tokens/day"), Col("revoked")],
                [[k.name, k.prefix + "...", ",".join(k.models) if k.models else "all",
                  str(k.rpm or "-"), str(k.tokens_per_day or "-"), "yes" if k.revoked else ""]
                 for k in keys])


def keys_revoke(name: str = typer.Argument(...), url: Optional[str] = _URL) -> None:
    """Revoke an API key (the gateway refuses it within 10 s)."""
    from ..errors import ConfigError
    from ..store import open_call_log

    with open_call_log(url) as log:
        if not log.revoke_key(name):
            raise ConfigError(f"no active key named {name!r}", where="slmflow keys revoke")
    typer.echo(f"key {name!r} revoked")
