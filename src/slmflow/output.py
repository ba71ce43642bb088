"""How the CLI prints tables and records: rich for a person at a terminal, whole values elsewhere.

Why this module: rich lays a table out for an 80-column terminal when stdout is not one (a pipe,
a log file, CI) and cuts cells to fit (``ebc1a…``, ``refun…/ds.md``), so an id or a path could not
be copied from a log. Every command that prints a table goes through `print_table`:

* on a terminal, a rich table as before, except that key columns (ids, paths; ``Col(key=True)``)
  never wrap and are as wide as their widest value; only when even they do not fit does rich fold
  them onto a second line, never cut them with an ellipsis;
* anywhere else, tab-separated text: a ``# title`` line when the table has a title, a header
  line, then one row per line, every cell whole (a tab or a line break inside a cell becomes a
  space, so a row stays one line; ``--json`` gives the exact values). No colour, no wrapping.

It sits at the bottom of the package (it imports nothing of ours) because the CLI is not its only
user: `slmflow.workflow.print_result`, `slmflow.evals.print_report` and the demo print the same
tables. `console()` is the matching console for everything else a command prints (answers,
trees): on a terminal rich's default, elsewhere one that never wraps a line (``soft_wrap``), so a
long trace id in a tree's first line stays whole too. Cells given as ``str`` are shown as they
are (never read as rich markup, so ``[/]`` in a passage cannot break the table); pass a
``rich.text.Text`` for a styled cell.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

__all__ = ["Col", "console", "is_plain", "print_table", "rule", "plain_cell"]


@dataclass(frozen=True)
class Col:
    """One column: its header; ``key`` for ids and paths (never cut); ``justify`` on a terminal."""

    header: str
    key: bool = False
    justify: str = "left"


Cell = Union[str, Any]  # str or rich.text.Text
PLAIN_WIDTH = 100_000  # the console width off a terminal: no line of ours is that long


def console(*, stderr: bool = False) -> Any:
    """A rich Console for CLI output to stdout (or stderr): rich's default on a terminal; when the
    stream is not a terminal, one that neither wraps nor crops lines."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if _isatty(stream):
        return Console(stderr=stderr)
    # soft_wrap: printed text is never wrapped; the width: renderables such as a Tree crop their
    # lines to the console's width (80 off a terminal) even with soft_wrap
    return Console(stderr=stderr, soft_wrap=True, width=PLAIN_WIDTH)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def is_plain(con: Any) -> bool:
    """True when `con` does not write to a terminal: tables come out tab-separated."""
    return not _isatty(con.file)


def plain_cell(value: Cell) -> str:
    """A cell as one line of tab-separated text: whole, with tabs and line breaks as spaces."""
    text = value.plain if hasattr(value, "plain") else str(value)
    return text.replace("\r\n", " ").replace("\t", " ").replace("\n", " ").replace("\r", " ")


def print_table(columns: Sequence[Union[str, Col]], rows: Iterable[Sequence[Cell]], *,
                title: str | None = None, con: Any = None,
                row_styles: Sequence[str | None] | None = None) -> None:
    """Print a table on `con` (default: `console()`): rich on a terminal, else tab-separated."""
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != len(cols):
            raise ValueError(f"row {i} has {len(r)} cells for {len(cols)} columns")
    con = con if con is not None else console()
    if is_plain(con):
        lines = ([f"# {plain_cell(title)}"] if title else [])
        lines.append("\t".join(plain_cell(c.header) for c in cols))
        lines.extend("\t".join(plain_cell(v) for v in r) for r in rows)
        con.file.write("".join(line + "\n" for line in lines))  # rich would expand the tabs
        con.file.flush()
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for j, c in enumerate(cols):
        if c.key:  # as wide as its widest value; folded (never cut) only if that cannot fit
            width = max([len(plain_cell(r[j])) for r in rows] + [len(c.header)])
            t.add_column(c.header, justify=c.justify, no_wrap=True, overflow="fold",
                         min_width=width)
        else:
            t.add_column(c.header, justify=c.justify, overflow="fold")
    for i, r in enumerate(rows):
        style = row_styles[i] if row_styles and i < len(row_styles) else None
        t.add_row(*(v if isinstance(v, Text) else Text(str(v)) for v in r), style=style)
    con.print(t)


def rule(con: Any, text: str) -> None:
    """A section heading: rich's rule on a terminal, ``== text ==`` (whole) elsewhere."""
    if is_plain(con):
        con.file.write(f"== {plain_cell(text)} ==\n")
    else:
        from rich.text import Text

        con.rule(Text(text, style="bold"))
