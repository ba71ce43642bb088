"""Sign-in for `slmflow ui --auth`: reviewers are API keys with the ``review`` scope.

Why keys and not accounts: the gateway already issues keys (`slmflow keys create`, only their
SHA-256 stored in the call log's ``api_keys`` table, revocable), so a team that shares one UI on a
cluster needs nothing new to operate: ``slmflow keys create rita --models review`` makes a reviewer
key, and the key's *name* is recorded as the reviewer of every decision made with it (the name
typed into the page is ignored), so the review history says who decided, not who claimed to.
A key without the ``review`` scope (a gateway client's key) is refused here.

How a browser carries the key: ``/login`` takes it once and sets an HttpOnly, SameSite=Strict
cookie (scripts cannot read it; other sites cannot send it); scripts send ``Authorization: Bearer
<key>`` instead. Decisions are POSTed as JSON, which a cross-site form cannot do without a CORS
preflight this server never answers. Lookups are cached for 10 s (a revoked key stops working
within that). Use TLS in front of it (a reverse proxy) beyond loopback.
"""

from __future__ import annotations

import html
import re
import threading
import time
from http.cookies import SimpleCookie
from typing import Any, Mapping

from ..store.calllog import CallLog, hash_key

__all__ = ["ReviewerAuth", "SCOPE", "COOKIE", "login_page"]

SCOPE = "review"
COOKIE = "slmflow_key"


class ReviewerAuth:
    """Who is asking: the name of a valid, unrevoked key with the ``review`` scope, or None."""

    def __init__(self, log: CallLog, scope: str = SCOPE) -> None:
        self.log, self.scope = log, scope
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str | None) -> str | None:
        if not key:
            return None
        h = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(h)
            if hit is not None and hit[0] > now:
                return hit[1]
        rec = self.log.find_key(h)
        name = rec.name if (rec is not None and rec.revoked is None and rec.models
                            and self.scope in rec.models) else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[h] = (now + 10.0, name)
        return name

    def who(self, headers: Mapping[str, str]) -> str | None:
        """The reviewer behind a request: a Bearer key, else the sign-in cookie."""
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return self.lookup(auth[7:].strip())
        raw = headers.get("Cookie")
        if raw:
            try:
                c = SimpleCookie(raw)
            except Exception:  # noqa: BLE001 - a malformed cookie header is just "no key"
                return None
            if COOKIE in c:
                return self.lookup(c[COOKIE].value)
        return None


def cookie_header(key: str, *, max_age: int = 12 * 3600) -> str:
    return (f"{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")


def logout_header() -> str:
    return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"


def login_page(next_path: str, error: str | None = None) -> bytes:
    msg = f"<p class='err'>{html.escape(error)}</p>" if error else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>slmflow: sign in</title>"
        "<style>body{font:14px/1.4 system-ui,sans-serif;margin:3em}.err{color:#c00}</style>"
        "</head><body><h1>slmflow review: sign in</h1>" + msg +
        "<form method='post' action='/login'><input type='hidden' name='next' value='"
        f"{html.escape(next_path)}'><label>reviewer key <input id='key' name='key' "
        "type='password' size=50 autofocus></label> <button>Sign in</button></form>"
        "<p>A key with the review scope: <code>slmflow keys create NAME --models review</code>"
        "</p></body></html>").encode()


def safe_next(path: Any) -> str:
    """Only a same-origin path after sign-in: ``/`` followed by anything but ``/`` or ``\\``,
    and no control character anywhere. Browsers read ``/\\evil.example`` and ``//evil.example``
    as another host, and drop a TAB or newline before resolving (``/<TAB>/evil.example`` is
    ``//evil.example``); a CR/LF would also end the ``Location`` header and start another
    (a ``Set-Cookie`` of the attacker's choosing). Anything else becomes ``/``."""
    p = str(path or "/")
    if not p.startswith("/") or p[1:2] in ("/", "\\") or _CONTROL.search(p):
        return "/"
    return p


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
