let d = JSON.parse($('data').textContent), sel = -1;
const F = ['workflow', 'agent', 'status', 'escalated', 'since', 'until', 'min_ms', 'q'];
function fillFacets() {
  for (const [id, list] of [['dl-workflow', d.filters.workflows], ['dl-agent', d.filters.agents]]) {
    const dl = $(id); dl.innerHTML = ''; for (const v of list) dl.append(el('option', {value: v})); } }
function render() {
  const tb = $('rows'); tb.innerHTML = ''; sel = -1;
  if (!d.rows.length) tb.append(el('tr', {}, el('td', {colspan: 9, text: 'no traces match'})));
  d.rows.forEach((t, i) => {
    const a = el('a', {href: '/trace/' + t.trace_id, text: t.trace_id.slice(0, 12)});
    const esc = t.escalated_agents && t.escalated_agents.length
      ? el('span', {class: 'agents-esc', text: '↑ ' + t.escalated_agents.join(', ')}) : '';
    const errs = t.errors ? el('span', {class: 'err', text: t.errors + ' error(s): ' + (t.error_messages || []).join(' | ')}) : '';
    const why = t.detail && t.status !== 'ok' ? el('div', {class: 'why', title: t.detail, text: t.detail}) : null;
    const tr = el('tr', {class: 'trace-row', 'data-trace': t.trace_id},
      el('td', {}, a), el('td', {}, badge(t.status)), el('td', {title: t.root || '?', text: t.workflow || t.root || '?'}),
      el('td', {class: 'req', title: t.request || '', text: t.request || ''}),
      el('td', {class: 'wide num', text: when(t.start_ns)}),
      el('td', {class: 'num', text: ms(t.duration_ms)}),
      el('td', {class: 'num wide', text: t.spans + ''}),
      el('td', {class: 'num wide', text: t.input_tokens + '/' + t.output_tokens}),
      el('td', {class: 'wide', text: usd(t.cost_usd)}),
      el('td', {class: 'notes'}, esc, esc && errs ? ' ' : '', errs, why));
    tr.onclick = e => { if (e.target.tagName !== 'A') location.href = '/trace/' + t.trace_id; };
    tb.append(tr); });
  $('page').textContent = d.rows.length ? `${d.offset + 1}–${d.offset + d.rows.length}` : '0';
  $('prev').disabled = d.offset === 0; $('next').disabled = !d.more; }
function params(offset) { const p = new URLSearchParams();
  for (const f of F) { let v = $('f-' + f).value.trim();
    if ((f === 'since' || f === 'until') && v && !/^[0-9.]+[smhdw]$/.test(v)) {
      const t = new Date(v).getTime(); if (!isNaN(t)) v = String(t / 1000); }
    if (v) p.set(f, v); }
  if (offset) p.set('offset', offset); if (d.limit !== 50) p.set('limit', d.limit); return p; }
async function load(offset) {
  const p = params(offset); history.replaceState(null, '', '/?' + p.toString());
  const r = await fetch('/api/traces?' + p.toString() + '&full=1');
  const body = await r.json();
  if (!r.ok) { $('msg').textContent = body.error || ('error ' + r.status); $('msg').className = 'err'; return; }
  $('msg').textContent = ''; d = body; render(); document.body.dataset.loaded = (+document.body.dataset.loaded || 0) + 1; }
const qs = new URLSearchParams(location.search);
for (const f of F) if (qs.get(f)) $('f-' + f).value = qs.get(f);
$('filters').onsubmit = e => { e.preventDefault(); load(0); };
for (const f of ['status', 'escalated']) $('f-' + f).onchange = () => load(0);
$('prev').onclick = () => load(Math.max(0, d.offset - d.limit));
$('next').onclick = () => load(d.offset + d.limit);
$('reset').onclick = () => { for (const f of F) $('f-' + f).value = ''; load(0); };
function select(i) { const rows = document.querySelectorAll('tr.trace-row'); if (!rows.length) return;
  sel = Math.max(0, Math.min(rows.length - 1, i)); rows.forEach((r, k) => r.classList.toggle('sel', k === sel));
  rows[sel].scrollIntoView({block: 'nearest'}); }
document.addEventListener('keydown', e => {
  if (['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement.tagName)) {
    if (e.key === 'Escape') document.activeElement.blur(); return; }
  if (e.key === 'j') select(sel + 1); else if (e.key === 'k') select(sel - 1);
  else if ((e.key === 'Enter' || e.key === 'o') && sel >= 0) location.href = '/trace/' + d.rows[sel].trace_id;
  else if (e.key === '/') { e.preventDefault(); $('f-q').focus(); }
  else if (e.key === 'n' && d.more) load(d.offset + d.limit);
  else if (e.key === 'p' && d.offset) load(Math.max(0, d.offset - d.limit));
  else if (e.key === 'g') location.href = '/agents';
  else if (e.key === '?') $('help').hidden = !$('help').hidden; });
fillFacets(); render();
