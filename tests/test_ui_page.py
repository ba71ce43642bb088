"""`slmflow.ui.page`: the UI's CSS/JS are files in ``slmflow/ui/static/`` that ship as package
data, are read once, and are inlined verbatim into the page frame."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from slmflow.ui import page as P

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "src" / "slmflow" / "ui" / "static"


def test_every_static_file_is_package_data():
    """A file the patterns miss would be in a checkout but not in the wheel (a page that 500s
    only once installed)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["slmflow"]
    files = sorted(p.name for p in STATIC.iterdir())
    assert files, STATIC
    missed = [f for f in files if not any(fnmatch.fnmatch(f"ui/static/{f}", pat)
                                          for pat in patterns)]
    assert missed == [], f"add a pattern for {missed} to [tool.setuptools.package-data]"


def test_every_asset_the_modules_name_exists_and_every_file_is_used():
    src = "".join(p.read_text() for p in (ROOT / "src" / "slmflow" / "ui").glob("*.py"))
    named = set(re.findall(r"""["']([a-z-]+\.(?:js|css))["']""", src))
    files = {p.name for p in STATIC.iterdir()}
    assert named - files == set()
    assert files - named == set()


def test_asset_is_read_once_and_missing_one_is_named():
    a = P.asset("viewer.js")
    assert a == (STATIC / "viewer.js").read_text(encoding="utf-8")
    assert P.asset("viewer.js") is a  # cached: the same string object, no second read
    with pytest.raises(FileNotFoundError, match=r"'nope\.js' not found in .*static"):
        P.asset("nope.js")


def test_page_inlines_the_files_verbatim_and_escapes_the_data():
    data = {"text": "</script><script>alert(1)</script>", "amp": "a & b"}
    out = P.page("a <title>", "<p>body</p>", data, ["viewer.js", "viewer-list.js"],
                 ["viewer.css"]).decode()
    assert "<title>a &lt;title&gt;</title>" in out
    style = out.split("<style>", 1)[1].split("</style>", 1)[0]
    assert style == "\n" + P.asset("page.css") + "\n" + P.asset("viewer.css")
    script = out.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    assert script == "\n" + P.asset("viewer.js") + "\n" + P.asset("viewer-list.js")
    blob = re.search(r"<script type='application/json' id='data'>(.*?)</script>", out, re.S)
    assert blob and json.loads(blob.group(1)) == data
    assert out.count("</script>") == 2  # the logged text did not end a script block


def test_pages_stay_importable_from_viewer():
    from slmflow.ui import viewer, viewer_pages
    from slmflow.ui.traces import json_in_html

    assert viewer.trace_page is viewer_pages.trace_page
    assert json_in_html is P.json_in_html
    with pytest.raises(AttributeError, match="no_such_page"):
        viewer.no_such_page  # noqa: B018
