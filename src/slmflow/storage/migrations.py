"""How a store's tables come to exist: the two runners the stores use, and their lock ids.

Why here: every store creates or migrates its tables itself when it opens (a user of the embedded
store never runs a migration tool), and on PostgreSQL two processes opening a fresh database at
once (gateway replicas, Ray workers) must not both do it: one takes a transaction-scoped advisory
lock, the other waits and then finds the work done. The lock ids of all stores are listed in one
place so that no two stores ever share one.

`create_tables`: idempotent ``CREATE ... IF NOT EXISTS`` statements under the store's lock (the
span store, the adapter registry). `migrate`: numbered migrations recorded in ``schema_version``,
each applied with its version row in one transaction (the call log; its statements are in
`slmflow.store.schema` and an applied one is never edited). A database newer than this slmflow is
refused rather than written with an old schema.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..errors import SlmflowError, StorageError

__all__ = ["ADVISORY_LOCKS", "create_tables", "migrate"]

# pg_advisory_xact_lock ids, one per store (the span store's and the registry's predate this list)
ADVISORY_LOCKS = {"calls": 727350011, "spans": 727350017, "adapters": 727350021}


def create_tables(cur: Any, lock: int, statements: Sequence[str]) -> None:
    """Run idempotent statements on a PostgreSQL cursor (or connection) inside a transaction the
    caller opened, after taking advisory lock ``lock`` (released at commit)."""
    cur.execute(f"SELECT pg_advisory_xact_lock({int(lock)})")
    for stmt in statements:
        cur.execute(stmt)


def migrate(cur: Any, run: Callable[[Any, str, Sequence[Any]], Any], *,
            migrations: Sequence[tuple[int, Sequence[str]]], dialect: str, what: str,
            where: str, error: type[SlmflowError] = StorageError,
            lock: int | None = None) -> int:
    """Apply the ``migrations`` (``(version, statements)``, ascending) newer than the database's
    ``schema_version``, inside the caller's transaction on ``cur``; ``run(cur, sql, params)``
    executes one statement written with ``?`` placeholders. ``lock``: the advisory lock taken on
    PostgreSQL first. Returns the version before. A database at a version newer than the last
    migration raises ``error`` (``what`` names the store, ``where`` its URL)."""
    run(cur, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
        "applied DOUBLE PRECISION NOT NULL)", ())
    if dialect == "postgresql" and lock is not None:
        run(cur, f"SELECT pg_advisory_xact_lock({int(lock)})", ())
    run(cur, "SELECT MAX(version) FROM schema_version", ())
    current = int(cur.fetchone()[0] or 0)
    latest = migrations[-1][0] if migrations else 0
    if current > latest:
        raise error(f"{what} has schema version {current}, newer than this slmflow knows "
                    f"({latest}): upgrade slmflow", where=where)
    for version, stmts in migrations:
        if version <= current:
            continue
        for stmt in stmts:
            run(cur, stmt, ())
        run(cur, "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
            (version, time.time()))
    return current
