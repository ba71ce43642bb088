"""The server of `slmflow ui`: routes, sign-in, Host and origin checks for the trace viewer
(`slmflow.ui.viewer`: trace list, trace waterfall with span details, agents; its pages in
`slmflow.ui.viewer_pages`) and the review queue pages (`slmflow.ui.review`). The page frame they
share and its static CSS/JS are `slmflow.ui.page`.

Why the data is inlined into each page as JSON and the DOM is built by a few lines of JS: one
request per page, nothing to fetch after load (so a headless browser's DOM dump sees the whole
waterfall), and the same JSON is also served under ``/api/...`` for scripts.
"""

from __future__ import annotations

import html
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

from ..tracing.store import SpanStore
from .page import json_in_html  # noqa: F401 - importable from here, as before


class _Handler(BaseHTTPRequestHandler):
    store: SpanStore
    calls: Any = None  # a CallLog for the review pages (slmflow.ui.review)
    auth: Any = None  # a `slmflow.ui.auth.ReviewerAuth`: every page needs a reviewer key
    hosts: Any = None  # a `_Hosts`: the Host names this server answers to (without --auth)
    ctx: Any = None  # the trace viewer's `slmflow.ui.viewer.Context`

    def _host_ok(self) -> bool:
        """Without sign-in, a page on another site could reach this server by DNS rebinding
        (its name re-pointed at 127.0.0.1): the browser then sends that name as Host. Only the
        names of the bound address are answered; the rest get a 421 naming the Host."""
        if self.auth is not None or self.hosts is None or self.hosts.ok(self.headers.get("Host")):
            return True
        self._json(421, {"error": f"unknown Host {self.headers.get('Host')!r}: this server "
                                  f"answers to {self.hosts.describe()} (slmflow ui --allow-host)"})
        return False

    def _body_length(self, limit: int) -> int | None:
        """The request's Content-Length, or None after answering 400 (not a number) or 413."""
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():
            self._json(400, {"error": f"Content-Length {raw[:40]!r} is not a number"})
            return None
        n = int(raw)
        if n > limit:
            self._json(413, {"error": f"request body too large ({n} bytes, at most {limit})"})
            return None
        return n

    def _same_origin_post(self) -> bool:
        """Without sign-in, a POST from a page of another site is refused (403): a browser sends
        its ``Origin`` (and ``Sec-Fetch-Site``) with every POST; scripts without either pass."""
        if self.auth is not None:  # signed in: the SameSite=Strict cookie already stays home
            return True
        origin = self.headers.get("Origin")
        host = self.headers.get("Host") or ""
        site = (self.headers.get("Sec-Fetch-Site") or "").lower()
        if (origin is not None and origin.lower() not in (f"http://{host}".lower(),
                                                          f"https://{host}".lower())) \
                or site in ("cross-site", "same-site"):
            self._json(403, {"error": f"cross-origin POST refused (Origin {origin!r}, "
                                      f"Host {host!r})"})
            return False
        return True

    def _redirect(self, to: str, cookie: str | None = None) -> None:
        if any(c in to for c in "\r\n"):  # never a second header (callers pass safe_next)
            to = "/"
        self.send_response(303)
        self.send_header("Location", to)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _signed_in(self, path: str, query: str) -> tuple[bool, str | None]:
        """(go on, reviewer name). Without auth: (True, None). Otherwise a request without a
        valid reviewer key is answered here (401 for /api, else the sign-in page)."""
        if self.auth is None:
            return True, None
        who = self.auth.who(self.headers)
        if who is not None:
            return True, who
        if path.startswith("/api/"):
            self._json(401, {"error": "sign in: send Authorization: Bearer <a key with the "
                                      "review scope>"})
        else:
            from .auth import safe_next

            nxt = safe_next(path + (f"?{query}" if query else ""))
            self._redirect(f"/login?next={quote(nxt, safe='')}")
        return False, None

    def _login(self, method: str) -> None:
        from .auth import cookie_header, login_page, logout_header, safe_next

        if self.path.startswith("/logout"):
            return self._redirect("/login", logout_header())
        if method == "GET":
            nxt = safe_next(parse_qs(urlparse(self.path).query).get("next", ["/"])[0])
            return self._send(200, login_page(nxt))
        n = self._body_length(10_000)
        if n is None:
            return None
        form = parse_qs(self.rfile.read(n).decode("utf-8", "replace"))
        key, nxt = form.get("key", [""])[0].strip(), safe_next(form.get("next", ["/"])[0])
        if self.auth.lookup(key) is None:
            return self._send(401, login_page(nxt, "not a valid key with the review scope"))
        return self._redirect(nxt, cookie_header(key))

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "text/html; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data, default=str).encode(), "application/json")

    def _review_get(self, path: str, query: str, who: str | None = None) -> bool:
        from . import review

        agent = parse_qs(query).get("agent", [None])[0] or None
        if path == "/review":
            self._send(200, review.list_page(self.calls, agent))
        elif path == "/api/review":
            self._json(200, review.list_data(self.calls, agent))
        else:
            m = re.fullmatch(r"/(api/review|review)/([0-9a-f]{8,40})", path)
            if not m:
                return False
            try:
                if m.group(1) == "review":
                    trained = self.ctx.lineage().get(f"review:{m.group(2)}") \
                        if self.ctx is not None else None
                    self._send(200, review.item_page(self.calls, m.group(2), self.store,
                                                     reviewer=who, trained=trained))
                else:
                    self._json(200, review.item_data(self.calls, m.group(2), self.store))
            except review.ReviewError as e:
                self._send(404, f"<h1>{html.escape(e.message)}</h1>".encode())
        return True

    def _viewer_get(self, path: str, query: str) -> bool:
        """The trace viewer's pages and JSON (`slmflow.ui.viewer`); False: not one of them."""
        from ..errors import SlmflowError
        from . import viewer
        from . import viewer_pages as pages

        ctx = self.ctx
        q = {k: v[0] for k, v in parse_qs(query).items()}
        api = path.startswith("/api/")

        def answer(data: Any, page: Any) -> bool:
            if data is None or page is None:
                self._send(404, b"<h1>not found</h1>") if not api else \
                    self._json(404, {"error": "not found"})
            elif api:
                self._send(200, json.dumps(data, default=str).encode(), "application/json")
            else:
                self._send(200, page)
            return True

        try:
            if path in ("/", "/index.html"):
                return answer(True, pages.list_page(ctx, q))
            if path == "/api/traces":
                data = viewer.list_data(ctx, q)
                return answer(data if q.get("full") else data["rows"], True)
            if path in ("/agents", "/api/agents"):
                return answer(viewer.agents_data(ctx, q) if api else True,
                              True if api else pages.agents_page(ctx, q))
            m = re.fullmatch(r"/(api/traces|trace)/([0-9a-fA-F]{1,32}|last)", path)
            if m:
                if api:
                    return answer(viewer.trace_detail(ctx, m.group(2)), True)
                return answer(True, pages.trace_page(ctx, m.group(2)))
            m = re.fullmatch(r"/api/traces/([0-9a-f]{32})/spans/([0-9a-f]{16})", path)
            if m:
                return answer(viewer.span_detail(ctx, m.group(1), m.group(2)), True)
            m = re.fullmatch(r"/(api/calls|call)/([0-9a-f]{8,40})", path)
            if m:
                if api:
                    return answer(viewer.call_data(ctx, m.group(2)), True)
                return answer(True, pages.call_page(ctx, m.group(2)))
            m = re.fullmatch(r"/(api/adapters|adapter)/([A-Za-z0-9._-]{1,100})/"
                             r"([A-Za-z0-9._-]{1,100})", path)
            if m and ".." not in m.group(2) + m.group(3):
                if api:
                    return answer(viewer.adapter_data(ctx, m.group(2), m.group(3)), True)
                return answer(True, pages.adapter_page(ctx, m.group(2), m.group(3)))
        except SlmflowError as e:  # a bad filter value: 400 naming it
            if api:
                self._json(400, {"error": e.message})
            else:
                self._send(400, f"<h1>{html.escape(e.message)}</h1>".encode())
            return True
        return False

    def do_POST(self) -> None:  # noqa: N802
        from . import review

        path = urlparse(self.path).path
        if not self._host_ok() or not self._same_origin_post():
            return None
        if self.auth is not None and path == "/login":
            return self._login("POST")
        ok, who = self._signed_in(path, "")
        if not ok:
            return None
        m = re.fullmatch(r"/api/review/([0-9a-f]{8,40})(/judge)?", path)
        if not m or self.calls is None:
            return self._json(404, {"error": "not found"})
        try:
            n = self._body_length(1_000_000)
            if n is None:
                return None
            if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                # a cross-site form cannot send JSON (only text/plain, urlencoded, multipart)
                return self._json(415, {"error": "send JSON (application/json)"})
            try:
                body = json.loads(self.rfile.read(n) or b"null")
            except ValueError:
                return self._json(400, {"error": "the body is not JSON"})
            if who is not None and isinstance(body, dict):
                body["reviewer"] = who  # the key's name, not what the page says
            code, out = (review.decide_judge if m.group(2) else review.decide)(
                self.calls, m.group(1), body)
            return self._json(code, out)
        except Exception as e:  # noqa: BLE001
            return self._json(500, {"error": f"{type(e).__name__}: {e}"})

    def do_GET(self) -> None:  # noqa: N802
        u = urlparse(self.path)
        path = u.path
        try:
            if not self._host_ok():
                return None
            if self.auth is not None and path in ("/login", "/logout"):
                return self._login("GET")
            ok, who = self._signed_in(path, u.query)
            if not ok:
                return None
            if self.calls is not None and path.startswith(("/review", "/api/review")) and \
                    self._review_get(path, u.query, who):
                return
            if self._viewer_get(path, u.query):
                return None
            return self._send(404, b"<h1>not found</h1>")
        except Exception as e:  # one bad request must not stop the server
            return self._send(500, f"<h1>error</h1><pre>{html.escape(str(e))}</pre>".encode())


class _Hosts:
    """The Host header values a server bound to ``host:port`` answers to: the bound name, and
    for a loopback bind ``localhost``/``127.0.0.1``/``[::1]``; for a wildcard bind (0.0.0.0, ::)
    any IP literal and this machine's names (a DNS-rebinding page always sends a *name*); plus
    ``extra`` (the names a reverse proxy forwards, ``--allow-host``). Port must match unless the
    name was given in ``extra`` without one."""

    _LOOPBACK = {"127.0.0.1", "localhost", "::1"}

    def __init__(self, host: str, port: int, extra: Any = ()) -> None:
        import socket

        h = host.strip("[]").lower()
        self.port, self.wildcard = port, h in ("", "0.0.0.0", "::")
        self.names = {h} | (self._LOOPBACK if h in self._LOOPBACK or self.wildcard else set())
        if self.wildcard:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.extra = {str(e).lower() for e in extra or ()}

    def ok(self, value: str | None) -> bool:
        import ipaddress

        if not value:
            return False
        v = value.strip().lower()
        if v in self.extra:
            return True
        m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", v)
        if not m:
            return False
        name, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if name in self.extra:
            return True
        if (int(port) if port else 80) != self.port:
            return False
        if name in self.names:
            return True
        if self.wildcard:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    def describe(self) -> str:
        return ", ".join(sorted(f"{n}:{self.port}" for n in self.names)
                         + sorted(self.extra)) + (" or any IP address" if self.wildcard else "")


def serve(host: str = "127.0.0.1", port: int = 6007, *,
          db_path: str | Path | SpanStore | None = None,
          calls: Any = None, auth: bool = False,
          allowed_hosts: Any = (), show_pii: bool = False,
          registry: Any = None) -> ThreadingHTTPServer:
    """A server for the trace pages and, given a call log (a `CallLog` or its URL), the review
    queue under ``/review`` (not yet serving: call ``serve_forever``); port 0 = any.
    ``db_path``: the span store (a `SpanStore`, a SQLite path, ``sqlite:///path`` or
    ``postgresql://...``); default: ``$SLMFLOW_TRACES_URL``, else ``$SLMFLOW_HOME/spans.db``.
    auth: every page and API needs a reviewer key (`slmflow.ui.auth`), and decisions are recorded
    under the key's name. Without auth, only requests whose Host names the bound address (or one
    of ``allowed_hosts``) are answered, and POSTs must be same-origin JSON. show_pii: serve
    prompts and answers unredacted. registry: the adapter registry for lineage links (default:
    ``$SLMFLOW_ADAPTERS_URL`` / ``$SLMFLOW_HOME/adapters``)."""
    if calls is not None and not hasattr(calls, "_all"):
        from ..store import open_call_log

        calls = open_call_log(calls)
    store = db_path if isinstance(db_path, SpanStore) else SpanStore(db_path)
    reviewers = None
    if auth:
        if calls is None:
            from ..errors import ConfigError

            raise ConfigError("sign-in needs the call log (where the API keys are)", where="ui")
        from .auth import ReviewerAuth

        reviewers = ReviewerAuth(calls)
    from .viewer import Context

    ctx = Context(store, calls, show_pii=show_pii, registry=registry)
    handler = type("Handler", (_Handler,), {"store": store, "calls": calls, "auth": reviewers,
                                            "ctx": ctx})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    handler.hosts = _Hosts(host, server.server_address[1], allowed_hosts)
    return server
