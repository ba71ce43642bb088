"""The one psycopg 3 connection class, shared by the PostgreSQL call log, span store and adapter
registry.

Why one small class: each store keeps a single connection per process (per store object),
serialised by a re-entrant lock (the gateway's and the UI server's threads share it), and each
must survive the server dropping it (a restart, a failover): the failed statement raises once, as
the store's own error naming the URL with its password masked, and the caller's retry (the
call-log writer's, the span exporter's next batch, the registry's next pointer check) opens a new
connection. A connection closed on purpose (`close`) says so instead of reconnecting; `drop`
forgets a broken one. psycopg is imported when the first object is made, never for SQLite.

``setup(connection)`` runs on every new connection (the span store turns JIT off and creates its
table there); ``dict_rows`` makes rows dicts instead of tuples.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Sequence

from ..errors import ConfigError, SlmflowError, StorageError
from .urls import normalise_pg, url_safe

__all__ = ["PgConnection"]


class PgConnection:
    """``get()`` the open connection (autocommit), re-opened when the server closed it; ``lock``
    serialises its users; failures raise ``error`` naming the URL without its password."""

    def __init__(self, url: str, *, error: type[SlmflowError] = StorageError,
                 what: str = "the database", connect_timeout: float = 10,
                 dict_rows: bool = False, setup: Callable[[Any], None] | None = None,
                 connect_failed: str = "cannot connect to PostgreSQL",
                 setup_failed: str = "cannot prepare the database") -> None:
        self.url = normalise_pg(url)
        self.url_safe = url_safe(self.url)
        try:
            import psycopg
        except ImportError:
            raise ConfigError(f"{what} on PostgreSQL needs psycopg: pip install "
                              "'slmflow[store]'", where=self.url_safe) from None
        self.psycopg = psycopg
        self._row_factory: Any = None
        if dict_rows:
            from psycopg.rows import dict_row

            self._row_factory = dict_row
        self.error, self.what = error, what
        self._setup, self._connect_failed, self._setup_failed = setup, connect_failed, setup_failed
        self.lock = threading.RLock()
        self._timeout = int(max(1, connect_timeout))
        self._conn: Any = None
        self._closed = False

    def message(self, e: BaseException) -> str:
        """A driver error's text with the URL's password masked."""
        return str(e).strip().replace(self.url, self.url_safe)

    def fail(self, what: str, e: BaseException) -> SlmflowError:
        """The store's error for a driver error ``e`` while doing ``what``."""
        return self.error(f"{what}: {self.message(e)}", where=self.url_safe)

    def get(self) -> Any:
        """The open connection: the current one, or a new one if there is none or the server
        closed it (``setup`` runs on a new one)."""
        with self.lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._closed:
                raise self.error(f"{self.what} was closed", where=self.url_safe)
            pg = self.psycopg
            kw = {"row_factory": self._row_factory} if self._row_factory is not None else {}
            try:
                conn = pg.connect(self.url, autocommit=True, connect_timeout=self._timeout, **kw)
            except pg.Error as e:
                raise self.fail(self._connect_failed, e) from None
            if self._setup is not None:
                try:
                    self._setup(conn)
                except pg.Error as e:
                    with contextlib.suppress(Exception):
                        conn.close()
                    raise self.fail(self._setup_failed, e) from None
            self._conn = conn
            return conn

    def run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(connection)`` under the lock; a psycopg error becomes ``error`` (``what: ...``)
        and a lost connection is dropped, so the next call opens a new one."""
        with self.lock:
            conn = self.get()
            try:
                return fn(conn)
            except self.psycopg.Error as e:
                if conn.closed or isinstance(e, self.psycopg.OperationalError):
                    self.drop()
                raise self.fail(what, e) from None

    def fetchall(self, what: str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one statement (``%s`` placeholders), through `run`."""
        return self.run(what, lambda c: c.execute(sql, tuple(params)).fetchall())

    def drop(self) -> None:
        """Close the current connection; the next `get` opens a new one."""
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):  # closing a broken connection
                    conn.close()

    def close(self) -> None:
        """Close for good: a later `get` raises ``error`` ("... was closed")."""
        with self.lock:
            self._closed = True
            self.drop()
