"""The trace viewer of `slmflow ui`: where time, errors and bad answers concentrate.

Three views, each an HTML page with its first data inlined (one request per page, and a
headless browser's DOM dump sees everything) and a JSON endpoint the page's plain JS calls after
a filter changes:

- the trace list (``/``, ``/api/traces``): a row per run with its status (ok / escalated /
  rejected / failed), the request's first words, the agents that escalated and the errors;
  filters (workflow, agent, status, escalated, time range, minimum duration), search by trace
  id, call id or text, and paging (`SpanStore.find_traces`: a walk of the roots' index, fast at
  1M spans);
- a trace (``/trace/<id>``, ``/api/traces/<id>``): the waterfall and, for the selected span, a
  readable panel: messages, output (a parsed object as a table), confidence, tokens, cost,
  latency, model and adapter; a tool's arguments and result or error; a handoff's payload,
  validation errors and repair; evaluation and escalation events; the agent call's call-log
  record and review item, and the adapter versions later trained from that review;
- agents (``/agents``, ``/api/agents``): per agent over a window, calls, p50/p95 latency,
  tokens, cost, escalation rate, mean confidence, feedback, review counts, small inline-SVG
  time series, the adapter serving, links to the agent's review queue and its latest gate
  (eval) scores.

Links run both ways: trace -> call-log record (``/call/<id>``) -> review item -> adapter version
(``/adapter/<agent>/<version>``, whose card names the reviews, calls and traces it was trained
from) and back.

Why content is PII-redacted here: spans hold prompts and answers only with content capture on,
and the call log holds them as the gateway logged them; this page may be shown on a screen or
shared, so every content string passes `slmflow.guardrails.redact_pii` before it is served, as
the gateway's call log does by default (``slmflow ui --show-pii`` turns that off).

This module computes the views (the JSON); `slmflow.ui.viewer_pages` wraps them into the HTML
pages (`list_page`, `trace_page`, ... stay importable from here), and the pages' CSS and JS are
files in ``slmflow/ui/static/`` (`slmflow.ui.page`).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Mapping

from ..tracing import attrs as A
from ..tracing import views
from ..tracing.store import TRACE_STATUSES, SpanStore

__all__ = ["list_data", "trace_detail", "span_detail", "agents_data", "call_data",
           "adapter_data", "Context"]

# attributes that carry content (prompts, answers, payloads): redacted before they are served
_CONTENT = (A.INPUT_MESSAGES, A.OUTPUT_MESSAGES, A.TOOL_CALL_ARGUMENTS, A.TOOL_CALL_RESULT,
            A.INPUT, A.OUTPUT, A.HANDOFF_PAYLOAD, A.WORKFLOW_DETAIL, A.HANDOFF_ERRORS,
            A.ESCALATION_REASON, A.EVALUATION_EXPLANATION, "exception.message",
            "exception.stacktrace", "message", "error", "reason")
_WINDOWS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


class Context:
    """What the views read: the span store, the call log (optional: links, requests, feedback,
    review items), the adapter registry (optional, lazily opened), and the redaction."""

    def __init__(self, store: SpanStore, calls: Any = None, *, show_pii: bool = False,
                 registry: Any = None) -> None:
        self.store, self.calls, self.show_pii = store, calls, show_pii
        self._registry = registry
        self._lineage: tuple[float, dict[str, list[dict[str, Any]]]] | None = None
        self._lock = threading.Lock()
        self._redacted: dict[str, str] = {}

    # -- redaction -------------------------------------------------------------------------
    # Why batched and cached: with Presidio installed `redact_pii` runs a spaCy model (about
    # 10 ms for a short text, 50 ms for a few KB); a page's strings go through it as one text
    # (joined by a separator, split after) and each result is remembered.
    _SEP = "\n\n\u2042\u2042\u2042\n\n"

    def redact_texts(self, texts: list[str]) -> list[str]:
        if self.show_pii:
            return list(texts)
        from ..guardrails import redact_pii

        with self._lock:
            cache = self._redacted
            missing = list(dict.fromkeys(t for t in texts if t and t not in cache))
        if missing:
            done = redact_pii(self._SEP.join(missing)).split(self._SEP)
            if len(done) != len(missing):  # a PII span across the separator: one at a time
                done = [redact_pii(t) for t in missing]
            with self._lock:
                if len(cache) > 50_000:
                    cache.clear()
                cache.update(zip(missing, done))
        with self._lock:
            return [cache.get(t, t) if t else t for t in texts]

    def redact(self, v: Any) -> Any:
        """Every string inside ``v`` (a JSON-able value), redacted in one batch."""
        if self.show_pii or v is None:
            return v
        found: list[str] = []

        def walk(x: Any) -> None:
            if isinstance(x, str):
                found.append(x)
            elif isinstance(x, list):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):
                for y in x.values():
                    walk(y)

        walk(v)
        if not found:
            return v
        it = iter(self.redact_texts(found))

        def build(x: Any) -> Any:
            if isinstance(x, str):
                return next(it)
            if isinstance(x, list):
                return [build(y) for y in x]
            if isinstance(x, dict):
                return {k: build(y) for k, y in x.items()}
            return x

        return build(v)

    @staticmethod
    def content_of(a: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in a.items() if k in _CONTENT}

    # -- the registry's lineage: which adapter versions were trained from which reviews ------
    def registry(self) -> Any:
        if self._registry is None:
            try:
                from ..finetune.registry import AdapterRegistry

                self._registry = AdapterRegistry()
            except Exception:  # noqa: BLE001 - no registry: no adapter links, the rest works
                self._registry = False
        return self._registry or None

    def lineage(self) -> dict[str, list[dict[str, Any]]]:
        """``{"review:<id>" | "call:<id>" | "trace:<id>": [{agent, version, promoted}]}`` from
        every card's ``lineage.loop`` (cached 30 s)."""
        with self._lock:
            if self._lineage is not None and self._lineage[0] > time.monotonic():
                return self._lineage[1]
        out: dict[str, list[dict[str, Any]]] = {}
        reg = self.registry()
        try:
            for agent in (reg.agents() if reg is not None else []):
                promoted = reg.promoted(agent)
                for v in reg.versions(agent):
                    lin = (reg.card(agent, v).get("lineage") or {})
                    ref = {"agent": agent, "version": v, "promoted": v == promoted}
                    loop = lin.get("loop") or {}
                    for kind, ids in (("review", loop.get("review_ids")),
                                      ("call", loop.get("call_ids")),
                                      ("trace", lin.get("trace_ids"))):
                        for i in ids or ():
                            out.setdefault(f"{kind}:{i}", []).append(ref)
        except Exception:  # noqa: BLE001 - a broken card must not take the page down
            pass
        with self._lock:
            self._lineage = (time.monotonic() + 30.0, out)
        return out

    # -- the call log ------------------------------------------------------------------------
    def review_items(self, call_ids: list[str]) -> dict[str, dict[str, Any]]:
        """{call_id: {id, status, verdict, reviewer}} for calls with a review item."""
        if self.calls is None or not call_ids:
            return {}
        out = {}
        for i in range(0, len(call_ids), 500):
            chunk = call_ids[i:i + 500]
            rows = self.calls._all(
                "SELECT call_id, id, status, verdict, reviewer FROM review_items WHERE call_id "
                f"IN ({', '.join('?' * len(chunk))})", chunk)
            for r in rows:
                out[r[0]] = {"id": r[1], "status": r[2], "verdict": r[3], "reviewer": r[4]}
        return out


def _first_words(v: Any, n: int = 14) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            pass
    if isinstance(v, dict):  # a request object: its text field, else the whole object
        v = next((v[k] for k in ("text", "input", "question", "query", "message")
                  if isinstance(v.get(k), str)), v)
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    words = s.split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def _float(v: Any) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


# ---- the trace list -------------------------------------------------------------------------

def list_data(ctx: Context, q: Mapping[str, str]) -> dict[str, Any]:
    """``q``: the query string (workflow, agent, status, escalated=1|0, since, until (epoch
    seconds, an ISO time or a duration back from now: ``1h``), min_ms, q (trace id, call id or
    text), limit, offset). Returns ``{rows, offset, limit, more, filters}``."""
    from ..errors import ConfigError
    from ..store.calllog import parse_since

    limit = max(1, min(int(_float(q.get("limit")) or 50), 500))
    offset = max(0, int(_float(q.get("offset")) or 0))
    status = q.get("status") or None
    if status is not None and status not in TRACE_STATUSES:
        raise ConfigError(f"status must be one of {', '.join(TRACE_STATUSES)}", where="traces")
    esc = {"1": True, "true": True, "0": False, "false": False}.get(q.get("escalated") or "")
    text = (q.get("q") or "").strip() or None
    trace_ids: list[str] = []
    if text and ctx.calls is not None and len(text) >= 8 and \
            all(c in "0123456789abcdef" for c in text.lower()):
        rec = ctx.calls.get(text.lower())  # a call id: its trace
        if rec is not None and rec.trace_id:
            trace_ids.append(rec.trace_id)
    rows = ctx.store.find_traces(
        workflow=q.get("workflow") or None, agent=q.get("agent") or None, status=status,
        escalated=esc, since_ns=_ns(parse_since(q.get("since") or None)),
        until_ns=_ns(parse_since(q.get("until") or None)), min_ms=_float(q.get("min_ms")),
        text=text, trace_ids=trace_ids, limit=limit + 1, offset=offset)
    more = len(rows) > limit
    rows = rows[:limit]
    roll = ctx.store.trace_rollups([r["trace_id"] for r in rows])
    missing = [r["run_id"] for r in rows if r["request"] is None and r["run_id"]]
    firsts: dict[str, Any] = {}
    if missing and ctx.calls is not None:  # content capture off: the call log's first input
        got = ctx.calls._all(
            f"SELECT run_id, input FROM calls WHERE run_id IN ({', '.join('?' * len(missing))})"
            " AND kind = 'agent' ORDER BY ts", missing)
        for run_id, inp in got:
            firsts.setdefault(run_id, inp)
    out = []
    for r in rows:
        agg = roll.get(r["trace_id"], {})
        req = r["request"] if r["request"] is not None else firsts.get(r["run_id"])
        out.append({k: v for k, v in r.items() if k != "attributes"} | agg | {
            "request": _first_words(req), "detail": r["detail"],
            "error_messages": agg.get("error_messages", [])})
    shown = ctx.redact([[o["request"], o["detail"], o["error_messages"]] for o in out])
    for o, (req, detail, errs) in zip(out, shown):
        o["request"], o["detail"], o["error_messages"] = req, detail, errs
    return {"rows": out, "offset": offset, "limit": limit, "more": more,
            "filters": facets(ctx.store)}


def facets(store: SpanStore) -> dict[str, list[str]]:
    """Workflow and agent names for the filter boxes, from the newest 2,000 spans (any name can
    still be typed)."""
    rows = store._rows("SELECT workflow, agent FROM spans ORDER BY start_ns DESC LIMIT 2000")
    return {"workflows": sorted({r["workflow"] for r in rows if r["workflow"]}),
            "agents": sorted({r["agent"] for r in rows if r["agent"]}),
            "statuses": list(TRACE_STATUSES)}


# ---- one trace --------------------------------------------------------------------------------

def trace_detail(ctx: Context, trace_id: str) -> dict[str, Any] | None:
    """The waterfall rows (depth-first, rolled up) with every span's attributes and events but
    their content (prompts, answers, payloads, error texts: `span_detail` serves those, PII
    redacted, when the span is opened, so a trace page costs no redaction up front); status
    messages are redacted here."""
    spans = ctx.store.trace(trace_id)
    if not spans:
        return None
    summary = views.trace_summary(spans)
    flat = views.flatten(views.build_tree(spans))
    root = flat[0]
    ra = root["attributes"]
    summary |= {"status": ("failed" if root["status"] == "ERROR" else None)
                or ra.get(A.WORKFLOW_STATUS)
                or ("escalated" if ra.get(A.ESCALATED) else "ok"),
                "run_id": ra.get(A.RUN_ID), "workflow": root["workflow"],
                "trained": ctx.lineage().get(f"trace:{root['trace_id']}", [])}
    out_spans = []
    for s in flat:
        d = {k: v for k, v in s.items() if k != "children"}
        d["attributes"] = {k: v for k, v in s["attributes"].items() if k not in _CONTENT}
        d["events"] = [{"name": e.get("name"), "time_ns": e.get("time_ns"),
                        "attributes": {k: v for k, v in (e.get("attributes") or {}).items()
                                       if k not in _CONTENT}} for e in s["events"]]
        d["content"] = any(k in _CONTENT for k in s["attributes"]) or \
            any(k in _CONTENT for e in s["events"] for k in (e.get("attributes") or {}))
        out_spans.append(d)
    msgs = ctx.redact([d["status_message"] for d in out_spans])
    for d, m in zip(out_spans, msgs):
        d["status_message"] = m
    return {"summary": summary, "spans": out_spans}


def span_detail(ctx: Context, trace_id: str, span_id: str) -> dict[str, Any] | None:
    """One span whole, content PII-redacted (one batch), plus its agent call's call-log record,
    review item and the adapter versions trained from that review."""
    s = next((x for x in ctx.store.trace(trace_id) if x["span_id"] == span_id), None)
    if s is None:
        return None
    a, evs = s["attributes"], s["events"]
    content = ctx.redact([ctx.content_of(a)] + [ctx.content_of(e.get("attributes") or {})
                                                for e in evs])
    out = {"span_id": span_id, "attributes": a | content[0],
           "events": [{"name": e.get("name"), "time_ns": e.get("time_ns"),
                       "attributes": (e.get("attributes") or {}) | c}
                      for e, c in zip(evs, content[1:])],
           "status_message": ctx.redact(s["status_message"]), "call": None}
    cid = a.get(A.CALL_ID)
    if cid:
        rec = ctx.calls.get(cid) if ctx.calls is not None else None
        item = ctx.review_items([cid]).get(cid)
        io = ctx.redact([rec.input, rec.output]) if rec is not None else [None, None]
        out["call"] = {
            "id": cid, "logged": rec is not None, "input": io[0], "output": io[1],
            "status": rec.status if rec else None, "error": rec.error if rec else None,
            "review": item,
            "trained": (ctx.lineage().get(f"review:{item['id']}") or []) if item else []}
    return out


# ---- agents -----------------------------------------------------------------------------------

def agents_data(ctx: Context, q: Mapping[str, str]) -> dict[str, Any]:
    """Per agent over ``window`` (5m, 15m, 1h, 6h, 24h, 7d, 30d; default 24h): calls, errors, p50/p95
    latency (ms), tokens, cost, escalation rate, mean confidence, the model identity serving
    now (newest call: name+adapter), feedback (up/down), review counts, the registry's promoted
    version and its gate scores, and 24 time buckets (calls, p50, escalation rate, mean
    confidence) for the sparklines."""
    from ..errors import ConfigError

    win = q.get("window") or "24h"
    if win not in _WINDOWS:
        raise ConfigError(f"window must be one of {', '.join(_WINDOWS)}", where="agents")
    now = time.time()
    since = now - _WINDOWS[win]
    since_ns, now_ns = int(since * 1e9), int(now * 1e9)
    nb = 24
    st = ctx.store.agent_stats(since_ns, now_ns, nb)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in st["buckets"]:
        groups.setdefault(r["agent"], []).append(r)
    fb = _feedback(ctx, since)
    review = {}
    if ctx.calls is not None:
        from ..store.review import ReviewQueue

        try:
            review = ReviewQueue(ctx.calls).stats()
        except Exception:  # noqa: BLE001
            review = {}
    reg = ctx.registry()
    out = []
    for agent in sorted(set(groups) | set(fb)):
        bs = groups.get(agent, [])
        n = sum(r["n"] for r in bs)
        conf_n = sum(r["conf_n"] for r in bs)
        series: list[dict[str, Any]] = [{"calls": 0, "p50_ms": None, "escalation_rate": None,
                                         "confidence": None} for _ in range(nb)]
        for r in bs:
            k = min(nb - 1, max(0, int(r["b"])))
            series[k] = {"calls": int(r["n"]), "p50_ms": r["p50_ms"],
                         "escalation_rate": r["esc"] / r["n"],
                         "confidence": (r["conf_sum"] / r["conf_n"]) if r["conf_n"] else None}
        promoted, scores = None, None
        if reg is not None:
            try:
                promoted = reg.promoted(agent)
                if promoted:
                    scores = reg.card(agent, promoted).get("eval_scores") or None
            except Exception:  # noqa: BLE001 - not in the registry
                promoted = None
        pq = st["p"].get(agent, {})
        out.append({
            "agent": agent, "calls": n, "errors": sum(int(r["errors"]) for r in bs),
            "p50_ms": pq.get("p50_ms"), "p95_ms": pq.get("p95_ms"),
            "input_tokens": sum(int(r["input_tokens"]) for r in bs),
            "output_tokens": sum(int(r["output_tokens"]) for r in bs),
            "cost_usd": st["cost"].get(agent),
            "escalation_rate": (sum(int(r["esc"]) for r in bs) / n) if n else None,
            "confidence": (sum(r["conf_sum"] for r in bs) / conf_n) if conf_n else None,
            "serving": st["serving"].get(agent),
            "feedback": fb.get(agent, {}), "review": review.get(agent, {}),
            "promoted": promoted, "scores": scores, "series": series})
    out.sort(key=lambda r: (-r["calls"], r["agent"]))
    return {"window": win, "windows": list(_WINDOWS), "since": since, "until": now,
            "buckets": nb, "agents": out}


def _feedback(ctx: Context, since: float) -> dict[str, dict[str, int]]:
    if ctx.calls is None:
        return {}
    try:
        rows = ctx.calls._all(
            "SELECT c.agent, f.signal, COUNT(*) FROM feedback f JOIN calls c ON c.id = f.call_id "
            "WHERE f.ts >= ? GROUP BY c.agent, f.signal", (since,))
    except Exception:  # noqa: BLE001
        return {}
    out: dict[str, dict[str, int]] = {}
    for agent, signal, n in rows:
        if agent:
            out.setdefault(agent, {})[signal or "label"] = int(n)
    return out


# ---- a call-log record, an adapter version ---------------------------------------------------

def call_data(ctx: Context, call_id: str) -> dict[str, Any] | None:
    if ctx.calls is None:
        return None
    rec = ctx.calls.get(call_id)
    if rec is None:
        return None
    d = rec.as_dict()
    d["input"], d["output"], d["error"] = ctx.redact([d["input"], d["output"], d["error"]])
    item = ctx.review_items([call_id]).get(call_id)
    lin = ctx.lineage()
    return {"call": d, "review": item,
            "trained": (lin.get(f"review:{item['id']}") or []) if item else [],
            "feedback": [f.__dict__ for f in ctx.calls.feedback(call_id)]}


def adapter_data(ctx: Context, agent: str, version: str) -> dict[str, Any] | None:
    reg = ctx.registry()
    if reg is None:
        return None
    try:
        if version not in reg.versions(agent):
            return None
        card = reg.card(agent, version)
        promoted = reg.promoted(agent)
        gate = [h for h in reg.history(agent) if h.get("candidate") == version]
    except Exception:  # noqa: BLE001 - an unknown or invalid name
        return None
    return {"agent": agent, "version": version, "promoted": promoted, "card": card,
            "gate": gate}


_PAGES = ("list_page", "trace_page", "agents_page", "call_page", "adapter_page")


def __getattr__(name: str) -> Any:
    """The pages, importable from here as before they moved to `slmflow.ui.viewer_pages`
    (imported on first use: that module imports this one)."""
    if name in _PAGES:
        from . import viewer_pages

        return getattr(viewer_pages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
