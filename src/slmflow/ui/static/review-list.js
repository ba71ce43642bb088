const d = JSON.parse(document.getElementById('data').textContent);
const tb = document.getElementById('rows');
if (!d.items.length) tb.innerHTML = '<tr><td colspan=6>nothing to review</td></tr>';
for (const it of d.items) {
  const tr = document.createElement('tr'); tr.className = 'item-row';
  const a = document.createElement('a'); a.href = '/review/' + it.id; a.textContent = it.id.slice(0, 10);
  const cells = [a, it.agent, it.priority.toFixed(2), null, it.confidence == null ? '-' : it.confidence.toFixed(3), it.input];
  cells.forEach((c, i) => { const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c);
    else if (i === 3) { td.className = 'reasons'; for (const r of it.reasons) { const s = document.createElement('span'); s.textContent = r; td.appendChild(s); } }
    else td.textContent = c;
    tr.appendChild(td); });
  tb.appendChild(tr);
}
document.addEventListener('keydown', e => { if (e.key === 'j' && d.items.length) location.href = '/review/' + d.items[0].id; });
