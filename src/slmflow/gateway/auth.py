"""API keys, their scopes, per-key rate limits and token budgets.

Keys are random 256-bit tokens (``sk-slm-...``) shown once at creation; only their SHA-256 is
stored (in the call-log store's ``api_keys`` table, or as ``sha256:`` in gateway.yaml). Why a
plain SHA-256 and not a password hash (bcrypt, scrypt): a key has 256 bits of entropy, so there
is nothing to brute-force, and the gateway checks it on every request; this is what API
providers do for machine-generated keys.

Scopes: a key's ``models`` list names the models it may use and, besides them, the scopes it
holds: ``metrics`` (read ``/metrics`` and the details of ``/healthz``: a Prometheus scraper's
key), ``admin`` (feedback on, and reading of, any key's calls), ``review`` (the review UI). A
scope is granted only by naming it (a key without a ``models`` list may use every model but
holds no scope), and the names are reserved: no model or workflow may be called so.

Rate limit: a token bucket of ``rpm`` requests per minute per key (bursts up to ``rpm``).
Token budget: input + output tokens per UTC day per key. A request reserves its worst case
(prompt estimate + ``max_tokens``) before generating and settles with the real usage after, so
concurrent requests cannot all pass a check made before any of them is counted. Both live in the
call-log database (`CallLog.take_rate`, `CallLog.reserve_tokens`), so gateway replicas sharing
one PostgreSQL enforce one key's limits together; SQLite does the same for one machine.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..store.calllog import ApiKey, CallLog, hash_key

__all__ = ["hash_key", "new_key", "KeyInfo", "Authenticator", "RateLimiter", "TokenBudget",
           "Reservation", "create_key", "SCOPES", "estimate_tokens", "owns_call"]

SCOPES = ("admin", "metrics", "review")


def new_key() -> str:
    return "sk-slm-" + secrets.token_urlsafe(32)


def create_key(log: CallLog, name: str, *, models: list[str] | None = None,
               rpm: int | None = None, tokens_per_day: int | None = None) -> tuple[str, ApiKey]:
    """Create a key in the store; returns (the key itself, shown once; its stored record)."""
    key = new_key()
    rec = log.create_key(ApiKey(name=name, key_hash=hash_key(key), prefix=key[:10],
                                models=models, rpm=rpm, tokens_per_day=tokens_per_day))
    return key, rec


@dataclass(frozen=True)
class KeyInfo:
    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tokens_per_day: int | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def has_scope(self, scope: str) -> bool:
        """Granted only by naming it in ``models`` (an all-models key holds no scope)."""
        return self.models is not None and scope in self.models


class Authenticator:
    """Looks a bearer key up by hash: config keys first, then the store (cached 10 s, revocation
    takes effect within that)."""

    def __init__(self, log: CallLog | None, config_keys: list[Any] = ()) -> None:
        self.log = log
        self._static = {k.sha256: KeyInfo(k.name, tuple(k.models) if k.models else None,
                                          k.rpm, k.tokens_per_day) for k in config_keys}
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str) -> KeyInfo | None:
        h = hash_key(key)
        if h in self._static:
            return self._static[h]
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(h)
            if hit is not None and hit[0] > now:
                return hit[1]
        info = None
        if self.log is not None:
            rec = self.log.find_key(h)
            if rec is not None and rec.revoked is None:
                info = KeyInfo(rec.name, tuple(rec.models) if rec.models else None, rec.rpm,
                               rec.tokens_per_day)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[h] = (now + 10.0, info)
        return info


class RateLimiter:
    """The rpm token bucket of each key, kept in the call-log database (shared by replicas)."""

    def __init__(self, log: CallLog) -> None:
        self.log = log

    def take(self, key: str, rpm: int | None) -> float:
        """0.0 if allowed, else the seconds to wait. Blocking (a database transaction)."""
        if rpm is None:
            return 0.0
        return self.log.take_rate(key, rpm)


def estimate_tokens(text_bytes: int, messages: int = 1) -> int:
    """A generous prompt-token estimate for a reservation, without the model's tokenizer: a
    token per 3 bytes (English runs near 4, CJK near 3), 8 per message (role markers of a chat
    template), 40 for a template's preamble (SmolLM2's default system prompt and markers are 26
    tokens). The real count settles the reservation after the call."""
    return -(-int(text_bytes) // 3) + 8 * int(messages) + 40


@dataclass
class Reservation:
    key: str
    day: int
    tokens: int
    settled: bool = False


class TokenBudget:
    """Daily token budgets: `reserve` before a generation, `settle` after (see module doc)."""

    def __init__(self, log: CallLog) -> None:
        self.log = log

    def reserve(self, key: str, tokens: int, limit: int) -> tuple[Reservation | None, int]:
        """(the reservation, or None when it does not fit; the day's counter). Blocking."""
        ok, used, day = self.log.reserve_tokens(key, tokens, limit)
        return (Reservation(key, day, int(tokens)) if ok else None), used

    def settle(self, res: Reservation, used: int) -> None:
        """Replace the reserved count by the real one (0 releases it). Blocking; idempotent."""
        if res.settled:
            return
        res.settled = True
        self.log.settle_tokens(res.key, res.day, int(used) - res.tokens)

    def used(self, key: str) -> int:
        n = self.log.budget_used(key)
        return n if n is not None else self.log.tokens_since(key, _day_start())


def _day_start(now: float | None = None) -> float:
    t = time.time() if now is None else now
    return t - (t % 86400)


def owns_call(log: CallLog, key: str, call_id: str | None = None,
              run_id: str | None = None) -> bool:
    """Whether the call (or some call of the run) was made with the key named ``key``."""
    if call_id is not None:
        rec = log.get(call_id)
        return rec is not None and rec.key_name == key
    return run_id is not None and log.count(run_id=run_id, key=key) > 0
