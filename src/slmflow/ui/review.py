"""The review queue pages of `slmflow ui`: flagged calls per agent, one item at a time.

An item page shows the call's input and output, why it was flagged, the model and adapter, a link to
its trace waterfall, and its context (the other agent calls of the same workflow run, and the
retrieval / tool spans of its trace when the span store has them). The reviewer accepts the output,
corrects it in a form generated from the agent's output JSON schema (an enum becomes a select, a
number a number field, anything nested a JSON box), or rejects it. Keyboard: ``a`` accept, ``c``
edit the correction, ``Ctrl+Enter`` save the correction, ``r`` reject, ``j``/``k`` next/previous,
``?`` help. The reviewer's name is asked once and kept in the browser (localStorage); every decision
carries it. With sign-in (`slmflow ui --auth`, `slmflow.ui.auth`) the name is the reviewer key's,
shown read-only, and the server records that name whatever the page sends.

Decisions are POSTed as JSON to ``/api/review/<item>``; the answer names the next pending item, so
a reviewer walks the queue without going back to the list. Conflicts (someone else decided first),
orphaned calls and corrections that do not fit the schema come back as 409 / 410 / 422 with the
message shown on the page; nothing is recorded twice.

Judges: when a judge-type evaluator judged the call (the online job's ``eval:<judge>`` feedback,
`slmflow.store.judges`), the page shows its verdict and reason with "judge right" / "judge wrong"
buttons (and a select of the right label): a reviewer who has read the case can say in one click
whether the judge that flagged it was right, and those decisions retrain the judge (`slmflow loop
retrain --judge`). They are POSTed to ``/api/review/<item>/judge`` as ``{judge, verdict: right |
wrong, label, reviewer, note}`` and answered like the item's decision (400 bad input, 404 no such
item, 409 someone decided first, 422 the item carries no verdict of that judge).

The pages' CSS and JS are files in ``slmflow/ui/static/`` (``review.css``, ``review-list.js``,
``review-item.js``; `slmflow.ui.page`); the HTML here is what carries the item's values.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..store.calllog import CallLog
from ..store.judges import JudgeReviews
from ..store.review import ReviewConflict, ReviewError, ReviewQueue
from .page import page

def _page(title: str, body: str, data: Any, script: str) -> bytes:
    """The frame with ``static/review.css`` and the page's script (a file in ``static/``)."""
    return page(title, body, data, [script], ["review.css"])


def _short(v: Any, n: int = 120) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= n else s[:n - 1] + "…"


def list_data(log: CallLog, agent: str | None = None) -> dict[str, Any]:
    q = ReviewQueue(log)
    items = q.items(agent, "pending", limit=500)
    calls = log.get_many(i.call_id for i in items)
    return {"agent": agent, "stats": q.stats(), "items": [
        {"id": i.id, "agent": i.agent, "priority": i.priority, "reasons": i.reasons,
         "confidence": calls[i.call_id].confidence if i.call_id in calls else None,
         "input": _short(calls[i.call_id].input) if i.call_id in calls else "(call deleted)"}
        for i in items]}


def list_page(log: CallLog, agent: str | None = None) -> bytes:
    data = list_data(log, agent)
    stats = " · ".join(f"<a href='/review?agent={html.escape(a)}'>{html.escape(a)}</a>: "
                       + ", ".join(f"{k} {v}" for k, v in sorted(s.items()))
                       for a, s in sorted(data["stats"].items())) or "no items yet"
    body = (f"<p><a href='/'>traces</a> · <a href='/review'>review queue</a></p>"
            f"<h1>review queue{' · ' + html.escape(agent) if agent else ''}</h1>"
            f"<p class='summary'>{stats}</p><p class='keys'>j: open the first item</p>"
            "<table class='q'><thead><tr><th>item</th><th>agent</th><th>priority</th>"
            "<th>why flagged</th><th>confidence</th><th>input</th></tr></thead>"
            "<tbody id='rows'></tbody></table>")
    return _page("review queue", body, data, "review-list.js")


def item_data(log: CallLog, item_id: str, spans: Any = None) -> dict[str, Any]:
    q = ReviewQueue(log)
    item = q.get(item_id)
    call = item.call
    info = log.agent_info(item.agent) if item.agent else None
    pend = [i.id for i in q.items(item.agent, "pending", limit=None)]
    nxt = prev = None
    if item.id in pend:
        k = pend.index(item.id)
        nxt = pend[k + 1] if k + 1 < len(pend) else None
        prev = pend[k - 1] if k > 0 else None
    elif pend:
        nxt = pend[0]
    context: list[dict[str, Any]] = []
    if call is not None and call.run_id:
        for c in log.query(run_id=call.run_id, kind="agent", limit=50):
            if c.id != call.id:
                context.append({"kind": "agent", "name": c.agent, "output": c.output})
    if spans is not None and call is not None and call.trace_id:
        try:
            for s in spans.trace(call.trace_id):
                op = (s.get("attributes") or {}).get("gen_ai.operation.name")
                if op in ("retrieval", "execute_tool"):
                    context.append({"kind": op, "name": s.get("name"),
                                    "output": {k: v for k, v in s["attributes"].items()
                                               if not k.startswith("gen_ai.operation")}})
        except Exception:
            pass
    judges = [v.as_dict() for v in JudgeReviews(log).verdicts_for_item(item.id)]
    return {"item": item.as_dict() | {"call": None},
            "call": call.as_dict() if call else {"input": "(deleted)", "output": None},
            "schema": info.output_schema if info else None, "next": nxt, "prev": prev,
            "context": context, "judges": judges}


def item_page(log: CallLog, item_id: str, spans: Any = None, *,
              reviewer: str | None = None, trained: Any = None) -> bytes:
    """reviewer: the signed-in reviewer (`slmflow ui --auth`): shown, not editable. trained:
    the adapter versions whose training data included this item (``[{agent, version}]``)."""
    d = item_data(log, item_id, spans) | {"reviewer": reviewer}
    it, call = d["item"], d["call"]
    reasons = "".join(f"<span>{html.escape(r)}</span>" for r in it["reasons"])
    conf = call.get("confidence")
    trace = (f"<a id='trace-link' href='/trace/{html.escape(call['trace_id'])}'>trace "
             f"{html.escape(call['trace_id'][:12])}</a>" if call.get("trace_id") else "no trace")
    if call.get("id"):
        trace += (f" · <a class='call-link' href='/call/{html.escape(call['id'])}'>call-log "
                  "record</a>")
    for t in trained or ():
        trace += (f" · trained into <a class='adapter-link' href='/adapter/"
                  f"{html.escape(t['agent'])}/{html.escape(t['version'])}'>"
                  f"{html.escape(t['agent'])}@{html.escape(t['version'])}</a>")
    ctx = "".join(f"<div class='ctx'><b>{html.escape(c['kind'])}</b> {html.escape(str(c['name']))}"
                  f"<pre>{html.escape(_short(c['output'], 600))}</pre></div>"
                  for c in d["context"]) or "<p class='ctx'>none recorded</p>"
    body = (
        f"<p><a href='/review?agent={html.escape(it['agent'] or '')}'>&larr; queue</a></p>"
        f"<h1>review: {html.escape(it['agent'] or '?')} <small>{html.escape(it['id'][:10])}"
        f"</small></h1><p class='reasons'>{reasons} priority {it['priority']:.2f} · "
        f"confidence {'-' if conf is None else f'{conf:.3f}'} · model "
        f"{html.escape(str(call.get('model')))}"
        f"{' + ' + html.escape(call['adapter']) if call.get('adapter') else ''} · {trace}</p>"
        "<div class='item'><div class='box'><h3>input</h3><pre id='input'></pre>"
        "<h3>output</h3><pre id='output'></pre><h3>context</h3>" + ctx + "</div>"
        "<div class='box'><h3>decision</h3><label><b>reviewer</b><input id='reviewer' "
        "size=20></label><form id='form' onsubmit='return false'></form>"
        "<label><b>note</b><input id='note' size=40></label><p>"
        "<button id='accept'>Accept (a)</button><button id='correct'>Save correction "
        "(Ctrl+Enter)</button><button id='reject'>Reject (r)</button></p><div id='msg'></div>"
        "<p class='keys'>a accept · c edit correction · Ctrl+Enter save correction · r reject "
        "· j/k next/previous · ? help</p><div id='help' hidden class='keys'>Accept: the output "
        "is right (it becomes a training example as it is). Correct: fix the fields and save "
        "(the corrected output becomes the example). Reject: wrong and not worth fixing (no "
        "example). Judge right / wrong: whether the judge's verdict on this output was right "
        "(with the right label); these decisions retrain the judge.</div>"
        "<h3>judge verdicts</h3><div id='judges'></div></div></div>")
    return _page(f"review {it['id'][:10]}", body, d, "review-item.js")


def decide(log: CallLog, item_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /api/review/<item>: (HTTP status, JSON body)."""
    from ..errors import ConfigError

    if not isinstance(body, dict):
        return 400, {"error": "send a JSON object {verdict, correction, reviewer, note}"}
    q = ReviewQueue(log)
    try:
        item = q.review(item_id, str(body.get("verdict")), reviewer=body.get("reviewer") or "",
                        correction=body.get("correction"), note=body.get("note"))
    except ReviewConflict as e:
        return 409, {"error": e.message}
    except ReviewError as e:
        if "no review item" in e.message:
            return 404, {"error": e.message}
        code = 410 if "no longer exists" in e.message else 422
        return code, {"error": e.message}
    except ConfigError as e:
        return 400, {"error": e.message}
    pend = q.items(item.agent, "pending", limit=1)
    return 200, {"item": item.as_dict() | {"call": None}, "next": pend[0].id if pend else None}


def decide_judge(log: CallLog, item_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /api/review/<item>/judge: "judge right / judge wrong" on a judge's verdict."""
    from ..errors import ConfigError

    if not isinstance(body, dict):
        return 400, {"error": "send a JSON object {judge, verdict: right|wrong, label, "
                              "reviewer, note}"}
    try:
        d = JudgeReviews(log).decide(item_id, str(body.get("verdict")),
                                     reviewer=body.get("reviewer") or "",
                                     judge=body.get("judge") or None,
                                     label=body.get("label") or None, note=body.get("note"))
    except ReviewConflict as e:
        return 409, {"error": e.message}
    except ReviewError as e:
        return (404 if "no review item" in e.message else 422), {"error": e.message}
    except ConfigError as e:
        return 400, {"error": e.message}
    return 200, {"decision": d.as_dict()}
