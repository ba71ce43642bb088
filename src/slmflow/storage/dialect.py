"""SQL written once for SQLite and PostgreSQL: the few places the two dialects differ.

Why: the stores keep one set of queries so that either backend gives the same answers (the call
log's usage report, the span store's views); their SQL is written for SQLite (``?`` placeholders)
and translated here for PostgreSQL, instead of each store carrying its own ``replace``.

    to_pg(sql)           ``?`` → ``%s`` (queries keep ``%`` and ``?`` out of their literals:
                         LIKE patterns are parameters)
    to_pg(sql, ilike=True)  also `` LIKE `` → `` ILIKE `` (SQLite's LIKE ignores ASCII case)
    marks(n)             ``?, ?, ?``
    greatest/least       scalar max/min: GREATEST/LEAST, SQLite's multi-argument max/min
    utc_day(col)         epoch seconds → ``YYYY-MM-DD`` in UTC
    upsert(...)          INSERT ... ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c
                         (SQLite 3.24+ and PostgreSQL 9.5+)
    text(v)              a str both accept: no NUL byte, no lone surrogate (PostgreSQL takes
                         neither; SQLite takes both)
"""

from __future__ import annotations

from typing import Any, Sequence

from ..types import db_text

__all__ = ["SQLITE", "POSTGRESQL", "to_pg", "marks", "greatest", "least", "utc_day", "upsert",
           "text"]

SQLITE, POSTGRESQL = "sqlite", "postgresql"


def to_pg(sql: str, *, ilike: bool = False) -> str:
    """A query written for SQLite, for PostgreSQL (see the module doc)."""
    sql = sql.replace("?", "%s")
    return sql.replace(" LIKE ", " ILIKE ") if ilike else sql


def marks(n: int) -> str:
    """``n`` placeholders: ``?, ?, ?``."""
    return ", ".join("?" * n)


def greatest(dialect: str) -> str:
    # SQLite's multi-argument max/min are the scalar GREATEST/LEAST
    return "max" if dialect == SQLITE else "GREATEST"


def least(dialect: str) -> str:
    return "min" if dialect == SQLITE else "LEAST"


def utc_day(column: str, dialect: str) -> str:
    """An expression: epoch seconds in ``column`` → the UTC day as ``YYYY-MM-DD`` text."""
    if dialect == SQLITE:
        return f"date({column}, 'unixepoch')"
    return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def upsert(table: str, columns: Sequence[str], key: Sequence[str],
           update: Sequence[str] | None = None) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...) ON CONFLICT (key) DO UPDATE SET`` each of
    ``update`` (default: every column not in ``key``) ``= EXCLUDED.column``."""
    upd = [c for c in columns if c not in key] if update is None else list(update)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks(len(columns))}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in upd))


def text(v: Any) -> Any:
    """A str made safe for both databases (others unchanged)."""
    return db_text(v) if isinstance(v, str) else v
