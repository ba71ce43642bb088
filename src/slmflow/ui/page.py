"""The page frame of `slmflow ui` and the static CSS/JS it inlines (``slmflow/ui/static/``).

Why the CSS and JS are files and not Python strings: they are most of the UI's code (the trace
viewer's alone was over 300 lines of JS), and as ``.js``/``.css`` files an editor, a linter and
a reviewer's diff see them as what they are; the Python modules keep one job each (the server
in `slmflow.ui.traces`, the data in `slmflow.ui.viewer`, the HTML in `slmflow.ui.viewer_pages`
and `slmflow.ui.review`).

Why they are still inlined into each page and not served under ``/static``: one request per
page, so a headless browser's DOM dump sees the whole page, and no second kind of route to sign
in or Host-check. Each file is read once per process (`asset`, cached) through
`importlib.resources`, so it is found inside an installed wheel as in a checkout; the wheel
ships them as package data (``pyproject.toml``, ``[tool.setuptools.package-data]``).

The files are inserted verbatim: nothing in them is a template (no ``%s``, ``.format`` or
``{{ }}`` is applied), so they need no escaping; the page's data travels apart, as JSON in a
``<script type='application/json' id='data'>`` block (`json_in_html`).
"""

from __future__ import annotations

import functools
import html
import json
from importlib import resources
from typing import Any, Iterable

__all__ = ["asset", "json_in_html", "page"]


@functools.cache
def asset(name: str) -> str:
    """The text of ``slmflow/ui/static/<name>``, read once. A missing file (an install without
    the package data) raises FileNotFoundError naming it and where it was looked for."""
    where = resources.files(__package__) / "static"
    try:
        return (where / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"slmflow ui: static file {name!r} not found in {where}: not a file slmflow ships, "
            "or slmflow was installed without its package data (slmflow/ui/static/*)") from None


_JSON_IN_HTML = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_in_html(data: Any) -> str:
    """JSON for an inline ``<script type='application/json'>`` block, as Jinja's ``tojson``
    writes it: ``<``, ``>``, ``&`` and U+2028/2029 become ``\\uXXXX`` escapes, so no logged text
    (``</script>``, ``<!--<script>``, which switches the HTML parser into a state where the
    block no longer ends at its ``</script>``) can end or open a script context. The JSON value
    is unchanged."""
    return json.dumps(data, default=str).translate(_JSON_IN_HTML)


def _inline(names: Iterable[str]) -> str:
    return "".join("\n" + asset(n) for n in names)  # each file starts on a line of its own


def page(title: str, body: str, data: Any, scripts: Iterable[str],
         styles: Iterable[str] = ()) -> bytes:
    """A whole page: ``static/page.css`` and then ``styles`` inlined in the head, ``body``
    (HTML, already escaped by the caller), ``data`` as JSON, then ``scripts`` (static file
    names, in order) inlined at the end."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{html.escape(title)}"
            f"</title><style>{_inline(['page.css', *styles])}</style></head><body>{body}"
            f"<script type='application/json' id='data'>{json_in_html(data)}</script>"
            f"<script>{_inline(scripts)}</script></body></html>").encode()
