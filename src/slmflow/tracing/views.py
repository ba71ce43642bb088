"""Views over stored spans: one trace as a tree with roll-ups, and statistics per agent/model.

Why computed here and not in the CLI or the web page: ``slmflow traces``, ``slmflow ui`` and the
tests must agree on what "tokens of an agent" or "escalation rate" mean. Definitions:

- tokens and cost of a span = its own (a ``chat`` span's usage) plus all its descendants', so an
  agent's cost is the sum of the model calls it made, and a run's cost is its root's;
- an agent invocation is one ``invoke_agent`` span; it errs when its status is ERROR; it is
  escalated when it or a descendant carries ``slmflow.escalated`` or a ``slmflow.escalation``
  event, or a handoff span of the same trace whose source is that agent has status
  ``escalated`` (counted once per invocation);
- p50/p95 are nearest-rank percentiles of span durations.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from . import attrs as A


def _escalated_self(s: dict[str, Any]) -> bool:
    a = s["attributes"]
    if a.get(A.ESCALATED) is True:
        return True
    if any(e.get("name") == A.ESCALATION_EVENT for e in s["events"]):
        return True
    return a.get(A.OPERATION_NAME) == "handoff" and a.get(A.HANDOFF_STATUS) == "escalated"


def build_tree(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nest one trace's spans (dicts from `SpanStore.trace`): each gets ``children``, ``depth``
    and rolled-up ``total_input_tokens``, ``total_output_tokens``, ``total_cost_usd``,
    ``escalated``. Returns the roots (spans whose parent is not in the trace)."""
    by_id = {s["span_id"]: s for s in spans}
    roots: list[dict[str, Any]] = []
    for s in spans:
        s["children"] = []
    for s in sorted(spans, key=lambda x: x["start_ns"]):
        parent = by_id.get(s["parent_id"]) if s["parent_id"] else None
        (parent["children"] if parent else roots).append(s)

    def roll(s: dict[str, Any], depth: int) -> None:
        s["depth"] = depth
        cost = s["cost_usd"]
        esc = _escalated_self(s)
        ci = co = 0
        for c in s["children"]:
            roll(c, depth + 1)
            ci += c["total_input_tokens"]
            co += c["total_output_tokens"]
            if c["total_cost_usd"] is not None:
                cost = (cost or 0.0) + c["total_cost_usd"]
            esc = esc or c["escalated"]
        # an agent span reports the usage of its model calls, which its chat children report
        # too: a span's own tokens count only when no descendant has any (else twice)
        ti, to = (ci, co) if (ci or co) else (s["input_tokens"] or 0, s["output_tokens"] or 0)
        s["total_input_tokens"], s["total_output_tokens"] = ti, to
        s["total_cost_usd"], s["escalated"] = cost, esc

    for r in roots:
        roll(r, 0)
    return roots


def flatten(roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Depth-first order (the order of an indented tree or a waterfall)."""
    out: list[dict[str, Any]] = []

    def walk(s: dict[str, Any]) -> None:
        out.append(s)
        for c in s["children"]:
            walk(c)

    for r in roots:
        walk(r)
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = max(1, math.ceil(q / 100 * len(v)))
    return v[k - 1]


_KEYS = {
    "agent": ("invoke_agent", lambda s: s["agent"] or s["attributes"].get(A.AGENT_NAME)),
    "model": ("chat", lambda s: s["model"]),
    "tool": ("execute_tool", lambda s: s["attributes"].get(A.TOOL_NAME) or s["name"]),
    "workflow": ("invoke_workflow", lambda s: s["workflow"] or s["name"]),
    "operation": (None, lambda s: s["operation"] or s["name"].split(" ")[0]),
}
BY = tuple(_KEYS)


def stats(spans: Iterable[dict[str, Any]], by: str = "agent") -> list[dict[str, Any]]:
    """One row per agent (or model, tool, workflow, operation): calls, p50/p95 latency (ms),
    tokens, cost, error rate, escalation rate. ``spans`` may hold many traces."""
    if by not in _KEYS:
        from ..errors import ConfigError

        raise ConfigError(f"--by must be one of {', '.join(BY)}, got {by!r}", where="stats")
    op, key = _KEYS[by]
    traces: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        traces.setdefault(s["trace_id"], []).append(s)
    groups: dict[str, list[dict[str, Any]]] = {}
    for trace_spans in traces.values():
        build_tree(trace_spans)
        escalated_handoffs: dict[str, int] = {}
        for s in trace_spans:
            a = s["attributes"]
            if a.get(A.OPERATION_NAME) == "handoff" and a.get(A.HANDOFF_STATUS) == "escalated":
                src = a.get(A.HANDOFF_SOURCE)
                escalated_handoffs[src] = escalated_handoffs.get(src, 0) + 1
        for s in sorted(trace_spans, key=lambda x: x["start_ns"]):
            if op is not None and (s["operation"] or "") != op:
                continue
            k = key(s)
            if k is None:
                continue
            row = dict(s)
            if by == "agent" and not row["escalated"] and escalated_handoffs.get(k):
                escalated_handoffs[k] -= 1
                row["escalated"] = True
            groups.setdefault(str(k), []).append(row)
    out = []
    for k, rows in groups.items():
        lat = [r["duration_ms"] for r in rows]
        costs = [r["total_cost_usd"] for r in rows if r["total_cost_usd"] is not None]
        n = len(rows)
        out.append({
            by: k, "calls": n,
            "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "input_tokens": sum(r["total_input_tokens"] for r in rows),
            "output_tokens": sum(r["total_output_tokens"] for r in rows),
            "cost_usd": sum(costs) if costs else None,
            "error_rate": sum(r["status"] == "ERROR" for r in rows) / n,
            "escalation_rate": sum(bool(r["escalated"]) for r in rows) / n,
        })
    out.sort(key=lambda r: (-r["calls"], str(r[by])))
    return out


def trace_summary(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of one trace: duration, tokens, cost, errors, escalations."""
    roots = build_tree(spans)
    flat = flatten(roots)
    if not flat:
        return {}
    start = min(s["start_ns"] for s in flat)
    end = max(s["end_ns"] for s in flat)
    costs = [r["total_cost_usd"] for r in roots if r["total_cost_usd"] is not None]
    return {"trace_id": flat[0]["trace_id"], "root": roots[0]["name"],
            "start_ns": start, "duration_ms": (end - start) / 1e6, "spans": len(flat),
            "input_tokens": sum(r["total_input_tokens"] for r in roots),
            "output_tokens": sum(r["total_output_tokens"] for r in roots),
            "cost_usd": sum(costs) if costs else None,
            "errors": sum(s["status"] == "ERROR" for s in flat),
            "escalations": sum(_escalated_self(s) for s in flat)}


def to_json(roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tree as plain JSON-able dicts (for ``--json`` and the web view)."""
    def conv(s: dict[str, Any]) -> dict[str, Any]:
        d = {k: v for k, v in s.items() if k != "children"}
        d["children"] = [conv(c) for c in s["children"]]
        return d

    return [conv(r) for r in roots]
