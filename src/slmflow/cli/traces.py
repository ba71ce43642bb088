"""`slmflow traces list|show|stats` and `slmflow ui`: look at runs from the span store.

The store is ``--db`` (a SQLite path, ``sqlite:///path`` or ``postgresql://...``; also spelt
``--url``), else ``$SLMFLOW_TRACES_URL``, else ``$SLMFLOW_HOME/spans.db``."""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import typer

traces_app = typer.Typer(no_args_is_help=True, help="Look at traces in the span store.")

DB = typer.Option(None, "--db", "--url",
                  help="span store: a SQLite path, sqlite:///path or postgresql://... "
                       "(default $SLMFLOW_TRACES_URL, else $SLMFLOW_HOME/spans.db)")


def register(app: typer.Typer) -> None:
    app.add_typer(traces_app, name="traces")
    app.command("ui")(ui_cmd)


def _store(db: Optional[str]) -> Any:
    from ..tracing.store import open_span_store

    return open_span_store(db)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f}s" if v >= 1000 else f"{v:.1f}ms"


def _usd(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "$0"
    return f"${v:.2e}" if v < 1e-4 else (f"${v:.6f}" if v < 0.01 else f"${v:.4f}")


def _pct(v: float) -> str:
    return f"{v * 100:.0f}%"


@traces_app.command("list")
def list_cmd(limit: int = typer.Option(20, "--limit", "-n"), db: Optional[str] = DB,
             as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The newest traces: id, root span, start, duration, spans, tokens, cost, errors.

    Piped or redirected, the table is tab-separated with whole trace ids (``--json`` for all
    fields)."""
    from rich.text import Text

    from ..output import Col, print_table

    rows = _store(db).list_traces(limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no traces yet")
        return
    cols = [Col("trace", key=True), Col("root"), Col("started"), Col("duration"), Col("spans"),
            Col("tokens in/out"), Col("cost"), Col("errors"), Col("escalations")]
    table = []
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["start_ns"] / 1e9))
        err = Text(str(r["errors"]), style="bold red") if r["errors"] else "0"
        table.append([r["trace_id"], r["root"] or "?", started, _ms(r["duration_ms"]),
                      str(r["spans"]), f"{r['input_tokens']}/{r['output_tokens']}",
                      _usd(r["cost_usd"]), err, str(r["escalations"] or 0)])
    print_table(cols, table)


def _label(s: dict[str, Any]) -> str:
    from rich.markup import escape

    a = s["attributes"]
    bits = [_ms(s["duration_ms"])]
    if s["total_input_tokens"] or s["total_output_tokens"]:
        bits.append(f"tok {s['total_input_tokens']}/{s['total_output_tokens']}")
    if s["total_cost_usd"] is not None:
        bits.append(_usd(s["total_cost_usd"]))
    if s["confidence"] is not None:
        bits.append(f"conf {s['confidence']:.2f}")
    if a.get("slmflow.handoff.status"):
        bits.append(f"handoff {a['slmflow.handoff.status']}")
    if a.get("slmflow.adapter"):
        bits.append(f"adapter {a['slmflow.adapter']}")
    name = escape(s["name"])
    detail = escape("  ".join(bits))
    if s["status"] == "ERROR":
        return (f"[bold red]✗ {name}[/]  [dim]{detail}[/]  "
                f"[red]{escape(s['status_message'] or a.get('error.type') or 'error')}[/]")
    mark = "[yellow]⚠[/] " if s["escalated"] and not s["children"] else ""
    return f"{mark}[bold]{name}[/]  [dim]{detail}[/]"


@traces_app.command("show")
def show_cmd(trace_id: str = typer.Argument("last", help="a trace id, a unique prefix, or 'last'"),
             db: Optional[str] = DB,
             as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """One trace as an indented tree: latency, tokens, cost, confidence, status per span."""
    from rich.tree import Tree

    from ..errors import ConfigError
    from ..output import console
    from ..tracing import views

    spans = _store(db).trace(trace_id)
    if not spans:
        raise ConfigError(f"no trace {trace_id!r} in the span store", where="traces show")
    roots = views.build_tree(spans)
    summary = views.trace_summary(spans)
    if as_json:
        typer.echo(json.dumps({"summary": summary, "spans": views.to_json(roots)}, indent=2,
                              default=str))
        return
    con = console()
    head = Tree(f"trace [bold]{summary['trace_id']}[/]  {_ms(summary['duration_ms'])}  "
                f"{summary['spans']} spans  tokens {summary['input_tokens']}/"
                f"{summary['output_tokens']}  cost {_usd(summary['cost_usd'])}"
                + (f"  [bold red]{summary['errors']} error(s)[/]" if summary["errors"] else "")
                + (f"  [yellow]{summary['escalations']} escalation(s)[/]"
                   if summary["escalations"] else ""))

    def add(node: Any, s: dict[str, Any]) -> None:
        child = node.add(_label(s))
        for c in s["children"]:
            add(child, c)

    for r in roots:
        add(head, r)
    con.print(head, highlight=False)


@traces_app.command("stats")
def stats_cmd(by: str = typer.Option("agent", "--by",
                                     help="agent | model | tool | workflow | operation"),
              since_hours: Optional[float] = typer.Option(None, "--since-hours"),
              db: Optional[str] = DB,
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """p50/p95 latency, tokens, cost, error and escalation rate per agent (or model, ...)."""
    from rich.text import Text

    from ..output import Col, print_table
    from ..tracing import views

    since = time.time_ns() - int(since_hours * 3600e9) if since_hours else None
    rows = views.stats(_store(db).spans(since_ns=since), by=by)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no {by} spans yet")
        return
    cols = [Col(by, key=True)] + [Col(c) for c in ("calls", "p50", "p95", "tokens in/out", "cost",
                                                   "errors", "escalations")]
    print_table(cols, [[str(r[by]), str(r["calls"]), _ms(r["p50_ms"]), _ms(r["p95_ms"]),
                        f"{r['input_tokens']}/{r['output_tokens']}", _usd(r["cost_usd"]),
                        (Text(_pct(r["error_rate"]), style="bold red") if r["error_rate"]
                         else _pct(r["error_rate"])), _pct(r["escalation_rate"])]
                       for r in rows], title=f"by {by}")


def ui_cmd(host: str = typer.Option("127.0.0.1", "--host"),
           port: int = typer.Option(6007, "--port"), db: Optional[str] = DB,
           calls: Optional[str] = typer.Option(None, "--calls",
                                               help="call-log URL for the review queue "
                                                    "(default: $SLMFLOW_CALLS_URL or "
                                                    "$SLMFLOW_HOME/calls.db)"),
           auth: bool = typer.Option(False, "--auth",
                                     help="require a reviewer key (slmflow keys create NAME "
                                          "--models review); decisions are recorded under "
                                          "the key's name"),
           allow_host: Optional[list[str]] = typer.Option(
               None, "--allow-host", help="also answer requests for this Host name (the name "
                                          "a reverse proxy forwards); repeatable"),
           show_pii: bool = typer.Option(False, "--show-pii",
                                         help="show prompts and answers unredacted (by default "
                                              "PII is redacted as in the call log)")) -> None:
    """The web view: traces (list, waterfall, span details), agents, and the review queue."""
    from ..store import open_call_log
    from ..ui.traces import serve

    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        typer.echo("warning: the UI is reachable from other machines without sign-in; "
                   "pass --auth", err=True)
    server = serve(host, port, db_path=db, calls=open_call_log(calls), auth=auth,
                   allowed_hosts=allow_host or (), show_pii=show_pii)
    typer.echo(f"slmflow ui on http://{host}:{server.server_address[1]}  (Ctrl+C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
