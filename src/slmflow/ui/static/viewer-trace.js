const d = JSON.parse($('data').textContent);
const s = d.summary, t0 = s.start_ns, total = Math.max(s.duration_ms, 1e-6);
$('summary').append(badge(s.status || 'ok'), ' ',
  `${s.spans} spans, ${s.duration_ms.toFixed(1)} ms, tokens ${s.input_tokens}/${s.output_tokens}` +
  (s.cost_usd == null ? '' : `, cost $${s.cost_usd.toFixed(6)}`) +
  (s.errors ? `, ${s.errors} error(s)` : '') + (s.escalations ? `, ${s.escalations} escalation(s)` : ''));
if (s.trained && s.trained.length) $('summary').append(' · trained into ',
  ...s.trained.map(t => el('a', {href: `/adapter/${t.agent}/${t.version}`, class: 'adapter-link', text: `${t.agent}@${t.version} `})));
const wf = $('waterfall'); const rows = [];
d.spans.forEach((sp, i) => {
  const row = el('div', {class: 'wf-row' + (sp.status === 'ERROR' ? ' error' : ''), 'data-span-id': sp.span_id});
  const name = el('div', {class: 'wf-name', text: sp.name}); name.style.paddingLeft = (sp.depth * 14) + 'px';
  const track = el('div', {class: 'wf-track'});
  const bar = el('div', {class: 'wf-bar ' + (sp.operation || '') + (sp.status === 'ERROR' ? ' error' : '')});
  bar.style.left = ((sp.start_ns - t0) / 1e6 / total * 100) + '%';
  bar.style.width = (sp.duration_ms / total * 100) + '%';
  track.append(bar);
  const bits = [sp.duration_ms.toFixed(1) + ' ms'];
  if (sp.total_input_tokens || sp.total_output_tokens) bits.push('tok ' + sp.total_input_tokens + '/' + sp.total_output_tokens);
  if (sp.total_cost_usd != null) bits.push('$' + sp.total_cost_usd.toFixed(6));
  if (sp.confidence != null) bits.push('conf ' + sp.confidence.toFixed(2));
  if (sp.escalated && sp.operation === 'invoke_agent') bits.push('escalated');
  if (sp.status === 'ERROR') bits.push(sp.status_message || 'error');
  row.append(name, track, el('div', {class: 'wf-meta', text: bits.join('  ')}));
  row.onclick = () => show(i); wf.append(row); rows.push(row); });
let cur = -1;
function kv(pairs) { const t = el('table', {class: 'kv'});
  for (const [k, v] of pairs) if (v != null && v !== '') t.append(el('tr', {}, el('td', {text: k}), el('td', {}, v instanceof Node ? v : String(v))));
  return t; }
function messages(raw) { const v = parse(raw); if (!Array.isArray(v)) return fold(raw);
  const box = el('div');
  for (const m of v) { const text = (m.parts || []).map(p => p.type === 'text' ? p.content : JSON.stringify(p)).join('\n');
    box.append(el('div', {class: 'msg ' + m.role}, el('div', {class: 'role', text: m.role}), fold(text, 400))); }
  return box; }
function output(raw) { const v = parse(raw);
  if (Array.isArray(v) && v.length && v[0].parts) { const text = v.map(m => m.parts.map(p => p.type === 'text' ? p.content : JSON.stringify(p)).join('\n')).join('\n');
    const obj = parse(text.trim()); return obj && typeof obj === 'object' ? valueView(obj) : fold(text); }
  return valueView(v); }
const full = {};  // span_id -> the span's content and call record (/api/traces/<t>/spans/<s>)
async function show(i) {
  cur = i; rows.forEach((r, k) => r.classList.toggle('sel', k === i)); rows[i].scrollIntoView({block: 'nearest'});
  const base = d.spans[i];
  history.replaceState(null, '', '#span=' + base.span_id);
  if (!full[base.span_id]) {
    const r = await fetch(`/api/traces/${s.trace_id}/spans/${base.span_id}`);
    full[base.span_id] = r.ok ? await r.json() : {};
    if (cur !== i) return; }  // another span was chosen meanwhile
  const f = full[base.span_id];
  const sp = Object.assign({}, base, {attributes: f.attributes || base.attributes, events: f.events || base.events,
    status_message: f.status_message !== undefined ? f.status_message : base.status_message});
  const a = sp.attributes || {}, p = $('panel'); p.innerHTML = '';
  p.append(el('h2', {text: sp.name}), kv([
    ['status', sp.status === 'ERROR' ? el('span', {class: 'err', text: 'ERROR: ' + (sp.status_message || '')}) : sp.status],
    ['latency', ms(sp.duration_ms)], ['starts at', '+' + ms((sp.start_ns - t0) / 1e6)],
    ['model', a['gen_ai.response.model'] || a['gen_ai.request.model']], ['adapter', a['slmflow.adapter']],
    ['confidence', sp.confidence == null ? null : sp.confidence.toFixed(3)],
    ['tokens in/out', (sp.total_input_tokens || sp.total_output_tokens) ? sp.total_input_tokens + ' / ' + sp.total_output_tokens : null],
    ['cost', sp.total_cost_usd == null ? null : usd(sp.total_cost_usd)],
    ['escalated', sp.escalated ? 'yes' : null], ['repaired', a['slmflow.repaired'] ? 'yes' : null],
    ['max tokens / temperature', a['gen_ai.request.max_tokens'] != null ? a['gen_ai.request.max_tokens'] + ' / ' + (a['gen_ai.request.temperature'] ?? '-') : null],
    ['finish', a['gen_ai.response.finish_reasons']], ['span', sp.span_id]]));
  const sec = (title, node) => { if (node) p.append(el('h3', {text: title}), node); };
  const op = sp.operation;
  if (op === 'invoke_workflow') {
    p.append(kv([['run status', badge(a['slmflow.workflow.status'] || 'ok')], ['why', a['slmflow.workflow.detail']], ['run id', a['slmflow.run.id']]]));
    if (a['slmflow.input'] != null) sec('request', valueView(a['slmflow.input']));
    if (a['slmflow.output'] != null) sec('answer', valueView(a['slmflow.output'])); }
  if (op === 'chat') {
    if (a['gen_ai.input.messages'] != null) sec('messages sent', messages(a['gen_ai.input.messages']));
    if (a['gen_ai.output.messages'] != null) sec('output', output(a['gen_ai.output.messages']));
    if (a['gen_ai.input.messages'] == null) p.append(el('p', {class: 'muted', text: 'messages not captured (slmflow tracing: capture_content); the agent span links the call-log record'})); }
  if (op === 'invoke_agent') {
    const cid = a['slmflow.call.id'], c = f.call;
    if (a['slmflow.input'] != null) sec('input', valueView(a['slmflow.input']));
    else if (c && c.input != null) sec('input (call log)', valueView(c.input));
    if (a['slmflow.output'] != null) sec('output', valueView(a['slmflow.output']));
    else if (c && c.output != null) sec('output (call log)', valueView(c.output));
    if (cid) { const links = el('div', {class: 'links'}, el('a', {href: '/call/' + cid, class: 'call-link', text: 'call-log record ' + cid.slice(0, 10)}));
      if (c && c.review) links.append(' · ', el('a', {href: '/review/' + c.review.id, class: 'review-link', text: 'review item (' + (c.review.verdict || c.review.status) + ')'}));
      if (c && c.trained) for (const t of c.trained) links.append(' · trained into ', el('a', {href: `/adapter/${t.agent}/${t.version}`, class: 'adapter-link', text: `${t.agent}@${t.version}`}));
      if (c && !c.logged) links.append(el('span', {class: 'muted', text: ' (not in this call log)'}));
      sec('links', links); } }
  if (op === 'execute_tool') {
    sec('arguments', a['gen_ai.tool.call.arguments'] != null ? valueView(a['gen_ai.tool.call.arguments']) : el('span', {class: 'muted', text: '(not captured)'}));
    if (a['gen_ai.tool.call.result'] != null) sec('result', valueView(a['gen_ai.tool.call.result']));
    const te = (sp.events || []).find(e => e.name === 'tool.error');
    if (te) sec('error', el('pre', {class: 'err', text: (te.attributes.kind || '') + ': ' + (te.attributes.message || '')})); }
  if (op === 'handoff') {
    p.append(kv([['edge', (a['slmflow.handoff.source'] || '?') + ' → ' + (a['slmflow.handoff.target'] || '?')],
      ['outcome', a['slmflow.handoff.status']]]));
    if (a['slmflow.handoff.payload'] != null) sec('payload', valueView(a['slmflow.handoff.payload']));
    const errs = a['slmflow.handoff.errors'];
    if (errs) sec('validation errors', el('ul', {}, ...(Array.isArray(errs) ? errs : [errs]).map(x => el('li', {class: 'err', text: x}))));
    const kids = d.spans.map((x, k) => [x, k]).filter(([x]) => x.parent_id === sp.span_id && x.operation === 'invoke_agent');
    if (kids.length) sec('repair', el('ul', {}, ...kids.map(([x, k]) => el('li', {}, el('a', {href: '#span=' + x.span_id, onclick: ev => { ev.preventDefault(); show(k); }, text: x.name + ' (' + ms(x.duration_ms) + ')'})))));
  }
  const evs = (sp.events || []).filter(e => e.name !== 'tool.error');
  for (const e of evs) {
    const ea = e.attributes || {};
    if (e.name === 'gen_ai.evaluation.result') sec('evaluation: ' + (ea['gen_ai.evaluation.name'] || ''), kv([
      ['score', ea['gen_ai.evaluation.score.value']], ['label', ea['gen_ai.evaluation.score.label']], ['explanation', ea['gen_ai.evaluation.explanation']]]));
    else if (e.name === 'slmflow.escalation') sec('escalation', kv([['reason', ea['slmflow.escalation.reason'] || ea.reason],
      ['from', ea['slmflow.handoff.source'] || ea.step || ea.agent], ['to', ea['slmflow.escalation.target'] || ea.model]]));
    else if (e.name === 'exception') sec('exception', el('div', {}, el('pre', {class: 'err', text: (ea['exception.type'] || '') + ': ' + (ea['exception.message'] || '')}), ea['exception.stacktrace'] ? fold(ea['exception.stacktrace'], 0) : null));
    else sec(e.name, valueView(ea)); }
  p.append(el('details', {class: 'raw'}, el('summary', {text: 'all attributes'}), el('pre', {text: JSON.stringify(a, null, 1)})));
  p.dataset.span = sp.span_id; }
document.addEventListener('keydown', e => {
  if (['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement.tagName)) return;
  if (e.key === 'j' || e.key === 'ArrowDown') { e.preventDefault(); show(Math.min(rows.length - 1, cur + 1)); }
  else if (e.key === 'k' || e.key === 'ArrowUp') { e.preventDefault(); show(Math.max(0, cur - 1)); }
  else if (e.key === 'e') { const k = d.spans.findIndex((x, n) => n > cur && x.status === 'ERROR'); if (k >= 0) show(k); }
  else if (e.key === 'u' || e.key === 'Backspace') {  // back to the list, filters kept
    const r = document.referrer && new URL(document.referrer);
    location.href = r && r.origin === location.origin && r.pathname === '/' ? r.pathname + r.search : '/'; }
  else if (e.key === '?') $('help').hidden = !$('help').hidden; });
const want = (location.hash.match(/span=([0-9a-f]+)/) || [])[1];
const first = want ? d.spans.findIndex(x => x.span_id === want) : d.spans.findIndex(x => x.status === 'ERROR');
show(first >= 0 ? first : 0);
