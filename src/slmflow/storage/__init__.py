"""The one persistence layer under the three stores: the call log (`slmflow.store`), the span
store (`slmflow.tracing.store`) and the adapter registry (`slmflow.finetune.registry_store`).

Why one layer: each store used to choose its backend from a URL itself, keep its own PostgreSQL
connection class and its own SQLite connect, and raise its own error with no common parent; three
URL parsers drifted (one masked the password in its error, one did not), and a fix to reconnecting
after a server restart had to be made twice. What the stores share lives here, once:

    urls        URL or path -> ("sqlite", path) | ("postgresql", url) | ("folder", path); url_safe
    pg          the reconnecting psycopg 3 connection (imported only for a PostgreSQL URL)
    sqlite      the SQLite connect: WAL journal, busy timeout, read-only mode
    dialect     SQL written once for both: placeholders, ILIKE, GREATEST/LEAST, upsert, UTC day
    migrations  the advisory-lock ids and the runners that create or migrate a store's tables

It sits below `slmflow.tracing` (which sits below everything else that stores) and imports
nothing of ours but `errors` and `types`; a store keeps its own tables, queries and error class
(a subclass of `slmflow.errors.StorageError`). Importing it loads neither psycopg nor sqlite3.
"""

from __future__ import annotations

from ..errors import StorageError
from .urls import PG_SCHEMES, is_pg_url, parse_location, parse_url, url_safe

__all__ = ["PG_SCHEMES", "StorageError", "is_pg_url", "parse_location", "parse_url", "url_safe"]
