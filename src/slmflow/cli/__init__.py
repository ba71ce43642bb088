"""The `slmflow` command: a thin layer over the public API, one module per area.

Why thin: everything the CLI does is a call a user can make from Python; the CLI only parses
arguments, prints tables and turns `SlmflowError` into one red line and exit status 1 (never a
traceback from inside a backend). ``slmflow --help`` reads as the table of contents.
"""

from __future__ import annotations

import sys

import typer

from ..errors import SlmflowError
from . import models as _models
from . import workflow as _workflow

app = typer.Typer(
    name="slmflow", no_args_is_help=True, add_completion=False,
    help="Build, fine-tune, evaluate, trace and improve multi-agent workflows of small models.")
_models.register(app)
_workflow.register(app)
from . import traces as _traces  # noqa: E402
_traces.register(app)
from . import index as _index  # noqa: E402
_index.register(app)
from . import finetune as _finetune  # noqa: E402
_finetune.register(app)


def main() -> None:
    try:
        app(standalone_mode=False)
    except SlmflowError as e:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {e.message}"
                                   + (f"  [dim]({e.where})[/]" if e.where else ""),
                                   highlight=False, markup=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except Exception as e:  # click usage errors and aborts
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
from . import evals as _evals  # noqa: E402
_evals.register(app)
from . import serve as _serve  # noqa: E402
_serve.register(app)
