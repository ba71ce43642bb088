"""`make demo` / `slmflow demo`: the reference support pipeline on the embedded model, no server.

Why the demo is the workflow and not a single model call: the product is a *pipeline* of small
models (router, retrieval, extraction, reasoning, verifier) whose every step is typed, checked and
recorded. The demo runs ``examples/support/workflow.yaml`` on a few sample tickets and prints each
answer with its per-step table (model, latency, tokens, confidence, escalated), then a summary.
Nothing is hand-picked: whatever the 135M model answers, including rejections, is shown.

Every agent runs with the LoRA adapter the example ships (``examples/support/adapters/``: router,
extractor, reasoner, verifier; trained by ``examples/support/train_adapters.sh``); the summary
shows what each routed and extracted. Then the same tickets run on the zero-shot base model and one
short table compares the two (the project's claim, small and fine-tuned beats zero-shot, shown on
the user's own machine); ``--no-compare`` skips that. ``slmflow demo --no-adapters`` runs the
tickets zero-shot only; a model other than the adapters' base runs without them. The demo ends
with where to look next (the trace, the UI, the scenario evals).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support" / "workflow.yaml"


def sample_tickets() -> list[str]:
    f = EXAMPLE.parent / "tickets.txt"
    return [t.strip() for t in f.read_text(encoding="utf-8").splitlines() if t.strip()]


ADAPTERS_BASE = "smollm2-135m"  # the model the shipped adapters were trained on


def _console() -> Any:
    from rich.console import Console

    # piped or logged (make demo in CI): rich would wrap the tables at 80 columns
    return Console() if sys.stdout.isatty() else Console(width=160)


def run_demo(model_name: str = "smollm2-135m", spec: Path | None = None,
             adapters: bool | None = None, compare: bool = True) -> None:
    """Run the sample tickets; `adapters` None means: the shipped adapters when the model is
    their base model, none otherwise. With adapters and `compare`, the same tickets then run
    zero-shot and a short comparison is printed."""
    if adapters is None:
        adapters = model_name == ADAPTERS_BASE
    spec = spec or EXAMPLE
    tuned = _run(model_name, spec, adapters)
    console = _console()
    if adapters and compare:
        console.rule("[bold]the same tickets, zero-shot (no adapters)")
        base = _run(model_name, spec, False, quiet=True)
        print_comparison(console, model_name, tuned, base)
    console.print("\nwhere to look next:\n"
                  "  slmflow traces show last        the last run's spans: prompts, answers, "
                  "timings\n"
                  "  slmflow ui                      the trace viewer and the review queue in a "
                  "browser\n"
                  f"  slmflow eval workflow {_rel(spec)}   the scenario suite "
                  f"(held-out part: --scenarios {_rel(spec.parent / 'scenarios_heldout.yaml')})")


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def print_comparison(console: Any, model_name: str, tuned: list[Any], base: list[Any]) -> None:
    """One short table: per ticket, the status and latency with and without the adapters."""
    from rich.table import Table

    t = Table(title=f"fine-tuned vs zero-shot on {model_name}: same tickets")
    for c in ("ticket", "fine-tuned", "ms", "zero-shot", "ms "):
        t.add_column(c, overflow="fold")
    for ticket, a, b in zip(sample_tickets(), tuned, base):
        t.add_row(ticket[:60], a.status, f"{a.latency_s * 1000:.0f}", b.status, f"{b.latency_s * 1000:.0f}")
    ok = lambda rs: sum(r.status == "ok" for r in rs)  # noqa: E731
    t.add_row("[bold]ok", f"[bold]{ok(tuned)}/{len(tuned)}", "", f"[bold]{ok(base)}/{len(base)}",
              "")
    console.print(t)


def _run(model_name: str, spec: Path, adapters: bool, quiet: bool = False) -> list[Any]:
    from .agents import set_adapter_resolver
    from .finetune.registry import base_model_resolver

    if adapters:
        return _run_tickets(model_name, spec, adapters, quiet)
    set_adapter_resolver(base_model_resolver)
    try:
        return _run_tickets(model_name, spec, adapters, quiet)
    finally:
        set_adapter_resolver(None)


def _run_tickets(model_name: str, spec: Path, adapters: bool, quiet: bool) -> list[Any]:
    from rich.table import Table

    from .workflow import load_workflow, print_result

    if not spec.is_file():
        raise ConfigError(f"the example workflow is not here: {spec} (run from a source checkout)",
                          where="demo")
    console = _console()
    wf = load_workflow(spec, model=model_name, fallback=model_name)
    tuned = sorted(a.name for a in wf.agents.values() if a.adapter) if adapters else []
    title = (f"support pipeline on {model_name}"
             + (f" (adapters: {', '.join(tuned)})" if tuned else " (no adapters)"))
    summary = Table(title=f"{title}: summary")
    for c in ("ticket", "status", "category", "order_id", "account_id", "urgent", "ms",
              "model share", "escalations"):
        summary.add_column(c, overflow="fold")
    results = []
    for ticket in sample_tickets():
        if not quiet:
            console.rule(f"[bold]{ticket}")
        r = wf.run_sync(ticket)
        results.append(r)
        if not quiet:
            print_result(r, console)
        share = r.model_latency_s / r.latency_s if r.latency_s else 0.0
        st = r.state
        summary.add_row(ticket[:48], r.status, str(st.get("category")), str(st.get("order_id")),
                        str(st.get("account_id")), str(st.get("urgent")),
                        f"{r.latency_s * 1000:.0f}", f"{share:.0%}", str(len(r.escalations)))
    if not quiet:
        console.print(summary)
    return results
