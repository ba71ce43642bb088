const d = JSON.parse($('data').textContent);
function spark(series, key, fmt) {  // a small inline-SVG line (gaps where a bucket is empty)
  const W = 72, H = 20, vals = series.map(b => b[key]);
  const ok = vals.filter(v => v != null); const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark'); svg.setAttribute('width', W); svg.setAttribute('height', H);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  if (!ok.length) return svg;
  const lo = Math.min(0, ...ok), hi = Math.max(...ok, 1e-9);
  let dpath = '', pen = false;
  vals.forEach((v, i) => { if (v == null) { pen = false; return; }
    const x = (i + 0.5) * W / vals.length, y = H - 2 - (v - lo) / (hi - lo || 1) * (H - 4);
    dpath += (pen ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1); pen = true;
    const c = document.createElementNS(svg.namespaceURI, 'circle'); c.setAttribute('cx', x); c.setAttribute('cy', y); c.setAttribute('r', 1.5); svg.append(c); });
  const path = document.createElementNS(svg.namespaceURI, 'path'); path.setAttribute('d', dpath);
  path.setAttribute('fill', 'none'); path.setAttribute('stroke', '#0b5ed7'); path.setAttribute('stroke-width', '1.2');
  svg.prepend(path);
  const t = document.createElementNS(svg.namespaceURI, 'title'); t.textContent = key + ': ' + ok.map(fmt).join(', '); svg.append(t);
  return svg; }
const tb = $('rows');
if (!d.agents.length) tb.append(el('tr', {}, el('td', {colspan: 12, text: 'no agent calls in this window'})));
for (const r of d.agents) {
  const fb = r.feedback || {}, rv = r.review || {};
  const links = el('div', {}, el('a', {href: '/review?agent=' + encodeURIComponent(r.agent), class: 'review-link', text: 'review (' + (rv.pending || 0) + ' pending)'}));
  if (r.promoted) links.append(el('br'), el('a', {href: `/adapter/${encodeURIComponent(r.agent)}/${encodeURIComponent(r.promoted)}`, class: 'adapter-link', text: 'eval of ' + r.promoted + (r.scores ? ' (' + Object.entries(r.scores).map(([k, v]) => k + ' ' + (typeof v === 'number' ? v.toFixed(3) : v)).join(', ') + ')' : '')}));
  links.append(el('br'), el('a', {href: '/?agent=' + encodeURIComponent(r.agent), text: 'traces'}));
  tb.append(el('tr', {class: 'agent-row', 'data-agent': r.agent},
    el('td', {}, el('b', {text: r.agent}), el('div', {class: 'muted', text: r.serving || ''})),
    el('td', {class: 'num', text: r.calls}), el('td', {class: 'num', text: ms(r.p50_ms)}), el('td', {class: 'num', text: ms(r.p95_ms)}),
    el('td', {class: 'num wide', text: r.input_tokens + '/' + r.output_tokens}), el('td', {class: 'wide', text: usd(r.cost_usd)}),
    el('td', {class: 'num', text: pct(r.escalation_rate)}), el('td', {class: 'num', text: fix(r.confidence, 3)}),
    el('td', {class: 'num', text: '▲' + (fb.up || 0) + ' ▼' + (fb.down || 0)}),
    el('td', {}, el('div', {class: 'trends'},
      ...[['calls', 'calls', v => v], ['p50', 'p50_ms', ms], ['esc', 'escalation_rate', pct], ['conf', 'confidence', v => v.toFixed(2)]]
        .map(([label, key, fmt]) => el('div', {}, el('span', {class: 'muted', text: label}), spark(r.series, key, fmt))))),
    el('td', {class: 'links'}, links))); }
$('window').value = d.window; $('window').onchange = () => location.href = '/agents?window=' + $('window').value;
let sel = -1;
document.addEventListener('keydown', e => { if (document.activeElement.tagName === 'SELECT') return;
  const rows = [...document.querySelectorAll('tr.agent-row')];
  if ((e.key === 'j' || e.key === 'k') && rows.length) {
    sel = Math.max(0, Math.min(rows.length - 1, sel + (e.key === 'j' ? 1 : -1)));
    rows.forEach((r, i) => r.classList.toggle('sel', i === sel)); rows[sel].scrollIntoView({block: 'nearest'}); }
  else if (e.key === 'Enter' && sel >= 0) location.href = '/?agent=' + encodeURIComponent(rows[sel].dataset.agent);
  else if (e.key === 'v' && sel >= 0) location.href = '/review?agent=' + encodeURIComponent(rows[sel].dataset.agent);
  else if (e.key === 't' || e.key === 'u') location.href = '/'; else if (e.key === 'r') location.href = '/review'; });
