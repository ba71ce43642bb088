"""`make demo` / `slmflow demo`: the reference support pipeline on the embedded model, no server.

Why the demo is the workflow and not a single model call: the product is a *pipeline* of small
models (router, retrieval, extraction, reasoning, verifier) whose every step is typed, checked and
recorded. The demo runs ``examples/support/workflow.yaml`` on a few sample tickets and prints each
answer with its per-step table (model, latency, tokens, confidence, escalated), then a summary.
Nothing is hand-picked: whatever the 135M model answers, including rejections, is shown.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support" / "workflow.yaml"


def sample_tickets() -> list[str]:
    f = EXAMPLE.parent / "tickets.txt"
    return [t.strip() for t in f.read_text(encoding="utf-8").splitlines() if t.strip()]


def run_demo(model_name: str = "smollm2-135m", spec: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from .workflow import load_workflow, print_result

    spec = spec or EXAMPLE
    if not spec.is_file():
        raise ConfigError(f"the example workflow is not here: {spec} (run from a source checkout)",
                          where="demo")
    console = Console()
    wf = load_workflow(spec, model=model_name, fallback=model_name)
    summary = Table(title=f"support pipeline on {model_name}: summary")
    for c in ("ticket", "status", "ms", "model ms", "model share", "escalations"):
        summary.add_column(c, overflow="fold")
    for ticket in sample_tickets():
        console.rule(f"[bold]{ticket}")
        r = wf.run_sync(ticket)
        print_result(r, console)
        share = r.model_latency_s / r.latency_s if r.latency_s else 0.0
        summary.add_row(ticket[:48], r.status, f"{r.latency_s * 1000:.0f}",
                        f"{r.model_latency_s * 1000:.0f}", f"{share:.0%}",
                        str(len(r.escalations)))
    console.print(summary)
