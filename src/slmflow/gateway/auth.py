"""API keys, per-key rate limits and token budgets.

Keys are random 256-bit tokens (``sk-slm-...``) shown once at creation; only their SHA-256 is
stored (in the call-log store's ``api_keys`` table, or as ``sha256:`` in gateway.yaml). Why a
plain SHA-256 and not a password hash (bcrypt, scrypt): a key has 256 bits of entropy, so there
is nothing to brute-force, and the gateway checks it on every request; this is what API
providers do for machine-generated keys.

Rate limit: a token bucket of ``rpm`` requests per minute per key (bursts up to ``rpm``).
Token budget: input + output tokens per UTC day per key, seeded from the call log at the first
request of the day (so a restart does not reset it) and counted in memory after that.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..store.calllog import ApiKey, CallLog, hash_key

__all__ = ["hash_key", "new_key", "KeyInfo", "Authenticator", "RateLimiter", "TokenBudget",
           "create_key"]


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
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rpm: int | None) -> float:
        """0.0 if allowed, else the seconds to wait."""
        if rpm is None:
            return 0.0
        now = time.monotonic()
        rate = rpm / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


def _day_start(now: float | None = None) -> float:
    t = time.time() if now is None else now
    return t - (t % 86400)


class TokenBudget:
    def __init__(self, log: CallLog | None) -> None:
        self.log = log
        self._used: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def used(self, key: str) -> int:
        day = _day_start()
        with self._lock:
            d, n = self._used.get(key, (None, None))  # type: ignore[assignment]
            if d == day:
                return n  # type: ignore[return-value]
        n = self.log.tokens_since(key, day) if self.log is not None else 0
        with self._lock:
            d2, n2 = self._used.get(key, (None, None))  # type: ignore[assignment]
            if d2 == day:
                return n2  # type: ignore[return-value]
            self._used[key] = (day, n)
        return n

    def add(self, key: str, tokens: int) -> None:
        self.used(key)
        with self._lock:
            d, n = self._used[key]
            self._used[key] = (d, n + tokens)
