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

from pathlib import Path
from typing import Any

from .errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support" / "workflow.yaml"


def sample_tickets() -> list[str]:
    f = EXAMPLE.parent / "tickets.txt"
    return [t.strip() for t in f.read_text(encoding="utf-8").splitlines() if t.strip()]


ADAPTERS_BASE = "smollm2-135m"  # the model the shipped adapters were trained on


def _console() -> Any:
    from .output import console

    # piped or logged (make demo in CI): the tables come out tab-separated, nothing cut
    return console()


def run_demo(model_name: str = "smollm2-135m", spec: Path | None = None,
             adapters: bool | None = None, compare: bool = True) -> None:
    """Run the sample tickets; `adapters` None means: the shipped adapters when the model is
    their base model, none otherwise. With adapters and `compare`, the same tickets then run
    zero-shot and a short comparison is printed."""
    if adapters is None:
        adapters = model_name == ADAPTERS_BASE
    spec = spec or EXAMPLE
    from .output import rule

    tuned = _run(model_name, spec, adapters)
    console = _console()
    if adapters and compare:
        rule(console, "the same tickets, zero-shot (no adapters)")
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
    from .output import print_table

    rows = [[ticket[:60], a.status, f"{a.latency_s * 1000:.0f}", b.status,
             f"{b.latency_s * 1000:.0f}"] for ticket, a, b in zip(sample_tickets(), tuned, base)]
    ok = lambda rs: sum(r.status == "ok" for r in rs)  # noqa: E731
    rows.append(["all ok", f"{ok(tuned)}/{len(tuned)}", "", f"{ok(base)}/{len(base)}", ""])
    print_table(["ticket", "fine-tuned", "ms", "zero-shot", "ms (zero-shot)"], rows,
                title=f"fine-tuned vs zero-shot on {model_name}: same tickets", con=console)


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
    from .output import Col, print_table, rule
    from .workflow import load_workflow, print_result

    if not spec.is_file():
        raise ConfigError(f"the example workflow is not here: {spec} (run from a source checkout)",
                          where="demo")
    console = _console()
    wf = load_workflow(spec, model=model_name, fallback=model_name)
    tuned = sorted(a.name for a in wf.agents.values() if a.adapter) if adapters else []
    title = (f"support pipeline on {model_name}"
             + (f" (adapters: {', '.join(tuned)})" if tuned else " (no adapters)"))
    rows, results = [], []
    for ticket in sample_tickets():
        if not quiet:
            rule(console, ticket)
        r = wf.run_sync(ticket)
        results.append(r)
        if not quiet:
            print_result(r, console)
        share = r.model_latency_s / r.latency_s if r.latency_s else 0.0
        st = r.state
        rows.append([ticket[:48], r.status, str(st.get("category")), str(st.get("order_id")),
                     str(st.get("account_id")), str(st.get("urgent")),
                     f"{r.latency_s * 1000:.0f}", f"{share:.0%}", str(len(r.escalations))])
    if not quiet:
        print_table([Col("ticket"), Col("status"), Col("category"), Col("order_id", key=True),
                     Col("account_id", key=True), Col("urgent"), Col("ms"), Col("model share"),
                     Col("escalations")], rows, title=f"{title}: summary", con=console)
    return results
