"""Where a store lives, from a URL or a path: the one parser for all three stores.

Why one: the call log, the span store and the adapter registry each read ``sqlite:///...``,
``postgresql://...`` or a plain path from a setting (``SLMFLOW_CALLS_URL``, ``SLMFLOW_TRACES_URL``,
``SLMFLOW_ADAPTERS_URL``, ``deploy.yaml``). Three parsers accepted slightly different spellings and
named a bad URL with or without its password. Here:

    parse_url("sqlite:///abs/calls.db")       -> ("sqlite", "/abs/calls.db")
    parse_url("sqlite:////abs/calls.db")      -> ("sqlite", "/abs/calls.db")  (f"sqlite:///{abs}")
    parse_url("calls.db") / Path("calls.db")  -> ("sqlite", "calls.db")
    parse_url("postgresql://u@h:5432/db")     -> ("postgresql", "postgresql://u@h:5432/db")
      (also postgres://; postgresql+psycopg:// is read as postgresql://)
    parse_url("sqlite://rel.db")              -> ConfigError: write SQLite URLs as sqlite:///...
    parse_url("mysql://u:pw@h/db", what="call-log")
        -> ConfigError: unknown call-log URL 'mysql://u:***@h/db'

`parse_location` is the same for a store that keeps files rather than SQLite (the adapter
registry): a folder, ``file:///folder`` or a PostgreSQL URL. Every message names the URL through
`url_safe` (the password masked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, mask_url

__all__ = ["PG_SCHEMES", "is_pg_url", "parse_url", "parse_location", "url_safe", "normalise_pg"]

PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def url_safe(url: Any) -> str:
    """The URL without its password, for messages and logs."""
    return mask_url(url)


def is_pg_url(url: Any) -> bool:
    """Whether ``url`` names a PostgreSQL database (any of `PG_SCHEMES`)."""
    return str(url).startswith(PG_SCHEMES)


def normalise_pg(url: str) -> str:
    """``postgresql+psycopg://`` (SQLAlchemy's spelling) → ``postgresql://`` (libpq's)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def parse_url(url_or_path: str | Path, *, what: str = "database",
              where: str = "storage") -> tuple[str, str]:
    """``("sqlite", path)`` or ``("postgresql", url)`` from a URL or a plain path (see the module
    doc). ``what`` names the store in the error for an unknown scheme (``unknown {what} URL``),
    ``where`` is that error's place."""
    if isinstance(url_or_path, Path):
        return "sqlite", str(url_or_path)
    u = str(url_or_path).strip()
    if u.startswith("sqlite:///"):  # sqlite:///abs/path (and sqlite:////abs/path, as written
        return "sqlite", u[len("sqlite:///"):] if u.startswith("sqlite:////") \
            else u[len("sqlite://"):]  # by f"sqlite:///{absolute_path}")
    if u.startswith("sqlite://"):
        raise ConfigError("write SQLite URLs as sqlite:///absolute/path.db", where=url_safe(u))
    if is_pg_url(u):
        return "postgresql", normalise_pg(u)
    if "://" not in u:
        return "sqlite", u
    raise ConfigError(f"unknown {what} URL {url_safe(u)!r}: use sqlite:///path or "
                      "postgresql://...", where=where)


def parse_location(location: str | Path, *, what: str = "storage",
                   where: str = "storage") -> tuple[str, str]:
    """``("folder", path)`` or ``("postgresql", url)`` for a store of files: a plain path,
    ``file://path`` or a PostgreSQL URL; any other scheme is a `ConfigError`
    (``unknown {what} location``) naming it without its password."""
    loc = str(location)
    if is_pg_url(loc):
        return "postgresql", normalise_pg(loc)
    if loc.startswith("file://"):
        return "folder", loc[len("file://"):]
    if "://" in loc:
        raise ConfigError(f"unknown {what} location {url_safe(loc)!r}: a folder or "
                          "postgresql://...", where=where)
    return "folder", loc
