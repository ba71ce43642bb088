"""The one SQLite connect for the embedded stores (the call log, the span store).

Why one: both stores are written by one process while others read them (``slmflow traces``,
``slmflow ui``, ``slmflow usage`` beside a running gateway), so both need the same settings, and
they drifted apart when each opened its own: the WAL journal (readers never block the writer),
``synchronous=NORMAL`` (safe with WAL, no fsync per commit), a busy timeout (a second writer
waits instead of failing with "database is locked"), the parent folder created, and a read-only
mode for readers (``mode=ro``: a viewer never creates or changes a store by accident).
Errors are sqlite3's own; each store turns them into its error class.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["connect"]


def connect(path: str | Path, *, readonly: bool = False, timeout: float = 10.0,
            autocommit: bool = False, row_factory: Any = None) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path``, usable from any thread (the caller
    serialises). Writable: the folder created, WAL journal, ``synchronous=NORMAL``, a busy
    timeout of ``timeout`` seconds. ``readonly``: opened with ``mode=ro`` (the file must exist).
    ``autocommit``: no implicit transactions (the caller issues ``BEGIN``)."""
    path = Path(path)
    iso = None if autocommit else ""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=timeout, isolation_level=iso)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=timeout,
                               isolation_level=iso)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        except sqlite3.Error:
            conn.close()
            raise
    if row_factory is not None:
        conn.row_factory = row_factory
    return conn
