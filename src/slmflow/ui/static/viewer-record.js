const d = JSON.parse($('data').textContent);
for (const b of document.querySelectorAll('[data-value]')) b.append(valueView(JSON.parse(b.dataset.value)));
