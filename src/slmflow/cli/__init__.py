"""The `slmflow` command: a thin layer over the public API, one module per area.

Why thin: everything the CLI does is a call a user can make from Python; the CLI only parses
arguments, prints tables and turns `SlmflowError` into one red line and exit status 1 (never a
traceback from inside a backend). ``slmflow --help`` reads as the table of contents.
"""

from __future__ import annotations

import sys

import typer

from ..errors import SlmflowError
from . import deploy as _deploy
from . import evals as _evals
from . import finetune as _finetune
from . import index as _index
from . import loop as _loop
from . import models as _models
from . import scale as _scale
from . import serve as _serve
from . import traces as _traces
from . import workflow as _workflow

app = typer.Typer(
    name="slmflow", no_args_is_help=True, add_completion=False,
    help="Build, fine-tune, evaluate, trace and improve multi-agent workflows of small models.")
# In the order of the lifecycle: models, workflows, retrieval, traces, evals, fine-tuning, gateway,
# the improvement loop, scale-out.
for _area in (_models, _workflow, _index, _traces, _evals, _finetune, _serve, _loop, _deploy,
              _scale):
    _area.register(app)


def main() -> None:
    # The CLI's agent calls land in the call log (`slmflow run`, `demo`, `eval`, `loop`, `serve`):
    # the agents only emit events (slmflow.hooks); a library user turns it on with one line.
    from ..store.writer import enable_logging

    enable_logging()
    try:
        app(standalone_mode=False)
    except SlmflowError as e:
        from ..output import console

        console(stderr=True).print(f"[bold red]error:[/] {e.message}"
                                   + (f"  [dim]({e.where})[/]" if e.where else ""),
                                   highlight=False, markup=True)
        sys.exit(1)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except Exception as e:  # click usage errors and aborts
        # by class name: typer >= 0.29 raises its own vendored click's classes (typer._click),
        # which are not the `click` package's, and a usage error must not end in a traceback
        names = {c.__name__ for c in type(e).__mro__}
        if "ClickException" in names:
            e.show()  # type: ignore[attr-defined]
            sys.exit(getattr(e, "exit_code", 2))
        if "Abort" in names:
            sys.exit(130)
        raise
