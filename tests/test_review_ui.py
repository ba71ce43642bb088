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
