"""The review queue pages in a real headless Chromium driven by Playwright: a reviewer walks three
flagged items with the keyboard (correct through the generated form, accept, reject)."""

from __future__ import annotations

import shutil
import threading
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel

from slmflow import Agent, FunctionModel
from slmflow.loop import flag_calls
from slmflow.store import CallLogWriter, logging_context, open_call_log
from slmflow.store.review import ReviewQueue
from slmflow.ui.traces import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (run .ci/install-system-deps.sh)")


class Route(BaseModel):
    intent: Literal["card_lost", "refund", "transfer"]
    urgent: bool = False


@pytest.fixture
def site(tmp_path):
    log = open_call_log(tmp_path / "calls.db")
    agent = Agent("router", FunctionModel(lambda m, s: {"intent": "transfer", "urgent": False},
                                          name="slm", confidence=0.1), output_type=Route)
    w = CallLogWriter(log)
    with logging_context(writer=w):
        for text in ("I want my money back", "where is my transfer", "card stolen!!"):
            agent.run_sync(text)
    w.flush()
    w.close(close_log=False)
    flag_calls(log, since="1h")
    server = serve("127.0.0.1", 0, db_path=tmp_path / "spans.db", calls=log)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", log
    server.shutdown()
    server.server_close()
    log.close()


def test_reviewer_walks_the_queue_with_the_keyboard(site):
    pw = pytest.importorskip("playwright.sync_api")
    base, log = site
    q = ReviewQueue(log)
    order = [i.id for i in q.items()]
    assert len(order) == 3
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page()
        page.goto(base + "/review")
        assert page.locator("tr.item-row").count() == 3
        page.keyboard.press("j")  # open the first item
        page.wait_for_url(f"**/review/{order[0]}")
        # no reviewer yet: the decision is refused on the page, nothing recorded
        page.keyboard.press("a")
        page.wait_for_selector("#msg.err")
        assert "enter your name" in page.text_content("#msg")
        assert q.get(order[0]).status == "pending"
        page.fill("#reviewer", "alice")
        page.keyboard.press("Escape")
        # the form was generated from the schema: an enum select and a checkbox
        assert page.locator("select[name=intent] option").count() == 3
        page.keyboard.press("c")  # focus the correction form
        page.select_option("select[name=intent]", '"refund"')
        page.check("input[name=urgent]")
        page.keyboard.press("Control+Enter")
        page.wait_for_url(f"**/review/{order[1]}")
        page.keyboard.press("a")
        page.wait_for_url(f"**/review/{order[2]}")
        page.keyboard.press("r")
        page.wait_for_url("**/review?done=1")
        assert page.locator("tr.item-row").count() == 0
        browser.close()
    a, b, c = (q.get(i) for i in order)
    assert (a.verdict, a.correction, a.reviewer) == ("correct", {"intent": "refund",
                                                                 "urgent": True}, "alice")
    assert (b.verdict, b.target) == ("accept", {"intent": "transfer", "urgent": False})
    assert c.verdict == "reject" and c.target is None
    # a second reviewer on a decided item: 409, the first decision stands
    r = httpx.post(f"{base}/api/review/{order[0]}", json={"verdict": "reject",
                                                          "reviewer": "bob"})
    assert r.status_code == 409 and "already reviewed by alice" in r.json()["error"]
    assert q.get(order[0]).verdict == "correct"


def test_review_api_errors(site):
    base, log = site
    q = ReviewQueue(log)
    item = q.items()[0]
    bad = httpx.post(f"{base}/api/review/{item.id}", json={
        "verdict": "correct", "reviewer": "alice", "correction": {"intent": "pizza"}})
    assert bad.status_code == 422 and "does not fit" in bad.json()["error"]
    assert httpx.post(f"{base}/api/review/{item.id}", content=b"{nope",
                      headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.post(f"{base}/api/review/{'0' * 32}", json={
        "verdict": "accept", "reviewer": "a"}).status_code == 404
    with log._tx() as cur:
        log._exec(cur, "DELETE FROM calls WHERE id = ?", (item.call_id,))
    gone = httpx.post(f"{base}/api/review/{item.id}", json={"verdict": "accept",
                                                           "reviewer": "alice"})
    assert gone.status_code == 410 and "no longer exists" in gone.json()["error"]
    listing = httpx.get(base + "/api/review").json()
    assert len(listing["items"]) == 2 and listing["stats"]["router"]["orphaned"] == 1
    assert httpx.get(f"{base}/review/{item.id}").status_code == 200  # still viewable


def test_sign_in_with_a_reviewer_key(site, tmp_path):
    """`slmflow ui --auth`: every page wants a key with the review scope; a browser signs in once
    (cookie), the reviewer field shows the key's name read-only, and the decision is recorded
    under that name whatever the request says; gateway keys and revoked keys are refused."""
    pw = pytest.importorskip("playwright.sync_api")
    from slmflow.gateway.auth import create_key

    _, log = site
    rita, _ = create_key(log, "rita", models=["review"])
    client, _ = create_key(log, "app", models=["smollm2-135m"])  # a gateway client's key
    gone, _ = create_key(log, "bob", models=["review"])
    log.revoke_key("bob")
    server = serve("127.0.0.1", 0, db_path=tmp_path / "spans.db", calls=log, auth=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    q = ReviewQueue(log)
    first, second = [i.id for i in q.items()][:2]
    try:
        r = httpx.get(f"{base}/review/{first}")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        assert httpx.get(f"{base}/").status_code == 303  # the traces too
        assert httpx.get(f"{base}/api/review").status_code == 401
        for bad in (client, gone, "sk-slm-made-up"):
            assert httpx.get(f"{base}/api/review",
                             headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        r = httpx.post(f"{base}/login", data={"key": client, "next": "/review"})
        assert r.status_code == 401 and "review scope" in r.text
        r = httpx.post(f"{base}/login", data={"key": rita, "next": "https://evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
        # a script: Bearer key; the body's reviewer is replaced by the key's name
        auth = {"Authorization": f"Bearer {rita}"}
        r = httpx.post(f"{base}/api/review/{second}", headers=auth,
                       json={"verdict": "accept", "reviewer": "mallory"})
        assert r.status_code == 200, r.text
        assert q.get(second).reviewer == "rita"
        r = httpx.post(f"{base}/api/review/{first}", headers=auth, content="verdict=accept")
        assert r.status_code == 415 and q.get(first).status == "pending"

        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page()
            page.goto(f"{base}/review/{first}")
            page.wait_for_url("**/login?next=*")
            page.fill("#key", rita)
            page.keyboard.press("Enter")
            page.wait_for_url(f"**/review/{first}")
            page.wait_for_selector("#input:not(:empty)")
            assert page.input_value("#reviewer") == "rita"
            assert page.get_attribute("#reviewer", "readonly") is not None
            page.keyboard.press("a")
            page.wait_for_function(f"!location.href.endsWith('/review/{first}')")
            cookie = [c for c in page.context.cookies() if c["name"] == "slmflow_key"][0]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            page.goto(f"{base}/logout")
            page.wait_for_url("**/login")
            browser.close()
        done = q.get(first)
        assert done.status == "reviewed" and done.verdict == "accept" and done.reviewer == "rita"
    finally:
        server.shutdown()
        server.server_close()


# ---- issue 15, items 8-11: the review UI attacked --------------------------------------------

def _auth_server(log, tmp_path):
    server = serve("127.0.0.1", 0, db_path=tmp_path / "spans.db", calls=log, auth=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("nxt", ["/\\evil.example/x", "/\t/evil.example/x", "//evil.example/x",
                                 "/\n/evil.example/x", "https://evil.example/"])
def test_sign_in_never_redirects_off_site(site, tmp_path, nxt):
    """Item 8: a browser resolves ``/\\evil.example`` (and ``/<TAB>/evil.example``, tabs and
    newlines being dropped) to another host: only same-origin paths are followed."""
    from slmflow.gateway.auth import create_key

    _, log = site
    rita, _ = create_key(log, "rita", models=["review"])
    server, base = _auth_server(log, tmp_path)
    try:
        r = httpx.post(f"{base}/login", data={"key": rita, "next": nxt})
        assert r.status_code == 303 and r.headers["location"] == "/"
        page = httpx.get(f"{base}/login", params={"next": nxt}).text
        assert "value='/'" in page  # the sign-in form carries "/" on, not the bad target
        ok = httpx.post(f"{base}/login", data={"key": rita, "next": "/review?agent=router"})
        assert ok.headers["location"] == "/review?agent=router"
    finally:
        server.shutdown()
        server.server_close()


def test_sign_in_next_cannot_inject_headers(site, tmp_path):
    """Item 9: CR/LF in ``next`` ended the Location header and added the attacker's own."""
    from slmflow.gateway.auth import create_key

    _, log = site
    rita, _ = create_key(log, "rita", models=["review"])
    server, base = _auth_server(log, tmp_path)
    try:
        r = httpx.post(f"{base}/login", data={
            "key": rita, "next": "/review\r\nSet-Cookie: slmflow_key=attacker; Path=/\r\nX-A: 1"})
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "x-a" not in r.headers
        cookies = r.headers.get_list("set-cookie")
        assert len(cookies) == 1 and "attacker" not in cookies[0] and rita in cookies[0]
    finally:
        server.shutdown()
        server.server_close()


def test_logged_script_markup_cannot_break_the_pages(tmp_path):
    """Item 10: ``<!--<script>`` in a logged input put the HTML parser into the "double
    escaped" state, so the inline JSON block swallowed the page's script: the queue showed no
    rows and the item page lost its form. In a real Chromium, both pages still work and show
    the text as text."""
    pw = pytest.importorskip("playwright.sync_api")
    nasty = "refund <!--<script> please </script><script>document.title='pwned'</script> &amp;"
    log = open_call_log(tmp_path / "calls.db")
    agent = Agent("router", FunctionModel(
        lambda m, s: {"intent": "refund", "urgent": False}, name="slm", confidence=0.1),
        output_type=Route)
    w = CallLogWriter(log)
    with logging_context(writer=w):
        agent.run_sync(nasty)
        agent.run_sync("plain one\u2028with a line separator")
    w.flush()
    w.close(close_log=False)
    flag_calls(log, since="1h")
    server = serve("127.0.0.1", 0, db_path=tmp_path / "spans.db", calls=log)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    q = ReviewQueue(log)
    calls = log.get_many(i.call_id for i in q.items())
    item = next(i for i in q.items() if "<!--" in str(calls[i.call_id].input))
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page()
            page.goto(base + "/review")
            assert page.locator("tr.item-row").count() == 2
            assert nasty[:40] in page.text_content("#rows")
            page.goto(f"{base}/review/{item.id}")
            assert page.locator("select[name=intent]").count() == 1
            assert page.text_content("#input") == nasty
            assert page.title() != "pwned"
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        log.close()


def test_without_auth_host_origin_and_body_are_checked(site):
    """Item 11: without --auth, a DNS-rebinding page (Host: its own name), a cross-site
    text/plain POST and a bad Origin are refused before anything is recorded; a malformed
    Content-Length is a 400, not a dropped connection."""
    import socket

    base, log = site
    q = ReviewQueue(log)
    item = q.items()[0]
    port = int(base.rsplit(":", 1)[1])
    assert httpx.get(base + "/", headers={"Host": f"rebind.evil.example:{port}"}).status_code == 421
    assert httpx.get(base + "/api/review", headers={"Host": "rebind.evil.example"}).status_code \
        == 421
    assert httpx.get(base + "/", headers={"Host": f"localhost:{port}"}).status_code == 200
    body = '{"verdict": "accept", "reviewer": "eve"}'
    r = httpx.post(f"{base}/api/review/{item.id}", content=body,
                   headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert r.status_code in (403, 415)
    r = httpx.post(f"{base}/api/review/{item.id}", content=body,
                   headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(f"{base}/api/review/{item.id}", content=body,
                   headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert r.status_code == 403
    r = httpx.post(f"{base}/api/review/{item.id}", content=body,
                   headers={"Content-Type": "application/json",
                            "Host": f"rebind.evil.example:{port}",
                            "Origin": f"http://rebind.evil.example:{port}"})
    assert r.status_code == 421
    assert q.get(item.id).status == "pending"
    r = httpx.post(f"{base}/api/review/{item.id}", content=body,
                   headers={"Content-Type": "application/json", "Origin": base})
    assert r.status_code == 200 and q.get(item.id).reviewer == "eve"

    for path in (f"/api/review/{item.id}",):  # (/login exists with --auth: the test below)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 12abc\r\n"
                      "Connection: close\r\n\r\n{}".encode())
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        assert got.startswith(b"HTTP/1.0 400") or got.startswith(b"HTTP/1.1 400"), (path, got)


def test_malformed_content_length_on_sign_in(site, tmp_path):
    """Item 11: ``/login`` (with --auth) dropped the connection with a traceback."""
    import socket

    _, log = site
    server, base = _auth_server(log, tmp_path)
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                      "application/x-www-form-urlencoded\r\nContent-Length: ten\r\n"
                      "Connection: close\r\n\r\nkey=x".encode())
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        assert got.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), got
    finally:
        server.shutdown()
        server.server_close()


def test_allowed_host_names(tmp_path):
    """--allow-host: the name a reverse proxy forwards is answered, other names are not; a
    wildcard bind answers any IP literal (a rebinding page always sends a name)."""
    from slmflow.ui.traces import _Hosts

    server = serve("127.0.0.1", 0, db_path=tmp_path / "spans.db", allowed_hosts=["ui.example"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(base + "/", headers={"Host": "ui.example"}).status_code == 200
        r = httpx.get(base + "/", headers={"Host": "other.example"})
        assert r.status_code == 421 and "ui.example" in r.json()["error"]
    finally:
        server.shutdown()
        server.server_close()
    h = _Hosts("0.0.0.0", 6007)
    assert h.ok("10.1.2.3:6007") and h.ok("[fe80::1]:6007") and h.ok("localhost:6007")
    assert not h.ok("10.1.2.3:6008") and not h.ok("rebind.evil.example:6007")
    assert not h.ok(None) and not h.ok("")
