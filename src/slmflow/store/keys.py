"""API keys in the call log: their hashes, and the per-key limits every gateway replica shares.

Why in the call log: the gateway authenticates a request, checks its key's token budget and rate,
and then logs the call, all against one database, so that replicas of the gateway enforce one
key's limits together (see `KeyStore`); the review UI reads the same keys (`hash_key`). Why in
their own module: they are the gateway's concern, not the improvement loop's; `KeyStore` is a
mixin of `slmflow.store.calllog.CallLog`, written against the same backend hooks, so either
backend gives the same answers. Only a key's SHA-256 is ever stored.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol, Sequence

from ..errors import ConfigError
from ..storage.dialect import greatest, least, marks
from .records import ApiKey, _dumps, _loads

__all__ = ["KeyStore", "hash_key"]


def hash_key(key: str) -> str:
    """How an API key is stored and looked up (`find_key`): its SHA-256, never the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class _Db(Protocol):
    """The backend hooks of `CallLog` the key functions use."""

    dialect: str

    def _tx(self, lock: bool = False) -> Any: ...

    def _exec(self, cur: Any, sql: str, params: Sequence[Any]) -> int: ...

    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def _all(self, sql: str, params: Sequence[Any]) -> list[tuple]: ...


def _key_rows(db: _Db, where: str, params: Sequence[Any]) -> list[ApiKey]:
    out = []
    for r in db._all(f"SELECT {', '.join(ApiKey.COLUMNS)} FROM api_keys{where} "
                     "ORDER BY seq", params):
        d = dict(zip(ApiKey.COLUMNS, r))
        d["models"] = _loads(d["models"])
        out.append(ApiKey(**d))
    return out


class KeyStore:
    """The API-key part of the call log (a mixin of `CallLog`)."""

    def create_key(self: _Db, key: ApiKey) -> ApiKey:
        if self._all("SELECT 1 FROM api_keys WHERE name = ?", (key.name,)):
            raise ConfigError(f"an API key named {key.name!r} exists already", where="keys")
        with self._tx() as cur:
            self._many(cur, f"INSERT INTO api_keys ({', '.join(ApiKey.COLUMNS)}) VALUES "
                       f"({marks(len(ApiKey.COLUMNS))})",
                       [(key.name, key.key_hash, key.prefix, _dumps(key.models), key.rpm,
                         key.tokens_per_day, key.created, key.revoked)])
        return key

    def find_key(self: _Db, key_hash: str) -> ApiKey | None:
        rows = _key_rows(self, " WHERE key_hash = ?", (key_hash,))
        return rows[0] if rows else None

    def list_keys(self: _Db) -> list[ApiKey]:
        return _key_rows(self, "", ())

    def revoke_key(self: _Db, name: str) -> bool:
        with self._tx() as cur:
            n = self._exec(cur, "UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS "
                           "NULL", (time.time(), name))
        return bool(n)

    # -- per-key limits shared by gateway replicas ----------------------------------------------
    # Why in the database and not in process memory: two gateway replicas on one call log must
    # enforce one key's budget and rate together. Each check-and-take is one conditional UPDATE in
    # one transaction (PostgreSQL re-evaluates the WHERE on the locked row; SQLite's BEGIN
    # IMMEDIATE serialises writers), so concurrent requests on any replica cannot both pass.

    def reserve_tokens(self: _Db, key_name: str, tokens: int, limit: int,
                       now: float | None = None) -> tuple[bool, int, int]:
        """Add ``tokens`` to the key's counter for the UTC day if the sum stays within ``limit``.
        Returns (reserved, the counter after (or as it stands when refused), the day number).
        The day's row is seeded from the tokens already in the call log for that day."""
        t = time.time() if now is None else now
        day = int(t // 86400)
        with self._tx() as cur:
            self._exec(cur, "SELECT tokens FROM key_budget WHERE key_name = ? AND day = ?",
                       (key_name, day))
            if cur.fetchone() is None:
                self._exec(cur, "INSERT INTO key_budget (key_name, day, tokens) SELECT ?, ?, "
                           "COALESCE(SUM(input_tokens + output_tokens), 0) FROM calls WHERE "
                           "key_name = ? AND ts >= ? ON CONFLICT (key_name, day) DO NOTHING",
                           (key_name, day, key_name, day * 86400.0))
            n = self._exec(cur, "UPDATE key_budget SET tokens = tokens + ? WHERE key_name = ? "
                           "AND day = ? AND tokens + ? <= ?",
                           (int(tokens), key_name, day, int(tokens), int(limit)))
            self._exec(cur, "SELECT tokens FROM key_budget WHERE key_name = ? AND day = ?",
                       (key_name, day))
            used = int(cur.fetchone()[0])
        return bool(n), used, day

    def settle_tokens(self: _Db, key_name: str, day: int, delta: int) -> None:
        """Correct a reservation by ``delta`` (real usage minus reserved; never below zero)."""
        if not delta:
            return
        g = greatest(self.dialect)
        with self._tx() as cur:
            self._exec(cur, f"UPDATE key_budget SET tokens = {g}(0, tokens + ?) WHERE "
                       "key_name = ? AND day = ?", (int(delta), key_name, int(day)))

    def budget_used(self: _Db, key_name: str, now: float | None = None) -> int | None:
        """The key's counter for the UTC day (None before its first reservation that day)."""
        day = int((time.time() if now is None else now) // 86400)
        rows = self._all("SELECT tokens FROM key_budget WHERE key_name = ? AND day = ?",
                         (key_name, day))
        return int(rows[0][0]) if rows else None

    def take_rate(self: _Db, key_name: str, rpm: int, now: float | None = None) -> float:
        """Take one request from the key's token bucket (``rpm`` per minute, bursts up to
        ``rpm``): 0.0 if taken, else the seconds until one is available. ``now`` is wall-clock
        time, shared by the replicas (keep their clocks synchronised, as NTP does)."""
        t = time.time() if now is None else now
        rate = rpm / 60.0
        g, lst = greatest(self.dialect), least(self.dialect)
        level = f"{lst}(?, level + {g}(0, ? - ts) * ?)"
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO key_rate (key_name, level, ts) VALUES (?, ?, ?) "
                       "ON CONFLICT (key_name) DO NOTHING", (key_name, float(rpm), t))
            n = self._exec(cur, f"UPDATE key_rate SET level = {level} - 1, ts = {g}(ts, ?) "
                           f"WHERE key_name = ? AND {level} >= 1",
                           (float(rpm), t, rate, t, key_name, float(rpm), t, rate))
            if n:
                return 0.0
            self._exec(cur, "SELECT level, ts FROM key_rate WHERE key_name = ?", (key_name,))
            lv, ts = cur.fetchone()
        have = min(float(rpm), float(lv) + max(0.0, t - float(ts)) * rate)
        return max(0.001, (1.0 - have) / rate)

    def tokens_since(self: _Db, key_name: str, since: float) -> int:
        r = self._all("SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM calls "
                      "WHERE key_name = ? AND ts >= ?", (key_name, since))
        return int(r[0][0])
