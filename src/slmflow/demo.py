"""`make demo` / `slmflow demo`: the reference support pipeline on the embedded model, no server.

Why the demo is the workflow and not a single model call: the product is a *pipeline* of small
models (router, retrieval, extraction, reasoning, verifier) whose every step is typed, checked and
recorded. The demo runs ``examples/support/workflow.yaml`` on a few sample tickets and prints each
answer with its per-step table (model, latency, tokens, confidence, escalated), then a summary.
Nothing is hand-picked: whatever the 135M model answers, including rejections, is shown.

The router and the extractor run with the LoRA adapters the example ships
(``examples/support/adapters/``, trained by ``examples/support/train_adapters.sh``); the summary
shows what each routed and extracted. ``slmflow demo --no-adapters`` runs the same tickets on the
zero-shot base model for comparison; a model other than the adapters' base runs without them.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support" / "workflow.yaml"


def sample_tickets() -> list[str]:
    f = EXAMPLE.parent / "tickets.txt"
    return [t.strip() for t in f.read_text(encoding="utf-8").splitlines() if t.strip()]


ADAPTERS_BASE = "smollm2-135m"  # the model the shipped adapters were trained on


def run_demo(model_name: str = "smollm2-135m", spec: Path | None = None,
             adapters: bool | None = None) -> None:
    """Run the sample tickets; `adapters` None means: the shipped adapters when the model is
    their base model, none otherwise."""
    from .agents import set_adapter_resolver
    from .finetune.registry import base_model_resolver

    if adapters is None:
        adapters = model_name == ADAPTERS_BASE
    if adapters:
        _run(model_name, spec or EXAMPLE, adapters)
        return
    set_adapter_resolver(base_model_resolver)
    try:
        _run(model_name, spec or EXAMPLE, adapters)
    finally:
        set_adapter_resolver(None)


def _run(model_name: str, spec: Path, adapters: bool) -> None:
    from .output import Col, print_table, rule
    from .output import console as cli_console
    from .workflow import load_workflow, print_result

    if not spec.is_file():
        raise ConfigError(f"the example workflow is not here: {spec} (run from a source checkout)",
                          where="demo")
    # piped or logged (make demo in CI): the tables come out tab-separated, nothing cut
    console = cli_console()
    wf = load_workflow(spec, model=model_name, fallback=model_name)
    tuned = sorted(a.name for a in wf.agents.values() if a.adapter) if adapters else []
    title = (f"support pipeline on {model_name}"
             + (f" (adapters: {', '.join(tuned)})" if tuned else " (no adapters)"))
    rows = []
    for ticket in sample_tickets():
        rule(console, ticket)
        r = wf.run_sync(ticket)
        print_result(r, console)
        share = r.model_latency_s / r.latency_s if r.latency_s else 0.0
        st = r.state
        rows.append([ticket[:48], r.status, str(st.get("category")), str(st.get("order_id")),
                     str(st.get("account_id")), str(st.get("urgent")),
                     f"{r.latency_s * 1000:.0f}", f"{share:.0%}", str(len(r.escalations))])
    print_table([Col("ticket"), Col("status"), Col("category"), Col("order_id", key=True),
                 Col("account_id", key=True), Col("urgent"), Col("ms"), Col("model share"),
                 Col("escalations")], rows, title=f"{title}: summary", con=console)
