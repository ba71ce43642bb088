const $ = id => document.getElementById(id);
const el = (tag, props, ...kids) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) { if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v; else if (k.startsWith('on')) e[k] = v; else e.setAttribute(k, v); }
  for (const k of kids) if (k != null) e.append(k instanceof Node ? k : String(k)); return e; };
const ms = v => v == null ? '-' : (v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(1) + ' ms');
const usd = v => v == null ? '-' : '$' + v.toFixed(6);
const pct = v => v == null ? '-' : (100 * v).toFixed(0) + '%';
const fix = (v, n) => v == null ? '-' : v.toFixed(n);
const when = ns => { const t = new Date(ns / 1e6), p = n => String(n).padStart(2, '0');
  const hms = `${p(t.getHours())}:${p(t.getMinutes())}:${p(t.getSeconds())}`;
  return t.toDateString() === new Date().toDateString() ? hms : `${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())} ${hms}`; };
const badge = s => el('span', {class: 'st st-' + s, text: s});
function fold(text, n) {  // long text folded: the first n characters, the rest on a click
  n = n || 600; const s = typeof text === 'string' ? text : JSON.stringify(text, null, 2);
  if (s == null) return el('span', {class: 'muted', text: '(none)'});
  if (s.length <= n) return el('pre', {text: s});
  const d = el('details', {}, el('summary', {text: s.slice(0, n) + ' … (' + s.length + ' chars)'}),
    el('pre', {text: s})); return d; }
function parse(v) { if (typeof v !== 'string') return v; try { return JSON.parse(v); } catch (e) { return v; } }
function valueView(v) {  // an object as a table, anything else as (folded) text
  v = parse(v);
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const t = el('table', {class: 'kv'});
    for (const [k, x] of Object.entries(v)) t.append(el('tr', {}, el('td', {text: k}),
      el('td', {}, typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean' || x == null
        ? String(x) : fold(x, 300))));
    return t; }
  return fold(v); }
