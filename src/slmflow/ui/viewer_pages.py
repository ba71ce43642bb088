"""The trace viewer's HTML pages (`slmflow ui`): the trace list, a trace's waterfall, agents, a
call-log record and an adapter version, each the data of `slmflow.ui.viewer` inlined as JSON
into the shared frame (`slmflow.ui.page`) with the page's script from ``static/``.

Why apart from `slmflow.ui.viewer`: that module computes the views (the same JSON is served
under ``/api/...``); this one only wraps them into pages. The HTML here is the little that
carries server-side values (escaped with `html.escape`); everything static (CSS, JS) is in
``static/`` (``viewer.css``, ``viewer.js`` and one ``viewer-<page>.js`` per page).
"""

from __future__ import annotations

import html
import time
from typing import Any, Mapping

from ..tracing.store import TRACE_STATUSES
from .page import json_in_html, page
from .viewer import (_WINDOWS, Context, adapter_data, agents_data, call_data, list_data,
                     trace_detail)

__all__ = ["list_page", "trace_page", "agents_page", "call_page", "adapter_page"]


def _nav(on: str) -> str:
    links = [("/", "traces"), ("/agents", "agents"), ("/review", "review queue")]
    return "<p class='nav'>" + "".join(
        f"<a href='{h}'{' class=on' if t == on else ''}>{t}</a>" for h, t in links) + "</p>"


def _page(title: str, body: str, data: Any, script: str) -> bytes:
    """The frame with the viewer's CSS, its shared JS helpers (``viewer.js``), then the page's
    own script (a file in ``static/``)."""
    return page(title, body, data, ["viewer.js", script], ["viewer.css"])


def list_page(ctx: Context, q: Mapping[str, str]) -> bytes:
    data = list_data(ctx, q)
    opts = "".join(f"<option>{s}</option>" for s in TRACE_STATUSES)
    body = (_nav("traces") + "<h1>slmflow traces</h1>"
            "<form id='filters'><label>search<input id='f-q' size=22 placeholder='trace id, "
            "call id or text'></label><label>workflow<input id='f-workflow' list='dl-workflow' "
            "size=10></label><label>agent<input id='f-agent' list='dl-agent' size=10></label>"
            f"<label>status<select id='f-status'><option value=''>any</option>{opts}</select>"
            "</label><label>escalated<select id='f-escalated'><option value=''>any</option>"
            "<option value='1'>yes</option><option value='0'>no</option></select></label>"
            "<label>since<input id='f-since' size=8 placeholder='1h, 7d or a date'></label>"
            "<label>until<input id='f-until' size=8 placeholder='date'></label>"
            "<label>min ms<input id='f-min_ms' size=5 inputmode='numeric'></label>"
            "<button>Filter</button><button type='button' id='reset'>Reset</button>"
            "<datalist id='dl-workflow'></datalist><datalist id='dl-agent'></datalist></form>"
            "<div id='msg'></div><div class='scroll'><table class='v'><thead><tr><th>trace</th>"
            "<th>status</th><th>workflow</th><th>request</th><th class='wide'>started</th>"
            "<th>duration</th><th class='wide'>spans</th><th class='wide'>tokens in/out</th>"
            "<th class='wide'>cost</th><th>escalated · errors · why</th></tr></thead>"
            "<tbody id='rows'></tbody></table></div><p class='pager'><button id='prev'>"
            "&larr; newer (p)</button><span id='page'></span> <button id='next'>older (n) "
            "&rarr;</button></p><p class='keys'>j/k select · Enter open · / search · n/p page · "
            "g agents · ? help</p><div id='help' hidden class='keys'>Status: ok; escalated (a "
            "step went to the fallback model); rejected (a verifier refused the answer); failed "
            "(an error ended the run). Search matches a trace id prefix, a call id, or any "
            "text in the spans (prompts and answers when captured, errors, events).</div>")
    return _page("slmflow traces", body, data, "viewer-list.js")


def trace_page(ctx: Context, trace_id: str) -> bytes | None:
    data = trace_detail(ctx, trace_id)
    if data is None:
        return None
    tid = html.escape(data["summary"]["trace_id"])
    body = (_nav("") + f"<h1>trace {tid}</h1><div class='summary' id='summary'></div>"
            "<div class='tv'><div class='wf' id='waterfall'></div><div id='panel'></div></div>"
            "<p class='keys'>j/k or &darr;/&uarr; next/previous span · e next error · u back to "
            "the list · ? help</p><div id='help' hidden class='keys'>Click a span for its "
            "messages, output, tokens, cost and links. Content is PII-redacted.</div>")
    return _page(f"trace {tid}", body, data, "viewer-trace.js")


def agents_page(ctx: Context, q: Mapping[str, str]) -> bytes:
    data = agents_data(ctx, q)
    opts = "".join(f"<option>{w}</option>" for w in _WINDOWS)
    body = (_nav("agents") + "<h1>agents</h1><p>window <select id='window'>" + opts +
            "</select> <span class='muted'>(24 buckets per plot; hover a plot for its "
            "values)</span></p><div class='scroll'><table class='v'><thead><tr><th>agent / serving</th>"
            "<th>calls</th><th>p50</th><th>p95</th><th class='wide'>tokens in/out</th>"
            "<th class='wide'>cost</th><th>escalated</th><th>mean conf</th><th>feedback</th>"
            "<th>over the window</th><th>links</th></tr></thead><tbody id='rows'>"
            "</tbody></table></div><p class='keys'>j/k select · Enter its traces · v its review "
            "items · t traces · r review queue</p>")
    return _page("slmflow agents", body, data, "viewer-agents.js")


def _value_box(title: str, v: Any) -> str:
    return (f"<h3>{html.escape(title)}</h3><div class='rec' data-value='"
            f"{html.escape(json_in_html(v), quote=True)}'></div>")


def call_page(ctx: Context, call_id: str) -> bytes | None:
    data = call_data(ctx, call_id)
    if data is None:
        return None
    c, item = data["call"], data["review"]
    e = html.escape
    links = []
    if c.get("trace_id"):
        links.append(f"<a class='trace-link' href='/trace/{e(c['trace_id'])}'>trace "
                     f"{e(c['trace_id'][:12])}</a>")
    if item:
        links.append(f"<a class='review-link' href='/review/{e(item['id'])}'>review item "
                     f"({e(str(item['verdict'] or item['status']))})</a>")
    for t in data["trained"]:
        links.append(f"trained into <a class='adapter-link' href='/adapter/{e(t['agent'])}/"
                     f"{e(t['version'])}'>{e(t['agent'])}@{e(t['version'])}</a>")
    fb = "".join(f"<li>{e(str(f.get('signal') or ''))} {e(str(f.get('label') or ''))} "
                 f"<span class='muted'>{e(str(f.get('by') or ''))}</span></li>"
                 for f in data["feedback"])
    body = (_nav("") + f"<h1>call {e(call_id[:12])}</h1><p>{e(str(c.get('kind')))} · agent "
            f"{e(str(c.get('agent')))} · model {e(str(c.get('model')))} · status "
            f"{e(str(c.get('status')))} · confidence {e(str(c.get('confidence')))} · "
            f"{e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.get('ts') or 0)))}</p>"
            f"<p class='links'>{' · '.join(links) or 'no links'}</p>"
            + _value_box("input", c.get("input")) + _value_box("output", c.get("output"))
            + (f"<h3>error</h3><pre class='err'>{e(str(c['error']))}</pre>" if c.get("error")
               else "") + (f"<h3>feedback</h3><ul>{fb}</ul>" if fb else ""))
    return _page(f"call {call_id[:12]}", body, data, "viewer-record.js")


def adapter_page(ctx: Context, agent: str, version: str) -> bytes | None:
    data = adapter_data(ctx, agent, version)
    if data is None:
        return None
    e = html.escape
    card = data["card"]
    lin = card.get("lineage") or {}
    loop = lin.get("loop") or {}

    def ids(title: str, kind: str, values: Any) -> str:
        vals = list(values or [])
        if not vals:
            return ""
        shown = "".join(f"<a class='{kind}-link' href='/{kind}/{e(str(v))}'>{e(str(v)[:10])}"
                        f"</a> " for v in vals[:200])
        return f"<h3>{e(title)} ({len(vals)})</h3><p>{shown}</p>"

    body = (_nav("") + f"<h1>adapter {e(agent)}@{e(version)}</h1><p>"
            f"{'promoted (serving)' if data['promoted'] == version else 'promoted: ' + e(str(data['promoted']))}"
            f" · parent {e(str(lin.get('parent')))}</p>"
            + ids("trained from review items", "review", loop.get("review_ids"))
            + ids("their calls", "call", loop.get("call_ids"))
            + ids("traces", "trace", lin.get("trace_ids"))
            + _value_box("eval scores", card.get("eval_scores"))
            + "".join(_value_box(f"gate: {g.get('action')} (vs {g.get('current')})",
                                 {k: g.get(k) for k in ("candidate_scores", "current_scores",
                                                        "drops", "compared")})
                      for g in data["gate"][-3:])
            + "<details><summary>the whole card</summary>" + _value_box("card", card)
            + "</details>")
    return _page(f"adapter {agent}@{version}", body, data, "viewer-record.js")


