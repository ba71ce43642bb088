"""Reports: a terminal table, JSON (`SuiteReport.to_json`) and a self-contained HTML file.

The HTML has no external resource at all (no CDN, no script): the plots are inline SVG drawn
here (score distributions per evaluator, the confusion matrix of a routing evaluator, latency per
agent), so the file can be attached to a CI run and opened anywhere.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

from .suite import SuiteReport

__all__ = ["print_report", "to_html", "write_html"]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_report(report: SuiteReport, console: Any = None, *, show_errors: int = 10,
                 show_failures: int = 5) -> None:
    """The scores table (tab-separated when not on a terminal: `slmflow.output`), the row
    counts, then the first errored and failed rows."""
    from ..output import Col, print_table
    from ..output import console as cli_console

    con = console or cli_console()
    s = report.summary
    lat = report.latency()
    print_table([Col("metric", key=True), Col("value", justify="right")],
                [[k, _fmt(v)] for k, v in report.scores.items()],
                title=f"eval {report.name}  ({report.target})", con=con)
    con.print(f"rows {s['total']}: [green]{s['passed']} passed[/], [yellow]{s['failed']} "
              f"failed[/], [red]{s['errored']} errored[/]   "
              f"{report.duration_s:.1f}s, {report.cases_per_s:.2f} cases/s at concurrency "
              f"{report.concurrency}; latency p50 {_fmt(lat['p50'])}s p95 {_fmt(lat['p95'])}s",
              highlight=False)
    for r in report.errors[:show_errors]:
        con.print(f"  [red]errored[/] {r.id} ({r.error_stage}): {r.error}", highlight=False,
                  markup=True)
    if len(report.errors) > show_errors:
        con.print(f"  ... {len(report.errors) - show_errors} more errored rows")
    for r in report.failures[:show_failures]:
        why = "; ".join(f"{k}: {e.explanation or e.label}" for k, e in r.evals.items()
                        if not e.ok)
        con.print(f"  [yellow]failed[/] {r.id}: {why}"[:300], highlight=False)


# ---- SVG plots ---------------------------------------------------------------------------------

def _hist_svg(values: list[float], title: str, bins: int = 10, lo: float = 0.0,
              hi: float = 1.0, unit: str = "") -> str:
    w, h, pad = 360, 170, 30
    if not values:
        return f"<p><i>{html.escape(title)}: no values</i></p>"
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * bins
    for v in values:
        i = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
        counts[i] += 1
    top = max(counts) or 1
    bw = (w - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts):
        bh = (h - 2 * pad) * c / top
        x = pad + i * bw
        bars.append(f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bw - 2:.1f}" '
                    f'height="{bh:.1f}" fill="#4c78a8"><title>{lo + i * (hi - lo) / bins:.2f}-'
                    f'{lo + (i + 1) * (hi - lo) / bins:.2f}{unit}: {c}</title></rect>')
        if c:
            bars.append(f'<text x="{x + bw / 2:.1f}" y="{h - pad - bh - 3:.1f}" font-size="9" '
                        f'text-anchor="middle">{c}</text>')
    axis = (f'<text x="{pad}" y="{h - 10}" font-size="10">{lo:g}{unit}</text>'
            f'<text x="{w - pad}" y="{h - 10}" font-size="10" text-anchor="end">{hi:.3g}{unit}'
            f'</text><line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" '
            'stroke="#333"/>')
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
            f'<text x="{w / 2}" y="14" font-size="12" text-anchor="middle">'
            f'{html.escape(title)} (n={len(values)})</text>{"".join(bars)}{axis}</svg></figure>')


def _confusion_svg(labels: list[str], m: list[list[int]]) -> str:
    n = len(labels)
    cell = max(6, min(28, 560 // max(1, n)))
    left, top = 170 if n <= 30 else 10, 20
    size = cell * n
    peak = max((max(r) for r in m), default=1) or 1
    rects = []
    for i, row in enumerate(m):
        for j, c in enumerate(row):
            if not c:
                continue
            a = 0.15 + 0.85 * c / peak
            color = "44,160,44" if i == j else "214,39,40"
            rects.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" '
                         f'height="{cell}" fill="rgba({color},{a:.2f})"><title>expected '
                         f'{html.escape(labels[i])}, predicted {html.escape(labels[j])}: {c}'
                         f'</title></rect>')
    names = ""
    if n <= 30:
        names = "".join(f'<text x="{left - 4}" y="{top + i * cell + cell * 0.7}" font-size="10" '
                        f'text-anchor="end">{html.escape(l[:26])}</text>'
                        for i, l in enumerate(labels))
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{left + size + 10}" '
            f'height="{top + size + 30}"><text x="{left}" y="13" font-size="12">confusion matrix '
            f'(rows: expected, columns: predicted; green: correct; hover a cell)</text>'
            f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" '
            f'stroke="#999"/>{"".join(rects)}{names}</svg></figure>')


def _latency_by_agent(report: SuiteReport) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in report.rows:
        per = (report.meta.get("agent_latency") or {}).get(r.id)
        if per:
            for a, v in per.items():
                out[a] += v if isinstance(v, list) else [v]
        elif r.latency_s is not None:
            out[r.agent or report.target].append(r.latency_s)
    return out


def to_html(report: SuiteReport, gate: Any = None) -> str:
    s = report.summary
    esc = html.escape
    parts = [f"<h1>eval {esc(report.name)}</h1>",
             f"<p>target <code>{esc(report.target)}</code>, started {esc(report.started)}, "
             f"{report.duration_s:.1f}s, {report.cases_per_s:.2f} cases/s at concurrency "
             f"{report.concurrency}</p>",
             f"<p class=sum><b>{s['total']}</b> rows: <span class=p>{s['passed']} passed</span>, "
             f"<span class=f>{s['failed']} failed</span>, <span class=e>{s['errored']} errored"
             "</span></p>"]
    if gate is not None:
        parts.append(f"<h2>regression gate: {'PASSED' if gate.passed else 'FAILED'} "
                     f"(tolerance {gate.tolerance})</h2><pre>{esc(chr(10).join(gate.lines()))}"
                     "</pre>")
    parts.append("<h2>scores</h2><table><tr><th>metric</th><th>value</th></tr>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in report.scores.items())
        + "</table>")
    parts.append("<h2>score distributions</h2><div class=row>")
    for name, d in report.details.items():
        if isinstance(d, dict) and d.get("scores"):
            parts.append(_hist_svg(d["scores"], name))
    parts.append("</div>")
    lat = _latency_by_agent(report)
    if lat:
        parts.append("<h2>latency per agent</h2><div class=row>")
        for a, vals in lat.items():
            parts.append(_hist_svg(vals, f"{a} latency", lo=0.0, hi=max(vals) * 1.0001 or 1.0,
                                   unit="s"))
        parts.append("</div>")
    for name, d in report.details.items():
        if isinstance(d, dict) and "confusion" in d:
            c = d["confusion"]
            parts.append(f"<h2>{esc(name)}: confusion matrix</h2>"
                         + _confusion_svg(c["labels"], c["matrix"]))
            pc = d.get("per_class", {})
            parts.append("<details><summary>per-class precision / recall / F1</summary><table>"
                         "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                         "<th>support</th></tr>" + "".join(
                             f"<tr><td>{esc(k)}</td><td>{v['precision']:.3f}</td><td>"
                             f"{v['recall']:.3f}</td><td>{v['f1']:.3f}</td><td>{v['support']}"
                             "</td></tr>" for k, v in pc.items()) + "</table></details>")
        if isinstance(d, dict) and "per_field" in d:
            parts.append(f"<h2>{esc(name)}: per field</h2><table><tr><th>field</th>"
                         "<th>precision</th><th>recall</th><th>F1</th><th>accuracy</th></tr>"
                         + "".join(f"<tr><td>{esc(k)}</td><td>{v['precision']:.3f}</td><td>"
                                   f"{v['recall']:.3f}</td><td>{v['f1']:.3f}</td><td>"
                                   f"{v['accuracy']:.3f}</td></tr>"
                                   for k, v in d["per_field"].items()) + "</table>")
    bad = [r for r in report.rows if r.status != "passed"][:200]
    if bad:
        parts.append("<h2>errored and failed rows</h2><table><tr><th>id</th><th>status</th>"
                     "<th>reason</th></tr>")
        for r in bad:
            why = r.error or "; ".join(f"{k}: {e.explanation or e.label}"
                                       for k, e in r.evals.items() if not e.ok)
            parts.append(f"<tr class={r.status[0]}><td>{esc(r.id)}</td><td>{r.status}</td>"
                         f"<td>{esc(str(why)[:400])}</td></tr>")
        parts.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}"
             ".row{display:flex;flex-wrap:wrap;gap:8px}.p{color:#2a2}.f{color:#b80}.e{color:#c22}"
             "tr.e td{background:#fee}tr.f td{background:#ffd}figure{margin:4px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>eval "
            f"{esc(report.name)}</title><style>{style}</style></head><body>{''.join(parts)}"
            "</body></html>")


def write_html(report: SuiteReport, path: str | Path, gate: Any = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_html(report, gate), encoding="utf-8")
    return p
