"""`slmflow index add|query|list|stats|remove|eval`: retrieval indexes from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError

index_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Retrieval indexes: add files, query, evaluate.")

NAME = typer.Option("default", "--name", "-n", help="index name (under $SLMFLOW_HOME/indexes)")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")


def _open(name: str, store: Optional[str] = None, embedder: Optional[str] = None,
          must_exist: bool = False):
    from ..home import subdir
    from ..retrieval.index import Index

    if must_exist and not (subdir("indexes") / name / "index.db").exists():
        raise ConfigError(f"no index named {name!r}: create it with `slmflow index add PATH "
                          f"--name {name}`", where=str(subdir("indexes")))
    return Index(name, store=store, embedder=embedder)


@index_app.command("add")
def add_cmd(paths: List[Path] = typer.Argument(..., help="files or folders (.md .txt .html .pdf)"),
            name: str = NAME,
            store: Optional[str] = typer.Option(None, "--store",
                                                help="'embedded' (default) or chroma://host:port"),
            embedder: Optional[str] = typer.Option(None, "--embedder",
                                                   help="'minilm' (default) or openai:<model>@<url>"),
            strict: bool = typer.Option(False, "--strict", help="fail on the first bad file"),
            quiet: bool = typer.Option(False, "-q", "--quiet")) -> None:
    """Index files and folders; only new or changed files are embedded, vanished ones removed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..output import console

    err = console(stderr=True)
    with _open(name, store, embedder) as ix:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, disable=quiet, transient=True) as prog:
            tasks: dict[str, int] = {}

            def cb(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = prog.add_task("reading files" if stage == "read"
                                                 else "embedding chunks", total=total)
                prog.update(tasks[stage], completed=done, total=total)

            rep = ix.add(paths, strict=strict, progress=cb)
        for path, why in rep.skipped:
            err.print(f"[yellow]skipped[/] {path}: {why}", highlight=False)
        typer.echo(f"index {name}: {len(rep.added)} added, {len(rep.updated)} updated, "
                   f"{len(rep.unchanged)} unchanged, {len(rep.deleted)} deleted, "
                   f"{len(rep.skipped)} skipped; {rep.chunks} chunks embedded in "
                   f"{rep.seconds:.1f}s")
        if rep.skipped and not (rep.added or rep.updated or rep.unchanged):
            raise typer.Exit(1)


@index_app.command("query")
def query_cmd(text: str = typer.Argument(..., help="what to look for"), name: str = NAME,
              k: int = typer.Option(5, "-k", help="how many passages"),
              mode: str = typer.Option("hybrid", "--mode", help="hybrid | vector | bm25"),
              source: Optional[str] = typer.Option(None, "--source", help="source glob, e.g. '*.md'"),
              where: List[str] = typer.Option([], "--where", help="metadata filter key=value"),
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Ranked passages: source file, score and snippet."""
    filters: dict[str, object] = {}
    if source:
        filters["source"] = source
    for w in where:
        if "=" not in w:
            raise ConfigError(f"--where {w!r}: expected key=value", where="index query")
        key, val = w.split("=", 1)
        filters.setdefault(key, [])
        filters[key].append(val)  # type: ignore[union-attr]
    with _open(name, must_exist=True) as ix:
        res = ix.search(text, k, mode=mode, filters=filters or None)
    if as_json:
        typer.echo(res.model_dump_json(indent=2))
        return
    from ..output import Col, print_table

    cwd = Path.cwd()
    rows = []
    for p in res.passages:
        src = Path(p.source)
        try:
            src = src.relative_to(cwd)
        except ValueError:
            pass
        rows.append([str(p.rank), f"{p.score:.4f}", str(src), f"#{p.position}", p.snippet(120)])
    print_table([Col("#"), Col("score"), Col("source", key=True), Col("passage"), Col("snippet")],
                rows, title=f"{mode} search in {name}: {text!r}")
    if not res.passages:
        typer.echo("no results", err=True)


@index_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The indexes under $SLMFLOW_HOME/indexes, one name a line."""
    from ..retrieval.index import list_indexes

    names = list(list_indexes())
    if as_json:
        typer.echo(json.dumps(names))
        return
    for n in names:
        typer.echo(n)


@index_app.command("stats")
def stats_cmd(name: str = NAME, docs: bool = typer.Option(False, "--docs", help="list documents"),
              check: bool = typer.Option(False, "--check", help="count catalog/FTS/vector rows")
              ) -> None:
    """Documents, chunks, embedder, store of an index."""
    with _open(name, must_exist=True) as ix:
        out = ix.stats()
        if check:
            out["check"] = ix.check()
        if docs:
            out["docs"] = ix.documents()
    typer.echo(json.dumps(out, indent=2))


@index_app.command("remove")
def remove_cmd(targets: List[str] = typer.Argument(..., help="document ids, files or folders"),
               name: str = NAME) -> None:
    """Remove documents from an index."""
    with _open(name, must_exist=True) as ix:
        removed = ix.remove(targets)
    typer.echo(f"removed {len(removed)} document(s)")


@index_app.command("eval")
def eval_cmd(name: str = typer.Option("banking77-eval", "--name", "-n"),
             k: int = typer.Option(10, "-k"),
             data: Optional[Path] = typer.Option(None, "--data",
                                                 help="folder with docs.jsonl + queries.jsonl"),
             as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """recall@k, MRR, nDCG@k per mode on a labelled set (default: the BANKING77-derived set)."""
    from ..output import print_table
    from ..retrieval.evaluation import run_banking77

    with _open(name) as ix:
        res = run_banking77(ix, k=k, path=data)
    if as_json:
        typer.echo(json.dumps({"k": k, "modes": res}, indent=2, default=str))
        return
    print_table(["mode", f"recall@{k}", "MRR", f"nDCG@{k}"],
                [[m, f"{r[f'recall@{k}']:.3f}", f"{r['mrr']:.3f}", f"{r[f'ndcg@{k}']:.3f}"]
                 for m, r in res.items()],
                title=f"retrieval eval ({next(iter(res.values()))['queries']} queries, k={k})")
