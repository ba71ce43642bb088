"""Evaluate the BANKING77 router (77 intents) on the test split: routing accuracy, macro F1,
per-class precision/recall and the confusion matrix.

    # the shipped suite (router_suite.yaml), a fixed-seed stratified sample of 308 test rows:
    slmflow eval agent examples/banking77/router_suite.yaml --html router.html --json router.json
    # or from Python, with a regression gate against a stored baseline:
    .venv/bin/python examples/banking77/eval_router.py --limit 308 --baseline baseline.json

Zero-shot SmolLM2-135M is the floor a fine-tuned router adapter must beat (docs/evals.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import router  # noqa: E402  (INSTRUCTIONS, INTENTS, Route, load)

from slmflow.agents import Agent  # noqa: E402

TEST_CSV = router.DATA / "test.csv"


def make_agent(model: object = "smollm2-135m", adapter: str | None = None) -> Agent:
    """The router agent: the same system prompt and 77-way schema as router.messages/train.py."""
    return Agent(name="banking77-router", model=model, adapter=adapter,
                 instructions=router.INSTRUCTIONS, output_type=router.Route, max_tokens=24)


agent = make_agent()


def cases(limit: int | None = None, seed: int = 0):
    from slmflow.evals import load_cases

    return load_cases(TEST_CSV, input_field="text", expected_field="category", limit=limit,
                      seed=seed)


def evaluators():
    from slmflow.evals import create

    return [create("routing", field="intent", labels=router.INTENTS)]


def main() -> int:
    from slmflow.evals import compare, print_report, run_suite, write_html
    from slmflow.models.catalog import resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=308, help="stratified sample size (0: all)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--html")
    ap.add_argument("--baseline")
    ap.add_argument("--tolerance", type=float, default=0.02)
    a = ap.parse_args()
    model = resolve(a.model, pool_size=a.concurrency) if a.concurrency > 1 else a.model
    rep = run_suite(make_agent(model), cases(a.limit or None), evaluators(),
                    concurrency=a.concurrency, name="banking77-router", progress=True)
    print_report(rep)
    if a.json_out:
        rep.save(a.json_out)
    gate = compare(rep, a.baseline, a.tolerance) if a.baseline else None
    if a.html:
        write_html(rep, a.html, gate)
    if gate is not None:
        print("\n".join(gate.lines()))
        return gate.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
