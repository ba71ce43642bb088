const d = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
const show = (id, v) => { $(id).textContent = typeof v === 'string' ? v : JSON.stringify(v, null, 2); };
show('input', d.call.input); show('output', d.call.output);
const who = $('reviewer'); who.value = d.reviewer || new URLSearchParams(location.search).get('reviewer') || localStorage.getItem('slmflow.reviewer') || '';
if (d.reviewer) who.readOnly = true;
who.addEventListener('change', () => localStorage.setItem('slmflow.reviewer', who.value.trim()));
function resolve(s) { if (s && s.$ref) { const n = s.$ref.split('/').pop(); return resolve((d.schema.$defs || {})[n] || {}); }
  if (s && s.allOf && s.allOf.length === 1) return resolve(s.allOf[0]); return s || {}; }
const start = d.item.correction != null ? d.item.correction : d.call.output;
const form = $('form'); const fields = [];
const root = resolve(d.schema || {});
if (root.type === 'object' && root.properties) {
  for (const [name, raw] of Object.entries(root.properties)) {
    const s = resolve(raw); const lab = document.createElement('label');
    const b = document.createElement('b'); b.textContent = name; lab.appendChild(b);
    let el; const v = start && typeof start === 'object' ? start[name] : undefined;
    if (s.enum) { el = document.createElement('select');
      for (const o of s.enum) { const op = document.createElement('option'); op.value = JSON.stringify(o); op.textContent = o; el.appendChild(op); }
      if (v !== undefined) el.value = JSON.stringify(v); el.dataset.kind = 'enum'; }
    else if (s.type === 'boolean') { el = document.createElement('input'); el.type = 'checkbox'; el.checked = !!v; el.dataset.kind = 'bool'; }
    else if (s.type === 'integer' || s.type === 'number') { el = document.createElement('input'); el.type = 'number'; el.step = s.type === 'integer' ? '1' : 'any'; if (v != null) el.value = v; el.dataset.kind = s.type; }
    else if (s.type === 'string') { el = document.createElement('input'); el.type = 'text'; el.size = 60; if (v != null) el.value = v; el.dataset.kind = 'string'; }
    else { el = document.createElement('textarea'); el.rows = 4; el.cols = 60; el.value = v === undefined ? '' : JSON.stringify(v); el.dataset.kind = 'json'; }
    el.name = name; el.className = 'field'; lab.appendChild(el); form.appendChild(lab); fields.push(el);
  }
} else { const el = document.createElement('textarea'); el.rows = 5; el.cols = 70; el.name = '_value'; el.className = 'field';
  el.value = typeof start === 'string' ? start : JSON.stringify(start); el.dataset.kind = root.type === 'string' || !d.schema ? 'string' : 'json';
  form.appendChild(el); fields.push(el); }
function readForm() {
  const val = {}; for (const el of fields) { let v;
    if (el.dataset.kind === 'enum') v = JSON.parse(el.value);
    else if (el.dataset.kind === 'bool') v = el.checked;
    else if (el.dataset.kind === 'integer') v = el.value === '' ? null : parseInt(el.value, 10);
    else if (el.dataset.kind === 'number') v = el.value === '' ? null : parseFloat(el.value);
    else if (el.dataset.kind === 'json') { try { v = el.value === '' ? null : JSON.parse(el.value); } catch (e) { throw new Error(el.name + ': not valid JSON'); } }
    else v = el.value;
    if (el.name === '_value') return v; val[el.name] = v; }
  return val; }
function msg(t, cls) { const m = $('msg'); m.textContent = t; m.className = cls; }
async function decide(verdict) {
  const reviewer = who.value.trim();
  if (!reviewer) { msg('enter your name first (it is recorded with the review)', 'err'); who.focus(); return; }
  localStorage.setItem('slmflow.reviewer', reviewer);
  let correction = null;
  if (verdict === 'correct') { try { correction = readForm(); } catch (e) { msg(e.message, 'err'); return; } }
  const r = await fetch('/api/review/' + d.item.id, {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({verdict, correction, reviewer, note: $('note').value || null})});
  const body = await r.json();
  if (!r.ok) { msg(body.error || ('error ' + r.status), 'err'); return; }
  msg(verdict + ' saved' , 'ok'); document.body.dataset.saved = verdict;
  location.href = body.next ? '/review/' + body.next : '/review?done=1';
}
$('accept').onclick = () => decide('accept'); $('correct').onclick = () => decide('correct'); $('reject').onclick = () => decide('reject');
document.addEventListener('keydown', e => {
  const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName);
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); decide('correct'); return; }
  if (e.key === 'Escape') { document.activeElement.blur(); return; }
  if (typing) return;
  if (e.key === 'a') decide('accept'); else if (e.key === 'r') decide('reject');
  else if (e.key === 'c') { e.preventDefault(); if (fields.length) fields[0].focus(); }
  else if (e.key === 'j' && d.next) location.href = '/review/' + d.next;
  else if (e.key === 'k' && d.prev) location.href = '/review/' + d.prev;
  else if (e.key === '?') $('help').hidden = !$('help').hidden;
});
const jbox = $('judges');
function judgeRow(v) {
  const div = document.createElement('div'); div.className = 'judge'; div.dataset.judge = v.judge;
  const head = document.createElement('div');
  head.textContent = v.judge + ' said ' + (v.label || (v.passed ? 'pass' : 'fail')) + (v.reason ? ': ' + v.reason : '');
  div.appendChild(head);
  const done = document.createElement('div'); done.className = 'judge-done';
  if (v.decision) { done.textContent = 'judge ' + v.decision.verdict + ' (' + v.decision.label + ') by ' + v.decision.reviewer; div.appendChild(done); return div; }
  const sel = document.createElement('select'); sel.className = 'judge-label';
  for (const l of v.labels) { if (l === v.label) continue; const o = document.createElement('option'); o.value = l; o.textContent = l; sel.appendChild(o); }
  const right = document.createElement('button'); right.className = 'judge-right'; right.textContent = 'Judge right';
  const wrong = document.createElement('button'); wrong.className = 'judge-wrong'; wrong.textContent = 'Judge wrong, it is:';
  const send = async (verdict) => {
    const reviewer = who.value.trim();
    if (!reviewer) { msg('enter your name first (it is recorded with the review)', 'err'); who.focus(); return; }
    const r = await fetch('/api/review/' + d.item.id + '/judge', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({judge: v.judge, verdict, label: verdict === 'wrong' ? sel.value : null, reviewer, note: $('note').value || null})});
    const body = await r.json();
    if (!r.ok) { msg(body.error || ('error ' + r.status), 'err'); return; }
    msg('judge ' + verdict + ' saved', 'ok'); div.replaceWith(judgeRow(Object.assign({}, v, {decision: body.decision})));
  };
  right.onclick = () => send('right'); wrong.onclick = () => send('wrong');
  div.append(right, wrong, sel); return div;
}
for (const v of d.judges || []) jbox.appendChild(judgeRow(v));
if (!(d.judges || []).length) jbox.textContent = 'no judge verdict on this call';
if (d.item.status !== 'pending') msg('already ' + (d.item.verdict || d.item.status) + (d.item.reviewer ? ' by ' + d.item.reviewer : ''), 'err');
