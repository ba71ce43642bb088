"""The compact per-step table of a run (rich), shared by `slmflow run` and `slmflow demo`.

Why one function: the CLI, the demo and the tests read the same columns (model, latency, tokens,
confidence, escalated), so a column cannot silently disappear from one of them. Long details
(escalation reasons, tool errors, verifier verdicts) go in numbered notes under the table, so the
table itself stays readable in an 80-column terminal; piped or redirected, the table is
tab-separated text with every cell whole (`slmflow.output`).
"""

from __future__ import annotations

from typing import Any

from .result import RunResult

COLUMNS = ("step", "model", "ms", "tokens", "conf", "escalated", "status")
_HEADERS = {"escalated": "esc", "tokens": "tokens"}
_FIXED = {"ms": 6, "tokens": 7, "conf": 4, "escalated": 3}


def step_rows(result: RunResult) -> list[dict[str, str]]:
    """One dict per executed node: `COLUMNS` plus ``kind`` and ``detail``."""
    rows = []
    for r in result.steps:
        detail = r.detail
        if r.escalated and r.escalation_reason:
            detail = (detail + "; " if detail else "") + "escalated: " + r.escalation_reason
        if r.error is not None and r.status in ("failed", "error_continued"):
            err = f"{type(r.error).__name__}: {getattr(r.error, 'message', r.error)}"
            detail = detail or err
        model = r.model if r.kind == "agent" or r.kind == "tool" else r.kind
        rows.append({
            "step": r.step, "kind": r.kind, "model": model,
            "ms": f"{r.latency_s * 1000:.0f}",
            "tokens": (f"{r.usage.input_tokens}/{r.usage.output_tokens}"
                       if r.usage.total_tokens else "-"),
            "conf": f"{r.confidence:.2f}" if r.confidence is not None else "-",
            "escalated": "yes" if r.escalated else "no",
            "status": r.status, "detail": detail,
        })
    return rows


def _title(result: RunResult) -> str:
    return (f"{result.workflow}: {result.status} in {result.latency_s * 1000:.0f} ms (model "
            f"{result.model_latency_s * 1000:.0f} ms, {result.usage.total_tokens} tokens)")


def _cells(result: RunResult) -> tuple[list[list[str]], list[str]]:
    """(one row of `COLUMNS` per step, the numbered notes that go under the table)."""
    rows: list[list[str]] = []
    notes: list[str] = []
    for row in step_rows(result):
        status = row["status"]
        if row["detail"]:
            notes.append(f"[{len(notes) + 1}] {row['step']}: {row['detail']}")
            status += f" [{len(notes)}]"
        rows.append([status if c == "status" else row[c] for c in COLUMNS])
    return rows, notes


def step_table(result: RunResult, title: str | None = None) -> tuple[Any, list[str]]:
    """(the rich table, the numbered notes that go under it)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title or _title(result), title_justify="left")
    for c in COLUMNS:
        if c in _FIXED:  # numbers are never truncated; names and status give way
            t.add_column(_HEADERS.get(c, c), no_wrap=True, min_width=_FIXED[c],
                         justify="right" if c in ("ms", "conf") else "left")
        else:
            t.add_column(_HEADERS.get(c, c), overflow="fold")
    rows, notes = _cells(result)
    for r in rows:
        t.add_row(*(Text(v) for v in r))
    return t, notes


def print_result(result: RunResult, console: Any = None, *, show_table: bool = True) -> None:
    """The answer, the reason, the trace id (tracing on), the per-step table and its notes. On a terminal the table is
    rich's; piped or redirected it is tab-separated, every cell whole (`slmflow.output`)."""
    from ..output import console as cli_console
    from ..output import is_plain, print_table

    console = console or cli_console()
    colour = {"ok": "green", "escalated": "yellow", "rejected": "red", "failed": "red"}
    console.print(f"[bold {colour.get(result.status, 'white')}]{result.status}[/]:", end=" ")
    if result.answer is not None:
        answer = result.answer
        if isinstance(answer, dict) and "reply" in answer:
            answer = answer["reply"]
        console.print(str(answer), markup=False, highlight=False)
    else:
        console.print("(no answer)")
    if result.detail:
        console.print(f"reason: {result.detail}", style="dim", markup=False, highlight=False)
    if result.trace_id:  # `slmflow traces show <id>` opens it
        console.print(f"trace: {result.trace_id}", style="dim", markup=False, highlight=False)
    if show_table:
        if is_plain(console):
            rows, notes = _cells(result)
            print_table([_HEADERS.get(c, c) for c in COLUMNS], rows, title=_title(result),
                        con=console)
        else:
            table, notes = step_table(result)
            console.print(table)
        for n in notes:
            console.print(n, style="dim", markup=False, highlight=False)
