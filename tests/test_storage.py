"""The one persistence layer (slmflow.storage): one URL parser for the three stores, one error
parent, one SQLite connect, one reconnecting PostgreSQL connection, and the stores no longer each
reading URLs themselves (issue 19, item 3)."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

import slmflow
from slmflow.errors import ConfigError, SlmflowError, StorageError
from slmflow.storage import dialect
from slmflow.storage.migrations import ADVISORY_LOCKS, migrate
from slmflow.storage.sqlite import connect
from slmflow.storage.urls import is_pg_url, parse_location, parse_url, url_safe

from .conftest import free_port, reset_pg

SRC = Path(__file__).resolve().parents[1] / "src" / "slmflow"


# ---- URLs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, want", [
    ("sqlite:////abs/calls.db", ("sqlite", "/abs/calls.db")),  # f"sqlite:///{absolute path}"
    ("sqlite:///abs/calls.db", ("sqlite", "/abs/calls.db")),
    ("calls.db", ("sqlite", "calls.db")),
    ("/var/x/spans.db", ("sqlite", "/var/x/spans.db")),
    (Path("rel/calls.db"), ("sqlite", "rel/calls.db")),
    ("  sqlite:///abs/x.db \n", ("sqlite", "/abs/x.db")),  # a setting read from a file
    ("postgresql://u:pw@127.0.0.1:5432/db", ("postgresql", "postgresql://u:pw@127.0.0.1:5432/db")),
    ("postgres://u@h/db", ("postgresql", "postgres://u@h/db")),
    ("postgresql+psycopg://u@h/db", ("postgresql", "postgresql://u@h/db")),
])
def test_parse_url(given, want):
    assert parse_url(given) == want


def test_sqlite_url_without_the_third_slash_is_refused():
    with pytest.raises(ConfigError, match=r"write SQLite URLs as sqlite:///absolute/path\.db"):
        parse_url("sqlite://calls.db")


def test_unknown_scheme_names_the_url_without_its_password():
    with pytest.raises(ConfigError) as e:
        parse_url("mysql://slm:s3cret@db:3306/x", what="call-log", where="call log")
    msg = str(e.value)
    assert "unknown call-log URL 'mysql://slm:***@db:3306/x'" in msg and "s3cret" not in msg
    assert e.value.where == "call log"
    assert url_safe("postgresql://u:p@h/d") == "postgresql://u:***@h/d"
    assert is_pg_url("postgres://h/d") and not is_pg_url("sqlite:///x")


def test_every_store_refuses_an_unknown_scheme_the_same_way():
    """Each opener goes through the one parser; the call log used to print the password."""
    from slmflow.finetune.registry_store import open_registry_store
    from slmflow.store import open_call_log
    from slmflow.tracing.store import open_span_store

    bad = "mysql://slm:s3cret@db/x"
    for opener, text in ((open_call_log, "unknown call-log URL"),
                         (open_span_store, "unknown span store URL"),
                         (open_registry_store, "unknown adapter registry location")):
        with pytest.raises(ConfigError) as e:
            opener(bad)
        assert text in str(e.value) and "slm:***@db" in str(e.value), opener
        assert "s3cret" not in str(e.value), opener


def test_parse_location_for_a_store_of_files():
    assert parse_location("/srv/adapters") == ("folder", "/srv/adapters")
    assert parse_location("file:///srv/adapters") == ("folder", "/srv/adapters")
    assert parse_location("postgresql+psycopg://u@h/d") == ("postgresql", "postgresql://u@h/d")
    with pytest.raises(ConfigError, match=r"unknown adapter registry location 's3://k:\*\*\*@b'"):
        parse_location("s3://k:secret@b", what="adapter registry", where="adapters")


# ---- one error parent ------------------------------------------------------------------------------

def test_one_storage_error_parent():
    from slmflow.finetune.registry_store import AdapterFileError, RegistryStoreError
    from slmflow.store import StoreError
    from slmflow.store.calllog import StoreError as StoreError2
    from slmflow.tracing.store import TraceStoreError

    assert StoreError is StoreError2
    for cls in (StoreError, TraceStoreError, RegistryStoreError, AdapterFileError):
        assert issubclass(cls, StorageError) and issubclass(cls, SlmflowError), cls
    assert slmflow.StorageError is StorageError
    with pytest.raises(StorageError, match="newer than this slmflow knows"):
        with sqlite3.connect(":memory:") as c:
            cur = c.cursor()
            migrate(cur, lambda cur, sql, p: cur.execute(sql, tuple(p)),
                    migrations=[(1, ["CREATE TABLE t (x INTEGER)"])], dialect="sqlite",
                    what="the test store", where="memory")
            cur.execute("INSERT INTO schema_version VALUES (7, 0)")
            migrate(cur, lambda cur, sql, p: cur.execute(sql, tuple(p)),
                    migrations=[(1, ["CREATE TABLE t (x INTEGER)"])], dialect="sqlite",
                    what="the test store", where="memory")


def test_advisory_lock_ids_are_distinct():
    assert len(set(ADVISORY_LOCKS.values())) == len(ADVISORY_LOCKS)


# ---- the stores call storage.urls, they do not parse URLs themselves -------------------------------

STORE_FILES = sorted((SRC / "store").glob("*.py")) + sorted((SRC / "tracing").glob("*.py")) + \
    [SRC / "finetune" / "registry_store.py"]


def _parses_urls(tree: ast.AST) -> list[str]:
    """Every place that looks at a URL's scheme itself: ``x.startswith("...://...")``,
    ``"://" in x``, a scheme tuple (``*_SCHEMES = (...)``) or PostgreSQL connection class of its
    own (``psycopg.connect``)."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "removeprefix") and any(
                    "://" in c.value for a in node.args for c in ast.walk(a)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)):
                hits.append(f"line {node.lineno}: {node.func.attr}(...://...)")
            if node.func.attr in ("startswith",) and any(
                    isinstance(a, (ast.Name, ast.Attribute)) and
                    (getattr(a, "id", None) or getattr(a, "attr", "")).endswith("SCHEMES")
                    for a in node.args):
                hits.append(f"line {node.lineno}: startswith(SCHEMES)")
            if node.func.attr == "connect" and isinstance(node.func.value, ast.Name) and \
                    node.func.value.id in ("psycopg", "pg", "sqlite3"):
                hits.append(f"line {node.lineno}: {node.func.value.id}.connect")
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and \
                node.left.value == "://":
            hits.append(f"line {node.lineno}: '://' in ...")
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("SCHEMES") for t in node.targets):
            hits.append(f"line {node.lineno}: a scheme list")
    return sorted(hits, key=lambda h: int(h.split(":")[0][5:]))


def test_the_scanner_finds_url_parsing():
    src = ('def f(u):\n    if u.startswith("sqlite:///"): pass\n    if "://" not in u: pass\n'
           '    if u.startswith(_PG_SCHEMES): pass\n_PG_SCHEMES = ("postgres://",)\n'
           'c = psycopg.connect(u)\nd = sqlite3.connect(u)\n')
    assert _parses_urls(ast.parse(src)) == [
        "line 2: startswith(...://...)", "line 3: '://' in ...", "line 4: startswith(SCHEMES)",
        "line 5: a scheme list", "line 6: psycopg.connect", "line 7: sqlite3.connect"]


def test_stores_leave_urls_and_connections_to_storage():
    assert len(STORE_FILES) > 10
    bad = {str(p.relative_to(SRC)): hits for p in STORE_FILES
           if (hits := _parses_urls(ast.parse(p.read_text(encoding="utf-8"))))}
    assert bad == {}, f"use slmflow.storage (urls, sqlite, pg) instead: {bad}"
    for rel, fn in (("store/calllog.py", "parse_url"), ("tracing/backends.py", "parse_url"),
                    ("finetune/registry_store.py", "parse_location")):
        tree = ast.parse((SRC / rel).read_text(encoding="utf-8"))
        called = {n.func.id for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert fn in called, rel
    assert not (SRC / "store" / "pg.py").exists()


def test_storage_imports_nothing_above_errors_and_types():
    for p in sorted((SRC / "storage").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module in ("errors", "types", "home"), (p.name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("slmflow"), (p.name, node.module)


# ---- SQLite, dialect ------------------------------------------------------------------------------

def test_sqlite_connect_wal_timeout_and_read_only(tmp_path):
    path = tmp_path / "deep" / "x.db"
    conn = connect(path, timeout=3, autocommit=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 3000
    assert conn.isolation_level is None
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    ro = connect(path, readonly=True, row_factory=sqlite3.Row)
    assert ro.execute("SELECT x FROM t").fetchone()["x"] == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(sqlite3.OperationalError):
        connect(tmp_path / "missing.db", readonly=True).execute("SELECT 1 FROM t")
    ro.close()
    conn.close()


def test_dialect_upsert_runs_on_sqlite_and_translates_for_postgresql():
    sql = dialect.upsert("kv", ("k", "v"), ("k",))
    assert sql == "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
    assert dialect.to_pg(sql).count("%s") == 2 and "?" not in dialect.to_pg(sql)
    assert dialect.to_pg("a LIKE ?", ilike=True) == "a ILIKE %s"
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)")
    c.execute(sql, ("a", 1))
    c.execute(sql, ("a", 2))
    assert c.execute("SELECT k, v FROM kv").fetchall() == [("a", 2)]
    g = dialect.greatest("sqlite")
    day = dialect.utc_day("?", "sqlite")
    assert c.execute(f"SELECT {g}(1, 3, 2), {day}", (86400 * 3,)).fetchone() == (3, "1970-01-04")
    assert dialect.text("a\x00b") == "a\ufffdb" and dialect.text(3) == 3


# ---- PostgreSQL -----------------------------------------------------------------------------------

def test_pg_connection_unreachable_is_the_callers_error_with_the_password_masked():
    pytest.importorskip("psycopg")
    from slmflow.storage.pg import PgConnection
    from slmflow.store import StoreError

    db = PgConnection(f"postgresql+psycopg://slm:s3cret@127.0.0.1:{free_port()}/x",
                      error=StoreError, what="the call log", connect_timeout=2)
    assert db.url.startswith("postgresql://")
    with pytest.raises(StoreError) as e:
        db.get()
    assert "cannot connect to PostgreSQL" in str(e.value) and "s3cret" not in str(e.value)
    assert e.value.where.startswith("postgresql://slm:***@127.0.0.1:")
    db.close()
    with pytest.raises(StoreError, match="the call log was closed"):
        db.get()


def test_pg_connection_reconnects_after_the_server_drops_it(pg_url):
    import psycopg

    from slmflow.storage.pg import PgConnection

    reset_pg(pg_url)
    calls = []
    db = PgConnection(pg_url, dict_rows=True, setup=lambda c: calls.append(c))
    assert db.fetchall("q", "SELECT 1 AS one") == [{"one": 1}]
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(StorageError, match="^lookup: "):
        db.fetchall("lookup", "SELECT 1 AS one")  # the statement that met the dropped connection
    assert db.fetchall("q", "SELECT 2 AS two") == [{"two": 2}]  # a new connection
    assert len(calls) == 2  # setup ran on each
    db.close()
    with pytest.raises(StorageError, match="was closed"):
        db.fetchall("q", "SELECT 1")
