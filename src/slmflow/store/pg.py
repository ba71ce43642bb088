"""One psycopg 3 connection per store object, shared by the PostgreSQL call log and the PostgreSQL
adapter registry.

Why one small class: both keep a single connection per process, serialised by a re-entrant lock,
and both must survive the server dropping it (a restart, a failover): the failed statement raises
once, the caller's retry (the call-log writer's, the next pointer check) opens a new connection.
A store that was closed on purpose says so instead of reconnecting. (The span store keeps its own
connection class: `slmflow.tracing` sits below `slmflow.store` and imports nothing of it.)
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import ConfigError, SlmflowError, mask_url

__all__ = ["PG_SCHEMES", "PgConnection", "is_pg_url"]

PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_pg_url(url: Any) -> bool:
    return str(url).startswith(PG_SCHEMES)


class PgConnection:
    """``get()`` the open connection (autocommit), re-opened when the server closed it; ``lock``
    serialises its users; failures raise ``error`` naming the URL without its password."""

    def __init__(self, url: str, *, error: type[SlmflowError], what: str,
                 connect_timeout: float = 10) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.url_safe = mask_url(self.url)
        try:
            import psycopg
        except ImportError:
            raise ConfigError(f"{what} on PostgreSQL needs psycopg: pip install "
                              "'slmflow[store]'", where=self.url_safe) from None
        self.psycopg = psycopg
        self.error, self.what = error, what
        self.lock = threading.RLock()
        self._timeout = int(max(1, connect_timeout))
        self._conn: Any = None
        self._closed = False
        self.get()

    def get(self) -> Any:
        with self.lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._closed:
                raise self.error(f"{self.what} was closed", where=self.url_safe)
            try:
                self._conn = self.psycopg.connect(self.url, autocommit=True,
                                                  connect_timeout=self._timeout)
            except self.psycopg.Error as e:
                raise self.error(f"cannot connect to PostgreSQL: {str(e).strip()}",
                                 where=self.url_safe) from None
            return self._conn

    def close(self) -> None:
        with self.lock:
            self._closed = True
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
